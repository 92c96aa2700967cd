"""Offline replay of logged predictions through the service's own detectors (issue 9).

`mlwarden check traffic TRAFFIC.jsonl --reference REF.csv` is this module: read the log
(`read_traffic`), fit the profile from the reference (`read_reference`, `ood.fit_reference` with
its defaults), then `replay`: records in time order, cut into batches as a model server logs them
(one batch per `batch_s` of log time, at most `MAX_BATCH` records), each handed to
`detectors.Detectors.observe` built from the default `ServingSettings` with the batch's last
timestamp as the clock. The service and the replay therefore share code, defaults and clock
semantics; only the clock source differs (log time here, monotonic time in the service).

Input lines are either a record ``{"client", "ts", "model", "features": {name: number}}`` or an
`mlw.prediction.logged` event: as `audit export --format jsonl` writes it (`type` and `body`, the
envelope text; lines of other types are skipped, an export holds every event) or as a bare
envelope. A record's time is its own `time`, else the export row's `time`.
"""

from __future__ import annotations

import io
import itertools
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt
import orjson
from threadpoolctl import threadpool_limits

from services.serving_monitor.abuse import AlertSpec
from services.serving_monitor.detectors import OWNER_SUFFIX, BoolArray, ClientRuns, Detectors, owner_of
from services.serving_monitor.errors import ServingMonitorError
from services.serving_monitor.ood import FloatArray, ReferenceProfile, fit_reference
from services.serving_monitor.settings import ServingSettings

PREDICTION_LOGGED = "mlw.prediction.logged"
#: A logged batch holds at most this many records (`shared.events.PredictionBatch`).
MAX_BATCH = 10_000
#: `read_traffic` converts feature values to floats this many records at a time.
CHUNK_RECORDS = 512


class TrafficInputError(ServingMonitorError, ValueError):
    """A traffic log or reference the replay cannot read; `line` is 1-based, 0 for the file."""

    def __init__(self, reason: str, *, source: str, line: int = 0) -> None:
        super().__init__(f"{source} line {line}: {reason}" if line else f"{source}: {reason}")
        self.reason = reason
        self.source = source
        self.line = line


@dataclass(frozen=True)
class TrafficLog:
    """Logged predictions in file order: who, when, which model, raw features in reference order."""

    clients: list[str]
    ts: FloatArray
    models: list[str]
    x: FloatArray


def read_reference(data: bytes, label: str | None, *, source: str = "reference") -> tuple[list[str], FloatArray]:
    """Feature names and rows of a CSV reference; `label` (a column) is dropped."""
    import pyarrow as pa
    import pyarrow.csv as pacsv

    if not data.strip():
        raise TrafficInputError("empty file", source=source)
    try:
        table = pacsv.read_csv(io.BytesIO(data))
    except pa.ArrowInvalid as exc:
        raise TrafficInputError(f"not a CSV table ({' '.join(str(exc).split())})", source=source) from exc
    names = list(table.column_names)
    if label is not None:
        if label not in names:
            raise TrafficInputError(f"no label column {label!r}", source=source)
        names.remove(label)
    if not names or table.num_rows == 0:
        raise TrafficInputError("no feature columns or no rows", source=source)
    columns = []
    for name in names:
        column = table.column(name)
        if not (pa.types.is_integer(column.type) or pa.types.is_floating(column.type)):
            raise TrafficInputError(f"column {name!r} is not numeric ({column.type})", source=source)
        columns.append(column.to_numpy(zero_copy_only=False).astype(np.float64))
    x = np.column_stack(columns)
    if not np.isfinite(x).all():
        raise TrafficInputError("missing or non-finite values", source=source)
    return names, x


def fit_profile(names: Sequence[str], x: FloatArray, model: str, *, source: str = "reference") -> ReferenceProfile:
    """The profile the service would follow for `model`, fitted with `fit_reference`'s defaults."""
    try:
        return fit_reference(x, names, model)
    except ServingMonitorError as exc:
        raise TrafficInputError(str(exc), source=source) from exc


