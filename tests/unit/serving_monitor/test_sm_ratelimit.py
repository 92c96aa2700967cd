"""GCRA rate limits: bursts beyond the limit are stopped, clients are isolated, memory is bounded."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.serving_monitor.errors import ConfigError, LimitConfigError
from services.serving_monitor.ratelimit import CLOCK_TOLERANCE_S, GcraLimiter


def test_burst_beyond_limit_is_denied_with_retry_after_then_allowed_after_it() -> None:
    limiter = GcraLimiter(rate_per_second=1.0, burst=5)
    assert all(limiter.check("acme", 1000.0).allowed for _ in range(5))
    denied = limiter.check("acme", 1000.0)
    assert not denied.allowed
    assert denied.retry_after is not None
    assert denied.retry_after == pytest.approx(1.0)
    # Retrying early is still refused, with the remaining wait.
    early = limiter.check("acme", 1000.5)
    assert not early.allowed
    assert early.retry_after == pytest.approx(0.5)
    assert limiter.check("acme", 1000.0 + denied.retry_after).allowed
    # ... and only one unit came back, not the whole burst.
    assert not limiter.check("acme", 1001.0).allowed


def test_refused_requests_do_not_push_the_client_further_back() -> None:
    limiter = GcraLimiter(rate_per_second=2.0, burst=1)
    assert limiter.check("acme", 0.0).allowed
    for _ in range(100):
        assert not limiter.check("acme", 0.1).allowed
    assert limiter.check("acme", 0.5).allowed


def test_steady_traffic_at_the_rate_is_never_denied() -> None:
    limiter = GcraLimiter(rate_per_second=3.0, burst=1)
    assert all(limiter.check("acme", 10.0 + i / 3.0).allowed for i in range(300))


def test_two_clients_are_isolated() -> None:
    limiter = GcraLimiter(rate_per_second=1.0, burst=3)
    for _ in range(3):
        assert limiter.check("attacker", 0.0).allowed
    assert not limiter.check("attacker", 0.0).allowed
    assert all(limiter.check("victim", 0.0).allowed for _ in range(3))


def test_cost_spends_several_units_at_once() -> None:
    limiter = GcraLimiter(rate_per_second=10.0, burst=10)
    assert limiter.check("acme", 0.0, cost=8).allowed
    refused = limiter.check("acme", 0.0, cost=3)
    assert not refused.allowed
    assert refused.retry_after == pytest.approx(0.1)
    assert limiter.check("acme", 0.0, cost=2).allowed


def test_cost_above_burst_is_never_admissible() -> None:
    limiter = GcraLimiter(rate_per_second=100.0, burst=10)
    decision = limiter.check("acme", 0.0, cost=11)
    assert not decision.allowed
    assert decision.retry_after is None


def test_per_client_override_changes_rate_and_burst() -> None:
    limiter = GcraLimiter(rate_per_second=1.0, burst=2)
    limiter.set_override("premium", rate_per_second=100.0, burst=50)
    assert sum(limiter.check("premium", 0.0).allowed for _ in range(60)) == 50
    assert sum(limiter.check("basic", 0.0).allowed for _ in range(60)) == 2
    limiter.clear_override("premium")
    assert limiter.limit_for("premium") == limiter.default


def test_clock_stepping_back_does_not_reset_a_client() -> None:
    limiter = GcraLimiter(rate_per_second=1.0, burst=2)
    assert limiter.check("acme", 100.0).allowed
    assert limiter.check("acme", 100.0).allowed
    assert not limiter.check("acme", 50.0).allowed


def test_table_is_bounded_and_expired_clients_are_dropped() -> None:
    limiter = GcraLimiter(rate_per_second=1.0, burst=1, max_clients=100)
    for i in range(10_000):
        limiter.check(f"client-{i}", now=float(i) * 2)
    assert len(limiter) <= 100


def test_dropping_expired_clients_never_forgets_an_active_one() -> None:
    limiter = GcraLimiter(rate_per_second=1.0, burst=1, max_clients=10)
    limiter.set_override("attacker", rate_per_second=0.001, burst=1)
    assert limiter.check("attacker", 0.0).allowed  # the attacker's TAT is now 1000 s away
    for i in range(500):
        limiter.check(f"client-{i}", now=1.0 + i * 2)
    assert len(limiter) <= 10
    assert not limiter.check("attacker", 999.0).allowed


def test_table_is_bounded_even_when_every_client_is_active() -> None:
    limiter = GcraLimiter(rate_per_second=0.01, burst=1, max_clients=50)
    for i in range(1000):
        assert limiter.check(f"client-{i}", now=0.0).allowed
    assert len(limiter) <= 50


@pytest.mark.parametrize(
    ("rate", "burst"), [(0.0, 1), (-1.0, 1), (math.inf, 1), (math.nan, 1), (1.0, 0), (1.0, math.inf)]
)
def test_unenforceable_limits_are_refused(rate: float, burst: float) -> None:
    with pytest.raises(LimitConfigError):
        GcraLimiter(rate, burst)


@pytest.mark.parametrize("cost", [0, -1, math.nan, math.inf])
def test_nonsense_cost_is_refused(cost: float) -> None:
    with pytest.raises(ConfigError):
        GcraLimiter(1.0, 1).check("acme", 0.0, cost=cost)


@settings(max_examples=200, deadline=None)
@given(
    rate=st.floats(min_value=0.5, max_value=100.0),
    burst=st.integers(min_value=1, max_value=20),
    arrivals=st.lists(
        st.tuples(st.floats(min_value=0.0, max_value=2.0), st.integers(min_value=1, max_value=3)),
        min_size=1,
        max_size=60,
    ),
)
def test_gcra_never_admits_more_than_burst_plus_rate_times_elapsed(
    rate: float, burst: int, arrivals: list[tuple[float, int]]
) -> None:
    limiter = GcraLimiter(rate, burst)
    now = 1_700_000_000.0
    admitted: list[tuple[float, int]] = []
    for gap, cost in arrivals:
        now += gap
        if limiter.check("c", now, cost=cost).allowed:
            admitted.append((now, cost))
    # Every window that starts and ends on an admission (the tightest windows there are).
    for i, (start, _) in enumerate(admitted):
        total = 0
        for end, cost in admitted[i:]:
            total += cost
            bound = burst + rate * (end - start + CLOCK_TOLERANCE_S) + 1e-9
            assert total <= bound, (total, bound, start, end)
