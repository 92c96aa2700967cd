"""Per-client query statistics and their calibration (issue 9): exact whatever the blocking,
calibrated on the reference, catching correlation breaking, quiet on natural clients."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import shapiro

from services.serving_monitor.clients import decayed_sums
from services.serving_monitor.extraction import KIND_DISTRIBUTION, ExtractionMonitor
from services.serving_monitor.ood import FloatArray, fit_reference
from services.serving_monitor.queries import (
    ClientQueries,
    QueryParams,
    StatValue,
    SuffixMinima,
    shapiro_w,
    sq_distances,
    sq_distances_t,
)

D = 6
FEATURES = [f"f{i}" for i in range(D)]
_MIX = np.random.default_rng(1).normal(size=(D, D)) * 0.8 + np.eye(D)


def natural(n: int, seed: int) -> FloatArray:
    """Correlated rows with one heavy-tailed and one integer-valued feature."""
    x = np.random.default_rng(seed).normal(size=(n, D)) @ _MIX
    x[:, 0] = np.exp(x[:, 0])
    x[:, 1] = np.floor(np.abs(x[:, 1]) * 2)
    out: FloatArray = x
    return out


TRAIN = natural(4000, 0)
PROFILE = fit_reference(TRAIN, FEATURES, "m")


def corr_break(n: int, seed: int) -> FloatArray:
    """Every value real, each feature from a different training row: marginals kept."""
    rng = np.random.default_rng(seed)
    return np.stack([TRAIN[rng.integers(0, len(TRAIN), size=n), j] for j in range(D)], axis=1)


def kinds(rows: FloatArray, client: str = "c", batch: int = 10) -> list[str]:
    m = ExtractionMonitor(cooldown_s=0.0)
    q = PROFILE.query_space(rows)
    return [a.kind for i in range(0, len(q), batch) for a in m.observe(client, PROFILE, q[i : i + batch], float(i))]


def run(rows: FloatArray, block: int) -> tuple[list[StatValue], tuple[int, ...]]:
    state = ClientQueries(PROFILE.query_params, D, PROFILE.reference.projection.shape[1])
    q = PROFILE.query_space(rows)
    out: list[StatValue] = []
    for i in range(0, len(q), block):
        out += [StatValue(v.stat, v.row + i, v.value, v.size) for v in state.add(q[i : i + block], PROFILE.reference)]
    return out, (state.distinct, state.repeats, state.d_count, state.visited, state.chain_len)


def test_statistics_are_the_same_whatever_the_blocking() -> None:
    # Repeats (a customer's rows again, with jitter) and more distinct rows than the ring holds.
    base = natural(700, 5)
    rng = np.random.default_rng(6)
    rows = np.vstack([base, base[rng.integers(0, 700, size=300)] * (1 + 0.001 * rng.normal(size=(300, D)))])
    rows = rows[rng.permutation(len(rows))]
    one = run(rows, 1)
    for block in (7, 64, 256, 1000):
        values, state = run(rows, block)
        assert state == one[1]
        assert [(v.stat, v.row, v.size) for v in values] == [(v.stat, v.row, v.size) for v in one[0]]
        assert np.allclose([v.value for v in values], [v.value for v in one[0]])


def test_jittered_repeats_are_not_distinct_queries() -> None:
    rows = np.repeat(natural(20, 7), 10, axis=0) * (1 + 0.001 * np.random.default_rng(8).normal(size=(200, D)))
    _, (distinct, repeats, *_) = run(rows, 50)
    assert distinct <= 20 and repeats == 200 - distinct


def test_profile_states_each_detectors_calibrated_rate() -> None:
    qs = PROFILE.queries
    assert qs.target_rate == 0.0025
    for test in (qs.prada_w, qs.energy, qs.coverage):
        assert test.threshold is not None and test.simulated_clients == 200
        assert test.per_client_rate <= qs.target_rate
    assert set(PROFILE.summary()["per_client_false_alarm_rate"]) == {"ood", "prada", "distribution", "coverage"}


def test_fresh_natural_clients_stay_quiet() -> None:
    alarmed = [seed for seed in range(40) if kinds(natural(int(100 * 1.08**seed), 100 + seed))]
    assert len(alarmed) <= 1, alarmed


def test_correlation_breaking_burst_is_caught_by_the_query_distribution() -> None:
    assert KIND_DISTRIBUTION in kinds(corr_break(120, 3))


@pytest.mark.parametrize("n", [3, 4, 5, 6, 11, 100, 512])
def test_shapiro_w_is_scipys(n: int) -> None:
    rng = np.random.default_rng(n)
    for x in (rng.normal(size=n), rng.exponential(size=n)):
        assert shapiro_w(x) == pytest.approx(float(shapiro(x).statistic), abs=1e-6)


def test_queries_params_round_trip_in_the_profile() -> None:
    assert PROFILE.query_params == QueryParams()


def test_decayed_counters_on_arrays_equal_the_step_by_step_recurrence() -> None:
    rng = np.random.default_rng(0)
    times = np.sort(rng.uniform(0, 86_400, 3000))
    amounts = rng.integers(0, 5, 3000).astype(np.float64)
    expected, value, since = [], 3.0, -5.0
    for t, a in zip(times.tolist(), amounts.tolist(), strict=True):
        value = value * math.exp(-(t - since) / 60.0) + a
        since = t
        expected.append(value)
    assert np.allclose(decayed_sums(times, amounts, 3.0, -5.0, 60.0), expected, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(("entries", "need"), [(1, 0), (1, 1), (15, 15), (16, 16), (17, 17), (200, 37), (256, 256)])
def test_chunked_suffix_minima_are_those_of_every_entry(entries: int, need: int) -> None:
    # The repeat filter reads each row's least distance to G's newest entries from minima over
    # chunks of entries (issue 9): the same numbers as the minimum over those entries.
    rng = np.random.default_rng(entries)
    d = rng.exponential(size=(entries, 40))
    start = rng.integers(0, max(need, 1), size=300)
    cols = rng.integers(0, 40, size=300)
    expected = [d[s:, c].min() for s, c in zip(start.tolist(), cols.tolist(), strict=True)]
    assert SuffixMinima(d, need).at(start, cols).tolist() == expected


def test_transposed_distances_are_the_distances() -> None:
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(30, 7)), rng.normal(size=(50, 7))
    a_sq, b_sq = (a * a).sum(axis=1), (b * b).sum(axis=1)
    written_out = a_sq[:, None] - 2.0 * (a @ b.T) + b_sq[None, :]
    assert np.array_equal(sq_distances(a, a_sq, b, b_sq), written_out)
    assert np.allclose(sq_distances_t(a, a_sq, b, b_sq), written_out.T, rtol=1e-12, atol=1e-12)


def test_shapiro_w_scores_a_constant_sample_zero_relative_to_its_size() -> None:
    rng = np.random.default_rng(0)
    assert shapiro_w(np.full(100, 5.0)) == 0.0
    # Spread below 1e-9 of the values' size: a fixed-step sample seen through rounding.
    assert shapiro_w(1e6 + 1e-4 * rng.normal(size=100)) == 0.0
    # The same spread around small values is a real sample.
    assert shapiro_w(1e-4 * rng.normal(size=100)) > 0.9
