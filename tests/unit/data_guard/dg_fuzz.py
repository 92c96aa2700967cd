"""Hypothesis strategies for hostile dataset files, shared by the test suite and the benchmark.

Three kinds of input per format (CSV, Parquet, NPZ): arbitrary bytes (with the format's magic
bytes half the time, so the parser gets past its first check), valid files with bytes flipped,
cut, inserted or repeated, and structured files built by the format's own writer from hostile
parts (extreme and non-finite numbers, nested and text types, shape lies in `.npy` headers,
duplicate and odd names). `load_table` must return a `Table` or raise `DatasetError`; anything
else is a crash (issue 12). `analyze` must give a verdict on whatever `load_table` returns.
"""

from __future__ import annotations

import io
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from hypothesis import strategies as st

from services.data_guard.detect import DatasetReport, DetectorSettings, analyze
from services.data_guard.loader import DatasetError, DatasetFormat, Table, load_table

#: Small limits, so that every limit is reachable by small inputs.
LIMITS: dict[str, int] = {"max_bytes": 200_000, "max_rows": 500, "max_columns": 40, "max_cells": 4_000}
LABELS = [None, "y", "label", "X", "a", ""]


@dataclass(frozen=True)
class Case:
    """One input to the loader."""

    data: bytes
    fmt: DatasetFormat
    label: str | None


def load(case: Case) -> Table | None:
    """The property: a `Table` or a `DatasetError` (returned as None); any other exception escapes."""
    refusal: DatasetError | None = None
    try:
        table = load_table(case.data, case.fmt, case.label, **LIMITS)
    except DatasetError as exc:
        refusal = exc
    if refusal is not None:
        assert str(refusal), "a refusal must say why"
        return None
    assert table.X.dtype == np.float64
    assert table.X.ndim == 2
    assert table.X.shape[1] == len(table.feature_names)
    assert table.y is None or table.y.shape == (table.X.shape[0],)
    assert table.y is None or table.y.dtype != object
    return table


def judge(table: Table) -> DatasetReport:
    """The property for `analyze`: a verdict, whatever the table holds."""
    report = analyze(table, None, DetectorSettings())
    assert report.rows == table.rows
    return report


# --- seeds: valid files of every layout ---------------------------------------------------


def _csv_seed() -> bytes:
    return b"a,b,y\n1,2.5,0\n-3,nan,1\n4,inf,0\n5,,1\n1e300,-0,0\n"


def _parquet_bytes(table: pa.Table, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    pq.write_table(table, buf, **kwargs)
    return buf.getvalue()


def _npz_bytes(compressed: bool = False, **arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    if compressed:
        np.savez_compressed(buf, **arrays)  # type: ignore[arg-type]
    else:
        np.savez(buf, **arrays)  # type: ignore[arg-type]
    return buf.getvalue()


def seeds() -> list[Case]:
    """Valid files of each format and layout: what the mutations start from."""
    rng = np.random.default_rng(0)
    X = rng.normal(size=(12, 3))
    y = rng.integers(0, 2, size=12)
    arrow = pa.table({"a": X[:, 0], "b": X[:, 1], "c": X[:, 2], "y": y})
    return [
        Case(_csv_seed(), "csv", "y"),
        Case(_parquet_bytes(arrow), "parquet", "y"),
        Case(_parquet_bytes(arrow, compression="zstd", row_group_size=5), "parquet", "y"),
        Case(_npz_bytes(X=X, y=y, feature_names=np.array(["a", "b", "c"])), "npz", "y"),
        Case(_npz_bytes(True, a=X[:, 0], b=X[:, 1], y=y), "npz", "y"),
    ]


# --- arbitrary and mutated bytes ----------------------------------------------------------

_MAGIC: dict[DatasetFormat, bytes] = {"csv": b"a,b,y\n", "parquet": b"PAR1", "npz": b"PK\x03\x04"}


@st.composite
def raw_cases(draw: st.DrawFn) -> Case:
    """Arbitrary bytes, often behind the format's magic (and Parquet's trailing magic)."""
    fmt: DatasetFormat = draw(st.sampled_from(["csv", "parquet", "npz"]))
    body = draw(st.binary(max_size=2048))
    if draw(st.booleans()):
        body = _MAGIC[fmt] + body + (b"PAR1" if fmt == "parquet" else b"")
    return Case(body, fmt, draw(st.sampled_from(LABELS)))


@st.composite
def mutated_cases(draw: st.DrawFn) -> Case:
    """A valid seed file with a few byte-level mutations."""
    seed = draw(st.sampled_from(seeds()))
    data = bytearray(seed.data)
    for _ in range(draw(st.integers(1, 4))):
        if not data:
            break
        at = draw(st.integers(0, len(data) - 1))
        kind = draw(st.sampled_from(["flip", "set", "cut", "insert", "repeat", "truncate"]))
        if kind == "flip":
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif kind == "set":
            data[at] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, ord(","), ord("\n"), ord('"')]))
        elif kind == "cut":
            del data[at : at + draw(st.integers(1, 64))]
        elif kind == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=32))
        elif kind == "repeat":
            data[at:at] = data[at : at + draw(st.integers(1, 64))] * draw(st.integers(1, 8))
        else:
            del data[at:]
    return Case(bytes(data), seed.fmt, draw(st.sampled_from([seed.label, *LABELS])))


