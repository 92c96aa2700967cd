"""One client's queries as the extraction detectors see them, in blocks of rows (issue 9).

Pure numpy, shared by the monitor (`extraction.ExtractionMonitor`) and by the calibration run at
fit time (`calibrate`), so the thresholds a profile states are measured with the very code that
applies them. Per client, in the copula space of `query_space`:

- repeats are set aside: a query within `repeat_radius` of one of the client's earlier distinct
  queries (the same row again, or with a natural jitter) is a repeat, as customers repeat rows;
- PRADA (Juuti et al., EuroS&P 2019): each distinct query's distance to the nearest earlier
  distinct one (a ring of the last `max_set`) goes into D (a ring of the last `max_distances`);
  every `test_every` new distances, Shapiro-Wilk W of D is a test value (low W: synthetic);
- distribution distance: the last `window` distinct queries, projected on the reference's
  whitened principal axes, against the reference's own projected sample, by the energy distance
  (Szekely & Rizzo, 2013) scaled by n*m/(n+m), tested every `energy_every` distinct queries;
- coverage growth: the cells (the first `coverage_axes` projected axes, the reference's least
  used directions first, cut at -2, -1, 0, 1, 2 whitened sigmas) that the client's distinct queries have visited,
  against how many benign clients visit after as many distinct queries (the curve is simulated at
  fit time), as a z-score;
- near-duplicate chains: successive queries each at most `chain_step` from the last, reaching
  `chain_reach` from the chain's start after `chain_min` steps: a decision-boundary walk.

A block is processed with matrix operations plus one scalar pass over its rows, and is exact
whatever the blocking (a block of one row gives what a block of 256 gives), so the service's
one-second batches and the replay's whole-log blocks raise the same tests at the same rows.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import numpy.typing as npt
from scipy.special import ndtri

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]
# Distances whose spread is this small relative to their mean are all "the same distance": a grid
# or fixed-step attack. Shapiro-Wilk is undefined on a constant sample, so score it W = 0.
_DEGENERATE_SPREAD = 1e-9
#: Cell edges along each coverage axis, in whitened sigmas: benign queries crowd the middle cells and
#: seldom reach the outer ones, so a client visiting many cells fast is spreading where they do not.
COVERAGE_EDGES = np.array([-2.0, -1.0, 0.0, 1.0, 2.0])


class Statistic(StrEnum):
    """The per-client statistics, each with its direction of alarm."""

    PRADA_W = "prada_w"  # alarm when low
    ENERGY = "energy"  # alarm when high
    COVERAGE = "coverage"  # alarm when high
    CHAIN = "chain"  # alarm when reached (fixed geometry, not calibrated)


@dataclass(frozen=True)
class QueryParams:
    """The geometry of the per-client state; a profile is calibrated with one of these."""

    repeat_radius: float = 1.0
    warmup: int = 16
    min_distances: int = 100
    test_every: int = 50
    max_set: int = 256
    max_distances: int = 512
    window: int = 128
    energy_min: int = 64
    energy_every: int = 64
    coverage_axes: int = 3
    coverage_every: int = 32
    coverage_max: int = 1024
    chain_step: float = 0.5
    chain_min: int = 40
    chain_reach: float = 2.5


@dataclass(frozen=True)
class StatValue:
    """A statistic computed after row `row` of a block."""

    stat: Statistic
    row: int
    value: float
    size: int


@dataclass(frozen=True)
class Reference:
    """What the distribution and coverage tests compare a client with (from the profile)."""

    projection_mean: FloatArray
    projection: FloatArray
    sample: FloatArray
    sample_self: float
    sample_sq: FloatArray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        # The sample's squared norms, once: every distance to the sample needs them.
        object.__setattr__(self, "sample_sq", (self.sample * self.sample).sum(axis=1))

    def project(self, q: FloatArray) -> FloatArray:
        """Whitened principal coordinates of copula rows."""
        out: FloatArray = (q - self.projection_mean) @ self.projection
        return out


def shapiro_w(distances: FloatArray) -> float:
    """Shapiro-Wilk W of the distances; 0 for a degenerate (constant) sample.

    W = (sum a_i x_(i))^2 / sum (x_i - mean)^2 with Royston's coefficients (Royston, "Approximating
    the Shapiro-Wilk W-test for non-normality", Statistics and Computing 2, 1992; algorithm AS R94,
    what `scipy.stats.shapiro` runs), cached per sample size: the test runs on every client every
    `test_every` distinct queries, and scipy's per-call overhead was most of its cost (issue 9)."""
    n = len(distances)
    if n < 3:
        return 0.0
    x = np.sort(distances)
    spread = float(x[-1] - x[0])
    # Degenerate below _DEGENERATE_SPREAD * max(1, mean |x|); mean |x| is at most the largest |x|,
    # so the mean is only computed when that bound cannot decide (issue 9: a pass per test).
    largest = max(abs(float(x[0])), abs(float(x[-1])))
    if spread <= _DEGENERATE_SPREAD * max(1.0, largest) and spread <= _DEGENERATE_SPREAD * max(
        1.0, float(np.abs(distances).mean())
    ):
        return 0.0
    centred = x - x.mean()
    return float(min(1.0, float(_royston(n) @ x) ** 2 / float(centred @ centred)))