def _records(obj: Any, line: int, source: str) -> Iterable[tuple[Any, Any, Any, Any]]:
    """(client, ts, model, features) of one input line's object."""
    if not isinstance(obj, dict):
        raise TrafficInputError("not a JSON object", source=source, line=line)
    kind = obj.get("type")
    if kind is None:
        return ((obj.get("client"), obj.get("ts"), obj.get("model"), obj.get("features")),)
    if kind != PREDICTION_LOGGED:
        return ()  # an audit export holds every event; only prediction logs are traffic
    envelope: Any = obj
    if "body" in obj:  # an `audit export` row: the envelope text as received
        body = obj["body"]
        try:
            envelope = orjson.loads(body) if isinstance(body, str) else None
        except orjson.JSONDecodeError:
            envelope = None
        if not isinstance(envelope, dict):
            raise TrafficInputError("export body is not an event", source=source, line=line)
    data = envelope.get("data")
    if not isinstance(data, dict) or not isinstance(data.get("records"), list):
        raise TrafficInputError(f"{PREDICTION_LOGGED} without records", source=source, line=line)
    model, fallback = data.get("model"), obj.get("time")
    out = []
    for record in data["records"]:
        if not isinstance(record, dict):
            raise TrafficInputError("a record is not a JSON object", source=source, line=line)
        ts = record.get("time")
        out.append((record.get("client"), fallback if ts is None else ts, model, record.get("features")))
    return out


def read_traffic(
    lines: Iterable[bytes], features: Sequence[str], *, source: str = "traffic", chunk: int = CHUNK_RECORDS
) -> TrafficLog:
    """Parse a traffic log against the reference's `features`; one clear error for bad input.
    Feature values become floats `chunk` records at a time."""
    names = list(features)
    width = len(names)
    # Per record only what parsing needs; the checks of every field run in bulk at the end
    # (`_Fields.check`) and still name the first bad line (issue 9: per-record checks and
    # lists were most of the parse time beside orjson's own).
    clients: list[Any] = []
    ts: list[Any] = []
    models: list[Any] = []
    values: list[Any] = []  # every record's feature values, one flat list
    line_of: list[int] = []
    fields = _Fields(clients, ts, models, values, line_of, names, source)
    # Values are converted a chunk at a time: holding every record's Python floats until the end
    # cost a third of the parse (issue 9: a working set far beyond the caches).
    flush_at = max(1, chunk) * width
    try:
        for line_no, line in enumerate(lines, 1):
            if len(values) >= flush_at:
                fields.flush()
            try:
                obj = orjson.loads(line)
            except orjson.JSONDecodeError as exc:
                if not line.strip():
                    continue
                raise TrafficInputError(f"not JSON ({exc})", source=source, line=line_no) from exc
            if type(obj) is dict and obj.get("type") is None:
                # A plain record, the common case: its fields straight into the lists.
                records: Iterable[tuple[Any, Any, Any, Any]] = ()
                clients.append(obj.get("client"))
                ts.append(obj.get("ts"))
                models.append(obj.get("model"))
                line_of.append(line_no)
                feats = obj.get("features")
                if type(feats) is dict and list(feats) == names:
                    # Every feature in the reference's order: the values are the row (a
                    # per-name lookup was most of the parse time, issue 9).
                    values.extend(feats.values())
                else:
                    values.extend(_row(feats, names, line_no, source))
            else:
                records = _records(obj, line_no, source)
            for client, t, model, feats in records:  # the records of an event
                clients.append(client)
                ts.append(t)
                models.append(model)
                line_of.append(line_no)
                values.extend(_row(feats, names, line_no, source))
    except TrafficInputError:
        # A bad field of an earlier record is the first error in the file.
        fields.check()
        raise
    fields.flush()
    fields.check()
    if not clients:
        raise TrafficInputError("no prediction records", source=source)
    x = np.concatenate(fields.chunks).reshape(len(clients), width)
    return TrafficLog(clients, fields.times, models, x)


