"""Per-client abuse detection over prediction logs: too many predictions, too many bad inputs.

Each client costs a constant amount of memory: two exponentially decayed counters (records and
invalid records) with a time constant of one window, the time they were last updated, and the
time of the last alert of each kind. With decay ``exp(-dt / window)`` a client sending at a steady
``r`` records per second converges to ``r * window`` (plus half a batch): the decayed count reads
as "records in the last window" without keeping a single timestamp. A burst counts in full at
once and fades over a few windows, so a one-off burst is seen and then forgotten.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from services.serving_monitor.clients import NEAR, ClientTable, decayed_sums, monotone
from services.serving_monitor.errors import ConfigError, ObservationError
from services.serving_monitor.validation import FeatureSchema
from shared.events import Alert, PredictionBatch, Severity

KIND_VOLUME = "abuse.volume"
KIND_INVALID = "abuse.invalid_inputs"
DEFAULT_MAX_CLIENTS = 100_000
# An alert at this multiple of its threshold is no longer a maybe.
_FAIL_FACTOR = 2.0

Evidence = Mapping[str, float | int | str | bool]
FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


@dataclass(frozen=True)
class AlertSpec:
    """An alert the wiring signs and publishes on `mlw.alert.serving`."""

    kind: str
    severity: Severity
    message: str
    client: str
    model: str
    evidence: Evidence = field(default_factory=dict)

    def to_alert(self) -> Alert:
        """The bus schema of this alert."""
        return Alert(
            kind=self.kind,
            severity=self.severity,
            message=self.message,
            client=self.client,
            model=self.model,
            evidence=dict(self.evidence),
        )


@dataclass(frozen=True)
class ClientTally:
    """How many records one client logged in a batch, and how many had invalid inputs."""

    records: int
    invalid: int


@dataclass(slots=True)
class _ClientState:
    records: float = 0.0
    invalid: float = 0.0
    updated: float = 0.0
    last_volume_alert: float = -math.inf
    last_invalid_alert: float = -math.inf


def record_invalid(features: Mapping[str, float | None], schema: FeatureSchema | None) -> bool:
    """Whether one record's inputs are invalid: against `schema`, or not finite without one."""
    if schema is not None:
        return bool(schema.validate_rows([features]))
    # No registered schema: only finiteness can be judged.
    return any(value is None or not math.isfinite(value) for value in features.values())


def tally_batch(batch: PredictionBatch, schema: FeatureSchema | None) -> dict[str, ClientTally]:
    """Count records and invalid-input records per client in one logged batch."""
    counts: dict[str, list[int]] = {}
    for record in batch.records:
        tally = counts.setdefault(record.client, [0, 0])
        tally[0] += 1
        tally[1] += record_invalid(record.features, schema)
    return {client: ClientTally(records, invalid) for client, (records, invalid) in counts.items()}


