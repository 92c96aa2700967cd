"""Loader: every format parses to the same Table, and every hostile input is a DatasetError."""

from __future__ import annotations

import io
import zipfile

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.data_guard.loader import DatasetError, load_table, sha256_hex, verify_sha256

LIMITS = {"max_bytes": 1_000_000, "max_rows": 10_000}


def _npz(**arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def _parquet(table: pa.Table) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    return buf.getvalue()


def _code(data: bytes, fmt: str, label: str | None = "y", **limits: int) -> str:
    with pytest.raises(DatasetError) as info:
        load_table(data, fmt, label, **{**LIMITS, **limits})  # type: ignore[arg-type]
    assert str(info.value)  # every refusal says why
    return info.value.code


def test_csv_numbers_nan_inf_and_string_labels() -> None:
    data = b"a,b,y\n1,nan,cat\n2,inf,dog\n3,-inf,cat\n,4.5,dog\n"
    t = load_table(data, "csv", "y", **LIMITS)
    assert t.feature_names == ["a", "b"]
    assert t.label_name == "y"
    assert t.X.dtype == np.float64
    assert t.X.shape == (4, 2)
    assert np.isnan(t.X[0, 1])
    assert np.isnan(t.X[3, 0])
    assert t.X[1, 1] == np.inf
    assert t.X[2, 1] == -np.inf
    assert t.y is not None
    assert t.y.tolist() == ["cat", "dog", "cat", "dog"]


def test_csv_parquet_and_both_npz_layouts_agree() -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(50, 3))
    y = rng.integers(0, 3, size=50)
    csv = "f0,f1,f2,label\n" + "".join(
        f"{float(r[0])!r},{float(r[1])!r},{float(r[2])!r},{lab}\n" for r, lab in zip(X, y, strict=True)
    )
    tables = [
        load_table(csv.encode(), "csv", "label", **LIMITS),
        load_table(
            _parquet(pa.table({"f0": X[:, 0], "f1": X[:, 1], "f2": X[:, 2], "label": y})),
            "parquet",
            "label",
            **LIMITS,
        ),
        load_table(_npz(f0=X[:, 0], f1=X[:, 1], f2=X[:, 2], label=y), "npz", "label", **LIMITS),
        load_table(_npz(X=X, y=y, feature_names=np.array(["f0", "f1", "f2"])), "npz", "label", **LIMITS),
    ]
    for t in tables:
        assert t.feature_names == ["f0", "f1", "f2"]
        np.testing.assert_array_equal(t.X, X)
        assert t.y is not None
        assert t.y.tolist() == y.tolist()


def test_unlabelled_table_has_no_y() -> None:
    t = load_table(b"a,b\n1,2\n3,4\n", "csv", None, **LIMITS)
    assert t.y is None
    assert t.feature_names == ["a", "b"]


def test_sha256_and_mismatch_refused() -> None:
    digest = sha256_hex(b"abc")
    assert digest == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert verify_sha256(b"abc", digest) == digest
    with pytest.raises(DatasetError) as info:
        verify_sha256(b"abd", digest)  # tampered bytes
    assert info.value.code == "hash_mismatch"


def test_npz_object_array_is_refused_without_unpickling(tmp_path: object) -> None:
    class Boom:
        def __reduce__(self) -> tuple[object, tuple[str]]:
            return (RuntimeError, ("unpickled attacker code ran",))

    obj = np.array([Boom(), Boom()], dtype=object)
    buf = io.BytesIO()
    np.savez(buf, X=np.zeros((2, 2)), y=obj)  # np.savez pickles object arrays
    assert _code(buf.getvalue(), "npz") == "pickle_refused"


def test_npz_zip_bomb_refused_before_inflating() -> None:
    # 50 MB of zeros compresses to ~50 kB: refused from the zip directory, not by inflating it.
    buf = io.BytesIO()
    np.savez_compressed(buf, X=np.zeros((6_250_000, 1)))
    assert len(buf.getvalue()) < LIMITS["max_bytes"]
    assert _code(buf.getvalue(), "npz") == "too_large"


