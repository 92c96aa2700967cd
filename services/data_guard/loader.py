"""Turn untrusted dataset bytes (CSV, Parquet, NPZ) into a numeric `Table`, or refuse clearly.

Every size limit is checked before the expensive step it protects: the byte limit before any
parsing, Parquet row counts from the footer before decoding, NPZ member sizes from the zip
directory and the `.npy` headers before decompressing. NPZ is always read with
`allow_pickle=False`, and object arrays are refused from their header before `np.load` sees them.

The cell limit (rows x columns) bounds the float64 matrix the detectors get, which a few hundred
kilobytes of compressed zeros can otherwise blow up to gigabytes (issue 12: a 400 KB Parquet
file of 5 M x 20 zeros reached 4.4 GB). It is checked from what each format states before
decoding: the Parquet footer, the `.npy` headers, and for CSV, which states nothing, a bound
from the bytes (a cell takes at least one delimiter) and then a row count while streaming.
"""

from __future__ import annotations

import hashlib
import io
import math
import re
import zipfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import IO, Literal

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from shared.errors import MlwardenError

DatasetFormat = Literal["csv", "parquet", "npz"]

#: Default cell limit (rows x columns): 400 MB as float64, room for the 1,000,000 x 20 benchmark.
DEFAULT_MAX_CELLS = 50_000_000
#: Default column limit; `duplicates.row_hashes` has one multiplier per column up to this many.
DEFAULT_MAX_COLUMNS = 4096

DatasetErrorCode = Literal[
    "too_large",
    "too_many_rows",
    "too_many_columns",
    "unreadable",
    "empty",
    "missing_label",
    "non_numeric",
    "pickle_refused",
    "ragged",
    "duplicate_column",
    "hash_mismatch",
    "unsupported_format",
]


class DatasetError(MlwardenError, ValueError):
    """A dataset that cannot be checked; `code` says why in one stable word."""

    def __init__(self, code: DatasetErrorCode, message: str, *, column: str | None = None) -> None:
        super().__init__(message)
        self.code: DatasetErrorCode = code
        self.message = message
        self.column = column

    @property
    def over_limit(self) -> bool:
        """True when the data was readable but over a size limit: a refusal, not a broken input."""
        return self.code in ("too_large", "too_many_rows", "too_many_columns")


@dataclass(frozen=True)
class Table:
    """A dataset as the detectors see it: float64 features (NaN/inf kept) and optional labels."""

    X: np.ndarray
    """float64 array of shape (rows, features); missing values are NaN."""
    y: np.ndarray | None
    """1-D labels (integers, floats or strings), one per row, or None when unlabelled."""
    feature_names: list[str]
    """one name per column of X."""
    label_name: str | None
    """name of the label column, or None."""

    @property
    def rows(self) -> int:
        """Number of data rows."""
        return int(self.X.shape[0])


