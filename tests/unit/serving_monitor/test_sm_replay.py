"""`mlwarden check traffic`: the service's detectors replayed over a traffic log (issue 9)."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import orjson
import pytest

from mlwarden.cli import main
from services.serving_monitor.detectors import Detectors, owner_of
from services.serving_monitor.ood import FloatArray
from services.serving_monitor.replay import (
    TrafficInputError,
    batch_bounds,
    fit_profile,
    invalid_rows,
    read_reference,
    read_traffic,
    replay,
)
from services.serving_monitor.replay import (
    _records as records_of_line,
)
from services.serving_monitor.settings import ServingSettings
from services.serving_monitor.synthetic_traffic import MODEL, generate, reference_csv

TRAFFIC = generate(3, benign_clients=6)
NAMES = TRAFFIC.reference.features


def _write(path: Path, lines: list[bytes]) -> Path:
    path.write_bytes(b"".join(lines))
    return path


@pytest.fixture
def ref_csv(tmp_path: Path) -> Path:
    path = tmp_path / "ref.csv"
    path.write_bytes(reference_csv(TRAFFIC.reference))
    return path


def _records(clients: set[str]) -> list[bytes]:
    return [line for line in TRAFFIC.jsonl() if orjson.loads(line)["client"] in clients]


def test_generator_is_seeded_and_labelled() -> None:
    again = generate(3, benign_clients=6)
    assert again.clients == TRAFFIC.clients
    assert np.array_equal(again.x, TRAFFIC.x)
    assert set(TRAFFIC.clients) == set(TRAFFIC.labels)
    assert {"uniform", "gaussian", "boundary_walk", "sybil", "corr_break", "benign"} == set(TRAFFIC.labels.values())
    assert len({c for c, kind in TRAFFIC.labels.items() if kind == "sybil"}) == 6
    assert {owner_of(c) for c, kind in TRAFFIC.labels.items() if kind == "sybil"} == {"mallory"}
    assert np.all(np.diff(TRAFFIC.ts) >= 0)


def test_reference_csv_round_trips_without_its_label() -> None:
    names, x = read_reference(reference_csv(TRAFFIC.reference), "label")
    assert names == NAMES
    assert np.allclose(x, TRAFFIC.reference.train)


def test_uniform_probe_is_alarmed_and_exit_code_is_1(
    ref_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = _write(tmp_path / "t.jsonl", _records({"probe-u0"}))
    assert (
        main(["check", "traffic", str(log), "--reference", str(ref_csv), "--label", "label", "--format", "json"]) == 1
    )
    report = orjson.loads(capsys.readouterr().out)
    assert report["decision"] == "fail"
    assert report["profile"]["model"] == MODEL
    # Each detector states its calibrated per-client false-alarm rate (issue 9).
    rates = report["profile"]["per_client_false_alarm_rate"]
    assert set(rates) == {"ood", "prada", "distribution", "coverage"}
    assert all(0 <= r <= report["profile"]["target_per_client_rate"] for r in rates.values())
    kinds = {a["kind"] for a in report["clients"]["probe-u0"]["alerts"]}
    assert "serving.ood" in kinds
    assert report["clients"]["probe-u0"]["queries"] == TRAFFIC.clients.count("probe-u0")


def test_quiet_client_exits_0(ref_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one = orjson.loads(_records({"shop-00"})[0])
    lines = [orjson.dumps(one | {"ts": one["ts"] + i}) + b"\n" for i in range(5)]
    log = _write(tmp_path / "t.jsonl", lines)
    assert (
        main(["check", "traffic", str(log), "--reference", str(ref_csv), "--label", "label", "--format", "json"]) == 0
    )
    report = orjson.loads(capsys.readouterr().out)
    assert report["decision"] == "pass"
    assert report["clients"] == {"shop-00": {"queries": 5, "alerts": []}}
    assert main(["check", "traffic", str(log), "--reference", str(ref_csv), "--label", "label"]) == 0
    assert "calibrated per-client false-alarm rate: ood" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("line", "message"),
    [
        (b'{"client":"a","ts":1,"model":"churn","features":{"nope":1}}\n', "feature 'nope' is not in the reference"),
        (b'{"client":"a","ts":1,"model":"churn","features":{"mean_radius":"3"}}\n', "'mean_radius' is not a number"),
        (b'{"client":"a","ts":1,"model":"churn","features":{"mean_radius":true}}\n', "'mean_radius' is not a number"),
        (b'{"client":"a","ts":"x","model":"churn","features":{}}\n', "'ts' must be a finite number"),
        (b"[1]\n", "not a JSON object"),
        (b"{oops\n", "not JSON"),
        (b"\n", "no prediction records"),
    ],
)
def test_input_errors_are_one_line_and_exit_2(
    ref_csv: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], line: bytes, message: str
) -> None:
    log = _write(tmp_path / "t.jsonl", [line])
    assert main(["check", "traffic", str(log), "--reference", str(ref_csv), "--label", "label"]) == 2
    stderr = capsys.readouterr().err
    assert message in stderr
    assert len(stderr.strip().splitlines()) == 1


def test_reference_problems_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    log = _write(tmp_path / "t.jsonl", _records({"shop-00"}))
    ref = tmp_path / "ref.csv"
    ref.write_bytes(b"a,b\n1,x\n")
    assert main(["check", "traffic", str(log), "--reference", str(ref)]) == 2
    assert "column 'b' is not numeric" in capsys.readouterr().err
    ref.write_bytes(b"")
    assert main(["check", "traffic", str(log), "--reference", str(ref)]) == 2
    assert "empty file" in capsys.readouterr().err


def test_audit_export_rows_replay_like_plain_records() -> None:
    """`audit export --format jsonl` rows: `type`, `time` and `body` (the envelope text as
    received); rows of other event types are skipped."""
    plain = [orjson.loads(line) for line in _records({"probe-g0", "shop-01"})[:50]]
    records = [{"client": r["client"], "features": r["features"], "prediction": 1, "time": r["ts"]} for r in plain]
    envelope = {"specversion": "1.0", "id": "e1", "source": "model-server", "type": "mlw.prediction.logged"}
    envelope |= {"time": "2026-01-01T00:00:00Z", "data": {"model": MODEL, "records": records}}
    export = [
        orjson.dumps({"leaf_index": 0, "type": "mlw.verdict.dataset", "time": 0.0, "body": "{}"}),
        orjson.dumps(
            {"leaf_index": 1, "type": "mlw.prediction.logged", "time": 5.0, "body": orjson.dumps(envelope).decode()}
        ),
    ]
    from_export = read_traffic(export, NAMES)
    from_plain = read_traffic((orjson.dumps(r) for r in plain), NAMES)
    assert from_export.clients == from_plain.clients
    assert np.array_equal(from_export.ts, from_plain.ts)
    assert np.allclose(from_export.x, from_plain.x, equal_nan=True)


def test_replay_is_in_time_order_whatever_the_file_order() -> None:
    lines = _records({"probe-u1", "shop-02", "shop-03"})
    profile = fit_profile(*read_reference(reference_csv(TRAFFIC.reference), "label"), MODEL)
    in_order = replay(read_traffic(lines, NAMES), profile).to_json()
    shuffled = [lines[i] for i in np.random.default_rng(0).permutation(len(lines))]
    assert replay(read_traffic(shuffled, NAMES), profile).to_json() == in_order


def test_missing_feature_is_an_invalid_record_not_an_error() -> None:
    log = read_traffic([b'{"client":"a","ts":1,"model":"churn","features":{"mean_radius":null}}'], NAMES)
    assert np.isnan(log.x).all()


def test_bulk_parse_reads_each_record_as_a_per_record_parse_does() -> None:
    # `read_traffic` collects every value in one flat list and checks their types in bulk (issue
    # 9): the rows must be what reading each record's features by name gives.
    lines = list(TRAFFIC.jsonl())[:300]
    shuffled = orjson.loads(lines[1])
    shuffled["features"] = dict(reversed(list(shuffled["features"].items())))
    partial = orjson.loads(lines[2])
    partial["features"] = {NAMES[3]: None, NAMES[0]: 7}
    lines[1], lines[2] = orjson.dumps(shuffled), orjson.dumps(partial)
    log = read_traffic(lines, NAMES)
    records = [orjson.loads(line) for line in lines]
    expected = np.array([[r["features"].get(n, np.nan) for n in NAMES] for r in records], dtype=np.float64)
    assert np.array_equal(log.x, expected, equal_nan=True)
    for chunk in (1, 7, 299, 300):  # converted a chunk of records at a time: the same rows
        assert np.array_equal(read_traffic(lines, NAMES, chunk=chunk).x, expected, equal_nan=True)
    assert log.clients == [r["client"] for r in records]
    assert np.array_equal(log.ts, [r["ts"] for r in records])


def _read_record_by_record(lines: list[bytes], names: list[str]) -> tuple[list[str], list[float], FloatArray]:
    """The straightforward parse `read_traffic` must agree with: each record checked on its own,
    in the order client, ts, model, features, values."""
    clients, ts, rows = [], [], []
    for line_no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            raise TrafficInputError(f"not JSON ({exc})", source="traffic", line=line_no) from exc
        for client, t, model, feats in records_of_line(obj, line_no, "traffic"):

            def fail(reason: str, line: int = line_no) -> NoReturn:
                raise TrafficInputError(reason, source="traffic", line=line)

            if not isinstance(client, str) or not client:
                fail("'client' must be a non-empty string")
            if type(t) not in (int, float) or not math.isfinite(t):
                fail("'ts' must be a finite number of seconds")
            if not isinstance(model, str) or not model:
                fail("'model' must be a non-empty string")
            if not isinstance(feats, dict):
                fail("'features' must be an object")
            if not feats.keys() <= set(names):
                fail(f"feature {sorted(set(feats) - set(names))[0]!r} is not in the reference")
            row = [feats.get(n, math.nan) for n in names]
            for name, value in zip(names, row, strict=True):
                if type(value) not in (int, float, type(None)):
                    fail(f"feature {name!r} is not a number")
            clients.append(client)
            ts.append(float(t))
            rows.append([math.nan if v is None else v for v in row])
    if not rows:
        raise TrafficInputError("no prediction records", source="traffic")
    return clients, ts, np.array(rows, dtype=np.float64)


def _outcome(read: Callable[[], tuple[list[str], list[float], FloatArray]]) -> object:
    try:
        clients, ts, x = read()
    except TrafficInputError as exc:
        return (exc.line, exc.reason)
    # NaN is not equal to itself: compare missing values as None.
    return (clients, ts, [[None if math.isnan(v) else v for v in row] for row in x.tolist()])


def _features(record: dict[str, Any]) -> dict[str, Any]:
    """A record's features to corrupt (a throwaway dict once they are no object)."""
    feats = record["features"]
    return feats if isinstance(feats, dict) else {}