# --- structured, hostile files ------------------------------------------------------------

_CELLS = [
    "", "0", "-0", "1", "-1", "2.5", "1e308", "1e309", "-1e400", "4.9e-324", "nan", "NaN", "-nan", "inf",
    "-inf", "Infinity", "0x10", "1_000", "1,5", "9223372036854775808", "-9223372036854775809",
    "18446744073709551616", "true", "False", "null", "NA", "N/A", "é", "\x00", " 1", "1 ", '"1"', '"a,b"',
    '"a""b"', '"multi\nline"', "'x'", "1.0.0", "--1", "+1", ".5", "5.", "1e", "é\u202e", "😀",
]  # fmt: skip


@st.composite
def csv_cases(draw: st.DrawFn) -> Case:
    """CSV text from hostile cells, odd headers, ragged rows and mixed line endings."""
    columns = draw(st.integers(0, 6))
    names = draw(
        st.lists(
            st.sampled_from(["a", "b", "y", "label", "X", "", "a", '"q"', "é", "c d"]),
            min_size=columns,
            max_size=columns,
        )
    )
    newline = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    cell = st.one_of(
        st.sampled_from(_CELLS),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
        st.integers(-(2**70), 2**70).map(str),
    )
    lines = [",".join(names)] if draw(st.booleans()) or columns else []
    for _ in range(draw(st.integers(0, 25))):
        width = columns if draw(st.integers(0, 9)) else draw(st.integers(0, columns + 2))
        lines.append(",".join(draw(cell) for _ in range(width)))
    text = newline.join(lines) + (newline if draw(st.booleans()) else "")
    encoding = draw(st.sampled_from(["utf-8", "utf-16", "latin-1"]))
    return Case(text.encode(encoding, errors="replace"), "csv", draw(st.sampled_from([*names[:2], *LABELS])))


def _arrow_column(draw: st.DrawFn, kind: str, rows: int) -> pa.Array:
    floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
    maybe = draw(st.booleans())
    if kind == "float":
        values = draw(st.lists(st.one_of(floats, st.none()) if maybe else floats, min_size=rows, max_size=rows))
        return pa.array(values, type=pa.float64())
    if kind == "float32":
        return pa.array(draw(st.lists(st.floats(width=32), min_size=rows, max_size=rows)), type=pa.float32())
    if kind == "float16":
        return pa.array(np.array(draw(st.lists(st.floats(width=16), min_size=rows, max_size=rows)), dtype=np.float16))
    if kind == "int":
        return pa.array(draw(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=rows, max_size=rows)), pa.int64())
    if kind == "uint":
        return pa.array(draw(st.lists(st.integers(0, 2**64 - 1), min_size=rows, max_size=rows)), pa.uint64())
    if kind == "bool":
        return pa.array(draw(st.lists(st.one_of(st.booleans(), st.none()), min_size=rows, max_size=rows)), pa.bool_())
    if kind == "null":
        return pa.nulls(rows)
    if kind == "decimal":
        decimals = st.decimals(
            allow_nan=False, allow_infinity=False, places=2, min_value=Decimal("-1e20"), max_value=Decimal("1e20")
        )
        return pa.array(draw(st.lists(decimals, min_size=rows, max_size=rows)), type=pa.decimal128(38, 2))
    if kind == "string":
        return pa.array(draw(st.lists(st.one_of(st.text(max_size=8), st.none()), min_size=rows, max_size=rows)))
    if kind == "dictionary":
        return pa.array(
            draw(st.lists(st.sampled_from(["a", "b", "c"]), min_size=rows, max_size=rows))
        ).dictionary_encode()
    if kind == "binary":
        return pa.array(draw(st.lists(st.binary(max_size=8), min_size=rows, max_size=rows)), pa.binary())
    if kind == "timestamp":
        return pa.array(draw(st.lists(st.integers(0, 2**40), min_size=rows, max_size=rows)), pa.timestamp("s"))
    if kind == "list":
        return pa.array(
            draw(st.lists(st.lists(floats, max_size=3), min_size=rows, max_size=rows)), pa.list_(pa.float64())
        )
    # struct
    return pa.StructArray.from_arrays([pa.array(np.zeros(rows))], names=["inner"])


_ARROW_KINDS = ["float", "float32", "float16", "int", "uint", "bool", "null", "decimal", "string", "dictionary",
                "binary", "timestamp", "list", "struct"]  # fmt: skip


