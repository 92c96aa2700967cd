"""Out-of-distribution and adversarial-input scoring against a reference fitted offline.

A `ReferenceProfile` is fitted once, from a model's training data, by `fit_reference`:

1. each feature is standardised robustly (median and MAD, so outliers in the training data do
   not stretch the scale);
2. the covariance of the standardised features is estimated with Ledoit-Wolf shrinkage
   (Ledoit & Wolf, 2004), which stays well conditioned with few rows or correlated features;
3. the squared Mahalanobis distance of a record to the reference centre is its OOD score;
4. the flag threshold is the ``1 - false_flag_rate`` quantile of the scores of a held-out part of
   the training data that the covariance never saw, so the stated false-flag rate is measured
   rather than assumed from a chi-square law the data need not follow.

The profile is a plain JSON document (`to_dict` / `from_dict`) kept under `profile.<model>` in the
`mlw-state` bucket, versioned by whoever fits it. The monitor only reads it: a detector that
refits on the traffic it judges can be walked away from its reference by that traffic (STYLE.md).

`OodMonitor` keeps, per (model, client), two exponentially decayed counters (records and flagged
records), as `abuse.AbuseMonitor` does, and raises `serving.ood` when the client's flagged share
is above a floor and significantly above the calibrated false-flag rate (one-sided binomial test).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, assert_never

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, model_validator
from scipy.stats import binomtest
from sklearn.covariance import LedoitWolf
from threadpoolctl import threadpool_limits

from services.serving_monitor.abuse import AlertSpec
from services.serving_monitor.clients import NEAR, ClientTable, decayed_sums, monotone
from services.serving_monitor.errors import ConfigError
from services.serving_monitor.queries import (
    SIM_QUERIES,
    Calibrated,
    Calibration,
    QueryParams,
    Reference,
    Statistic,
    calibrate,
    mean_pairwise,
)
from services.serving_monitor.query_space import Copula, fit_copula, fit_projection
from shared.events import Name, PredictionBatch, Severity

KIND_OOD = "serving.ood"
# Format 2 (issue 9): the extraction detectors' query space and per-client calibration.
PROFILE_FORMAT = 2
# MAD of a normal law is 0.6745 sigma: this factor makes the MAD a consistent sigma estimate.
_MAD_TO_SIGMA = 1.4826
# A constant training feature must not divide by zero; any movement of it is then far out.
_MIN_SCALE = 1e-9
DEFAULT_MAX_CLIENTS = 100_000

FloatArray = npt.NDArray[np.float64]


class TestCalibration(BaseModel):
    """One per-client test's threshold, calibrated on benign clients simulated from the reference."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    threshold: float | None = Field(description="alarm threshold; None: too few simulated clients were tested, off")
    per_client_rate: float = Field(ge=0, le=1, description="share of simulated benign clients it alarms")
    simulated_clients: int = Field(ge=0, description="benign clients simulated from the reference")
    tested_clients: int = Field(ge=0, description="of which this test ran on at least once")

    @classmethod
    def of(cls, c: Calibration) -> TestCalibration:
        """From the domain calibration (an infinite threshold means off)."""
        threshold = c.threshold if math.isfinite(c.threshold) else None
        return cls(
            threshold=threshold, per_client_rate=c.per_client_rate, simulated_clients=c.clients, tested_clients=c.tested
        )


