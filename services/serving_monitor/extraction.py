"""Model-extraction detection: PRADA, the query distribution, coverage growth and boundary walks.

The per-client statistics live in `queries` (shared with the fit-time calibration) and are
measured in the profile's copula space (`ReferenceProfile.query_space`); this module turns the
statistics into alerts against the profile's calibrated thresholds (issue 9), with cooldowns and a
bounded number of tracked clients.

PRADA (Juuti, Szyller, Marchal, Asokan, "PRADA: Protecting against DNN Model Stealing Attacks",
IEEE EuroS&P 2019, arXiv:1805.02628) observes that the minimum L2 distance of a benign client's
new query to its earlier queries follows a roughly normal law, because benign queries are
independent draws from the natural input distribution. An extraction attack synthesises its
queries (Jacobian-based augmentation steps a fixed amount from earlier queries; grid probing
covers the input box evenly), so those distances bunch up at a few values, and the Shapiro-Wilk
statistic W of the distance set drops. Per client (one growing set per client rather than per
predicted class: prediction logs may be regression outputs), ``d_min`` of each distinct query to
the client's set G goes into D, and `serving.extraction` is raised when W(D) falls below the
profile's calibrated threshold. Where the paper admits a query to G only beyond
T = max(mean - std) of earlier distances, here the repeat filter keeps near-duplicates out of G
(issue 9): with T a client's G depends on the order its queries arrive in, which no blocked,
vectorised pass can reproduce, and customers' repeats are what T was guarding against.

Where PRADA's law does not hold (heavy-tailed or integer features make honest clients' distances
far from normal) the calibration says so with a low threshold; the distribution distance, which
makes no such assumption, then catches random probing.

Bounded memory (the paper's G and D grow without limit, which would let one client exhaust the
service): G is a ring of the last `max_set` distinct queries and D a ring of the last
`max_distances` distances. Last-N rather than a reservoir because the test is about the client's
*current* behaviour: a reservoir keeps a uniform sample of its whole history, so an attack begun
after a long benign spell would be diluted, and its per-query cost (distance to |G| points) is the
same. An attacker can evade by interleaving natural queries; PRADA's own limitation, stated there.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping

import numpy as np
import numpy.typing as npt

from services.serving_monitor.abuse import AlertSpec
from services.serving_monitor.clients import ClientTable
from services.serving_monitor.errors import ConfigError
from services.serving_monitor.ood import FloatArray, ReferenceProfile
from services.serving_monitor.queries import (
    ClientQueries,
    QueryParams,
    Statistic,
    StatValue,
    coverage_size,
    coverage_z,
    shapiro_w,
)
from shared.events import PredictionBatch, Severity

__all__ = [
    "KIND_BOUNDARY_WALK",
    "KIND_COVERAGE",
    "KIND_DISTRIBUTION",
    "KIND_EXTRACTION",
    "ExtractionMonitor",
    "shapiro_w",
]

KIND_EXTRACTION = "serving.extraction"
KIND_DISTRIBUTION = "serving.query_distribution"
KIND_COVERAGE = "serving.coverage_growth"
KIND_BOUNDARY_WALK = "serving.boundary_walk"
DEFAULT_MAX_CLIENTS = 10_000


class _Client:
    """A client's query state and when each of its alerts last fired."""

    __slots__ = ("last", "queries")

    def __init__(self, queries: ClientQueries) -> None:
        self.queries = queries
        self.last: dict[Statistic, float] = {}