def test_npz_header_claiming_more_than_stored_is_refused() -> None:
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "<f8", "fortran_order": False, "shape": (10**9, 2)})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as zf:
        zf.writestr("X.npy", header.getvalue() + b"\0" * 64)
    assert _code(buf.getvalue(), "npz", None) == "unreadable"


@pytest.mark.parametrize(
    ("data", "fmt", "label", "code"),
    [
        (b"", "csv", "y", "empty"),
        (b"a,b,y\n1,2,3\n4,5\n", "csv", "y", "unreadable"),  # ragged
        (bytes(range(256)) * 8, "csv", "y", "unreadable"),  # binary garbage
        (bytes(range(256)) * 8, "parquet", "y", "unreadable"),
        (bytes(range(256)) * 8, "npz", "y", "unreadable"),
        (b"PK\x03\x04" + b"\xff" * 100, "npz", "y", "unreadable"),  # broken zip
        (b"a,b,y\n1,2,3\n", "csv", "label", "missing_label"),
        (b"a,b,y\n1,x,3\n", "csv", "y", "non_numeric"),
        (b"a,a,y\n1,2,3\n", "csv", "y", "duplicate_column"),
        (b"a,y\n1,\n2,3\n", "csv", "y", "missing_label"),  # a row without a label
        (b"y\n1\n2\n", "csv", "y", "empty"),  # no feature columns
    ],
)
def test_bad_input_gets_the_right_code(data: bytes, fmt: str, label: str, code: str) -> None:
    assert _code(data, fmt, label) == code


def test_npz_bad_layouts() -> None:
    assert _code(_npz(a=np.zeros(3), b=np.zeros(4), y=np.zeros(3)), "npz") == "ragged"
    assert _code(_npz(X=np.zeros((3, 2))), "npz", "target") == "missing_label"
    assert _code(_npz(X=np.array([["a", "b"]]), y=np.zeros(1)), "npz") == "non_numeric"
    assert _code(_npz(X=np.zeros((3, 2)), y=np.zeros(4)), "npz") == "ragged"
    assert _code(_npz(X=np.ones((2, 2)), y=np.array([1.0, np.nan])), "npz") == "missing_label"


def test_size_row_and_column_limits() -> None:
    data = b"a,y\n" + b"1,2\n" * 100
    assert _code(data, "csv", max_bytes=100) == "too_large"
    assert _code(data, "csv", max_rows=99) == "too_many_rows"
    wide = pa.table({f"c{i}": [1.0] for i in range(20)} | {"y": [1]})
    assert _code(_parquet(wide), "parquet", max_columns=10) == "too_many_columns"
    # Parquet rows are refused from the footer, before the data is decoded.
    tall = pa.table({"a": np.zeros(500), "y": np.zeros(500)})
    assert _code(_parquet(tall), "parquet", max_rows=100) == "too_many_rows"
    assert _code(_npz(X=np.zeros((500, 1)), y=np.zeros(500)), "npz", max_rows=100) == "too_many_rows"


def test_all_empty_column_becomes_nan_not_an_error() -> None:
    t = load_table(b"a,b,y\n1,,0\n2,,1\n", "csv", "y", **LIMITS)
    assert np.isnan(t.X[:, 1]).all()


def test_header_without_rows_loads_as_zero_rows_for_analyze_to_fail() -> None:
    # Readable but empty: analyze() fails it as "too few rows" with the minimum (issue 12).
    for data, fmt in [(b"a,b,y\n", "csv"), (_npz(X=np.zeros((0, 2)), y=np.zeros(0)), "npz")]:
        t = load_table(data, fmt, "y", **LIMITS)  # type: ignore[arg-type]
        assert t.rows == 0
        assert t.X.shape[1] == 2