@functools.lru_cache(maxsize=64)
def _royston(n: int) -> FloatArray:
    """Shapiro-Wilk coefficients a_1..a_n for a sample of `n` (AS R94, Royston 1992/1995)."""
    if n == 3:
        return np.array([-math.sqrt(0.5), 0.0, math.sqrt(0.5)])
    m = ndtri((np.arange(1, n + 1) - 0.375) / (n + 0.25))
    ssq = float(m @ m)
    u = 1.0 / math.sqrt(n)
    a_n = m[-1] / math.sqrt(ssq) + np.polyval([-2.706056, 4.434685, -2.071190, -0.147981, 0.221157, 0.0], u)
    a = m / math.sqrt(ssq)
    if n > 5:
        a_n1 = m[-2] / math.sqrt(ssq) + np.polyval([-3.582633, 5.682633, -1.752461, -0.293762, 0.042981, 0.0], u)
        phi = (ssq - 2 * m[-1] ** 2 - 2 * m[-2] ** 2) / (1 - 2 * a_n**2 - 2 * a_n1**2)
        a = m / math.sqrt(phi)
        a[-1], a[-2], a[0], a[1] = a_n, a_n1, -a_n, -a_n1
    else:
        phi = (ssq - 2 * m[-1] ** 2) / (1 - 2 * a_n**2)
        a = m / math.sqrt(phi)
        a[-1], a[0] = a_n, -a_n
    out: FloatArray = np.asarray(a, dtype=np.float64)
    return out


def sq_distances(a: FloatArray, a_sq: FloatArray, b: FloatArray, b_sq: FloatArray) -> FloatArray:
    """Squared distances of rows of `a` to rows of `b` (`a_sq`, `b_sq`: their squared norms), as
    a_sq[i] - 2 a_i.b_j + b_sq[j] computed in place on the product: the same numbers as the
    expression written out, without its three temporaries (issue 9: the blocks' cost)."""
    d = _minus_twice_products(a, b)
    d += a_sq[:, None]
    d += b_sq[None, :]
    return d


def sq_distances_t(a: FloatArray, a_sq: FloatArray, b: FloatArray, b_sq: FloatArray) -> FloatArray:
    """`sq_distances(a, ..)` transposed, [j, i] for row i of `a` (the terms added in the same
    order; BLAS may round the product's transpose differently in the last bit), laid out so that
    a minimum over `b`'s rows is an elementwise minimum of contiguous rows, numpy's fast
    direction."""
    d = _minus_twice_products(b, a)
    d += a_sq[None, :]
    d += b_sq[:, None]
    return d


def _minus_twice_products(a: FloatArray, b: FloatArray) -> FloatArray:
    """-2 a_i.b_j. Scaling by -2 is exact, so the small factor is scaled rather than the product
    (one pass fewer); a product of rows with themselves keeps BLAS's symmetric routine."""
    if a is b:
        d = a @ b.T
        d *= -2.0
        return d
    out: FloatArray = (-2.0 * a) @ b.T
    return out