class AbuseMonitor:
    """Decayed per-client counters over prediction logs, raising volume and invalid-rate alerts."""

    def __init__(
        self,
        volume_per_minute: float,
        invalid_rate: float,
        min_records: int,
        cooldown_s: float,
        *,
        window_s: float = 60.0,
        max_clients: int = DEFAULT_MAX_CLIENTS,
    ) -> None:
        if not (math.isfinite(volume_per_minute) and volume_per_minute > 0):
            raise ConfigError("volume_per_minute", volume_per_minute, "finite and > 0")
        if not 0 < invalid_rate <= 1:
            raise ConfigError("invalid_rate", invalid_rate, "in (0, 1]")
        if min_records < 1:
            raise ConfigError("min_records", min_records, ">= 1")
        if not (math.isfinite(cooldown_s) and cooldown_s >= 0):
            raise ConfigError("cooldown_s", cooldown_s, "finite and >= 0")
        if not (math.isfinite(window_s) and window_s > 0):
            raise ConfigError("window_s", window_s, "finite and > 0")
        self.volume_per_minute = volume_per_minute
        self.invalid_rate = invalid_rate
        self.min_records = min_records
        self.cooldown_s = cooldown_s
        self.window_s = window_s
        # Volume threshold for the decayed count, which reads as "records per window".
        self._volume_threshold = volume_per_minute * window_s / 60.0
        self._clients: ClientTable[str, _ClientState] = ClientTable(max_clients)

    def __len__(self) -> int:
        """Clients currently tracked."""
        return len(self._clients)

    def _state(self, client: str, now: float) -> _ClientState:
        return self._clients.touch(client, lambda: _ClientState(updated=now))

    def observe(self, client: str, model: str, records: int, invalid: int, now: float) -> list[AlertSpec]:
        """Fold one batch of `records` (of which `invalid` were invalid) in; return new alerts."""
        return [a for _, a in self.observe_runs(client, model, [(now, records, invalid)])]

    def observe_runs(
        self, client: str, model: str, runs: Sequence[tuple[float, int, int]]
    ) -> list[tuple[float, AlertSpec]]:
        """`observe` for each (now, records, invalid) of one client in turn, the alerts with their
        clocks: the replay hands a client's whole log over at once (one state lookup, one loop)."""
        if not runs:
            return []
        state = self._state(client, runs[0][0])
        out: list[tuple[float, AlertSpec]] = []
        exp, window, volume, cooldown = math.exp, self.window_s, self._volume_threshold, self.cooldown_s
        for now, records, invalid in runs:
            if records < 0 or invalid < 0 or invalid > records:
                raise ObservationError("need 0 <= invalid <= records", client=client, records=records, invalid=invalid)
            if not math.isfinite(now):
                raise ConfigError("now", now, "finite")
            # A clock stepping backwards must not inflate the counters: treat it as no time passing.
            decay = exp(-max(0.0, now - state.updated) / window)
            state.records = state.records * decay + records
            state.invalid = state.invalid * decay + invalid
            state.updated = max(state.updated, now)
            if state.records > volume and now - state.last_volume_alert >= cooldown:
                state.last_volume_alert = now
                out.append((now, self._volume_alert(client, model, state)))
            if state.records >= self.min_records:
                rate = state.invalid / state.records
                if rate >= self.invalid_rate and now - state.last_invalid_alert >= cooldown:
                    state.last_invalid_alert = now
                    out.append((now, self._invalid_alert(client, model, state, rate)))
        return out

    def observe_arrays(
        self, client: str, model: str, now: FloatArray, records: IntArray, invalid: IntArray
    ) -> list[tuple[float, AlertSpec]]:
        """`observe_runs` on arrays (the replay): the counters on whole arrays, and the step-by-step
        loop only for a client that comes near a threshold (`clients.decayed_sums`)."""
        if len(now) == 0:
            return []
        state = self._state(client, float(now[0]))
        if (
            monotone(now, state.updated)
            and (records >= 0).all()
            and (invalid >= 0).all()
            and (invalid <= records).all()
        ):
            r = decayed_sums(now, records.astype(np.float64), state.records, state.updated, self.window_s)
            bad = decayed_sums(now, invalid.astype(np.float64), state.invalid, state.updated, self.window_s)
            near = (r > self._volume_threshold * NEAR) | (
                (r >= self.min_records * NEAR) & (bad >= self.invalid_rate * r * NEAR)
            )
            if not near.any():
                state.records, state.invalid, state.updated = float(r[-1]), float(bad[-1]), float(now[-1])
                return []
        runs = list(zip(now.tolist(), records.tolist(), invalid.tolist(), strict=True))
        return self.observe_runs(client, model, runs)

    def observe_batch(self, batch: PredictionBatch, schema: FeatureSchema | None, now: float) -> list[AlertSpec]:
        """Tally a logged batch per client (see `tally_batch`) and observe each client."""
        alerts: list[AlertSpec] = []
        for client, tally in tally_batch(batch, schema).items():
            alerts.extend(self.observe(client, batch.model, tally.records, tally.invalid, now))
        return alerts

    def _volume_alert(self, client: str, model: str, state: _ClientState) -> AlertSpec:
        per_minute = state.records * 60.0 / self.window_s
        severity = Severity.FAIL if state.records >= _FAIL_FACTOR * self._volume_threshold else Severity.WARN
        return AlertSpec(
            kind=KIND_VOLUME,
            severity=severity,
            message=(
                f"client {client!r} sent about {per_minute:.0f} predictions per minute to "
                f"{model!r}, above the limit of {self.volume_per_minute:g}"
            ),
            client=client,
            model=model,
            evidence={
                "records_per_minute": round(per_minute, 3),
                "threshold_per_minute": self.volume_per_minute,
                "window_s": self.window_s,
            },
        )

    def _invalid_alert(self, client: str, model: str, state: _ClientState, rate: float) -> AlertSpec:
        severity = Severity.FAIL if rate >= min(1.0, _FAIL_FACTOR * self.invalid_rate) else Severity.WARN
        return AlertSpec(
            kind=KIND_INVALID,
            severity=severity,
            message=(
                f"client {client!r} sent {rate:.0%} invalid inputs to {model!r}, "
                f"above the limit of {self.invalid_rate:.0%}"
            ),
            client=client,
            model=model,
            evidence={
                "invalid_rate": round(rate, 4),
                "threshold_rate": self.invalid_rate,
                "records_in_window": round(state.records, 3),
                "invalid_in_window": round(state.invalid, 3),
                "window_s": self.window_s,
            },
        )