def sha256_hex(data: bytes) -> str:
    """Lower-case hex SHA-256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def verify_sha256(data: bytes, expected: str) -> str:
    """Re-hash `data` and return the digest; raise `DatasetError('hash_mismatch')` if it differs."""
    actual = sha256_hex(data)
    if actual != expected.lower():
        raise DatasetError("hash_mismatch", f"dataset sha256 is {actual}, but the upload claims {expected}")
    return actual


def load_table(
    data: bytes,
    fmt: DatasetFormat,
    label_column: str | None,
    *,
    max_bytes: int,
    max_rows: int,
    max_columns: int = DEFAULT_MAX_COLUMNS,
    max_cells: int = DEFAULT_MAX_CELLS,
) -> Table:
    """Parse `data` as `fmt` into a `Table`; raise `DatasetError` for anything it cannot check.

    A file with a header (or an NPZ with arrays) but no data rows loads as a table of 0 rows:
    it is readable, and `detect.analyze` fails it as too few rows with the minimum it needs.
    """
    if len(data) > max_bytes:
        raise DatasetError("too_large", f"too large: dataset is {len(data)} bytes > the {max_bytes} limit")
    if not data:
        raise DatasetError("empty", "dataset is an empty file")
    limits = _Limits(max_bytes=max_bytes, max_rows=max_rows, max_columns=max_columns, max_cells=max_cells)
    if fmt == "csv":
        table = _read_csv(data, limits)
    elif fmt == "parquet":
        table = _read_parquet(data, limits)
    elif fmt == "npz":
        return _read_npz(data, label_column, limits)
    else:
        raise DatasetError("unsupported_format", f"unsupported dataset format {fmt!r}")
    return _from_arrow(table, label_column, limits)


@dataclass(frozen=True)
class _Limits:
    max_bytes: int
    max_rows: int
    max_columns: int
    max_cells: int


# --- CSV and Parquet (pyarrow) -------------------------------------------------------------


def _read_csv(data: bytes, limits: _Limits) -> pa.Table:
    try:
        # Every cell but the last of a line ends at a delimiter and every line at a newline, so
        # delimiters + newlines + 1 bounds the cells from above without parsing (quoted commas
        # only make the bound looser). Under the limits, no count is needed.
        newlines = data.count(b"\n") + data.count(b"\r")
        if data.count(b",") + newlines + 1 > limits.max_cells or newlines + 1 > limits.max_rows:
            _count_csv_rows(data, limits)
        # read_csv (not the streaming reader) so that a column whose type only shows late in the
        # file (ints first, floats later) is promoted instead of failing.
        return pacsv.read_csv(io.BytesIO(data))
    except DatasetError:
        raise
    except (pa.ArrowException, ValueError, UnicodeDecodeError) as exc:
        raise DatasetError("unreadable", f"CSV could not be parsed: {_csv_error_position(data, exc)}") from exc


def _csv_error_position(data: bytes, exc: BaseException) -> str:
    """Where a CSV failed, by line and column only. Arrow's message quotes the offending row,
    and verdicts are read by producers: a parse error must not copy a private file's lines into
    one (issue 8). On a failure only, the file is parsed again on one thread to learn the line."""
    if isinstance(exc, UnicodeDecodeError):
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        return f"line {line}, byte {column} is not valid UTF-8"
    try:
        # One thread: Arrow then numbers the rows in its message ("Row #n: Expected 3 columns, got 4").
        pacsv.read_csv(io.BytesIO(data), read_options=pacsv.ReadOptions(use_threads=False))
    except (pa.ArrowException, ValueError, UnicodeDecodeError) as again:
        exc = again
    fields = re.search(r"Row #(\d+): Expected (\d+) columns, got (\d+)", str(exc))
    if fields is not None:
        line, expected, actual = (int(g) for g in fields.groups())
        # Fields are counted from 1: the first one the header does not have, or the first missing.
        return f"line {line} has {actual} fields where the header has {expected} (column {min(actual, expected) + 1})"
    # Other errors (conversions) name the place as "column #c" (from 0) and "Row #n": keep the
    # numbers only, never the quoted value.
    text = str(exc)
    where = [f"line {n}" for n in re.findall(r"Row #(\d+)", text)]
    where += [f"column {int(c) + 1}" for c in re.findall(r"column #(\d+)", text)]
    kind = "conversion error" if "conversion error" in text else type(exc).__name__
    return kind + (f" at {', '.join(where)}" if where else "")


def _count_csv_rows(data: bytes, limits: _Limits) -> None:
    """Stream the CSV one block at a time, converting one column as text, and stop at a limit."""
    names = pacsv.open_csv(io.BytesIO(data)).schema.names  # parses the first block only
    _check_shape(0, len(names), limits)
    if not names:
        return
    convert = pacsv.ConvertOptions(include_columns=[names[0]], column_types={names[0]: pa.string()})
    rows = 0
    for batch in pacsv.open_csv(io.BytesIO(data), convert_options=convert):
        rows += batch.num_rows
        _check_shape(rows, len(names), limits)


def _read_parquet(data: bytes, limits: _Limits) -> pa.Table:
    try:
        parquet = pq.ParquetFile(io.BytesIO(data))
        # The footer states the shape and the decoded page sizes: refuse before decompressing
        # anything (decompression bombs), and refuse nested columns, whose leaf values the row
        # count does not bound (one row can hold a list of a million numbers).
        meta = parquet.metadata
        _check_shape(meta.num_rows, meta.num_columns, limits)
        nested = [f.name for f in parquet.schema_arrow if pa.types.is_nested(f.type)]
        if nested:
            raise DatasetError(
                "non_numeric", f"nested (list, struct or map) columns: {', '.join(nested[:10])}", column=nested[0]
            )
        inflated = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        if inflated > limits.max_bytes:
            raise DatasetError("too_large", f"too large: Parquet pages hold {inflated} bytes > {limits.max_bytes}")
        return parquet.read()
    except DatasetError:
        raise
    except (pa.ArrowException, ValueError, OSError) as exc:
        raise DatasetError("unreadable", f"Parquet could not be read: {_short(exc)}") from exc


def _from_arrow(table: pa.Table, label_column: str | None, limits: _Limits) -> Table:
    try:
        return _arrow_to_table(table, label_column, limits)
    except UnicodeDecodeError as exc:
        # Arrow decodes column names (and label strings) lazily, on first access.
        raise DatasetError("unreadable", f"column names or labels are not valid UTF-8: {_short(exc)}") from exc


def _arrow_to_table(table: pa.Table, label_column: str | None, limits: _Limits) -> Table:
    names = [str(name) for name in table.column_names]
    _check_shape(table.num_rows, len(names), limits)
    _check_unique(names)
    if label_column is not None and label_column not in names:
        raise DatasetError("missing_label", f"label column {label_column!r} is not in the data", column=label_column)
    feature_names = [name for name in names if name != label_column]
    if not feature_names:
        raise DatasetError("empty", "dataset has no feature columns")
    bad = [name for name in feature_names if not _is_numeric(table.column(name).type)]
    if bad:
        # Positions, not names: the header is the file's first line, and verdicts are read by
        # producers who may not be allowed to read the file (issue 8).
        positions = ", ".join(str(names.index(name) + 1) for name in bad[:10])
        raise DatasetError(
            "non_numeric",
            f"feature columns must be numeric; not numeric: column {positions} of line 1",
            column=bad[0],
        )
    X = np.empty((table.num_rows, len(feature_names)), dtype=np.float64)
    for j, name in enumerate(feature_names):
        column = table.column(name)
        if pa.types.is_null(column.type):
            X[:, j] = np.nan  # an all-empty column: missing values, reported by the detectors
            continue
        # fill_null(NaN) after the cast keeps missing cells as NaN instead of failing to_numpy.
        # safe=False: an int64 beyond 2^53 (or a wide decimal) becomes the nearest float, which is
        # what the detectors see anyway, instead of an ArrowInvalid (found by fuzzing, issue 12).
        as_float = column.cast(pa.float64(), safe=False).fill_null(np.nan)
        X[:, j] = as_float.to_numpy()
    y = None
    if label_column is not None:
        y = _labels(table.column(label_column).to_numpy(zero_copy_only=False), label_column)
    return Table(X=X, y=y, feature_names=feature_names, label_name=label_column)


def _is_numeric(kind: pa.DataType) -> bool:
    return bool(
        pa.types.is_integer(kind)
        or pa.types.is_floating(kind)
        or pa.types.is_boolean(kind)
        or pa.types.is_decimal(kind)
        or pa.types.is_null(kind)
    )


# --- NPZ ------------------------------------------------------------------------------------


def _read_npz(data: bytes, label_column: str | None, limits: _Limits) -> Table:
    """Read an NPZ in one of two layouts.

    Matrix layout: a 2-D array `X`, optional 1-D `y` (labels) and `feature_names` (strings).
    The label is the member named `label_column` if there is one, else `y`.
    Column layout: one 1-D array per column, the label column among them by name.
    """
    # np.load decides by the first bytes whether it sees a zip, a bare .npy or a pickle: only a
    # zip is an NPZ, so refuse anything else here rather than let it reach another code path.
    if not data.startswith(b"PK\x03\x04"):
        raise DatasetError("unreadable", "NPZ data does not start with a zip header")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError, EOFError, NotImplementedError) as exc:
        raise DatasetError("unreadable", f"NPZ is not a readable zip: {_short(exc)}") from exc
    # The zip directory states each member's uncompressed size and zipfile never reads past it,
    # so this bounds decompression (zip bombs) before any member is inflated.
    total = sum(info.file_size for info in infos)
    if total > limits.max_bytes:
        raise DatasetError(
            "too_large", f"too large: NPZ members inflate to {total} bytes > the {limits.max_bytes} limit"
        )
    try:
        # The .npy headers state every shape: the cells are counted before any array is read.
        cells = 0
        for info in infos:
            with archive.open(info) as member:
                cells += _check_npy_header(member, info.filename.removesuffix(".npy"), info.file_size)
        if cells > limits.max_cells:
            raise DatasetError("too_large", f"too large: {cells} cells > the {limits.max_cells} limit")
        arrays: dict[str, np.ndarray] = {}
        # allow_pickle=False always: an object array would unpickle attacker bytes. The header
        # check above already refused those; this is the second lock on the same door.
        with np.load(io.BytesIO(data), allow_pickle=False) as npz:
            for name in npz.files:
                arrays[name] = np.asarray(npz[name])
    except DatasetError:
        raise
    except (ValueError, OSError, EOFError, zipfile.BadZipFile, RuntimeError, KeyError, zlib.error) as exc:
        # RuntimeError covers NotImplementedError: a zip version or compression zipfile lacks.
        raise DatasetError("unreadable", f"NPZ member could not be read: {_short(exc)}") from exc
    if not arrays:
        raise DatasetError("empty", "NPZ has no arrays")
    if "X" in arrays and arrays["X"].ndim == 2:
        return _npz_matrix(arrays, label_column, limits)
    return _npz_columns(arrays, label_column, limits)


def _check_npy_header(member: IO[bytes], name: str, stored_size: int) -> int:
    """Check one member's header; return how many elements it declares."""
    try:
        version = np.lib.format.read_magic(member)
        if version == (1, 0):
            shape, _order, dtype = np.lib.format.read_array_header_1_0(member)
        else:
            shape, _order, dtype = np.lib.format.read_array_header_2_0(member)
    except (ValueError, OSError, EOFError, SyntaxError, TypeError) as exc:
        raise DatasetError("unreadable", f"NPZ member {name!r} is not a .npy array") from exc
    if dtype.hasobject:
        raise DatasetError(
            "pickle_refused",
            f"NPZ member {name!r} is an object array; pickled data is never loaded",
            column=name,
        )
    # numpy allocates the array from the header's shape before reading: a header that claims more
    # than the member holds would make it reserve memory for data that is not there.
    elements = math.prod(shape)
    declared = elements * dtype.itemsize
    if declared > stored_size:
        raise DatasetError("unreadable", f"NPZ member {name!r} declares {declared} bytes but stores fewer")
    return elements