def _mean_distance(d2: FloatArray, axis: int | None = None) -> FloatArray:
    """Mean of sqrt(max(d2, 0)) (in place on `d2`)."""
    np.maximum(d2, 0.0, out=d2)
    np.sqrt(d2, out=d2)
    out: FloatArray = d2.mean(axis=axis)
    return out


def mean_pairwise(a: FloatArray, b: FloatArray) -> float:
    """Mean Euclidean distance over all pairs of rows of `a` and `b`."""
    b_sq = a_sq = (a * a).sum(axis=1)
    if b is not a:
        b_sq = (b * b).sum(axis=1)
    return float(_mean_distance(sq_distances(a, a_sq, b, b_sq)))


def to_sample(x: FloatArray, ref: Reference) -> FloatArray:
    """Each projected row's mean distance to the reference sample (kept per row, so a test sums
    them instead of recomputing the window against the whole sample)."""
    return _mean_distance(sq_distances(x, (x * x).sum(axis=1), ref.sample, ref.sample_sq), axis=1)


def energy_statistic(x: FloatArray, ref: Reference, x_to_sample: FloatArray | None = None) -> float:
    """n*m/(n+m) times the energy distance of `x` (projected rows) to the reference sample: about
    the same law under the null whatever n, so one threshold serves every window size."""
    n, m = len(x), len(ref.sample)
    cross = float((to_sample(x, ref) if x_to_sample is None else x_to_sample).mean())
    e = 2.0 * cross - mean_pairwise(x, x) - ref.sample_self
    return n * m / (n + m) * e


def coverage_cells(p: FloatArray, axes: int) -> IntArray:
    """Cell index of each projected row: quartile bins of its first `axes` coordinates."""
    k = min(axes, p.shape[1])
    bins = np.searchsorted(COVERAGE_EDGES, p[:, :k])
    weights = (len(COVERAGE_EDGES) + 1) ** np.arange(k)
    out: IntArray = np.asarray(bins @ weights, dtype=np.int64)
    return out


def coverage_size(params: QueryParams, dims: int) -> int:
    """Number of coverage cells."""
    return int((len(COVERAGE_EDGES) + 1) ** min(params.coverage_axes, dims))


