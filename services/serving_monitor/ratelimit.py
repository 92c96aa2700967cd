"""Per-client rate limits with the Generic Cell Rate Algorithm (GCRA).

GCRA is the "virtual scheduling" algorithm of ITU-T Recommendation I.371 (section 4.4.2, also
ATM Forum Traffic Management 4.0): each client keeps one number, its theoretical arrival time
(TAT), the time at which it would be back in line had it sent at exactly the permitted rate. With
emission interval ``T = 1 / rate`` and a tolerance of ``burst * T``, a request of cost ``c`` at
time ``now`` is conforming when ``max(TAT, now) + c*T - burst*T <= now``; if it is, the TAT
advances to ``max(TAT, now) + c*T``, and a refused request leaves the TAT unchanged.

Consequence used by the tests: over any window ``[t0, t1]`` the admitted cost is at most
``burst + rate * (t1 - t0)``, and memory is one float per client, whatever the request rate.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from services.serving_monitor.errors import ConfigError, LimitConfigError

DEFAULT_MAX_CLIENTS = 100_000
# Repeated float additions of T can land a hair past the exact boundary, which would refuse the
# last request of a legitimate burst. One microsecond of slack is far below any useful rate and
# above the rounding error of unix-time doubles (about 2.4e-7 s today).
CLOCK_TOLERANCE_S = 1e-6


@dataclass(frozen=True)
class GcraLimit:
    """A sustained rate (requests per second) and the burst a client may spend at once."""

    rate_per_second: float
    burst: float
    _interval: float = field(init=False, repr=False, compare=False)
    _tolerance: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (math.isfinite(self.rate_per_second) and self.rate_per_second > 0):
            raise LimitConfigError(
                "rate must be finite and > 0", rate_per_second=self.rate_per_second, burst=self.burst
            )
        if not (math.isfinite(self.burst) and self.burst >= 1):
            raise LimitConfigError(
                "burst must be finite and >= 1", rate_per_second=self.rate_per_second, burst=self.burst
            )
        # Precomputed once: `check` is on the serving hot path.
        object.__setattr__(self, "_interval", 1.0 / self.rate_per_second)
        object.__setattr__(self, "_tolerance", self.burst * (1.0 / self.rate_per_second))

    @property
    def emission_interval(self) -> float:
        """T: seconds one unit of cost occupies at the sustained rate."""
        return 1.0 / self.rate_per_second


@dataclass(frozen=True)
class RateDecision:
    """Whether a request conforms; if not, when to retry (None: never, its cost exceeds the burst)."""

    allowed: bool
    retry_after: float | None = None


_ALLOWED = RateDecision(allowed=True)


class GcraLimiter:
    """GCRA limiter keyed by client, with optional per-client limits and a bounded table."""

    def __init__(
        self,
        rate_per_second: float,
        burst: float,
        *,
        overrides: Mapping[str, GcraLimit] | None = None,
        max_clients: int = DEFAULT_MAX_CLIENTS,
    ) -> None:
        if max_clients < 1:
            raise ConfigError("max_clients", max_clients, ">= 1")
        self.default = GcraLimit(rate_per_second, burst)
        self._overrides: dict[str, GcraLimit] = dict(overrides or {})
        self._tat: dict[str, float] = {}
        self.max_clients = max_clients

    def limit_for(self, client: str) -> GcraLimit:
        """The limit that applies to `client`."""
        return self._overrides.get(client, self.default)

    def set_override(self, client: str, rate_per_second: float, burst: float) -> None:
        """Give `client` its own rate and burst (its current TAT is kept)."""
        self._overrides[client] = GcraLimit(rate_per_second, burst)

    def clear_override(self, client: str) -> None:
        """Return `client` to the default limit."""
        self._overrides.pop(client, None)

    def __len__(self) -> int:
        """Clients currently tracked."""
        return len(self._tat)

    def check(self, client: str, now: float, cost: float = 1) -> RateDecision:
        """Admit `cost` units for `client` at time `now` (seconds, any monotone clock) or refuse."""
        if not (0 < cost < math.inf):
            raise ConfigError("cost", cost, "finite and > 0")
        limit = self._overrides.get(client, self.default) if self._overrides else self.default
        if cost > limit.burst:
            # No amount of waiting makes this conforming: say so instead of a false retry time.
            return RateDecision(allowed=False, retry_after=None)
        known = self._tat.get(client)
        # Taking the later of TAT and now also makes a clock that steps backwards harmless.
        tat = now if known is None or known < now else known
        new_tat = tat + cost * limit._interval
        allow_at = new_tat - limit._tolerance
        if allow_at - now > CLOCK_TOLERANCE_S:
            return RateDecision(allowed=False, retry_after=allow_at - now)
        if known is None and len(self._tat) >= self.max_clients:
            self._make_room(now)
        self._tat[client] = new_tat
        return _ALLOWED

    def _make_room(self, now: float) -> None:
        # (1) A client whose TAT has passed is indistinguishable from a new one, so forgetting it
        # is lossless: it cannot gain a single extra request from being dropped.
        expired = [client for client, tat in self._tat.items() if tat <= now]
        for client in expired:
            del self._tat[client]
        if len(self._tat) < self.max_clients:
            return
        # (2) Every tracked client is still paying off a burst. Forget the ones closest to idle
        # (smallest TAT: each regains at most TAT - now seconds of budget), down to 90 % of the
        # cap so that this O(n) sweep is amortised over many new clients rather than run on each.
        keep = max(0, int(self.max_clients * 0.9) - 1)
        drop = len(self._tat) - keep
        for client, _ in heapq.nsmallest(drop, self._tat.items(), key=lambda item: item[1]):
            del self._tat[client]