def _npz_matrix(arrays: dict[str, np.ndarray], label_column: str | None, limits: _Limits) -> Table:
    X = arrays["X"]
    _check_shape(X.shape[0], X.shape[1], limits)
    if X.shape[1] == 0:
        raise DatasetError("empty", f"NPZ array X has shape {X.shape}: no feature columns")
    if not _is_numeric_dtype(X.dtype):
        raise DatasetError("non_numeric", f"NPZ array X has non-numeric dtype {X.dtype}")
    names = [f"x{j}" for j in range(X.shape[1])]
    if "feature_names" in arrays:
        given = arrays["feature_names"]
        if given.ndim != 1 or given.shape[0] != X.shape[1] or given.dtype.kind not in "US":
            raise DatasetError("ragged", "NPZ feature_names must be one string per column of X")
        names = [str(v) for v in given.tolist()]
        _check_unique(names)
    label_key = label_column if label_column in arrays else ("y" if "y" in arrays else None)
    if label_column is not None and label_key is None:
        raise DatasetError(
            "missing_label",
            f"NPZ has neither a {label_column!r} nor a 'y' array for the labels",
            column=label_column,
        )
    y = None
    if label_key is not None:
        raw = arrays[label_key]
        if raw.ndim != 1 or raw.shape[0] != X.shape[0]:
            raise DatasetError("ragged", f"NPZ labels {label_key!r} have shape {raw.shape}, X has {X.shape}")
        y = _labels(raw, label_key)
    return Table(
        X=np.asarray(X, dtype=np.float64),
        y=y,
        feature_names=names,
        label_name=(label_column or label_key) if y is not None else None,
    )