@dataclass(slots=True)
class ClientQueries:
    """One client's bounded state (see the module docstring)."""

    params: QueryParams
    dims: int
    axes: int
    g: FloatArray = field(init=False)
    g_sq: FloatArray = field(init=False)
    g_count: int = 0
    d: FloatArray = field(init=False)
    d_count: int = 0
    d_tested: int = 0
    p: FloatArray = field(init=False)
    p_cross: FloatArray = field(init=False)
    e_tested: int = 0
    cells: npt.NDArray[np.bool_] = field(init=False)
    visited: int = 0
    queries: int = 0
    repeats: int = 0
    prev: FloatArray | None = None
    chain_start: FloatArray | None = None
    chain_len: int = 0
    chain_reach: float = 0.0

    def __post_init__(self) -> None:
        self.g = np.zeros((self.params.max_set, self.dims), dtype=np.float64)
        self.g_sq = np.zeros(self.params.max_set, dtype=np.float64)
        self.d = np.zeros(self.params.max_distances, dtype=np.float64)
        self.p = np.zeros((self.params.window, self.axes), dtype=np.float64)
        self.p_cross = np.zeros(self.params.window, dtype=np.float64)
        self.cells = np.zeros(coverage_size(self.params, self.axes), dtype=np.bool_)

    @property
    def distinct(self) -> int:
        """Distinct queries so far."""
        return self.g_count

    def distances(self) -> FloatArray:
        """D in arrival order."""
        return _ring(self.d, self.d_count)

    def window(self) -> FloatArray:
        """The last `window` distinct queries, projected, in arrival order."""
        return _ring(self.p, self.g_count)

    def add(self, q: FloatArray, ref: Reference | None) -> list[StatValue]:
        """Fold in finite copula rows `q` (any number); the tests due after each row."""
        out: list[StatValue] = []
        step = self.params.max_set
        for start in range(0, len(q), step):
            out += [
                StatValue(t.stat, t.row + start, t.value, t.size) for t in self._block(q[start : start + step], ref)
            ]
        return out

    def _block(self, q: FloatArray, ref: Reference | None) -> list[StatValue]:
        prm = self.params
        m = len(q)
        if m == 0:
            return []
        tests = self._chain(q)
        self.queries += m
        # (1) squared distances to the ring G, oldest first, as suffix minima: after k admissions
        # in this block the oldest max(0, n_g + k - max_set) entries of G are gone.
        n_g = min(self.g_count, prm.max_set)
        q_sq = (q * q).sum(axis=1)
        if n_g:
            order = _ring_order(self.g_count, prm.max_set)
            # [entry, row], oldest entry first (`sq_distances_t`); only the oldest `need` entries
            # can go during this block.
            need = max(0, n_g + m - prm.max_set)
            suffix = SuffixMinima(sq_distances_t(q, q_sq, self.g[order], self.g_sq[order]), need)
        else:
            suffix = None
        # [j, i]: row j's squared distance to row i, +inf unless j < i (only earlier rows count).
        d2 = sq_distances_t(q, q_sq, q, q_sq)
        d2[_not_earlier(m)] = np.inf
        admit, best = _admissions(suffix, d2, n_g, prm.max_set, prm.repeat_radius**2)
        admitted = np.flatnonzero(admit).tolist()
        self.repeats += m - len(admitted)
        # (2) the distance PRADA records: each distinct query's, once G holds `warmup` queries.
        before = self.g_count + np.cumsum(admit) - admit
        counted = admit & (before >= prm.warmup)
        d_rows = np.flatnonzero(counted).tolist()
        d_new = np.sqrt(np.maximum(best[counted], 0.0)).tolist()
        # (3) the admitted rows enter G and the projected window; D grows; tests where due.
        if admitted:
            rows = q[admitted]
            positions = (self.g_count + np.arange(len(admitted))) % prm.max_set
            self.g[positions] = rows
            self.g_sq[positions] = q_sq[admitted]
            if ref is not None:
                tests += self._distribution_tests(ref.project(rows), admitted, ref)
            self.g_count += len(admitted)
        if d_new:
            tests += self._prada_tests(np.asarray(d_new), d_rows)
        tests.sort(key=lambda t: t.row)
        return tests

    def _prada_tests(self, d_new: FloatArray, rows: Sequence[int]) -> list[StatValue]:
        prm = self.params
        due = _due(self.d_count, len(d_new), self.d_tested, prm.min_distances, prm.test_every)
        # D in arrival order only when a test reads it (most blocks have none).
        history = np.concatenate([self.distances(), d_new]) if len(due) else d_new
        before = min(self.d_count, prm.max_distances)
        tests: list[StatValue] = []
        for j in due:
            self.d_tested = self.d_count + j + 1
            end = before + j + 1
            sample = history[max(0, end - prm.max_distances) : end]
            tests.append(StatValue(Statistic.PRADA_W, rows[j], shapiro_w(sample), len(sample)))
        positions = (self.d_count + np.arange(len(d_new))) % prm.max_distances
        self.d[positions] = d_new
        self.d_count += len(d_new)
        return tests

    def _distribution_tests(self, proj: FloatArray, rows: Sequence[int], ref: Reference) -> list[StatValue]:
        prm = self.params
        cross = to_sample(proj, ref)
        due = _due(self.g_count, len(proj), self.e_tested, prm.energy_min, prm.energy_every)
        history, cross_history = proj, cross
        if len(due):  # the window in arrival order only when a test reads it
            history = np.concatenate([self.window(), proj])
            cross_history = np.concatenate([_ring(self.p_cross, self.g_count), cross])
        before = min(self.g_count, prm.window)
        tests: list[StatValue] = []
        for j in due:
            self.e_tested = self.g_count + j + 1
            end = before + j + 1
            start = max(0, end - prm.window)
            value = energy_statistic(history[start:end], ref, cross_history[start:end])
            tests.append(StatValue(Statistic.ENERGY, rows[j], value, end - start))
        # Cells visited after each row: a cell counts at its first visit ever.
        cells = coverage_cells(proj, prm.coverage_axes)
        first = np.zeros(len(cells), dtype=np.bool_)
        _, where = np.unique(cells, return_index=True)
        first[where] = True
        new = first & ~self.cells[cells]
        visited = self.visited + np.cumsum(new)
        self.cells[cells] = True
        self.visited = int(visited[-1])
        start = self.g_count + 1
        for count in range(
            -(-start // prm.coverage_every) * prm.coverage_every, self.g_count + len(proj) + 1, prm.coverage_every
        ):
            if count > prm.coverage_max:
                break
            j = count - start
            tests.append(StatValue(Statistic.COVERAGE, rows[j], float(visited[j]), count))
        positions = (self.g_count + np.arange(len(proj))) % prm.window
        self.p[positions] = proj
        self.p_cross[positions] = cross
        return tests

    def _chain(self, q: FloatArray) -> list[StatValue]:
        """Near-duplicate chains over every finite query (repeats included), vectorised: a chain
        breaks at each step longer than `chain_step`; its reach is the running largest distance
        from its first row."""
        prm = self.params
        m = len(q)
        prev = self.prev if self.prev is not None else q[0]
        steps = np.empty_like(q)
        np.subtract(q[0], prev, out=steps[0])
        np.subtract(q[1:], q[:-1], out=steps[1:])
        steps *= steps
        small = steps.sum(axis=1) <= prm.chain_step * prm.chain_step
        if self.prev is None:
            small[0] = False
        idx = np.arange(m)
        # The start of each row's chain: the last row at or before it whose step was large.
        starts = np.maximum.accumulate(np.where(small, -1, idx))
        continuing = starts < 0
        start_rows = np.where(
            continuing[:, None], self.chain_start if self.chain_start is not None else q[0], q[np.maximum(starts, 0)]
        )
        start_rows -= q
        start_rows *= start_rows
        reach = np.sqrt(start_rows.sum(axis=1))
        length = np.where(continuing, self.chain_len + idx + 1, idx - starts)
        seg = np.where(continuing, 0, starts + 1)
        reach = np.where(continuing, np.maximum(reach, self.chain_reach), reach)
        # Running maximum within each chain: offset chains so a later chain never sees an earlier max.
        offset = seg * (float(reach.max()) + 1.0)
        running = np.maximum.accumulate(reach + offset) - offset
        tests = [
            StatValue(Statistic.CHAIN, int(i), float(running[i]), int(length[i]))
            for i in np.flatnonzero((length >= prm.chain_min) & (running >= prm.chain_reach))
        ]
        self.prev = q[-1].copy()
        last = m - 1
        self.chain_start = self.chain_start if continuing[last] else q[starts[last]].copy()
        self.chain_len = int(length[last])
        self.chain_reach = float(running[last])
        return tests


class SuffixMinima:
    """min(d[g:, i]) for column i of `d` (entries x columns) and any entry g below `need` (or 0),
    from minima over chunks of `CHUNK` entries and one over the entries from `need` on: one pass
    over `d`, where suffix minima of every entry took a scan numpy runs slowly along that axis
    (issue 9). Minima are exact, so the values are the ones a scan gives."""

    CHUNK = 16

    def __init__(self, d: FloatArray, need: int) -> None:
        n, m = d.shape
        need = min(need, n)
        c = self.CHUNK
        full = need // c
        chunks = np.empty((full + (need > full * c) + 1, m))
        chunks[:full] = d[: full * c].reshape(full, c, m).min(axis=1)
        if need > full * c:
            chunks[full] = d[full * c : need].min(axis=0)
        chunks[-1] = d[need:].min(axis=0) if need < n else np.inf
        # chunks[k] becomes the least over chunks k, k+1, ...: a few rows, one call each.
        for k in range(len(chunks) - 2, -1, -1):
            np.minimum(chunks[k], chunks[k + 1], out=chunks[k])
        self.d = d
        self.need = need
        self.chunks = chunks

    def at(self, start: IntArray, cols: IntArray) -> FloatArray:
        """min(d[start[j]:, cols[j]]) for each j (each start below `need`, or 0)."""
        if self.need == 0:  # no entry can go: the minimum over all of them
            every: FloatArray = self.chunks[0, cols]
            return every
        c = self.CHUNK
        chunk = start // c
        # The rest of the start's own chunk, entry by entry, then the chunks after it.
        entries = chunk[:, None] * c + np.arange(c)[None, :]
        head = self.d[np.minimum(entries, self.need - 1), cols[:, None]]
        head[(entries < start[:, None]) | (entries >= self.need)] = np.inf
        out: FloatArray = np.minimum(head.min(axis=1), self.chunks[chunk + 1, cols])
        return out


def _admissions(
    suffix: SuffixMinima | None, d2: FloatArray, n_g: int, max_set: int, r2: float
) -> tuple[npt.NDArray[np.bool_], FloatArray]:
    """Which rows of a block are distinct, and each row's squared distance to the nearest earlier
    distinct query still in G (+inf when none).

    `suffix` holds each row's squared distances to G's entries, oldest first (None: G is empty);
    `d2[j, i]` row j's to row i, +inf unless j < i. Row i is distinct when it is at least `r2`
    from G less the entries already pushed out by the block's earlier distinct rows, and from
    those rows themselves. Row i depends on rows j < i only, so the sequential answer is the one
    fixed point of this map, and iterating the map from any guess reaches it; it does in one or
    two rounds on real traffic, on whole arrays."""
    m = d2.shape[1]
    rows = np.arange(m)
    admit = np.ones(m, dtype=np.bool_)
    d_b = d2.min(axis=0)
    # While no entry of G can go (it is not full yet), each row's distance to G is fixed.
    fixed: FloatArray | None = None
    if suffix is None:
        fixed = np.full(m, np.inf)
    elif suffix.need == 0:
        fixed = suffix.at(np.zeros(m, dtype=np.int64), rows)
    k: IntArray = rows  # admitted rows before each row: all, in the first round
    for _ in range(m + 1):
        if fixed is None:
            assert suffix is not None
            gone = np.maximum(0, n_g + k - max_set)
            in_g = gone < n_g
            d_g = np.full(m, np.inf)
            d_g[in_g] = suffix.at(gone[in_g], rows[in_g])
        else:
            d_g = fixed
        best = np.minimum(d_g, d_b)
        again = best >= r2
        if np.array_equal(again, admit):
            return admit, best
        admit = again
        k = np.cumsum(admit) - admit
        # Distances from the admitted rows only: a gather of whole contiguous rows.
        d_b = d2[admit].min(axis=0, initial=np.inf)
    raise AssertionError("unreachable: the map is lower-triangular")  # pragma: no cover


@functools.lru_cache(maxsize=8)
def _not_earlier(m: int) -> npt.NDArray[np.bool_]:
    """[j, i] is j >= i (read only, shared)."""
    rows = np.arange(m)
    mask = rows[:, None] >= rows[None, :]
    mask.flags.writeable = False
    return mask


def _due(count: int, new: int, tested: int, minimum: int, every: int) -> range:
    """Offsets j (0-based, among `new` values added to `count`) where a test is due: the count
    has reached `minimum` and grown by `every` since the last test (at `tested`)."""
    first = max(minimum, tested + every)
    return range(first - count - 1 if first > count else 0, new, every) if first <= count + new else range(0)


def _ring_order(count: int, size: int) -> IntArray:
    """Positions of a ring's live entries, oldest first."""
    n = min(count, size)
    out: IntArray = (count - n + np.arange(n)) % size
    return out


def _ring(buffer: FloatArray, count: int) -> FloatArray:
    out: FloatArray = buffer[_ring_order(count, len(buffer))]
    return out


@dataclass(frozen=True)
class Calibration:
    """A per-client test's threshold, measured on benign clients simulated from the reference."""

    threshold: float
    per_client_rate: float
    clients: int
    tested: int


@dataclass(frozen=True)
class Calibrated:
    """Every calibrated test, and the benign coverage curve (visited cells per checkpoint)."""

    tests: dict[Statistic, Calibration]
    coverage_mean: FloatArray
    coverage_std: FloatArray


#: Simulated clients query between these many rows (log-spaced), as real volumes spread.
SIM_QUERIES = (100, 3000)
#: Smoothing of the simulated clients' rows, in normal-score sigmas per feature.
SIM_BANDWIDTH = 0.25
#: A checkpoint of the coverage curve needs this many simulated clients reaching it.
_MIN_CURVE_CLIENTS = 20
#: The spread of the coverage curve is floored: a handful of cells is never a z-score of 10.
COVERAGE_STD_FLOOR = 1.0


def coverage_z(visited: float, size: int, every: int, mean: FloatArray, std: FloatArray) -> float | None:
    """How far above the benign curve `visited` cells after `size` distinct queries are (None
    beyond the curve)."""
    at = size // every - 1
    if not 0 <= at < len(mean):
        return None
    return (visited - float(mean[at])) / max(float(std[at]), COVERAGE_STD_FLOOR)


def calibrate(
    pool: FloatArray,
    ref: Reference,
    params: QueryParams,
    *,
    clients: int = 200,
    rate: float = 0.0025,
    seed: int = 0,
) -> Calibrated:
    """Run `clients` benign clients drawn (with replacement, so they repeat rows) from `pool`
    (copula rows the reference sample never saw) through `ClientQueries`, and set each test's
    threshold so that at most `rate` of them would have been alarmed over their whole run."""
    rng = np.random.default_rng(seed)
    sizes = np.geomspace(*SIM_QUERIES, clients).round().astype(np.int64)
    axes = ref.projection.shape[1]
    low_w: list[float] = []
    high_e: list[float] = []
    visits: list[dict[int, float]] = []
    for size in sizes.tolist():
        state = ClientQueries(params, pool.shape[1], axes)
        rows = pool[rng.integers(0, len(pool), size=size)]
        # A smoothed bootstrap: real clients draw from a population, not from the few hundred rows
        # of a reference half, and would otherwise look more varied than every simulated one.
        tests = state.add(rows + SIM_BANDWIDTH * rng.normal(size=rows.shape), ref)
        w = [t.value for t in tests if t.stat is Statistic.PRADA_W]
        e = [t.value for t in tests if t.stat is Statistic.ENERGY]
        low_w.append(min(w) if w else math.inf)
        high_e.append(max(e) if e else -math.inf)
        visits.append({t.size: t.value for t in tests if t.stat is Statistic.COVERAGE})
    checkpoints = range(params.coverage_every, params.coverage_max + 1, params.coverage_every)
    mean: list[float] = []
    std: list[float] = []
    for size in checkpoints:
        seen = [v[size] for v in visits if size in v]
        if len(seen) < _MIN_CURVE_CLIENTS:
            break
        mean.append(float(np.mean(seen)))
        std.append(float(np.std(seen)))
    curve_mean, curve_std = np.asarray(mean), np.asarray(std)
    high_c: list[float] = []
    for v in visits:
        zs = [coverage_z(c, s, params.coverage_every, curve_mean, curve_std) for s, c in v.items()]
        high_c.append(max((z for z in zs if z is not None), default=-math.inf))
    return Calibrated(
        {
            Statistic.PRADA_W: _threshold([-w for w in low_w], rate, negate=True),
            Statistic.ENERGY: _threshold(high_e, rate),
            Statistic.COVERAGE: _threshold(high_c, rate),
        },
        curve_mean,
        curve_std,
    )


def _threshold(highs: list[float], rate: float, *, negate: bool = False) -> Calibration:
    """The smallest threshold that at most `rate` of the clients' per-client extremes exceed
    (for a test that alarms when low, its values negated). Fewer than `_MIN_CURVE_CLIENTS` tested
    clients: the test cannot be calibrated and is off (threshold +inf)."""
    values = np.sort(np.asarray(highs, dtype=np.float64))[::-1]
    tested = int(np.isfinite(values).sum())
    n = len(values)
    if tested < _MIN_CURVE_CLIENTS:
        return Calibration(math.inf if not negate else -math.inf, 0.0, n, tested)
    allowed = math.floor(rate * n)
    threshold = float(values[allowed])
    alarmed = int((values > threshold).sum())
    return Calibration(-threshold if negate else threshold, alarmed / n, n, tested)