class QuerySpace(BaseModel):
    """The extraction detectors' view of queries (`query_space`, `queries`), fitted offline."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    knots: list[list[float]] = Field(description="per feature: reference values where its CDF is known")
    levels: list[list[float]] = Field(description="per feature: mid-rank CDF at those values")
    projection_mean: list[float] = Field(description="mean of the copula scores")
    projection: list[list[float]] = Field(description="d x k whitened principal axes of the copula scores")
    sample: list[list[float]] = Field(description="projected reference rows the energy distance compares with")
    sample_self: float = Field(ge=0, description="mean pairwise distance within the sample")
    params: dict[str, float] = Field(description="the per-client geometry the calibration ran with")
    target_rate: float = Field(gt=0, lt=1, description="per-client false-alarm rate each test was calibrated to")
    prada_w: TestCalibration = Field(description="PRADA: alarm when Shapiro-Wilk W is below")
    energy: TestCalibration = Field(description="distribution distance: alarm when above")
    coverage: TestCalibration = Field(description="coverage growth: alarm when the z-score is above")
    coverage_mean: list[float] = Field(description="benign visited cells at each coverage checkpoint")
    coverage_std: list[float] = Field(description="their spread")
    ood_per_client_rate: float = Field(ge=0, le=1, description="simulated clients the default OOD test alarms")


class ReferenceProfile(BaseModel):
    """The offline reference of one model's inputs: robust scaling, precision, calibrated threshold."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    format: int = Field(default=PROFILE_FORMAT, description="profile layout version")
    model: Name = Field(description="model name")
    version: str = Field(default="1", max_length=64, description="who/when fitted it, free text")
    features: list[Name] = Field(min_length=1, description="feature names, in the order below")
    center: list[float] = Field(description="per-feature median of the training data")
    scale: list[float] = Field(description="per-feature robust sigma (1.4826 MAD), floored")
    location: list[float] = Field(description="Ledoit-Wolf mean of the standardised features")
    precision: list[list[float]] = Field(description="inverse Ledoit-Wolf covariance (d x d)")
    threshold: float = Field(gt=0, description="squared Mahalanobis distance above which a record is OOD")
    false_flag_rate: float = Field(gt=0, lt=1, description="target share of clean records flagged")
    calibrated_rate: float = Field(ge=0, le=1, description="share of held-out clean records flagged")
    n_fit: int = Field(ge=2, description="training rows used for the covariance")
    n_calibration: int = Field(ge=1, description="held-out rows used for the threshold")
    queries: QuerySpace = Field(description="the extraction detectors' space and calibrated thresholds")

    _center: FloatArray = PrivateAttr()
    _scale: FloatArray = PrivateAttr()
    _location: FloatArray = PrivateAttr()
    _precision: FloatArray = PrivateAttr()
    _copula: Copula = PrivateAttr()
    _reference: Reference = PrivateAttr()
    _params: QueryParams = PrivateAttr()

    @model_validator(mode="before")
    @classmethod
    def _current_format(cls, data: Any) -> Any:
        # A format-1 profile has no query space and no calibrated thresholds, and those need the
        # training data: say how to get a current one rather than list missing fields.
        if isinstance(data, Mapping) and data.get("format", PROFILE_FORMAT) != PROFILE_FORMAT:
            raise ValueError(
                f"profile format {data.get('format')!r} is not {PROFILE_FORMAT}: refit it with "
                "`mlwarden serving fit-profile REF.csv --model NAME`"
            )
        return data

    @model_validator(mode="after")
    def _shapes_agree(self) -> ReferenceProfile:
        d = len(self.features)
        if len(set(self.features)) != d:
            raise ValueError("duplicate feature names")
        for name in ("center", "scale", "location"):
            if len(getattr(self, name)) != d:
                raise ValueError(f"{name} must have {d} entries")
        if len(self.precision) != d or any(len(row) != d for row in self.precision):
            raise ValueError(f"precision must be {d} x {d}")
        arrays = {
            "center": np.asarray(self.center, dtype=np.float64),
            "scale": np.asarray(self.scale, dtype=np.float64),
            "location": np.asarray(self.location, dtype=np.float64),
            "precision": np.asarray(self.precision, dtype=np.float64),
        }
        if not all(np.isfinite(a).all() for a in arrays.values()) or not math.isfinite(self.threshold):
            raise ValueError("profile values must be finite")
        if (arrays["scale"] <= 0).any():
            raise ValueError("scale must be > 0")
        self._center, self._scale = arrays["center"], arrays["scale"]
        self._location, self._precision = arrays["location"], arrays["precision"]
        qs = self.queries
        if (
            len(qs.knots) != d
            or len(qs.levels) != d
            or any(len(k) != len(f) or not k for k, f in zip(qs.knots, qs.levels, strict=True))
        ):
            raise ValueError("query-space knots must be given for every feature")
        self._copula = Copula(
            [np.asarray(k, dtype=np.float64) for k in qs.knots], [np.asarray(f, dtype=np.float64) for f in qs.levels]
        )
        projection = np.asarray(qs.projection, dtype=np.float64)
        sample = np.asarray(qs.sample, dtype=np.float64)
        if (
            projection.ndim != 2
            or projection.shape[0] != d
            or sample.ndim != 2
            or sample.shape[1] != projection.shape[1]
        ):
            raise ValueError("query-space projection and sample shapes disagree")
        self._reference = Reference(
            np.asarray(qs.projection_mean, dtype=np.float64), projection, sample, qs.sample_self
        )
        self._params = QueryParams(**{k: type(getattr(QueryParams(), k))(v) for k, v in qs.params.items()})
        return self

    @property
    def reference(self) -> Reference:
        """The projection and sample the distribution tests compare clients with."""
        return self._reference

    @property
    def query_params(self) -> QueryParams:
        """The per-client geometry the thresholds were calibrated with."""
        return self._params

    def query_space(self, x: FloatArray) -> FloatArray:
        """Copula normal scores of raw rows, the space the extraction detectors measure in."""
        return self._copula.transform(x)

    def test_threshold(self, test: Statistic) -> float | None:
        """The calibrated threshold of a per-client test (None: off)."""
        match test:
            case Statistic.PRADA_W:
                return self.queries.prada_w.threshold
            case Statistic.ENERGY:
                return self.queries.energy.threshold
            case Statistic.COVERAGE:
                return self.queries.coverage.threshold
            case Statistic.CHAIN:
                return self._params.chain_reach
            case _:
                assert_never(test)

    def per_client_rates(self) -> dict[str, float]:
        """Each detector's calibrated per-client false-alarm rate (simulated benign clients)."""
        qs = self.queries
        return {
            "ood": qs.ood_per_client_rate,
            "prada": qs.prada_w.per_client_rate,
            "distribution": qs.energy.per_client_rate,
            "coverage": qs.coverage.per_client_rate,
        }

    def summary(self) -> dict[str, Any]:
        """What `check traffic` and `serving fit-profile` print about the profile."""
        qs = self.queries
        return {
            "model": self.model,
            "version": self.version,
            "features": len(self.features),
            "n_fit": self.n_fit,
            "n_calibration": self.n_calibration,
            "ood_threshold": self.threshold,
            "false_flag_rate": self.false_flag_rate,
            "calibrated_rate": self.calibrated_rate,
            "simulated_clients": qs.prada_w.simulated_clients,
            "target_per_client_rate": qs.target_rate,
            "per_client_false_alarm_rate": self.per_client_rates(),
            "thresholds": {
                "prada_w": qs.prada_w.threshold,
                "energy": qs.energy.threshold,
                "coverage_z": qs.coverage.threshold,
            },
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form, for the `mlw-state` bucket."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ReferenceProfile:
        """Load and check a stored profile."""
        return cls.model_validate(data)

    def matrix(self, rows: Sequence[Mapping[str, float | None]]) -> FloatArray:
        """Raw feature matrix in profile order; missing or None values become NaN."""
        out = np.full((len(rows), len(self.features)), np.nan)
        for i, row in enumerate(rows):
            for j, name in enumerate(self.features):
                value = row.get(name)
                if value is not None:
                    out[i, j] = value
        return out

    def standardise(self, x: FloatArray) -> FloatArray:
        """Robustly standardised features (NaN stays NaN)."""
        z: FloatArray = (x - self._center) / self._scale
        return z

    def scores(self, rows: Sequence[Mapping[str, float | None]]) -> FloatArray:
        """Squared Mahalanobis distance per record; +inf when a feature is missing or not finite."""
        return self.scores_standardised(self.standardise(self.matrix(rows)))

    def scores_standardised(self, z: FloatArray) -> FloatArray:
        """`scores` of rows already standardised with `standardise`."""
        return mahalanobis_sq(z, self._location, self._precision)

    def is_ood(self, rows: Sequence[Mapping[str, float | None]]) -> npt.NDArray[np.bool_]:
        """Which records are out of distribution."""
        flagged: npt.NDArray[np.bool_] = self.scores(rows) > self.threshold
        return flagged


def mahalanobis_sq(z: FloatArray, location: FloatArray, precision: FloatArray) -> FloatArray:
    """Row-wise squared Mahalanobis distance; rows with a non-finite value score +inf."""
    bad: npt.NDArray[np.bool_] = np.asarray(~np.isfinite(z).all(axis=1), dtype=bool)
    centred = z - location
    if bad.any():  # (a where() over every row cost as much as the product, issue 9)
        centred[bad] = 0.0
    with np.errstate(over="ignore", invalid="ignore"):
        # A matrix product then a row sum: einsum's three-operand loop was a tenth of the
        # replay's time (issue 9).
        d2 = ((centred @ precision) * centred).sum(axis=1)
    d2 = np.where(bad | ~np.isfinite(d2), np.inf, np.maximum(d2, 0.0))
    return np.asarray(d2, dtype=np.float64)


def fit_reference(
    x: npt.ArrayLike,
    features: Sequence[str],
    model: str,
    *,
    false_flag_rate: float = 0.01,
    calibration_fraction: float = 0.3,
    seed: int = 0,
    version: str = "1",
    client_false_alarm_rate: float = 0.0025,
) -> ReferenceProfile:
    """Fit a reference profile OFFLINE from training rows `x` (n x d, columns named `features`)."""
    data = np.asarray(x, dtype=np.float64)
    if data.ndim != 2 or data.shape[1] != len(features):
        raise ConfigError("x columns", float(data.shape[-1]) if data.ndim else 0.0, f"== {len(features)} features")
    if not np.isfinite(data).all():
        raise ConfigError("x", float("nan"), "finite everywhere")
    if not 0 < false_flag_rate < 0.5:
        raise ConfigError("false_flag_rate", false_flag_rate, "in (0, 0.5)")
    if not 0 < calibration_fraction < 1:
        raise ConfigError("calibration_fraction", calibration_fraction, "in (0, 1)")
    n = data.shape[0]
    n_cal = round(n * calibration_fraction)
    # The threshold quantile needs enough held-out rows to land beyond the last one.
    min_cal = math.ceil(1.0 / false_flag_rate)
    if n_cal < min_cal or n - n_cal < 2 * data.shape[1]:
        raise ConfigError("rows", n, f"enough for {min_cal} calibration rows and {2 * data.shape[1]} fit rows")
    order = np.random.default_rng(seed).permutation(n)
    fit, cal = data[order[n_cal:]], data[order[:n_cal]]

    center = np.median(fit, axis=0)
    scale = np.maximum(_MAD_TO_SIGMA * np.median(np.abs(fit - center), axis=0), _MIN_SCALE)
    lw = LedoitWolf().fit((fit - center) / scale)
    location = np.asarray(lw.location_, dtype=np.float64)
    precision = np.asarray(lw.precision_, dtype=np.float64)

    cal_scores = mahalanobis_sq((cal - center) / scale, location, precision)
    # "higher" takes an observed score, never one interpolated below it: the held-out flag rate
    # is then at most the target.
    threshold = float(np.quantile(cal_scores, 1.0 - false_flag_rate, method="higher"))
    threshold = max(threshold, _MIN_SCALE)
    return ReferenceProfile(
        model=model,
        version=version,
        features=list(features),
        center=center.tolist(),
        scale=scale.tolist(),
        location=location.tolist(),
        precision=precision.tolist(),
        threshold=threshold,
        false_flag_rate=false_flag_rate,
        calibrated_rate=float(np.mean(cal_scores > threshold)),
        n_fit=int(fit.shape[0]),
        n_calibration=int(n_cal),
        queries=fit_query_space(data, cal_scores > threshold, client_rate=client_false_alarm_rate, seed=seed),
    )


#: Rows of the reference the energy distance compares clients with.
ENERGY_SAMPLE = 256
#: Benign clients simulated from the reference at fit time.
SIMULATED_CLIENTS = 200


def fit_query_space(
    data: FloatArray,
    held_out_flags: npt.NDArray[np.bool_],
    *,
    client_rate: float,
    seed: int = 0,
    params: QueryParams | None = None,
) -> QuerySpace:
    """The extraction detectors' space and thresholds (issue 9): the copula and whitened principal
    axes of all training rows; half of them (at most `ENERGY_SAMPLE`) as the energy distance's
    reference sample, the other half the pool `SIMULATED_CLIENTS` benign clients are drawn from
    (`queries.calibrate`), so every threshold is set on clients of this very reference."""
    prm = params or QueryParams()
    copula = fit_copula(data)
    q = copula.transform(data)
    mean, projection = fit_projection(q)
    order = np.random.default_rng(seed + 1).permutation(len(q))
    half = len(q) // 2
    sample = (q[order[:half]][:ENERGY_SAMPLE] - mean) @ projection
    ref = Reference(mean, projection, sample, mean_pairwise(sample, sample))
    # Small matrices: one BLAS thread is several times faster than a pool contending for cores.
    with threadpool_limits(limits=1, user_api="blas"):
        calibrated: Calibrated = calibrate(
            q[order[half:]], ref, prm, clients=SIMULATED_CLIENTS, rate=client_rate, seed=seed
        )
    tests = calibrated.tests
    return QuerySpace(
        knots=[v.tolist() for v in copula.values],
        levels=[f.tolist() for f in copula.levels],
        projection_mean=mean.tolist(),
        projection=projection.tolist(),
        sample=sample.tolist(),
        sample_self=ref.sample_self,
        params={k: float(v) for k, v in asdict(prm).items()},
        target_rate=client_rate,
        prada_w=TestCalibration.of(tests[Statistic.PRADA_W]),
        energy=TestCalibration.of(tests[Statistic.ENERGY]),
        coverage=TestCalibration.of(tests[Statistic.COVERAGE]),
        coverage_mean=calibrated.coverage_mean.tolist(),
        coverage_std=calibrated.coverage_std.tolist(),
        ood_per_client_rate=_ood_client_rate(held_out_flags, seed),
    )


def _ood_client_rate(flags: npt.NDArray[np.bool_], seed: int) -> float:
    """Share of simulated benign clients (volumes as in `queries.SIM_QUERIES`, records drawn from
    the held-out rows' OOD flags) that `OodMonitor`'s default test alarms in one window."""
    rng = np.random.default_rng(seed + 2)
    monitor = OodMonitor()
    sizes = np.geomspace(*SIM_QUERIES, SIMULATED_CLIENTS).round().astype(np.int64)
    rate = max(float(flags.mean()), 1e-12)
    alarmed = 0
    for size in sizes.tolist():
        k = int(flags[rng.integers(0, len(flags), size=size)].sum())
        alarmed += monitor.would_alarm(size, k, rate)
    return alarmed / len(sizes)


@dataclass(slots=True)
class _ClientState:
    records: float = 0.0
    flagged: float = 0.0
    updated: float = 0.0
    last_alert: float = -math.inf


class OodMonitor:
    """Decayed per-(model, client) OOD rate, tested against the profile's calibrated rate."""

    def __init__(
        self,
        *,
        rate_floor: float = 0.1,
        alpha: float = 1e-4,
        min_records: int = 30,
        cooldown_s: float = 60.0,
        window_s: float = 300.0,
        max_clients: int = DEFAULT_MAX_CLIENTS,
    ) -> None:
        if not 0 < rate_floor <= 1:
            raise ConfigError("rate_floor", rate_floor, "in (0, 1]")
        if not 0 < alpha < 1:
            raise ConfigError("alpha", alpha, "in (0, 1)")
        if min_records < 1:
            raise ConfigError("min_records", min_records, ">= 1")
        if not (math.isfinite(cooldown_s) and cooldown_s >= 0):
            raise ConfigError("cooldown_s", cooldown_s, "finite and >= 0")
        if not (math.isfinite(window_s) and window_s > 0):
            raise ConfigError("window_s", window_s, "finite and > 0")
        self.rate_floor = rate_floor
        self.alpha = alpha
        self.min_records = min_records
        self.cooldown_s = cooldown_s
        self.window_s = window_s
        self._clients: ClientTable[tuple[str, str], _ClientState] = ClientTable(max_clients)

    def __len__(self) -> int:
        """(model, client) pairs currently tracked."""
        return len(self._clients)

    def forget_model(self, model: str) -> None:
        """Drop every client's state for `model` (its profile changed, so did the meaning of 'OOD')."""
        self._clients.forget(lambda key: key[0] == model)

    def _state(self, key: tuple[str, str], now: float) -> _ClientState:
        return self._clients.touch(key, lambda: _ClientState(updated=now))

    def observe(
        self, client: str, profile: ReferenceProfile, records: int, flagged: int, now: float
    ) -> list[AlertSpec]:
        """Fold in `records` records of which `flagged` were OOD; return a new alert if any."""
        return [a for _, a in self.observe_runs(client, profile, [(now, records, flagged)])]

    def observe_runs(
        self, client: str, profile: ReferenceProfile, runs: Sequence[tuple[float, int, int]]
    ) -> list[tuple[float, AlertSpec]]:
        """`observe` for each (now, records, flagged) of one client in turn, the alerts with their
        clocks: the replay hands a client's whole log over at once (one state lookup, one loop)."""
        if not runs:
            return []
        state = self._state((profile.model, client), runs[0][0])
        out: list[tuple[float, AlertSpec]] = []
        exp, window, min_records, cooldown, floor = (
            math.exp,
            self.window_s,
            self.min_records,
            self.cooldown_s,
            self.rate_floor,
        )
        for now, records, flagged in runs:
            if records < 0 or not 0 <= flagged <= records:
                raise ConfigError("flagged", flagged, f"in [0, records={records}]")
            if not math.isfinite(now):
                raise ConfigError("now", now, "finite")
            decay = exp(-max(0.0, now - state.updated) / window)
            state.records = state.records * decay + records
            state.flagged = state.flagged * decay + flagged
            state.updated = max(state.updated, now)
            if state.records < min_records or now - state.last_alert < cooldown:
                continue
            if state.flagged / state.records < floor:
                continue
            alert = self._test(state, client, profile, now)
            if alert is not None:
                out.append((now, alert))
        return out

    def observe_arrays(
        self,
        client: str,
        profile: ReferenceProfile,
        now: FloatArray,
        records: npt.NDArray[np.int64],
        flagged: npt.NDArray[np.int64],
    ) -> list[tuple[float, AlertSpec]]:
        """`observe_runs` on arrays (the replay): the counters on whole arrays, and the step-by-step
        loop only for a client that comes near the rate floor (`clients.decayed_sums`)."""
        if len(now) == 0:
            return []
        state = self._state((profile.model, client), float(now[0]))
        if monotone(now, state.updated) and (flagged >= 0).all() and (flagged <= records).all():
            r = decayed_sums(now, records.astype(np.float64), state.records, state.updated, self.window_s)
            f = decayed_sums(now, flagged.astype(np.float64), state.flagged, state.updated, self.window_s)
            near = (r >= self.min_records * NEAR) & (f >= self.rate_floor * r * NEAR)
            if not near.any():
                state.records, state.flagged, state.updated = float(r[-1]), float(f[-1]), float(now[-1])
                return []
        runs = list(zip(now.tolist(), records.tolist(), flagged.tolist(), strict=True))
        return self.observe_runs(client, profile, runs)

    def _test(self, state: _ClientState, client: str, profile: ReferenceProfile, now: float) -> AlertSpec | None:
        rate = state.flagged / state.records
        # The decayed counts read as "records in the last window"; the test runs on them rounded.
        n, k = round(state.records), min(round(state.flagged), round(state.records))
        null_rate = max(profile.false_flag_rate, profile.calibrated_rate)
        p_value = self._p_value(n, k, null_rate)
        if p_value >= self.alpha:
            return None
        state.last_alert = now
        severity = Severity.FAIL if rate >= min(1.0, 2 * self.rate_floor) else Severity.WARN
        return AlertSpec(
            kind=KIND_OOD,
            severity=severity,
            message=(
                f"client {client!r} sent {rate:.0%} out-of-distribution inputs to {profile.model!r}, "
                f"expected about {null_rate:.1%} (p={p_value:.1e})"
            ),
            client=client,
            model=profile.model,
            evidence={
                "ood_rate": round(rate, 4),
                "expected_rate": null_rate,
                "p_value": p_value,
                "records_in_window": round(state.records, 3),
                "profile_version": profile.version,
                "window_s": self.window_s,
            },
        )

    @staticmethod
    def _p_value(n: int, k: int, null_rate: float) -> float:
        return float(binomtest(k, n, null_rate, alternative="greater").pvalue)

    def would_alarm(self, records: int, flagged: int, null_rate: float) -> bool:
        """Whether `flagged` OOD records of `records` in one window would raise the alert."""
        if records < self.min_records or flagged / records < self.rate_floor:
            return False
        return self._p_value(records, flagged, null_rate) < self.alpha

    def observe_batch(self, batch: PredictionBatch, profile: ReferenceProfile, now: float) -> list[AlertSpec]:
        """Score a logged batch against `profile` and observe each client."""
        flags = profile.is_ood([r.features for r in batch.records])
        counts: dict[str, list[int]] = {}
        for record, flag in zip(batch.records, flags, strict=True):
            tally = counts.setdefault(record.client, [0, 0])
            tally[0] += 1
            tally[1] += bool(flag)
        alerts: list[AlertSpec] = []
        for client, (records, flagged) in counts.items():
            alerts.extend(self.observe(client, profile, records, flagged, now))
        return alerts