def _npz_columns(arrays: dict[str, np.ndarray], label_column: str | None, limits: _Limits) -> Table:
    lengths = {name: (a.shape[0] if a.ndim == 1 else -1) for name, a in arrays.items()}
    if any(n < 0 for n in lengths.values()) or len(set(lengths.values())) != 1:
        raise DatasetError(
            "ragged",
            "NPZ must hold a 2-D 'X' or 1-D columns of one length; shapes: "
            + ", ".join(f"{k}={v.shape}" for k, v in list(arrays.items())[:10]),
        )
    rows = next(iter(lengths.values()))
    _check_shape(rows, len(arrays), limits)
    if label_column is not None and label_column not in arrays:
        raise DatasetError("missing_label", f"NPZ has no label array {label_column!r}", column=label_column)
    feature_names = [name for name in arrays if name != label_column]
    if not feature_names:
        raise DatasetError("empty", "NPZ has no feature columns")
    bad = [name for name in feature_names if not _is_numeric_dtype(arrays[name].dtype)]
    if bad:
        raise DatasetError("non_numeric", f"NPZ feature arrays must be numeric; not: {', '.join(bad[:10])}")
    X = np.column_stack([np.asarray(arrays[name], dtype=np.float64) for name in feature_names])
    y = None if label_column is None else _labels(arrays[label_column], label_column)
    return Table(X=X, y=y, feature_names=feature_names, label_name=label_column)