@st.composite
def parquet_cases(draw: st.DrawFn) -> Case:
    """Parquet files from the writer itself, with hostile types, names, nulls and layouts."""
    rows = draw(st.integers(0, 30))
    columns = draw(st.integers(1, 6))
    names = [draw(st.sampled_from(["a", "b", "y", "label", "X", "", "é", "a.b"])) for _ in range(columns)]
    arrays = [_arrow_column(draw, draw(st.sampled_from(_ARROW_KINDS)), rows) for _ in range(columns)]
    table = pa.Table.from_arrays(arrays, names=names)
    options: dict[str, Any] = {
        "compression": draw(st.sampled_from(["none", "snappy", "zstd", "gzip"])),
        "row_group_size": draw(st.integers(1, 40)),
        "use_dictionary": draw(st.booleans()),
    }
    return Case(_parquet_bytes(table, **options), "parquet", draw(st.sampled_from([*names[:2], *LABELS])))


_NPY_DTYPES = [np.dtype(spec) for spec in ["<f8", ">f8", "<f4", "<f2", "<i8", ">i4", "<u8", "|b1", "|u1", "<c16",
               "<U3", "|S2", "<M8[s]", "<m8[s]", "|V4"]] + [np.dtype([("a", "<f8"), ("b", "<i4")])]  # fmt: skip


def _array(draw: st.DrawFn) -> np.ndarray:
    dtype = draw(st.sampled_from(_NPY_DTYPES))
    shape = tuple(draw(st.lists(st.integers(0, 6), min_size=0, max_size=3)))
    size = int(np.prod(shape)) * dtype.itemsize
    raw = draw(st.binary(min_size=size, max_size=size))
    array = np.frombuffer(raw, dtype=dtype).reshape(shape) if size else np.zeros(shape, dtype=dtype)
    return np.asfortranarray(array) if draw(st.booleans()) else array


def _lying_npy(draw: st.DrawFn) -> bytes:
    """A `.npy` member whose header claims a shape, dtype or order its body does not hold."""
    header = {
        "descr": draw(st.sampled_from(["<f8", "<i8", "|O", "<U2", "V8", "<f8x", ">c8"])),
        "fortran_order": draw(st.booleans()),
        "shape": tuple(draw(st.lists(st.integers(-2, 10**12), min_size=0, max_size=3))),
    }
    buf = io.BytesIO()
    try:
        np.lib.format.write_array_header_1_0(buf, header)
    except (ValueError, TypeError):
        buf = io.BytesIO(b"\x93NUMPY\x01\x00" + draw(st.binary(max_size=120)))
    return buf.getvalue() + draw(st.binary(max_size=256))


@st.composite
def npz_cases(draw: st.DrawFn) -> Case:
    """Zip archives of `.npy` members: every dtype and shape, odd names, lying headers."""
    buf = io.BytesIO()
    method = draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]))
    with zipfile.ZipFile(buf, "w", compression=method) as archive:
        for _ in range(draw(st.integers(0, 4))):
            name = draw(st.sampled_from(["X", "y", "feature_names", "a", "label", "../evil", "dir/X", "é", "X"]))
            name += draw(st.sampled_from([".npy", ".npy", "", ".txt"]))
            if draw(st.integers(0, 4)) == 0:
                member = _lying_npy(draw)
            else:
                out = io.BytesIO()
                np.lib.format.write_array(out, _array(draw), allow_pickle=False)
                member = out.getvalue()
            with warnings.catch_warnings():  # duplicate names are on purpose: zipfile warns, allows
                warnings.simplefilter("ignore", UserWarning)
                with archive.open(name, "w") as handle:
                    handle.write(member)
    return Case(buf.getvalue(), "npz", draw(st.sampled_from(LABELS)))


@st.composite
def hostile_tables(draw: st.DrawFn) -> Table:
    """Small tables of extreme, repeated and non-finite values, for `analyze`."""
    rows = draw(st.integers(0, 40))
    columns = draw(st.integers(1, 5))
    cell = st.one_of(
        st.sampled_from([0.0, 1.0, -1.0, np.nan, np.inf, -np.inf, 1e308, -1e308, 5e-324]),
        st.floats(allow_nan=True, allow_infinity=True),
    )
    if draw(st.booleans()):  # few distinct values: ties, duplicates, constant columns
        palette = draw(st.lists(cell, min_size=1, max_size=3))
        cell = st.sampled_from(palette)
    X = np.array(draw(st.lists(st.lists(cell, min_size=columns, max_size=columns), min_size=rows, max_size=rows)))
    X = X.reshape(rows, columns).astype(np.float64)
    y = None
    if draw(st.booleans()):
        y = np.array(
            draw(st.lists(st.integers(0, draw(st.integers(0, 3))), min_size=rows, max_size=rows)), dtype=np.int64
        )
    return Table(X=X, y=y, feature_names=[f"f{j}" for j in range(columns)], label_name="y" if y is not None else None)


#: Each loader harness: a name and its strategy.
LOADER_TARGETS: dict[str, Callable[[], st.SearchStrategy[Case]]] = {
    "raw bytes": raw_cases,
    "mutated files": mutated_cases,
    "csv structured": csv_cases,
    "parquet structured": parquet_cases,
    "npz structured": npz_cases,
}
