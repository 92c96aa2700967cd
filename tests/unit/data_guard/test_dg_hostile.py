"""Every input gets a verdict, in bounded time and memory (issue 12): the measured hostile files.

Each case goes through the domain (`load_table` + `analyze`) and through `mlwarden check
dataset` in-process. Bounds are shown by what ran, never by a clock: a refused file is refused
before the decoder is called, a skipped detector says so in the verdict.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mlwarden.cli import main
from services.data_guard import budget
from services.data_guard.detect import DetectorSettings, analyze
from services.data_guard.loader import DatasetError, Table, load_table
from shared.events import Decision, Severity

LIMITS = {"max_bytes": 10_000_000, "max_rows": 10_000_000}


def _write_csv(path: Path, X: np.ndarray, y: np.ndarray) -> Path:
    lines = [",".join([f"f{i}" for i in range(X.shape[1])] + ["label"])]
    lines += [",".join(repr(float(v)) for v in row) + f",{t}" for row, t in zip(X, y, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _table(X: np.ndarray, y: np.ndarray | None) -> Table:
    return Table(X=X, y=y, feature_names=[f"f{i}" for i in range(X.shape[1])], label_name="label")


def _cli(path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, Any]:
    capsys.readouterr()
    code = main(["check", "dataset", str(path), "--label", "label", "--format", "json"])
    return code, orjson.loads(capsys.readouterr().out)


def _failed_with(report: Any, check: str) -> str:
    failing = [f for f in report["findings"] if f["severity"] == "fail"]
    assert [f["check"] for f in failing] == [check]
    return str(failing[0]["message"])


# --- degenerate data ----------------------------------------------------------------------


def test_all_nan_features_fail_with_a_plain_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    X, y = np.full((200, 5), np.nan), np.arange(200) % 2
    report = analyze(_table(X, y))
    assert report.decision == Decision.FAIL
    code, summary = _cli(_write_csv(tmp_path / "nan.csv", X, y), capsys)
    assert code == 1
    assert summary["decision"] == "fail"
    assert "no finite values" in _failed_with(summary, "degenerate.no_finite_values")


def test_all_inf_features_fail_as_no_finite_values(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    X, y = np.full((200, 5), np.inf), np.arange(200) % 2
    X[::2] = -np.inf
    assert analyze(_table(X, y)).decision == Decision.FAIL
    code, summary = _cli(_write_csv(tmp_path / "inf.csv", X, y), capsys)
    assert code == 1
    assert "no finite values" in _failed_with(summary, "degenerate.no_finite_values")


def test_a_column_without_finite_values_is_judged_not_a_crash() -> None:
    # The label model's trees raised "window shape cannot be larger than input array shape".
    rng = np.random.default_rng(0)
    X = np.c_[rng.normal(size=(300, 4)), np.full(300, np.nan), np.full(300, np.inf)]
    report = analyze(_table(X, (X[:, 0] > 0).astype(int)))
    assert report.decision in (Decision.PASS, Decision.WARN, Decision.FAIL)
    assert any(f.check == "label_noise.confident_learning" for f in report.findings)


@pytest.mark.parametrize("rows", [0, 1, 9])
def test_too_few_rows_fail_with_the_minimum(rows: int, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    X, y = np.random.default_rng(rows).normal(size=(rows, 4)), np.arange(rows) % 2
    assert analyze(_table(X, y)).decision == Decision.FAIL
    code, summary = _cli(_write_csv(tmp_path / "few.csv", X, y), capsys)  # rows=0: a header only
    assert code == 1
    message = _failed_with(summary, "degenerate.too_few_rows")
    assert f"{rows} rows" in message
    assert f"at least {DetectorSettings().min_rows}" in message


def test_identical_rows_of_one_class_fail(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    X, y = np.tile(np.random.default_rng(1).normal(size=(1, 5)), (500, 1)), np.ones(500, dtype=int)
    assert analyze(_table(X, y)).decision == Decision.FAIL
    code, summary = _cli(_write_csv(tmp_path / "same.csv", X, y), capsys)
    assert code == 1
    assert "identical" in _failed_with(summary, "degenerate.identical_rows")


def test_single_class_fails_and_the_other_checks_still_run() -> None:
    X = np.random.default_rng(2).normal(size=(300, 4))
    report = analyze(_table(X, np.zeros(300, dtype=int)))
    assert report.decision == Decision.FAIL
    failing = [f.check for f in report.findings if f.severity == Severity.FAIL]
    assert failing == ["degenerate.single_class"]
    assert any(f.check == "outliers.robust_z" for f in report.findings)


def test_a_degenerate_reference_is_set_aside_with_a_warning() -> None:
    X = np.random.default_rng(3).normal(size=(300, 4))
    y = (X[:, 0] > 0).astype(int)
    report = analyze(_table(X, y), _table(np.full((50, 4), np.nan), y[:50]))
    assert not report.used_reference
    assert any(f.check == "reference.unusable" and f.severity == Severity.WARN for f in report.findings)


# --- cost: wide tables --------------------------------------------------------------------


def test_wide_table_skips_mahalanobis_with_the_reason(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # 20 rows x 3,000 columns took > 8 minutes: 3,000 x 3,000 pseudo-inverses in every fold.
    rng = np.random.default_rng(4)
    X, y = rng.integers(0, 10, size=(20, 3000)).astype(float), np.arange(20) % 2
    code, summary = _cli(_write_csv(tmp_path / "wide.csv", X, y), capsys)
    assert code in (0, 1)
    skipped = [f for f in summary["findings"] if f["check"] == "outliers.mahalanobis"]
    assert len(skipped) == 1
    assert skipped[0]["severity"] == "warn"
    assert skipped[0]["message"].startswith("skipped:")
    for check in ("outliers.robust_z", "outliers.neighbours", "label_noise.confident_learning"):
        assert any(f["check"] == check and not f["message"].startswith("skipped") for f in summary["findings"])


def test_budget_is_linear_in_cells_and_every_detector_fits_the_benchmark_scale() -> None:
    cfg = DetectorSettings()
    scale = budget.Shape(1_000_000, 20, 100_000)  # benchmarks/data_guard.py scale case
    allowed = budget.budget(scale, ops_per_cell=cfg.budget_ops_per_cell, base_ops=cfg.budget_base_ops)
    costs = [
        budget.robust_z_cost(scale, max_fit=cfg.outlier_max_fit_rows),
        budget.mahalanobis_cost(scale, max_fit=cfg.outlier_max_fit_rows),
        budget.neighbours_cost(scale, index_rows=cfg.neighbour_index_rows),
        budget.label_noise_cost(scale, max_fit=cfg.label_max_fit_rows),
        budget.backdoor_cost(scale),
    ]
    assert all(cost <= allowed for cost in costs)
    wide = budget.Shape(20, 3000)
    assert budget.mahalanobis_cost(wide, max_fit=cfg.outlier_max_fit_rows) > budget.budget(
        wide, ops_per_cell=cfg.budget_ops_per_cell, base_ops=cfg.budget_base_ops
    )
    # doubling the rows doubles the budget (minus the fixed allowance): linear, not more
    double = budget.Shape(2_000_000, 20, 200_000)
    ratio = (budget.budget(double, ops_per_cell=1.0, base_ops=0.0)) / budget.budget(scale, ops_per_cell=1.0, base_ops=0)
    assert ratio == 2.0


# --- size: cells checked from what the file states, before decoding ----------------------


def _tall_zeros_parquet(path: Path, rows: int, columns: int = 20) -> Path:
    """A zstd Parquet file of zeros written in row groups (never `rows` x `columns` in memory)."""
    schema = pa.schema([(f"f{j}", pa.float64()) for j in range(columns)])
    chunk = pa.table({f"f{j}": np.zeros(min(rows, 100_000)) for j in range(columns)}, schema=schema)
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for start in range(0, rows, chunk.num_rows):
            writer.write_table(chunk.slice(0, min(chunk.num_rows, rows - start)))
    return path


def test_parquet_over_the_cell_limit_is_refused_from_the_footer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _tall_zeros_parquet(tmp_path / "t.parquet", 50_000).read_bytes()

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("the data pages were decoded")

    monkeypatch.setattr(pq.ParquetFile, "read", never)
    with pytest.raises(DatasetError) as info:
        load_table(data, "parquet", None, **LIMITS, max_cells=999_999)
    assert info.value.code == "too_large"
    assert info.value.over_limit
    assert str(info.value).startswith("too large: 1000000 cells")


def test_five_million_zero_rows_parquet_fails_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = _tall_zeros_parquet(tmp_path / "zeros.parquet", 5_000_000)
    assert path.stat().st_size < 1_000_000
    code, summary = _cli(path, capsys)
    assert code == 1
    assert summary["decision"] == "fail"
    assert summary["findings"][0]["check"] == "input.too_large"
    assert "100000000 cells" in summary["message"]


def test_npz_cells_are_counted_from_the_headers_before_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    buf = io.BytesIO()
    np.savez_compressed(buf, X=np.zeros((100_000, 20)), y=np.zeros(100_000))

    def never(*args: object, **kwargs: object) -> None:
        raise AssertionError("np.load was called")

    monkeypatch.setattr(np, "load", never)
    with pytest.raises(DatasetError) as info:
        load_table(buf.getvalue(), "npz", "y", max_bytes=100_000_000, max_rows=10_000_000, max_cells=1_000_000)
    assert info.value.code == "too_large"
    assert "2100000 cells" in str(info.value)


def test_csv_cells_are_bounded_while_streaming() -> None:
    data = b"a,b,c,y\n" + b"0,0,0,1\n" * 20_000
    with pytest.raises(DatasetError) as info:
        load_table(data, "csv", "y", **LIMITS, max_cells=50_000)
    assert info.value.code == "too_large"
    with pytest.raises(DatasetError) as info:
        load_table(data, "csv", "y", max_bytes=10_000_000, max_rows=10_000)
    assert info.value.code == "too_many_rows"
    # quoted commas make the cheap bound loose, never wrong: the exact count lets this through
    quoted = b"a,y\n" + b'1,"x,x,x,x"\n' * 100
    assert load_table(quoted, "csv", "y", **LIMITS, max_cells=250).rows == 100