def _row(feats: Any, names: Sequence[str], line: int, source: str) -> list[Any]:
    """A record's values in `names`' order, a missing one NaN."""
    if type(feats) is dict and list(feats) == names:
        return list(feats.values())
    if not isinstance(feats, dict):
        raise TrafficInputError("'features' must be an object", source=source, line=line)
    if not feats.keys() <= set(names):
        extra = sorted(set(feats) - set(names))[0]
        raise TrafficInputError(f"feature {extra!r} is not in the reference", source=source, line=line)
    return [feats.get(n, math.nan) for n in names]


_NUMERIC = frozenset({int, float})
_NUMERIC_OR_NONE = frozenset({int, float, type(None)})


@dataclass
class _Fields:
    """The parsed records' fields, checked in bulk: `check` raises the error the first bad record
    would have raised checked on its own, fields in the order client, ts, model, features."""

    clients: list[Any]
    ts: list[Any]
    models: list[Any]
    values: list[Any]
    line_of: list[int]
    names: list[str]
    source: str
    times: FloatArray = field(default_factory=lambda: np.zeros(0))
    #: `values` already converted, a float array per chunk, and how many records they hold.
    chunks: list[FloatArray] = field(default_factory=list)
    converted: int = 0

    def flush(self) -> None:
        """Convert the pending `values` (whole records, all checked numbers or nulls) to a chunk;
        raise as `check` does when one is not a number."""
        values = self.values
        if not set(map(type, values)) <= _NUMERIC_OR_NONE:
            self.check()
        # Numbers and nulls (NaN) only, checked: fromiter converts them in one pass, np.array in two.
        self.chunks.append(np.fromiter(values, dtype=np.float64, count=len(values)))
        self.converted += len(values) // len(self.names)
        values.clear()

    def check(self) -> None:
        """Raise for the first bad record (by position, then field); set `times`."""
        n = len(self.clients)
        bad: list[tuple[int, int, str]] = []  # (record, field order, reason)
        if not set(map(type, self.clients)) <= {str} or not all(self.clients):
            i = next(i for i, c in enumerate(self.clients) if type(c) is not str or not c)
            bad.append((i, 0, "'client' must be a non-empty string"))
        times = None
        if set(map(type, self.ts)) <= _NUMERIC:
            try:
                times = np.array(self.ts, dtype=np.float64)
            except OverflowError:  # an integer beyond any float
                times = None
        finite = times is not None and bool(np.isfinite(times).all())
        if not finite:
            i = next(i for i, t in enumerate(self.ts) if not _finite_number(t))
            bad.append((i, 1, "'ts' must be a finite number of seconds"))
        if not set(map(type, self.models)) <= {str} or not all(self.models):
            i = next(i for i, m in enumerate(self.models) if type(m) is not str or not m)
            bad.append((i, 2, "'model' must be a non-empty string"))
        values = self.values
        if len(values) % len(self.names):  # only whole rows: a record whose features failed has none
            values = values[: len(values) - len(values) % len(self.names)]
        if not set(map(type, values)) <= _NUMERIC_OR_NONE:
            at = next(i for i, v in enumerate(values) if type(v) not in _NUMERIC_OR_NONE)
            record, column = divmod(at, len(self.names))
            bad.append((self.converted + record, 3, f"feature {self.names[column]!r} is not a number"))
        if bad:
            record, _, reason = min(bad)
            raise TrafficInputError(reason, source=self.source, line=self.line_of[record])
        self.times = times if times is not None and n else np.zeros(0)


def _finite_number(t: Any) -> bool:
    """A JSON number (not a bool) of finite value."""
    if type(t) not in _NUMERIC:
        return False
    try:
        return math.isfinite(t)
    except OverflowError:
        return False


@dataclass
class ClientReport:
    """What the replay found about one client."""

    queries: int = 0
    alerts: list[AlertSpec] = field(default_factory=list)


@dataclass
class ReplayReport:
    """The outcome of one replay."""

    profile: ReferenceProfile
    clients: dict[str, ClientReport]
    records: int

    @property
    def alarmed(self) -> list[str]:
        """Clients with at least one alert."""
        return [c for c, r in self.clients.items() if r.alerts]

    def to_json(self) -> dict[str, Any]:
        """The `--format json` document."""
        return {
            "decision": "fail" if self.alarmed else "pass",
            "records": self.records,
            "profile": self.profile.summary(),
            "alarmed": len(self.alarmed),
            "clients": {
                client: {
                    "queries": r.queries,
                    "alerts": [
                        {"kind": a.kind, "severity": a.severity.value, "message": a.message, "evidence": a.evidence}
                        for a in r.alerts
                    ],
                }
                for client, r in self.clients.items()
            },
        }


