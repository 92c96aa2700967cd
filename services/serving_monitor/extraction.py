"""Model-extraction detection after PRADA (Juuti, Szyller, Marchal, Asokan, "PRADA: Protecting
against DNN Model Stealing Attacks", IEEE EuroS&P 2019, arXiv:1805.02628).

PRADA's observation: the minimum L2 distance of a benign client's new query to its earlier
queries follows a roughly normal law, because benign queries are independent draws from the
natural input distribution. An extraction attack synthesises its queries (Jacobian-based
augmentation steps a fixed amount from earlier queries; random or grid probing covers the input
box evenly), so those distances bunch up at a few values, and the Shapiro-Wilk statistic W of the
distance set drops. Per client, following the paper's Algorithm 1 (one growing set per client
rather than per predicted class: prediction logs may be regression outputs):

1. standardise the query with the model's offline reference (`ood.ReferenceProfile`);
2. ``d_min`` = its smallest L2 distance to the client's growing set G; append ``d_min`` to D;
3. add the query to G only if ``d_min`` exceeds T = max(mean - std) of the distances that were
   added to G, so near-duplicates do not crowd G;
4. once D holds `min_queries` distances, alert `serving.extraction` when W(D) < `w_threshold`.

Bounded memory (the paper's G and D grow without limit, which would let one client exhaust the
service): G is a ring of the last `max_set` accepted queries and D a ring of the last
`max_distances` distances. Last-N rather than a reservoir because the test is about the client's
*current* behaviour: a reservoir keeps a uniform sample of its whole history, so an attack begun
after a long benign spell would be diluted, and its per-query cost (distance to |G| points) is the
same. An attacker can evade by interleaving natural queries; PRADA's own limitation, stated there.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from scipy.stats import shapiro

from services.serving_monitor.abuse import AlertSpec
from services.serving_monitor.clients import ClientTable
from services.serving_monitor.errors import ConfigError
from services.serving_monitor.ood import FloatArray, ReferenceProfile
from shared.events import PredictionBatch, Severity

KIND_EXTRACTION = "serving.extraction"
KIND_BOUNDARY_WALK = "serving.boundary_walk"
DEFAULT_MAX_CLIENTS = 10_000
# Distances whose spread is this small relative to their mean are all "the same distance": a grid
# or fixed-step attack. Shapiro-Wilk is undefined on a constant sample, so score it W = 0.
_DEGENERATE_SPREAD = 1e-9


@dataclass(slots=True)
class _ClientState:
    """A client's growing set G (ring), distance set D (ring), PRADA's threshold T, and its
    current chain of small successive steps."""

    dims: int
    max_set: int
    max_distances: int
    warmup: int
    repeat_radius: float
    g: FloatArray = field(init=False)
    g_sq: FloatArray = field(init=False)
    g_len: int = 0
    g_next: int = 0
    d: FloatArray = field(init=False)
    d_len: int = 0
    d_next: int = 0
    # The distances admitted to G (for T = mean - std), kept with the ring.
    g_dist: FloatArray = field(init=False)
    threshold: float = 0.0
    queries: int = 0
    repeats: int = 0
    untested: int = 0
    last_alert: float = -math.inf
    prev: FloatArray | None = None
    chain_start: FloatArray | None = None
    chain_len: int = 0
    chain_reach: float = 0.0
    last_walk_alert: float = -math.inf

    def __post_init__(self) -> None:
        self.g = np.zeros((self.max_set, self.dims), dtype=np.float64)
        self.g_sq = np.zeros(self.max_set, dtype=np.float64)
        self.g_dist = np.zeros(self.max_set, dtype=np.float64)
        self.d = np.zeros(self.max_distances, dtype=np.float64)

    def add(self, z: FloatArray, chain_step: float) -> None:
        self.queries += 1
        self._follow_chain(z, chain_step)
        if self.g_len == 0:
            self._admit(z, math.nan)
            return
        n = self.g_len
        zz = float(z @ z)
        d2 = self.g_sq[:n] - 2.0 * (self.g[:n] @ z) + zz
        d_min = math.sqrt(max(0.0, float(d2.min())))
        if d_min < self.repeat_radius:
            # A repeat (the same row again, or with a natural jitter): benign customers repeat
            # rows all the time, and zero distances alone drive W to 0 (issue 9). PRADA's D is
            # over *distinct* queries.
            self.repeats += 1
            return
        if self.g_len < self.warmup:
            # The first distances measure how empty G is, not how the client queries: with a
            # handful of points in G every natural query is "far", and those few large values
            # alone push W down. PRADA's D starts after this warm-up here.
            self._admit(z, d_min)
            return
        self.d[self.d_next] = d_min
        self.d_next = (self.d_next + 1) % self.max_distances
        self.d_len = min(self.d_len + 1, self.max_distances)
        self.untested += 1
        if d_min > self.threshold:
            self._admit(z, d_min)

    def _follow_chain(self, z: FloatArray, chain_step: float) -> None:
        """Near-duplicate chains: successive queries each a small step from the last. A walk
        toward the decision boundary (HopSkipJump and its kin) makes one that reaches far from
        its start; a customer repeating a row with jitter makes one that stays where it began."""
        prev, self.prev = self.prev, z
        if prev is None or self.chain_start is None:
            self.chain_start = z
            return
        step = z - prev
        if float(step @ step) <= chain_step * chain_step:
            self.chain_len += 1
            reach = z - self.chain_start
            self.chain_reach = max(self.chain_reach, math.sqrt(float(reach @ reach)))
        else:
            self.chain_start, self.chain_len, self.chain_reach = z, 0, 0.0

    def _admit(self, z: FloatArray, d_min: float) -> None:
        self.g[self.g_next] = z
        self.g_sq[self.g_next] = float(z @ z)
        self.g_dist[self.g_next] = d_min
        self.g_next = (self.g_next + 1) % self.max_set
        self.g_len = min(self.g_len + 1, self.max_set)
        admitted = self.g_dist[: self.g_len]
        admitted = admitted[np.isfinite(admitted)]
        if admitted.size >= 2:
            self.threshold = max(self.threshold, float(admitted.mean() - admitted.std()))

    def distances(self) -> FloatArray:
        return self.d[: self.d_len]


def shapiro_w(distances: FloatArray) -> float:
    """Shapiro-Wilk W of the distances; 0 for a degenerate (constant) sample."""
    spread = float(np.ptp(distances))
    if spread <= _DEGENERATE_SPREAD * max(1.0, float(np.abs(distances).mean())):
        return 0.0
    return float(shapiro(distances).statistic)


class ExtractionMonitor:
    """PRADA per (model, client) over standardised queries, with bounded memory per client."""

    def __init__(
        self,
        *,
        w_threshold: float = 0.5,
        min_queries: int = 100,
        max_set: int = 256,
        max_distances: int = 512,
        warmup: int = 16,
        cooldown_s: float = 300.0,
        max_clients: int = DEFAULT_MAX_CLIENTS,
        repeat_radius: float = 1.0,
        test_every: int = 50,
        chain_step: float = 1.0,
        chain_min: int = 40,
        chain_reach: float = 4.0,
    ) -> None:
        if not 0 < w_threshold < 1:
            raise ConfigError("w_threshold", w_threshold, "in (0, 1)")
        # Shapiro-Wilk needs at least 3 values and scipy's p-values hold up to 5000.
        if min_queries < 20:
            raise ConfigError("min_queries", min_queries, ">= 20")
        if not 1 <= warmup <= max_set:
            raise ConfigError("warmup", warmup, f"in [1, max_set={max_set}]")
        if not min_queries <= max_distances <= 5000:
            raise ConfigError("max_distances", max_distances, f"in [min_queries={min_queries}, 5000]")
        if not (math.isfinite(cooldown_s) and cooldown_s >= 0):
            raise ConfigError("cooldown_s", cooldown_s, "finite and >= 0")
        if not (math.isfinite(repeat_radius) and repeat_radius >= 0):
            raise ConfigError("repeat_radius", repeat_radius, "finite and >= 0")
        if test_every < 1:
            raise ConfigError("test_every", test_every, ">= 1")
        if not (math.isfinite(chain_step) and chain_step > 0):
            raise ConfigError("chain_step", chain_step, "finite and > 0")
        if chain_min < 2:
            raise ConfigError("chain_min", chain_min, ">= 2")
        if not (math.isfinite(chain_reach) and chain_reach > chain_step):
            raise ConfigError("chain_reach", chain_reach, f"finite and > chain_step={chain_step}")
        self.repeat_radius = repeat_radius
        self.test_every = test_every
        self.chain_step = chain_step
        self.chain_min = chain_min
        self.chain_reach = chain_reach
        self.w_threshold = w_threshold
        self.min_queries = min_queries
        self.max_set = max_set
        self.max_distances = max_distances
        self.warmup = warmup
        self.cooldown_s = cooldown_s
        self._clients: ClientTable[tuple[str, str], _ClientState] = ClientTable(max_clients)

    def __len__(self) -> int:
        """(model, client) pairs currently tracked."""
        return len(self._clients)

    def bytes_per_client(self, dims: int) -> int:
        """Upper bound of the numeric state one client costs, for `dims` features."""
        return 8 * (self.max_set * (dims + 2) + self.max_distances + 2 * dims)

    def forget_model(self, model: str) -> None:
        """Drop every client's state for `model` (a new profile changes the standardised space)."""
        self._clients.forget(lambda key: key[0] == model)

    def _state(self, key: tuple[str, str], dims: int) -> _ClientState:
        return self._clients.touch(
            key,
            lambda: _ClientState(dims, self.max_set, self.max_distances, self.warmup, self.repeat_radius),
            replace=lambda state: state.dims != dims,
        )

    def observe(self, client: str, profile: ReferenceProfile, z: FloatArray, now: float) -> list[AlertSpec]:
        """Fold in one client's standardised queries `z` (rows); test once after them."""
        state = self._state((profile.model, client), len(profile.features))
        # A query with a missing or non-finite feature has no distance; the OOD and
        # invalid-input detectors judge it.
        finite: npt.NDArray[np.bool_] = np.asarray(np.isfinite(z).all(axis=1), dtype=bool)
        for row, ok in zip(z, finite.tolist(), strict=True):
            if ok:
                state.add(row, self.chain_step)
        alerts: list[AlertSpec] = []
        walk = self._walk_alert(client, profile, state, now)
        if walk is not None:
            alerts.append(walk)
        # W is tested once per `test_every` new distinct queries, not after every batch: each test
        # is a chance of a false alarm, and the per-client budget is per day, not per test.
        if (
            state.d_len < self.min_queries
            or state.untested < self.test_every
            or now - state.last_alert < self.cooldown_s
        ):
            return alerts
        state.untested = 0
        w = shapiro_w(state.distances())
        if w >= self.w_threshold:
            return alerts
        state.last_alert = now
        severity = Severity.FAIL if w < self.w_threshold - 0.1 else Severity.WARN
        alerts.append(
            AlertSpec(
                kind=KIND_EXTRACTION,
                severity=severity,
                message=(
                    f"client {client!r} queries {profile.model!r} like a model-extraction attack "
                    f"(PRADA Shapiro-Wilk W={w:.3f} < {self.w_threshold})"
                ),
                client=client,
                model=profile.model,
                evidence={
                    "shapiro_w": round(w, 4),
                    "w_threshold": self.w_threshold,
                    "distances": state.d_len,
                    "queries": state.queries,
                    "repeats": state.repeats,
                    "profile_version": profile.version,
                },
            )
        )
        return alerts

    def _walk_alert(self, client: str, profile: ReferenceProfile, state: _ClientState, now: float) -> AlertSpec | None:
        if state.chain_len < self.chain_min or state.chain_reach < self.chain_reach:
            return None
        if now - state.last_walk_alert < self.cooldown_s:
            return None
        state.last_walk_alert = now
        return AlertSpec(
            kind=KIND_BOUNDARY_WALK,
            severity=Severity.FAIL,
            message=(
                f"client {client!r} walks through {profile.model!r}'s input space in small steps "
                f"({state.chain_len} steps of at most {self.chain_step:g}, reaching {state.chain_reach:.1f} "
                "robust sigmas from the start): a decision-boundary search"
            ),
            client=client,
            model=profile.model,
            evidence={
                "chain_steps": state.chain_len,
                "chain_reach": round(state.chain_reach, 3),
                "chain_step": self.chain_step,
                "profile_version": profile.version,
            },
        )

    def observe_rows(
        self, client: str, profile: ReferenceProfile, rows: Iterable[Mapping[str, float | None]], now: float
    ) -> list[AlertSpec]:
        """Standardise raw feature rows with `profile` and observe them."""
        z = profile.standardise(profile.matrix(list(rows)))
        return self.observe(client, profile, z, now)

    def observe_batch(self, batch: PredictionBatch, profile: ReferenceProfile, now: float) -> list[AlertSpec]:
        """Observe a logged batch, client by client, in record order."""
        by_client: dict[str, list[Mapping[str, float | None]]] = {}
        for record in batch.records:
            by_client.setdefault(record.client, []).append(record.features)
        alerts: list[AlertSpec] = []
        for client, rows in by_client.items():
            alerts.extend(self.observe_rows(client, profile, rows, now))
        return alerts