def test_bulk_checks_report_what_checking_each_record_reports() -> None:
    # `read_traffic` checks every field in bulk at the end (issue 9): on logs with one to three
    # bad fields anywhere, it must name the same first bad line and reason as checking each
    # record on its own does, and read the same rows when nothing is bad.
    rng = np.random.default_rng(0)
    base = [orjson.loads(line) for line in list(TRAFFIC.jsonl())[:6]]
    corruptions: list[Callable[[dict[str, Any]], None]] = [
        lambda r: r.update(client=""),
        lambda r: r.update(client=7),
        lambda r: r.update(ts=True),
        lambda r: r.update(ts="5"),
        lambda r: r.update(ts=None),
        lambda r: r.update(model=None),
        lambda r: r.update(features=[1.0]),
        lambda r: _features(r).update(nope=1.0),
        lambda r: _features(r).update({NAMES[4]: "1"}),
        lambda r: _features(r).update({NAMES[0]: False}),
        lambda r: _features(r).pop(NAMES[1], None),
        lambda r: _features(r).update({NAMES[2]: None}),
    ]
    for _ in range(1000):
        records = [dict(r, features=dict(r["features"])) for r in base]
        for _ in range(int(rng.integers(1, 4))):
            corruptions[int(rng.integers(len(corruptions)))](records[int(rng.integers(len(records)))])
        lines = [orjson.dumps(r) for r in records]
        if rng.random() < 0.2:
            lines.insert(int(rng.integers(len(lines))), b"  \n")
        if rng.random() < 0.1:
            lines.insert(int(rng.integers(len(lines))), b"{not json")

        # Values are converted a chunk of records at a time: bad values in any chunk.
        chunk = int(rng.choice([1, 2, 4, 512]))

        def bulk(lines: list[bytes] = lines, chunk: int = chunk) -> tuple[list[str], list[float], FloatArray]:
            log = read_traffic(lines, NAMES, chunk=chunk)
            return log.clients, log.ts.tolist(), log.x

        expected = _outcome(lambda lines=lines: _read_record_by_record(lines, NAMES))
        assert _outcome(bulk) == expected