class ExtractionMonitor:
    """Extraction statistics per (model, client) against the profile's calibrated thresholds.

    `w_threshold` (and the geometry in `params`) override the profile's calibration: PRADA as the
    paper runs it (W < 0.84 after every query) is `ExtractionMonitor(w_threshold=0.84,
    params=QueryParams(test_every=1, repeat_radius=0.0))`. The defaults follow the profile."""

    def __init__(
        self,
        *,
        w_threshold: float | None = None,
        params: QueryParams | None = None,
        cooldown_s: float = 300.0,
        max_clients: int = DEFAULT_MAX_CLIENTS,
    ) -> None:
        if w_threshold is not None and not 0 < w_threshold < 1:
            raise ConfigError("w_threshold", w_threshold, "in (0, 1)")
        if params is not None:
            _check(params)
        if not (math.isfinite(cooldown_s) and cooldown_s >= 0):
            raise ConfigError("cooldown_s", cooldown_s, "finite and >= 0")
        self.w_threshold = w_threshold
        self.params = params
        self.cooldown_s = cooldown_s
        self._clients: ClientTable[tuple[str, str], _Client] = ClientTable(max_clients)

    def __len__(self) -> int:
        """(model, client) pairs currently tracked."""
        return len(self._clients)

    def bytes_per_client(self, dims: int, axes: int, params: QueryParams | None = None) -> int:
        """Upper bound of the numeric state one client costs, for `dims` features and `axes`
        projected axes."""
        p = params or self.params or QueryParams()
        return 8 * (p.max_set * (dims + 1) + p.max_distances + p.window * axes + 3 * dims) + coverage_size(p, axes)

    def forget_model(self, model: str) -> None:
        """Drop every client's state for `model` (a new profile changes the query space)."""
        self._clients.forget(lambda key: key[0] == model)

    def state(self, model: str, client: str) -> ClientQueries:
        """A tracked client's query state (KeyError when not tracked)."""
        return self._clients[(model, client)].queries

    def _client(self, profile: ReferenceProfile, client: str) -> _Client:
        params = self.params or profile.query_params
        dims, axes = len(profile.features), profile.reference.projection.shape[1]
        return self._clients.touch(
            (profile.model, client),
            lambda: _Client(ClientQueries(params, dims, axes)),
            replace=lambda c: c.queries.params != params or c.queries.dims != dims or c.queries.axes != axes,
        )

    def observe(self, client: str, profile: ReferenceProfile, q: FloatArray, now: float) -> list[AlertSpec]:
        """Fold in one client's queries `q` (rows in `profile.query_space`), all at time `now`."""
        return [a for _, a in self.observe_timed(client, profile, q, np.full(len(q), now))]

    def observe_timed(
        self, client: str, profile: ReferenceProfile, q: FloatArray, times: FloatArray
    ) -> list[tuple[float, AlertSpec]]:
        """Fold in one client's queries with the clock of each (the end of its batch); the alerts
        with their clocks."""
        state = self._client(profile, client)
        # A query with a missing or non-finite feature has no distance; the OOD and
        # invalid-input detectors judge it.
        finite: npt.NDArray[np.bool_] = np.asarray(np.isfinite(q).all(axis=1), dtype=bool)
        if not finite.all():
            q, times = q[finite], times[finite]
        values = state.queries.add(q, profile.reference)
        alerts: list[tuple[float, AlertSpec]] = []
        for value in values:
            now = float(times[value.row])
            alert = self._judge(client, profile, state, value, now)
            if alert is not None:
                alerts.append((now, alert))
        return alerts

    def _judge(
        self, client: str, profile: ReferenceProfile, state: _Client, value: StatValue, now: float
    ) -> AlertSpec | None:
        stat = value.stat
        if now - state.last.get(stat, -math.inf) < self.cooldown_s:
            return None
        qs = profile.queries
        match stat:
            case Statistic.PRADA_W:
                threshold = self.w_threshold if self.w_threshold is not None else qs.prada_w.threshold
                if threshold is None or value.value >= threshold:
                    return None
                alert = self._prada(client, profile, state.queries, value.value, threshold)
            case Statistic.ENERGY:
                threshold = qs.energy.threshold
                if threshold is None or value.value <= threshold:
                    return None
                alert = self._distribution(client, profile, value, threshold)
            case Statistic.COVERAGE:
                threshold = qs.coverage.threshold
                params = state.queries.params
                z = coverage_z(
                    value.value,
                    value.size,
                    params.coverage_every,
                    np.asarray(qs.coverage_mean),
                    np.asarray(qs.coverage_std),
                )
                if threshold is None or z is None or z <= threshold:
                    return None
                alert = self._coverage(client, profile, value, z, threshold)
            case Statistic.CHAIN:
                alert = self._walk(client, profile, state.queries, value)
        state.last[stat] = now
        return alert

    def _prada(self, client: str, profile: ReferenceProfile, q: ClientQueries, w: float, threshold: float) -> AlertSpec:
        return AlertSpec(
            kind=KIND_EXTRACTION,
            severity=Severity.FAIL if w < threshold - 0.1 else Severity.WARN,
            message=(
                f"client {client!r} queries {profile.model!r} like a model-extraction attack "
                f"(PRADA Shapiro-Wilk W={w:.3f} < {threshold:.3f})"
            ),
            client=client,
            model=profile.model,
            evidence={
                "shapiro_w": round(w, 4),
                "w_threshold": round(threshold, 4),
                "per_client_false_alarm_rate": profile.queries.prada_w.per_client_rate,
                "distances": min(q.d_count, q.params.max_distances),
                "queries": q.queries,
                "repeats": q.repeats,
                "profile_version": profile.version,
            },
        )

    def _distribution(self, client: str, profile: ReferenceProfile, value: StatValue, threshold: float) -> AlertSpec:
        return AlertSpec(
            kind=KIND_DISTRIBUTION,
            severity=Severity.FAIL if value.value > 2 * threshold else Severity.WARN,
            message=(
                f"client {client!r}'s last {value.size} distinct queries to {profile.model!r} are not drawn "
                f"from its training distribution (energy distance statistic {value.value:.1f} > {threshold:.1f})"
            ),
            client=client,
            model=profile.model,
            evidence={
                "energy_statistic": round(value.value, 3),
                "threshold": round(threshold, 3),
                "per_client_false_alarm_rate": profile.queries.energy.per_client_rate,
                "window": value.size,
                "profile_version": profile.version,
            },
        )

    def _coverage(
        self, client: str, profile: ReferenceProfile, value: StatValue, z: float, threshold: float
    ) -> AlertSpec:
        return AlertSpec(
            kind=KIND_COVERAGE,
            severity=Severity.FAIL if z > 2 * threshold else Severity.WARN,
            message=(
                f"client {client!r} spread over {value.value:.0f} regions of {profile.model!r}'s input space in "
                f"{value.size} distinct queries, far faster than benign clients (z={z:.1f} > {threshold:.1f})"
            ),
            client=client,
            model=profile.model,
            evidence={
                "cells_visited": int(value.value),
                "distinct_queries": value.size,
                "z": round(z, 3),
                "threshold": round(threshold, 3),
                "per_client_false_alarm_rate": profile.queries.coverage.per_client_rate,
                "profile_version": profile.version,
            },
        )

    def _walk(self, client: str, profile: ReferenceProfile, q: ClientQueries, value: StatValue) -> AlertSpec:
        prm = q.params
        return AlertSpec(
            kind=KIND_BOUNDARY_WALK,
            severity=Severity.FAIL,
            message=(
                f"client {client!r} walks through {profile.model!r}'s input space in small steps "
                f"({value.size} steps of at most {prm.chain_step:g}, reaching {value.value:.1f} "
                "sigmas from the start): a decision-boundary search"
            ),
            client=client,
            model=profile.model,
            evidence={
                "chain_steps": value.size,
                "chain_reach": round(value.value, 3),
                "chain_step": prm.chain_step,
                "profile_version": profile.version,
            },
        )

    def observe_rows(
        self, client: str, profile: ReferenceProfile, rows: Iterable[Mapping[str, float | None]], now: float
    ) -> list[AlertSpec]:
        """Map raw feature rows into `profile`'s query space and observe them."""
        q = profile.query_space(profile.matrix(list(rows)))
        return self.observe(client, profile, q, now)

    def observe_batch(self, batch: PredictionBatch, profile: ReferenceProfile, now: float) -> list[AlertSpec]:
        """Observe a logged batch, client by client, in record order."""
        by_client: dict[str, list[Mapping[str, float | None]]] = {}
        for record in batch.records:
            by_client.setdefault(record.client, []).append(record.features)
        alerts: list[AlertSpec] = []
        for client, rows in by_client.items():
            alerts.extend(self.observe_rows(client, profile, rows, now))
        return alerts