def invalid_rows(x: FloatArray) -> BoolArray:
    """Records with a missing or non-finite value: what the abuse detector counts as invalid
    when no feature schema is registered (the replay has none)."""
    bad: BoolArray = np.asarray(~np.isfinite(x).all(axis=1), dtype=bool)
    return bad


def batch_bounds(ts: FloatArray, batch_s: float, max_batch: int = MAX_BATCH) -> list[tuple[int, int]]:
    """[start, end) of each batch of sorted times: one per `batch_s` window, at most `max_batch`."""
    if len(ts) == 0:
        return []
    window = np.floor(ts / batch_s)
    cuts = [0, *(np.flatnonzero(np.diff(window)) + 1).tolist(), len(ts)]
    bounds: list[tuple[int, int]] = []
    for a, b in itertools.pairwise(cuts):
        bounds += [(s, min(s + max_batch, b)) for s in range(a, b, max_batch)]
    return bounds


def batch_index(ts: FloatArray, batch_s: float, max_batch: int = MAX_BATCH) -> tuple[npt.NDArray[np.int64], FloatArray]:
    """`batch_bounds` as arrays: each record's batch number and its batch's clock (the time of
    the batch's last record)."""
    n = len(ts)
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0)
    window = np.floor(ts / batch_s)
    starts = np.concatenate([[True], window[1:] != window[:-1]])
    first = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    new = starts | ((np.arange(n) - first) % max_batch == 0)
    batch = np.cumsum(new) - 1
    last = np.concatenate([np.flatnonzero(new)[1:] - 1, [n - 1]])
    return batch, ts[last][batch]


def replay(
    log: TrafficLog,
    profile: ReferenceProfile,
    *,
    settings: ServingSettings | None = None,
    detectors: Detectors | None = None,
    batch_s: float = 1.0,
) -> ReplayReport:
    """Run the service's detectors over `log` in time order (ties keep file order).

    The log is cut into the batches the service would see (`batch_bounds`, split by model), and
    each client's batches are handed to `Detectors.observe_client` at once: every detector keeps
    per-client state, so this raises the alerts the service raises batch by batch, with
    per-client work done on whole arrays (issue 9: 100,000 records/s on one core)."""
    # Small matrices: one BLAS thread is faster than a pool contending for cores (and entering
    # the limit costs milliseconds: once per replay).
    with threadpool_limits(limits=1, user_api="blas"):
        return _replay(log, profile, detectors or Detectors.from_settings(settings or ServingSettings()), batch_s)


