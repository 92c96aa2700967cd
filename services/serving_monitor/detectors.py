"""Every per-client detector over one batch of logged predictions, as a feature matrix.

The service (`app.Monitor.observe`) and the offline replay (`replay.replay`, behind `mlwarden
check traffic`) both call `Detectors.observe`, built from the same `ServingSettings`: the replay
runs the service's code with the service's defaults (issue 9), never a copy of it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from services.serving_monitor.abuse import AbuseMonitor, AlertSpec
from services.serving_monitor.extraction import ExtractionMonitor
from services.serving_monitor.ood import FloatArray, OodMonitor, ReferenceProfile
from services.serving_monitor.settings import ServingSettings

BoolArray = npt.NDArray[np.bool_]
#: The client id under which an owner's keys are judged together: `acme.*` for `acme.k1`, `acme.k2`.
OWNER_SUFFIX = ".*"


def owner_of(client: str) -> str:
    """The owner of an API-key client id: the id up to its first ``.`` (`acme.k2` -> `acme`).

    Client ids are `[A-Za-z0-9][A-Za-z0-9._-]*` (`auth.ApiKeyRecord`), so an operator gives one
    owner several keys by naming them `OWNER.KEY`; an id without a dot is its own owner."""
    return client.split(".", 1)[0]


def group_by_client(clients: Sequence[str]) -> dict[str, list[int]]:
    """Positions of each client's records, clients in order of first appearance."""
    groups: dict[str, list[int]] = {}
    for i, client in enumerate(clients):
        positions = groups.get(client)
        if positions is None:
            groups[client] = [i]
        else:
            positions.append(i)
    return groups


@dataclass
class Detectors:
    """The abuse, OOD and extraction monitors of one serving-monitor instance."""

    abuse: AbuseMonitor
    ood: OodMonitor
    extraction: ExtractionMonitor

    @classmethod
    def from_settings(cls, cfg: ServingSettings) -> Detectors:
        """The detectors with the service's configuration."""
        return cls(
            abuse=AbuseMonitor(
                cfg.abuse_volume_per_minute, cfg.abuse_invalid_rate, cfg.abuse_min_records, cfg.abuse_cooldown_s
            ),
            ood=OodMonitor(
                rate_floor=cfg.ood_rate_floor,
                alpha=cfg.ood_alpha,
                min_records=cfg.ood_min_records,
                cooldown_s=cfg.detector_cooldown_s,
            ),
            extraction=ExtractionMonitor(cooldown_s=cfg.detector_cooldown_s),
        )

    def forget_model(self, model: str) -> None:
        """A new profile for `model`: its clients' OOD and extraction state start afresh."""
        self.ood.forget_model(model)
        self.extraction.forget_model(model)

    def observe(
        self,
        model: str,
        clients: Sequence[str],
        invalid: BoolArray,
        x: FloatArray | None,
        profile: ReferenceProfile | None,
        now: float,
    ) -> list[AlertSpec]:
        """One batch: record i was sent by `clients[i]`, had invalid inputs when `invalid[i]`, and
        raw features `x[i]` in `profile`'s order (None without a profile: abuse only)."""
        if profile is None or x is None:
            return self.observe_scored(model, clients, invalid, None, None, None, now)
        flagged = profile.scores_standardised(profile.standardise(x)) > profile.threshold
        return self.observe_scored(model, clients, invalid, profile.query_space(x), flagged, profile, now)

    def observe_scored(
        self,
        model: str,
        clients: Sequence[str],
        invalid: BoolArray,
        q: FloatArray | None,
        flagged: BoolArray | None,
        profile: ReferenceProfile | None,
        now: float,
    ) -> list[AlertSpec]:
        """`observe` with the rows already in the query space (`q`) and scored (`flagged`: OOD under
        `profile`). Both are row-wise, so the replay computes them once for a whole log instead
        of once per one-second batch (issue 9: per-batch fixed costs bounded its throughput)."""
        groups = group_by_client(clients)
        # A batch of one client (most of a replay's one-second batches): whole arrays, no gathers.
        picks: dict[str, slice | list[int]] = {c: slice(None) for c in groups} if len(groups) == 1 else dict(groups)
        alerts: list[AlertSpec] = []
        for client, idx in picks.items():
            n = len(groups[client])
            alerts += self.abuse.observe(client, model, n, int(np.count_nonzero(invalid[idx])), now)
        if profile is None or q is None or flagged is None:
            return alerts
        owners: dict[str, list[int]] = {}
        owner_rows: dict[str, list[int]] = {}
        for client, idx in picks.items():
            n, n_flagged = len(groups[client]), int(np.count_nonzero(flagged[idx]))
            alerts += self.ood.observe(client, profile, n, n_flagged, now)
            owner = owner_of(client)
            if owner != client:
                owners.setdefault(owner, [0, 0])
                owners[owner][0] += n
                owners[owner][1] += n_flagged
                owner_rows.setdefault(owner, []).extend(groups[client])
        # Sybil: an owner's keys judged together, so an attack split over keys each too quiet
        # to be judged alone is judged as the one client it is (issue 9).
        for owner, (records, n_flagged) in owners.items():
            alerts += self.ood.observe(owner + OWNER_SUFFIX, profile, records, n_flagged, now)
        for client, idx in picks.items():
            alerts += self.extraction.observe(client, profile, q[idx], now)
        for owner, rows in owner_rows.items():
            # The union of an owner's keys, in record order: one extraction client's queries.
            alerts += self.extraction.observe(owner + OWNER_SUFFIX, profile, q[sorted(rows)], now)
        return alerts

    def observe_client(
        self,
        client: str,
        model: str,
        runs: ClientRuns,
        q: FloatArray | None,
        times: FloatArray | None,
        profile: ReferenceProfile | None,
        *,
        abuse: bool = True,
    ) -> list[tuple[float, AlertSpec]]:
        """One client's whole log at once: what `observe_scored` does for it batch after batch,
        with each alert's clock. Every detector's state is per client, so visiting clients one
        after the other instead of batch by batch changes no alert (issue 9: the replay's
        throughput). `q` and `times` are the client's rows of `profile`'s model; an owner's keys
        (`OWNER_SUFFIX`) get no abuse counters, as in `observe_scored`."""
        alerts: list[tuple[float, AlertSpec]] = []
        if abuse:
            alerts += self.abuse.observe_arrays(client, model, runs.now, runs.records, runs.invalid)
        if profile is not None and profile.model == model:
            alerts += self.ood.observe_arrays(client, profile, runs.now, runs.records, runs.flagged)
        if profile is not None and q is not None and times is not None and len(q):
            alerts += self.extraction.observe_timed(client, profile, q, times)
        return alerts


@dataclass(frozen=True)
class ClientRuns:
    """One client's batches: the batch's clock, its records, invalid and OOD-flagged among them."""

    now: FloatArray
    records: npt.NDArray[np.int64]
    invalid: npt.NDArray[np.int64]
    flagged: npt.NDArray[np.int64]