def _check(p: QueryParams) -> None:
    """Refuse a geometry the statistics cannot run with."""
    # Shapiro-Wilk needs at least 3 values and scipy's p-values hold up to 5000.
    if p.min_distances < 20:
        raise ConfigError("min_distances", p.min_distances, ">= 20")
    if not 1 <= p.warmup <= p.max_set:
        raise ConfigError("warmup", p.warmup, f"in [1, max_set={p.max_set}]")
    if not p.min_distances <= p.max_distances <= 5000:
        raise ConfigError("max_distances", p.max_distances, f"in [min_distances={p.min_distances}, 5000]")
    if not (math.isfinite(p.repeat_radius) and p.repeat_radius >= 0):
        raise ConfigError("repeat_radius", p.repeat_radius, "finite and >= 0")
    for name in ("test_every", "energy_every", "coverage_every", "window", "energy_min"):
        if getattr(p, name) < 1:
            raise ConfigError(name, getattr(p, name), ">= 1")
    if not (math.isfinite(p.chain_step) and p.chain_step > 0):
        raise ConfigError("chain_step", p.chain_step, "finite and > 0")
    if p.chain_min < 2:
        raise ConfigError("chain_min", p.chain_min, ">= 2")
    if not (math.isfinite(p.chain_reach) and p.chain_reach > p.chain_step):
        raise ConfigError("chain_reach", p.chain_reach, f"finite and > chain_step={p.chain_step}")