def _replay(log: TrafficLog, profile: ReferenceProfile, dets: Detectors, batch_s: float) -> ReplayReport:
    """`replay` within one BLAS thread."""
    order = np.argsort(log.ts, kind="stable")
    ts = log.ts[order]
    codes, client_names = _codes(log.clients)
    client_code = codes[order]
    codes, model_names = _codes(log.models)
    model_code = codes[order]
    n = len(order)
    batch, clock = batch_index(ts, batch_s)
    ours_code = model_names.index(profile.model) if profile.model in model_names else -1
    # Invalid inputs, scoring and the query space are row-wise: once for the whole log, in file
    # order (no sorted copy of the features), for the profile's model.
    x = log.x
    invalid = invalid_rows(x)[order].astype(np.int64)
    ours_in_file = codes == ours_code
    flagged = np.zeros(n, dtype=np.int64)
    if ours_in_file.all():  # one model in the log, the common case: no gathers
        flagged[:] = profile.scores_standardised(profile.standardise(x)) > profile.threshold
        q = profile.query_space(x)
    else:
        q = np.full(x.shape, np.nan)
        if ours_in_file.any():
            xo = x[ours_in_file]
            flagged[ours_in_file] = profile.scores_standardised(profile.standardise(xo)) > profile.threshold
            q[ours_in_file] = profile.query_space(xo)
    flagged = flagged[order]
    ours = model_code == ours_code
    report: dict[str, ClientReport] = {name: ClientReport() for name in client_names}
    counts = np.bincount(client_code, minlength=len(client_names))
    for name, count in zip(client_names, counts.tolist(), strict=True):
        report[name].queries = count
    found: dict[str, list[tuple[float, AlertSpec]]] = {}
    # Each client's rows by (batch, model): the service's observe calls, in its order.
    by_client = np.lexsort((model_code, batch, client_code))
    cuts = np.flatnonzero(np.diff(client_code[by_client])) + 1
    owners: dict[str, list[npt.NDArray[np.int64]]] = {}
    for rows in np.split(by_client, cuts):
        name = client_names[int(client_code[rows[0]])]
        for m in np.unique(model_code[rows]).tolist():
            mine = rows[model_code[rows] == m]
            alerts = _observe(
                dets, name, model_names[m], mine, batch, clock, invalid, flagged, q, order, m == ours_code, profile
            )
            found.setdefault(name, []).extend(alerts)
        owner = owner_of(name)
        if owner != name:
            owners.setdefault(owner, []).append(rows[ours[rows]])
    # Sybil: an owner's keys judged together, as `Detectors.observe_scored` does per batch.
    for owner, parts in owners.items():
        rows = np.sort(np.concatenate(parts))
        if len(rows) == 0:
            continue
        alerts = _observe(
            dets,
            owner + OWNER_SUFFIX,
            profile.model,
            rows,
            batch,
            clock,
            invalid,
            flagged,
            q,
            order,
            True,
            profile,
            abuse=False,
        )
        for name in client_names:
            if owner_of(name) == owner and name != owner:
                found.setdefault(name, []).extend(alerts)
    for name, alerts in found.items():
        alerts.sort(key=lambda pair: pair[0])
        report[name].alerts = [a for _, a in alerts]
    return ReplayReport(profile, report, n)


def _observe(
    dets: Detectors,
    client: str,
    model: str,
    rows: npt.NDArray[np.int64],
    batch: npt.NDArray[np.int64],
    clock: FloatArray,
    invalid: npt.NDArray[np.int64],
    flagged: npt.NDArray[np.int64],
    q: FloatArray,
    order: npt.NDArray[np.int64],
    ours: bool,
    profile: ReferenceProfile,
    *,
    abuse: bool = True,
) -> list[tuple[float, AlertSpec]]:
    """One client's rows of one model (positions in time order; `q` is in file order, `order`
    maps the one to the other), as one batch per log batch."""
    starts = np.concatenate([[0], np.flatnonzero(np.diff(batch[rows])) + 1])
    runs = ClientRuns(
        now=clock[rows[starts]],
        records=np.diff(np.append(starts, len(rows))),
        invalid=np.add.reduceat(invalid[rows], starts),
        flagged=np.add.reduceat(flagged[rows], starts),
    )
    if not ours:
        return dets.observe_client(client, model, runs, None, None, None, abuse=abuse)
    return dets.observe_client(client, model, runs, q[order[rows]], clock[rows], profile, abuse=abuse)


def _codes(names: Sequence[str]) -> tuple[npt.NDArray[np.int64], list[str]]:
    """Integer codes of `names`, and the distinct names in order of first appearance."""
    # dict.fromkeys and map run in C: a per-name Python loop was a tenth of the replay (issue 9).
    distinct = list(dict.fromkeys(names))
    index = {name: i for i, name in enumerate(distinct)}
    return np.fromiter(map(index.__getitem__, names), dtype=np.int64, count=len(names)), distinct


def _by_model(models: Sequence[str], a: int, b: int) -> Mapping[str, list[int]]:
    first = models[a]
    if all(m == first for m in models[a:b]):
        return {first: list(range(a, b))}
    groups: dict[str, list[int]] = {}
    for i in range(a, b):
        groups.setdefault(models[i], []).append(i)
    return groups