def test_batches_follow_log_time_and_the_batch_limit() -> None:
    ts = np.array([0.1, 0.5, 1.2, 1.3, 1.4, 7.0])
    assert batch_bounds(ts, 1.0) == [(0, 2), (2, 5), (5, 6)]
    assert batch_bounds(ts, 1.0, max_batch=2) == [(0, 2), (2, 4), (4, 5), (5, 6)]


def test_traffic_input_error_names_source_and_line() -> None:
    with pytest.raises(TrafficInputError) as info:
        read_traffic([b"{}", b'{"client":""}'], NAMES, source="x.jsonl")
    assert info.value.line == 1
    assert str(info.value).startswith("x.jsonl line 1:")


def test_replay_scoring_the_whole_log_once_alerts_as_the_service_does_batch_by_batch() -> None:
    # The replay standardises and scores every row once (throughput, issue 9); the service does it
    # per batch in `Detectors.observe`. Both must raise the same alerts at the same times.
    log = read_traffic(list(TRAFFIC.jsonl()), NAMES)
    profile = fit_profile(*read_reference(reference_csv(TRAFFIC.reference), "label"), MODEL)
    fast = replay(log, profile)
    service = Detectors.from_settings(ServingSettings())
    order = np.argsort(log.ts, kind="stable")
    ts, x, clients = log.ts[order], log.x[order], [log.clients[i] for i in order]
    alerts = []
    for a, b in batch_bounds(ts, 1.0):
        alerts += service.observe(MODEL, clients[a:b], invalid_rows(x[a:b]), x[a:b], profile, float(ts[b - 1]))
    expected = sorted({(a.client, a.kind, a.message) for a in alerts})
    assert expected  # the log holds attacks
    # (The report lists an owner's alert under each of its keys: a set keeps it once.)
    assert sorted({(a.client, a.kind, a.message) for r in fast.clients.values() for a in r.alerts}) == expected