def _is_numeric_dtype(dtype: np.dtype[np.generic]) -> bool:
    return dtype.kind in "biuf"


# --- shared helpers -------------------------------------------------------------------------


def _labels(raw: np.ndarray, name: str) -> np.ndarray:
    """Normalise a label column: integers stay integers, strings become a unicode array."""
    if raw.dtype.kind == "b":
        return raw.astype(np.int64)
    if raw.dtype.kind in "iu":
        return raw.astype(np.int64)
    if raw.dtype.kind == "f":
        missing = int(np.count_nonzero(~np.isfinite(raw)))
        if missing:
            raise DatasetError("missing_label", f"{missing} rows have no finite label in {name!r}", column=name)
        return raw.astype(np.float64)
    if raw.dtype.kind in "US":
        return raw.astype(str)
    # Arrow strings arrive as an object array of str/None: check every value, keep no objects.
    values: Sequence[object] = raw.tolist()
    missing = sum(1 for v in values if v is None)
    if missing:
        raise DatasetError("missing_label", f"{missing} rows have no label in {name!r}", column=name)
    if all(isinstance(v, str) for v in values):
        return np.array(values, dtype=str)
    raise DatasetError("non_numeric", f"label column {name!r} is neither numbers nor strings", column=name)


def _check_shape(rows: int, columns: int, limits: _Limits) -> None:
    if rows > limits.max_rows:
        raise DatasetError("too_many_rows", f"too large: {rows} rows > the {limits.max_rows} limit")
    if columns > limits.max_columns:
        raise DatasetError("too_many_columns", f"too large: {columns} columns > the {limits.max_columns} limit")
    if rows * columns > limits.max_cells:
        raise DatasetError(
            "too_large",
            f"too large: {rows * columns} cells ({rows} rows x {columns} columns) > the {limits.max_cells} limit",
        )


def _check_unique(names: list[str]) -> None:
    seen: set[str] = set()
    for position, name in enumerate(names, start=1):
        if name in seen:
            # By position (a header's names are file content; see `_from_arrow`).
            first = names.index(name) + 1
            raise DatasetError("duplicate_column", f"column {position} repeats the name of column {first}", column=name)
        seen.add(name)


def _short(exc: BaseException) -> str:
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text[:200]
