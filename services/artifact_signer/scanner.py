"""Find serialized models that would run code when loaded, without ever loading them.

The format is decided by content (magic numbers and structure), never by file name: a pickle
renamed `weights.txt` is still a pickle. Formats and what makes them unsafe:

- pickle (any protocol, also several pickles in a row) and joblib: every global the stream
  imports, resolved as `pickle.Unpickler.find_class` resolves it at the stream's protocol,
  must be an exact (module, qualname) pair of an explicit allow-list (`is_allowed_global`);
  a dotted name is an attribute walk and each of its steps must be allowed. Anything else, a global
  that cannot be resolved statically, a malformed stream, or a known bypass shape (BUILD on
  a class, calling a computed object, the copyreg extension registry) is unsafe. Streams are
  analysed with `pickletools.genops` and a symbolic stack (values tracked through the memo),
  never with `pickle.load`.
- zip (PyTorch checkpoints, NumPy `.npz`, Keras `.keras`, any other zip): every member is
  scanned by content, whatever its path; member paths that escape the archive are unsafe.
- NumPy `.npy`: object arrays are unsafe (`np.load(allow_pickle=True)` unpickles them).
- safetensors: the header must be well formed: offsets in range, no overlap, no gap.
- Keras: a `Lambda` layer in `config.json` is unsafe (it carries marshalled bytecode).
- HDF5 (legacy Keras `.h5`): cannot be verified without an HDF5 parser, so it warns; a
  Lambda layer visible in its config attribute fails.
- gzip/bz2/xz/zlib (joblib's compressors) are decompressed, within a size limit, and scanned.
"""

from __future__ import annotations

import _compat_pickle
import ast
import bz2
import importlib.util
import json
import lzma
import math
import mmap
import os
import pickle
import pickletools
import re
import struct
import sys
import zipfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, NamedTuple, cast

import numpy as np
from pydantic import Field

from shared.events import Decision, Finding, Frozen, Severity, Sha256Hex

from ._sklearn_globals import SKLEARN_GLOBALS
from .hashing import walk_tree
from .lockfile import decide

#: Decompressed data, nested archives and zip members larger than this are not read whole.
MAX_INNER_BYTES = 256 * 1024 * 1024
#: Leading bytes of a larger zip member that are checked for a pickle.
PROBE_BYTES = 1024 * 1024
#: Archives in archives (or compressed streams) deeper than this are refused.
MAX_DEPTH = 4
#: Pickles that follow one another in one stream (legacy torch.save writes five).
MAX_PICKLES_PER_STREAM = 16
#: Longest newline-terminated argument (protocol 0) read when probing for opcodes.
MAX_LINE = 1024 * 1024
#: Longest string kept as a value on the symbolic stack; longer ones become opaque.
MAX_TRACKED_STRING = 1024
#: Largest safetensors header (the reference implementation's limit).
MAX_SAFETENSORS_HEADER = 100_000_000

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
NPY_MAGIC = b"\x93NUMPY"
LZ4_FRAME_MAGIC = b"\x04\x22\x4d\x18"


class ModelFormat(StrEnum):
    """What a file's content is."""

    PICKLE = "pickle"
    JOBLIB = "joblib"
    PYTORCH = "pytorch-zip"
    NUMPY = "npy"
    NPZ = "npz"
    SAFETENSORS = "safetensors"
    KERAS = "keras"
    HDF5 = "hdf5"
    ZIP = "zip"
    UNKNOWN = "unknown"


class FileScan(Frozen):
    """The scan of one file (or of one blob handed to `scan_bytes`)."""

    path: str = Field(description="file path, or the name given to scan_bytes")
    format: ModelFormat = Field(description="detected from the content")
    size: int = Field(ge=0, description="bytes")
    safe: bool = Field(description="no failing finding")
    decision: Decision
    findings: list[Finding] = Field(default_factory=list)
    globals: list[str] = Field(default_factory=list, description="every 'module.name' the pickles in it import")
    sha256: Sha256Hex | None = Field(
        default=None, description="SHA-256 of exactly the bytes scanned, when they were also hashed (issue 12)"
    )


class ScanReport(Frozen):
    """The scan of a file or folder: safe only if every file is."""

    path: str
    safe: bool
    decision: Decision
    files: list[FileScan] = Field(default_factory=list)

    @property
    def findings(self) -> list[Finding]:
        """Every finding of every file."""
        return [finding for scan in self.files for finding in scan.findings]


# --- the allow-list -------------------------------------------------------------------------

# Exactly what benign NumPy, scikit-learn, joblib and PyTorch state-dict pickles import
# (checked against real pickles of protocols 0-5 in the tests). Protocols 0-2 use Python 2
# names (`__builtin__`, `copy_reg`); below protocol 3 they are mapped to Python 3 names
# first, as the Unpickler does, so they need no entries of their own.
_NUMPY_CORE = ("numpy.core", "numpy._core")  # NumPy 1.x and 2.x spellings
# fmt: off
_NUMPY_SCALARS = (
    "bool_", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64", "intc",
    "uintc", "longlong", "ulonglong", "float16", "float32", "float64", "longdouble", "complex64",
    "complex128", "clongdouble", "str_", "bytes_", "datetime64", "timedelta64",
)
_TORCH_STORAGES = (
    "FloatStorage", "DoubleStorage", "HalfStorage", "BFloat16Storage", "LongStorage", "IntStorage",
    "ShortStorage", "CharStorage", "ByteStorage", "BoolStorage", "ComplexFloatStorage",
    "ComplexDoubleStorage", "UntypedStorage", "TypedStorage",
)
_BUILTIN_TYPES = (
    "object", "int", "float", "complex", "bool", "str", "bytes", "bytearray", "list", "tuple",
    "dict", "set", "frozenset", "slice", "range",
)
_TORCH_DTYPES = (
    "float16", "float32", "float64", "bfloat16", "half", "float", "double", "int8", "int16",
    "int32", "int64", "uint8", "bool", "complex64", "complex128", "long", "int", "short",
)
# fmt: on

_MODULE_LEVEL_NAMES = (
    *(f"{core}.multiarray._reconstruct" for core in _NUMPY_CORE),
    *(f"{core}.multiarray.scalar" for core in _NUMPY_CORE),
    *(f"{core}.numeric._frombuffer" for core in _NUMPY_CORE),
    "numpy.ndarray",
    "numpy.dtype",
    *(f"numpy.{name}" for name in _NUMPY_SCALARS),
    # A fitted estimator's random_state may be a RandomState or Generator; the ctor helpers
    # take the bit generator class as an argument, which is itself checked here.
    "numpy.random._pickle.__randomstate_ctor",
    "numpy.random._pickle.__generator_ctor",
    "numpy.random._pickle.__bit_generator_ctor",
    "numpy.random.mtrand.RandomState",
    "numpy.random._generator.Generator",
    "numpy.random._mt19937.MT19937",
    "numpy.random._pcg64.PCG64",
    "numpy.random._pcg64.PCG64DXSM",
    "numpy.random._philox.Philox",
    "numpy.random._sfc64.SFC64",
    # Generator state: Cython's generated unpickler checks a layout checksum, then calls
    # `type.__new__` on the class it is handed (itself checked).
    "numpy.random.bit_generator.SeedSequence",
    "numpy.random.bit_generator.__pyx_unpickle_SeedSequence",
    # Plain containers and values, and the two helpers protocols 0-2 use to rebuild
    # objects (`copyreg._reconstructor` calls only classes that are themselves checked)
    # and bytes (`_codecs.encode(text, 'latin1')`).
    "collections.OrderedDict",
    "copyreg._reconstructor",
    "_codecs.encode",
    *(f"builtins.{name}" for name in _BUILTIN_TYPES),
    "joblib.numpy_pickle.NumpyArrayWrapper",
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor_v3",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
    "torch.Size",
    "torch.device",
    *(f"torch.{name}" for name in _TORCH_STORAGES),
    "torch.storage.UntypedStorage",
    "torch.storage.TypedStorage",
    *(f"torch.{name}" for name in _TORCH_DTYPES),
)

#: Exact (module, qualname) pairs, as `pickle.Unpickler.find_class` receives them (after the
#: `_compat_pickle` mapping below protocol 3). Nothing is allowed by pattern (issue 12): the
#: entries above are module-level names, split at their last dot; scikit-learn's classes are
#: listed one by one in `_sklearn_globals.py`, generated from the installed version.
SAFE_GLOBALS: frozenset[tuple[str, str]] = frozenset(
    [(module, name) for module, _, name in (q.rpartition(".") for q in _MODULE_LEVEL_NAMES)] + list(SKLEARN_GLOBALS)
)

# Not needed for the decision (anything not allowed is unsafe) but named in findings, so a
# reader sees at once that `os.system` is an attack and `mypkg.MyModel` a missing entry.
# fmt: off
_KNOWN_DANGEROUS_MODULES = frozenset((
    "os", "posix", "nt", "subprocess", "sys", "builtins", "runpy", "importlib", "shutil", "socket",
    "pty", "code", "codeop", "webbrowser", "ctypes", "pickle", "marshal", "operator", "functools",
    "types", "commands", "popen2",
))
# fmt: on

_DOTTED = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*$")


def normalize_global(module: str, name: str, *, protocol: int) -> tuple[str, str]:
    """The (module, name) `pickle.Unpickler.find_class` imports for a pickle of `protocol`.

    Below protocol 3 (with `fix_imports`, the default) Python 2 names are mapped to Python 3
    ones through `_compat_pickle`; from protocol 3 on they are taken as written (CPython
    `Lib/pickle.py`, `Unpickler.find_class`, and `_pickle.c`'s equivalent).
    """
    if protocol >= 3:
        return module, name
    if (module, name) in _compat_pickle.NAME_MAPPING:
        return _compat_pickle.NAME_MAPPING[(module, name)]
    return _compat_pickle.IMPORT_MAPPING.get(module, module), name


def is_allowed_global(module: str, name: str, *, protocol: int) -> bool:
    """True if a pickle of `protocol` may import `name` from `module`.

    find_class imports `module`, then for protocol >= 4 splits `name` on dots and walks it
    with getattr (CPython `pickle._getattribute`); below 4 it is one getattr, which newer or
    other unpicklers may also walk. So a dotted name is followed at every protocol: each step
    of the walk (`a`, `a.b`, `a.b.c`) must itself be an exact allowed pair, or the pickle can
    reach anything the allowed module can (issue 12: `sklearn.calibration` +
    `np.f2py.subprocess.Popen` reached `subprocess.Popen`).
    """
    module, name = normalize_global(module, name, protocol=protocol)
    parts = name.split(".")
    return all((module, ".".join(parts[: i + 1])) in SAFE_GLOBALS for i in range(len(parts)))


# --- where a scan reads from ----------------------------------------------------------------

Buffer = bytes | mmap.mmap


class _Malformed(ValueError):
    """The stream cannot be what it claims to be."""


class _Reader:
    """A file-like view of a buffer for `pickletools.genops`, bounded so that hostile length
    fields never make it copy more than the buffer holds."""

    def __init__(self, buf: Buffer, start: int = 0) -> None:
        self.buf = buf
        self.size = len(buf)
        self.pos = start

    def read(self, n: int = -1) -> bytes:
        if n < 0:
            n = self.size - self.pos
        if self.pos + n > self.size:
            raise _Malformed(f"{n} bytes wanted at offset {self.pos}, past the end")
        data = self.buf[self.pos : self.pos + n]
        self.pos += n
        return data

    def readline(self) -> bytes:
        end = self.buf.find(b"\n", self.pos, min(self.size, self.pos + MAX_LINE))
        stop = end + 1 if end >= 0 else min(self.size, self.pos + MAX_LINE)
        data = self.buf[self.pos : stop]
        self.pos = stop
        return data

    def tell(self) -> int:
        return self.pos

    def skip(self, n: int) -> None:
        if n < 0 or self.pos + n > self.size:
            raise _Malformed(f"cannot skip {n} bytes at offset {self.pos}")
        self.pos += n


# --- the symbolic pickle machine ------------------------------------------------------------


@dataclass(frozen=True)
class _Global:
    module: str
    name: str


@dataclass(eq=False)
class _Instance:
    """What REDUCE, NEWOBJ, OBJ or INST would build: a call of `callee` with `args`."""

    callee: object
    args: object
    state: object = None


@dataclass(frozen=True)
class _Opaque:
    what: str


@dataclass(eq=False)
class _Dict:
    items: list[tuple[object, object]] = field(default_factory=list)

    def get(self, key: str) -> object:
        return next((value for k, value in self.items if k == key), None)

    def has(self, key: str) -> bool:
        return any(k == key for k, _ in self.items)


class _Import(NamedTuple):
    module: str
    name: str
    offset: int
    opcode: str
    protocol: int  # of the latest PROTO before it: find_class resolves names by it


@dataclass
class _PickleRun:
    """What one pass of the machine saw over one pickle stream."""

    start: int
    imports: list[_Import] = field(default_factory=list)
    problems: list[tuple[str, int]] = field(default_factory=list)  # (message, offset)
    stopped: bool = False
    end: int = 0
    error: str | None = None
    proto_start: bool = False
    opcodes: int = 0
    extensions: int = 0
    joblib_arrays: int = 0

    @property
    def is_pickle(self) -> bool:
        """Evidence the stream is meant as a pickle, not bytes that happen to parse a little.

        A stream that imports a well-formed name before failing is a pickle: the Unpickler
        would have imported (and maybe called) it before reaching the error. A PROTO opening
        counts once a few opcodes parse after it: raw tensor bytes start with 0x80 0x02 now
        and then (an int64 640), and then fail at once.
        A stream that merely reaches STOP (protocols 0 and 1 have no PROTO) is a pickle unless
        all it would do is look up copyreg extension codes: random bytes do that (EXT1 is 0x82),
        and the registry is empty unless a program fills it.
        """
        named = any(_DOTTED.match(imp.module) and _DOTTED.match(imp.name) for imp in self.imports)
        plain_stop = self.stopped and not self.extensions
        return named or plain_stop or (self.proto_start and self.opcodes >= 3)


_JOBLIB_WRAPPER = _Global("joblib.numpy_pickle", "NumpyArrayWrapper")
_RECONSTRUCTOR = _Global("copyreg", "_reconstructor")  # `copy_reg` below protocol 3 resolves to it


def _class_of(instance: _Instance) -> object:
    """The class an instance is built from: the callee, or the class handed to
    `copyreg._reconstructor` (how protocols 0 and 1 rebuild plain objects)."""
    if instance.callee == _RECONSTRUCTOR and isinstance(instance.args, tuple) and instance.args:
        return instance.args[0]
    return instance.callee


def _cap(value: str | bytes) -> object:
    return value if len(value) <= MAX_TRACKED_STRING else _Opaque(type(value).__name__)


class _PickleMachine:
    """Replays a pickle's opcodes on a symbolic stack: values, not objects, are built.

    The stack follows CPython's C Unpickler: MARK opens a fence that ordinary pops may not
    cross, so a stream that would underflow there is malformed here too. Nothing is imported
    or called; imports and calls are only recorded.
    """

    def __init__(self, reader: _Reader, *, joblib: bool) -> None:
        self.reader = reader
        self.joblib = joblib
        self.stack: list[object] = []
        self.marks: list[int] = []
        self.memo: dict[int, object] = {}
        # The Unpickler starts every load at protocol 0 and takes each PROTO it meets, even
        # in mid-stream (both `pickle.py` and `_pickle.c`); names are resolved by the latest.
        self.proto = 0
        self.run = _PickleRun(start=reader.tell())

    # stack primitives
    def _fence(self) -> int:
        return self.marks[-1] if self.marks else 0

    def pop(self) -> object:
        if len(self.stack) <= self._fence():
            raise _Malformed("stack underflow")
        return self.stack.pop()

    def top(self) -> object:
        if len(self.stack) <= self._fence():
            raise _Malformed("stack underflow")
        return self.stack[-1]

    def pop_mark(self) -> list[object]:
        if not self.marks:
            raise _Malformed("no MARK to pop to")
        fence = self.marks.pop()
        items = self.stack[fence:]
        del self.stack[fence:]
        return items

    def execute(self) -> _PickleRun:
        """Run to STOP or to the first error; never raises on bad input."""
        try:
            for opcode, arg, pos in pickletools.genops(cast(Any, self.reader)):
                self._step(opcode.name, arg, self.reader.pos if pos is None else pos)
                self.run.opcodes += 1
                if opcode.name == "STOP":
                    self.run.stopped = True
                    break
        except (ValueError, EOFError, OverflowError, struct.error, IndexError, KeyError, TypeError) as exc:
            # pickletools raises ValueError (and a few others) on truncated or invalid input;
            # the bytes are hostile, so a parse failure is a finding, never a crash.
            self.run.error = str(exc) or type(exc).__name__
        except DeprecationWarning as exc:
            # An invalid escape in a protocol-0 string, raised only where warnings are errors
            # (the test suite). Not silenced with catch_warnings: that is not thread-safe, and
            # the service scans in worker threads.
            self.run.error = str(exc)
        self.run.end = self.reader.tell()
        return self.run

    def _step(self, name: str, arg: Any, pos: int) -> None:
        match name:
            case "PROTO":
                if not (isinstance(arg, int) and 0 <= arg <= pickle.HIGHEST_PROTOCOL):
                    raise _Malformed(f"unsupported pickle protocol {arg}")
                self.proto = arg
                if pos == self.run.start and arg >= 2:
                    self.run.proto_start = True
            case "FRAME":
                pass
            case "STOP":
                self.pop()
            case "MARK":
                self.marks.append(len(self.stack))
            case "POP":
                if len(self.stack) > self._fence():
                    self.stack.pop()
                else:
                    self.pop_mark()
            case "POP_MARK":
                self.pop_mark()
            case "DUP":
                self.stack.append(self.top())
            case "INT" | "BININT" | "BININT1" | "BININT2" | "LONG" | "LONG1" | "LONG4":
                self.stack.append(arg)
            case "FLOAT" | "BINFLOAT" | "NONE" | "NEWTRUE" | "NEWFALSE":
                self.stack.append({"NONE": None, "NEWTRUE": True, "NEWFALSE": False}.get(name, arg))
            case "STRING" | "BINSTRING" | "SHORT_BINSTRING" | "UNICODE" | "SHORT_BINUNICODE":
                self.stack.append(_cap(arg))
            case "BINUNICODE" | "BINUNICODE8" | "BINBYTES" | "SHORT_BINBYTES" | "BINBYTES8":
                self.stack.append(_cap(arg))
            case "BYTEARRAY8" | "NEXT_BUFFER":
                self.stack.append(_Opaque("buffer"))
            case "READONLY_BUFFER":
                self.top()
            case "EMPTY_LIST":
                self.stack.append([])
            case "EMPTY_TUPLE":
                self.stack.append(())
            case "EMPTY_DICT":
                self.stack.append(_Dict())
            case "EMPTY_SET":
                self.stack.append(_Opaque("set"))
            case "LIST":
                self.stack.append(self.pop_mark())
            case "TUPLE":
                self.stack.append(tuple(self.pop_mark()))
            case "TUPLE1" | "TUPLE2" | "TUPLE3":
                items = [self.pop() for _ in range(int(name[-1]))]
                self.stack.append(tuple(reversed(items)))
            case "DICT":
                items = self.pop_mark()
                self.stack.append(_Dict(list(zip(items[::2], items[1::2], strict=False))))
            case "APPEND":
                value = self.pop()
                target = self.top()
                if isinstance(target, list):
                    target.append(value)
            case "APPENDS":
                values = self.pop_mark()
                target = self.top()
                if isinstance(target, list):
                    target.extend(values)
            case "SETITEM":
                value, key = self.pop(), self.pop()
                target = self.top()
                if isinstance(target, _Dict):
                    target.items.append((key, value))
            case "SETITEMS":
                items = self.pop_mark()
                target = self.top()
                if isinstance(target, _Dict):
                    target.items.extend(zip(items[::2], items[1::2], strict=False))
            case "ADDITEMS":
                self.pop_mark()
                self.top()
            case "FROZENSET":
                self.pop_mark()
                self.stack.append(_Opaque("frozenset"))
            case "GET" | "BINGET" | "LONG_BINGET":
                if arg not in self.memo:
                    raise _Malformed(f"memo key {arg} read before it was written")
                self.stack.append(self.memo[arg])
            case "PUT" | "BINPUT" | "LONG_BINPUT":
                self.memo[arg] = self.top()
            case "MEMOIZE":
                self.memo[len(self.memo)] = self.top()
            case "EXT1" | "EXT2" | "EXT4":
                # copyreg's extension registry maps codes to globals at load time: what it
                # imports cannot be known from the file.
                self.run.extensions += 1
                self.run.problems.append((f"imports through the extension registry (code {arg})", pos))
                self.stack.append(_Opaque("extension"))
            case "GLOBAL" | "INST":
                module, _, attr = str(arg).partition(" ")
                imported = self._import(module, attr, pos, name)
                if name == "GLOBAL":
                    self.stack.append(imported)
                else:
                    self.stack.append(_Instance(imported, tuple(self.pop_mark())))
            case "STACK_GLOBAL":
                attr_value, module_value = self.pop(), self.pop()
                if isinstance(module_value, str) and isinstance(attr_value, str):
                    self.stack.append(self._import(module_value, attr_value, pos, name))
                else:
                    # The Unpickler would import whatever these values turn out to be.
                    self.run.problems.append(("STACK_GLOBAL with a module or name that is not a literal string", pos))
                    self.stack.append(_Opaque("unresolved global"))
            case "REDUCE" | "NEWOBJ":
                args = self.pop()
                self.stack.append(self._call(self.pop(), args, pos))
            case "NEWOBJ_EX":
                kwargs, args = self.pop(), self.pop()
                self.stack.append(self._call(self.pop(), (args, kwargs), pos))
            case "OBJ":
                items = self.pop_mark()
                if not items:
                    raise _Malformed("OBJ without a class")
                self.stack.append(self._call(items[0], tuple(items[1:]), pos))
            case "BUILD":
                state = self.pop()
                target = self.top()
                if isinstance(target, _Global):
                    # BUILD on a class or function sets attributes on it (module state): a
                    # known way to rewire an allowed global into a dangerous one.
                    self.run.problems.append(("BUILD sets attributes on an imported global", pos))
                elif isinstance(target, _Instance):
                    target.state = state
                    if self.joblib and _class_of(target) == _JOBLIB_WRAPPER:
                        self._joblib_array(target)
            case "PERSID":
                self.stack.append(_Opaque("persistent id"))
            case "BINPERSID":
                self.pop()
                self.stack.append(_Opaque("persistent id"))
            case _:
                raise _Malformed(f"unsupported opcode {name}")

    def _import(self, module: str, attr: str, pos: int, opcode: str) -> _Global:
        """Record an import; the global as find_class would resolve it at this protocol."""
        self.run.imports.append(_Import(module, attr, pos, opcode, self.proto))
        return _Global(*normalize_global(module, attr, protocol=self.proto))

    def _call(self, callee: object, args: object, pos: int) -> _Instance:
        if not isinstance(callee, _Global):
            # Benign pickles only call named globals; calling the result of an earlier call
            # chains gadgets (e.g. a method fetched by getattr).
            self.run.problems.append(("calls an object that is not a named global", pos))
        return _Instance(callee, args)

    def _joblib_array(self, wrapper: _Instance) -> None:
        # joblib's NumpyUnpickler.load_build: once a NumpyArrayWrapper has its state, the
        # array's bytes follow in the stream (after a padding byte and padding, joblib >= 1.2),
        # or, for object arrays, a nested pickle read by a plain Unpickler.
        state = wrapper.state
        if not isinstance(state, _Dict):
            raise _Malformed("joblib array wrapper without a state dict")
        shape, dtype = state.get("shape"), state.get("dtype")
        if not (isinstance(shape, tuple) and all(isinstance(n, int) and n >= 0 for n in shape)):
            raise _Malformed("joblib array with an unreadable shape")
        itemsize, has_object = _dtype_layout(dtype)
        self.run.joblib_arrays += 1
        self.pop()
        self.stack.append(_Opaque("ndarray"))
        if has_object:
            nested = _PickleMachine(self.reader, joblib=False).execute()
            self.run.imports.extend(nested.imports)
            self.run.problems.extend(nested.problems)
            if nested.error is not None:
                raise _Malformed(f"nested object-array pickle: {nested.error}")
            return
        if state.get("numpy_array_alignment_bytes") is not None:
            self.reader.skip(self.reader.read(1)[0])
        self.reader.skip(math.prod(shape) * itemsize)


def _dtype_layout(dtype: object) -> tuple[int, bool]:
    """(itemsize, has objects) of a symbolic `numpy.dtype(...)` with its BUILD state."""
    if not (
        isinstance(dtype, _Instance)
        and dtype.callee == _Global("numpy", "dtype")
        and isinstance(dtype.args, tuple)
        and dtype.args
        and isinstance(dtype.args[0], str)
    ):
        raise _Malformed("joblib array with an unreadable dtype")
    code = dtype.args[0]
    state = dtype.state if isinstance(dtype.state, tuple) else ()
    # numpy's dtype state: (version, byteorder, subarray, names, fields, elsize, alignment,
    # flags[, metadata]); elsize is set for flexible and structured types, flags bit 0 is
    # NPY_ITEM_REFCOUNT (the dtype holds Python objects).
    flags = state[7] if len(state) > 7 and isinstance(state[7], int) else 0
    has_object = code.startswith("O") or bool(flags & 1)
    elsize = state[5] if len(state) > 5 and isinstance(state[5], int) else -1
    if elsize > 0:
        return elsize, has_object
    if not re.fullmatch(r"[a-zA-Z][a-zA-Z0-9]{0,3}", code):
        raise _Malformed(f"joblib array with dtype code {code!r}")
    try:
        return np.dtype(code).itemsize, has_object
    except TypeError as exc:
        raise _Malformed(f"joblib array with dtype code {code!r}") from exc


# --- findings ---------------------------------------------------------------------------------


@dataclass
class _Scan:
    """Accumulates one file's scan (members of archives included)."""

    format: ModelFormat = ModelFormat.UNKNOWN
    findings: list[Finding] = field(default_factory=list)
    globals: set[str] = field(default_factory=set)

    def add(
        self,
        check: str,
        severity: Severity,
        where: str,
        message: str,
        *,
        extra: dict[str, str | int | bool] | None = None,
        **evidence: str | int | bool,
    ) -> None:
        """Record a finding about `where` (a file, or `file!member` inside an archive)."""
        self.findings.append(
            Finding(
                check=f"scanner.{check}",
                severity=severity,
                message=f"{where}: {message}",
                count=1,
                evidence={"file": where, **(extra or {}), **evidence},
            )
        )


def _importable(module: str) -> bool:
    """Whether the top-level package of `module` exists here (found, never imported)."""
    top = module.split(".")[0]
    if top in sys.stdlib_module_names:
        return True
    try:
        return _DOTTED.match(top) is not None and importlib.util.find_spec(top) is not None
    except (ImportError, ValueError):
        return False


def _report_pickle(run: _PickleRun, where: str, scan: _Scan, *, seen: set[str], secondary: bool = False) -> None:
    """Turn one pass's imports and problems into findings.

    A `secondary` pass reads bytes the primary loader treats as data (joblib array bytes read
    by pickle.load instead): benign files turn into nonsense there, so only imports of modules
    that exist count, and opcode oddities do not.
    """
    for imp in run.imports:
        module, attr = normalize_global(imp.module, imp.name, protocol=imp.protocol)
        qualified = f"{module}.{attr}"
        if secondary and not _importable(module):
            continue
        scan.globals.add(qualified)
        if is_allowed_global(imp.module, imp.name, protocol=imp.protocol) or qualified in seen:
            continue
        seen.add(qualified)
        dangerous = module.split(".")[0] in _KNOWN_DANGEROUS_MODULES
        scan.add(
            "pickle.global",
            Severity.FAIL,
            where,
            f"pickle imports {qualified} ({'known dangerous' if dangerous else 'not on the allow-list'})"
            f" at offset {imp.offset}",
            extra={"global": qualified, "dangerous": dangerous},
            offset=imp.offset,
        )
    for message, offset in [] if secondary else run.problems:
        scan.add("pickle.unsafe_opcode", Severity.FAIL, where, f"{message} at offset {offset}", offset=offset)


def _scan_pickles(buf: Buffer, where: str, scan: _Scan, *, force: bool = False) -> bool:
    """Scan the pickle(s) at the start of `buf`; False if it is not a pickle (unless forced)."""
    first = _PickleMachine(_Reader(buf), joblib=True).execute()
    if not (force or first.is_pickle):
        return False
    scan.format = ModelFormat.JOBLIB if first.joblib_arrays else ModelFormat.PICKLE
    seen: set[str] = set()
    _report_pickle(first, where, scan, seen=seen)
    if first.error is not None:
        scan.add("pickle.malformed", Severity.FAIL, where, f"malformed pickle: {first.error}", offset=first.end)
        return True
    if first.joblib_arrays:
        # pickle.load (not joblib.load) reads the array bytes as opcodes: check that reading
        # too, so a payload hidden in "array data" is caught whichever loader is used.
        plain = _PickleMachine(_Reader(buf), joblib=False).execute()
        _report_pickle(plain, f"{where} (read by pickle.load)", scan, seen=seen, secondary=True)
    # Loaders may call pickle.load again on the rest (legacy torch.save writes several
    # pickles in a row); later streams that look like pickles are held to the same rules.
    run = first
    for _ in range(MAX_PICKLES_PER_STREAM):
        if not run.stopped or run.end >= len(buf):
            break
        run = _PickleMachine(_Reader(buf, run.end), joblib=True).execute()
        if not run.is_pickle:
            break
        _report_pickle(run, f"{where} (pickle at offset {run.start})", scan, seen=seen)
        if run.error is not None:
            scan.add("pickle.malformed", Severity.FAIL, where, f"malformed pickle at offset {run.start}: {run.error}")
    return True


# --- NumPy ------------------------------------------------------------------------------------


def _scan_npy(buf: Buffer, where: str, scan: _Scan, *, check_size: bool = True) -> None:
    scan.format = ModelFormat.NUMPY
    # NEP 1 / numpy.lib.format: magic, major, minor, header length (u2 in v1, u4 in v2/3),
    # then a Python dict literal; numpy reads it with ast.literal_eval, so do we.
    try:
        major = buf[6]
        length_size = 2 if major == 1 else 4
        (length,) = struct.unpack("<H" if major == 1 else "<I", buf[8 : 8 + length_size])
        start = 8 + length_size
        if length > 65_536 or start + length > len(buf):
            raise ValueError("header length out of range")
        header = ast.literal_eval(bytes(buf[start : start + length]).decode("utf-8" if major >= 3 else "latin1"))
        if not isinstance(header, dict) or not {"descr", "shape", "fortran_order"} <= header.keys():
            raise ValueError("header is not a dict with descr, shape and fortran_order")
        dtype = np.lib.format.descr_to_dtype(header["descr"])
        shape = tuple(int(n) for n in header["shape"])
    except (ValueError, TypeError, SyntaxError, IndexError, struct.error, MemoryError, RecursionError) as exc:
        scan.add("npy.malformed", Severity.FAIL, where, f"malformed .npy header: {exc}")
        return
    if dtype.hasobject:
        scan.add(
            "npy.object",
            Severity.FAIL,
            where,
            f"object array ({dtype}): loading it with allow_pickle=True unpickles arbitrary objects",
        )
        # Name what the embedded pickle would import, for the reader of the report.
        inner = _Scan()
        _scan_pickles(buf[start + length :], f"{where} (object data)", inner, force=True)
        scan.findings.extend(inner.findings)
        scan.globals |= inner.globals
    elif check_size and math.prod(shape) * dtype.itemsize != len(buf) - start - length:
        scan.add("npy.size", Severity.WARN, where, "data size does not match the header's shape and dtype")


# --- safetensors -------------------------------------------------------------------------------

# Bytes per element; sub-byte float formats are checked for range and overlap only.
_SAFETENSORS_DTYPES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "F8_E8M0": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8, "C64": 8,
}  # fmt: skip


def _looks_like_safetensors(buf: Buffer) -> bool:
    # The header is a JSON object right after its u64 length. Raw tensor bytes (an int64 array
    # of small numbers) can fake the length and a '{', rarely a '{"' too, and almost never a
    # whole JSON object.
    if len(buf) < 10:
        return False
    (length,) = struct.unpack("<Q", buf[:8])
    if not (2 <= length <= MAX_SAFETENSORS_HEADER and buf[8:9] == b"{"):
        return False
    if buf[8:10] in (b'{"', b"{}"):
        return True
    try:
        return isinstance(json.loads(bytes(buf[8 : 8 + length])), dict)
    except ValueError:
        return False


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    if len(keys) != len(set(keys)):
        # Two parsers may keep different copies of a duplicated key: refuse the ambiguity.
        raise ValueError(f"duplicate keys in header: {sorted({k for k in keys if keys.count(k) > 1})}")
    return dict(pairs)


def _scan_safetensors(buf: Buffer, where: str, scan: _Scan) -> None:
    # Format: u64 little-endian header length N, N bytes of JSON, then the byte buffer, which
    # tensors must cover exactly: in range, sorted, no overlap, no gap (as the reference
    # implementation enforces in `SafeTensors::read_metadata`).
    scan.format = ModelFormat.SAFETENSORS
    (length,) = struct.unpack("<Q", buf[:8])
    data_size = len(buf) - 8 - length
    problems: list[str] = []
    try:
        if data_size < 0:
            raise ValueError(f"header length {length} runs past the end of the file")
        header = json.loads(bytes(buf[8 : 8 + length]).decode("utf-8"), object_pairs_hook=_no_duplicate_keys)
        if not isinstance(header, dict):
            raise ValueError("header is not a JSON object")
    except ValueError as exc:
        scan.add("safetensors.malformed", Severity.FAIL, where, f"malformed safetensors header: {exc}")
        return
    spans: list[tuple[int, int, str]] = []
    for name, info in header.items():
        if name == "__metadata__":
            if not (isinstance(info, dict) and all(isinstance(v, str) for v in info.values())):
                problems.append("__metadata__ must map strings to strings")
            continue
        if not (isinstance(info, dict) and set(info) == {"dtype", "shape", "data_offsets"}):
            problems.append(f"tensor {name!r}: needs exactly dtype, shape and data_offsets")
            continue
        shape, offsets, dtype = info["shape"], info["data_offsets"], info["dtype"]
        if not (isinstance(shape, list) and all(isinstance(n, int) and n >= 0 for n in shape)):
            problems.append(f"tensor {name!r}: bad shape {shape!r}")
            continue
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(n, int) for n in offsets)) or not (
            0 <= offsets[0] <= offsets[1] <= data_size
        ):
            problems.append(f"tensor {name!r}: offsets {offsets!r} out of range 0..{data_size}")
            continue
        itemsize = _SAFETENSORS_DTYPES.get(dtype) if isinstance(dtype, str) else None
        if itemsize is not None and offsets[1] - offsets[0] != math.prod(shape) * itemsize:
            problems.append(f"tensor {name!r}: {offsets[1] - offsets[0]} bytes for shape {shape} of {dtype}")
        spans.append((offsets[0], offsets[1], name))
    end = 0
    for begin, stop, name in sorted(spans):
        if begin < end:
            problems.append(f"tensor {name!r} overlaps the previous tensor")
        elif begin > end:
            problems.append(f"gap of {begin - end} bytes before tensor {name!r}")
        end = max(end, stop)
    if not problems and end != data_size:
        problems.append(f"{data_size - end} bytes after the last tensor")
    for problem in problems:
        scan.add("safetensors.malformed", Severity.FAIL, where, problem)


# --- Keras and HDF5 ---------------------------------------------------------------------------


def _keras_objects(config: object) -> Iterator[dict[str, Any]]:
    """Every serialized object (a dict with `class_name`) in a Keras config, depth first."""
    stack = [config]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "class_name" in item:
                yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _check_keras_config(data: bytes, where: str, scan: _Scan) -> None:
    try:
        config = json.loads(data)
    except ValueError as exc:
        scan.add("keras.malformed", Severity.FAIL, where, f"config.json is not JSON: {exc}")
        return
    for obj in _keras_objects(config):
        # A Lambda layer (Keras 2 and 3) serializes its function as marshalled bytecode
        # (`__lambda__` in Keras 3); loading it outside safe_mode runs that code.
        if obj.get("class_name") in ("Lambda", "__lambda__"):
            scan.add("keras.lambda", Severity.FAIL, where, "Keras Lambda layer: loading it runs embedded code")
        module = obj.get("module")
        if isinstance(module, str) and module.split(".")[0] not in ("keras", "tensorflow", "tf_keras"):
            # Keras imports the named module to rebuild the object (CVE-2025-1550 style).
            scan.add(
                "keras.module",
                Severity.WARN,
                where,
                f"object {obj.get('class_name')!r} from module {module!r} outside Keras",
                module=module,
            )


def _hdf5_offset(buf: Buffer) -> int | None:
    # The superblock is at 0 or, after a user block, at 512, 1024, 2048, ... (HDF5 spec, II.A).
    offset = 0
    while offset + len(HDF5_MAGIC) <= len(buf):
        if buf[offset : offset + len(HDF5_MAGIC)] == HDF5_MAGIC:
            return offset
        offset = 512 if offset == 0 else offset * 2
    return None


def _scan_hdf5(buf: Buffer, where: str, scan: _Scan, *, in_keras: bool) -> None:
    scan.format = ModelFormat.HDF5
    # Legacy Keras stores the model config as a JSON string attribute, uncompressed: a Lambda
    # layer is visible in the raw bytes even without an HDF5 parser.
    if buf.find(b'"class_name": "Lambda"') >= 0 or buf.find(b'"class_name":"Lambda"') >= 0:
        scan.add("keras.lambda", Severity.FAIL, where, "Keras Lambda layer in HDF5 model config")
    elif in_keras:
        scan.add("hdf5.weights", Severity.INFO, where, "HDF5 weights of a Keras archive (arrays only)")
    else:
        scan.add(
            "hdf5.unverified",
            Severity.WARN,
            where,
            "HDF5 file: its contents cannot be verified here (convert to safetensors or .keras)",
        )


# --- compressed streams and zip archives ------------------------------------------------------


def _decompressor(buf: Buffer) -> tuple[str, Callable[[bytes, int], bytes]] | None:
    head = bytes(buf[:6])
    if head[:2] == b"\x1f\x8b":
        return "gzip", zlib.decompressobj(31).decompress
    if head[:3] == b"BZh":
        return "bz2", bz2.BZ2Decompressor().decompress
    if head == b"\xfd7zXZ\x00":
        return "xz", lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress
    if head[:1] == b"\x5d" and head[1:3] == b"\x00\x00":
        return "lzma", lzma.LZMADecompressor(lzma.FORMAT_ALONE).decompress
    if len(head) >= 2 and head[0] == 0x78 and (head[0] * 256 + head[1]) % 31 == 0:
        return "zlib", zlib.decompressobj().decompress
    return None


def _really_compressed(prefix: bytes) -> bool:
    """True if `prefix` starts a stream that decompresses (a magic number alone is too weak)."""
    found = _decompressor(prefix)
    if found is None:
        return False
    try:
        return bool(found[1](prefix[:65536], 1024))
    except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError):
        return False


def _scan_compressed(buf: Buffer, where: str, scan: _Scan, depth: int) -> bool:
    found = _decompressor(buf)
    if found is None:
        return False
    kind, decompress = found
    if len(buf) > MAX_INNER_BYTES:
        scan.add("archive.too_large", Severity.FAIL, where, f"{kind} stream larger than {MAX_INNER_BYTES} bytes")
        return True
    try:
        inner = decompress(bytes(buf), MAX_INNER_BYTES + 1)
    except (OSError, EOFError, ValueError, zlib.error, lzma.LZMAError):
        return False  # only looked compressed
    if len(inner) > MAX_INNER_BYTES:
        scan.add("archive.too_large", Severity.FAIL, where, f"{kind} data expands past {MAX_INNER_BYTES} bytes")
        return True
    scan.add("compressed", Severity.INFO, where, f"{kind}-compressed; scanned the decompressed data")
    _scan_buffer(inner, f"{where}!{kind}", scan, depth + 1)
    return True


def _zip_kind(names: list[str]) -> ModelFormat:
    if any(name == "data.pkl" or name.endswith("/data.pkl") for name in names):
        return ModelFormat.PYTORCH
    if "config.json" in names and ("metadata.json" in names or any(n.endswith(".h5") for n in names)):
        return ModelFormat.KERAS
    if names and all(name.endswith(".npy") for name in names):
        return ModelFormat.NPZ
    return ModelFormat.ZIP


def _scan_zip(source: Buffer, where: str, scan: _Scan, depth: int) -> None:
    try:
        archive = zipfile.ZipFile(cast(Any, _SeekableBuffer(source)))
        infos = archive.infolist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        scan.add("zip.malformed", Severity.FAIL, where, f"malformed zip: {exc}")
        return
    kind = _zip_kind([info.filename for info in infos])
    scan.format = kind
    with archive:
        for info in infos:
            member = f"{where}!{info.filename}"
            if info.is_dir():
                continue
            parts = info.filename.replace("\\", "/").split("/")
            if info.filename.startswith(("/", "\\")) or ".." in parts or re.match(r"^[A-Za-z]:", info.filename):
                scan.add("zip.path", Severity.FAIL, member, "member path escapes the archive (zip slip)")
            if info.flag_bits & 0x1:
                scan.add("zip.encrypted", Severity.WARN, member, "encrypted member cannot be scanned")
                continue
            try:
                _scan_member(archive, info, member, scan, depth, in_keras=kind is ModelFormat.KERAS)
            except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError) as exc:
                scan.add("zip.malformed", Severity.FAIL, member, f"unreadable member: {exc}")


def _scan_member(
    archive: zipfile.ZipFile, info: zipfile.ZipInfo, member: str, scan: _Scan, depth: int, *, in_keras: bool
) -> None:
    with archive.open(info) as fh:
        if info.file_size <= MAX_INNER_BYTES:
            data = fh.read(MAX_INNER_BYTES + 1)
            if len(data) > MAX_INNER_BYTES:
                raise ValueError("member larger than its header says")
            if in_keras and info.filename == "config.json":
                _check_keras_config(data, member, scan)
            # The member's own format (a pickle inside a PyTorch zip) must not replace the
            # archive's, so scan it apart and keep its findings and globals.
            inner = _Scan()
            _scan_buffer(data, member, inner, depth + 1, in_keras=in_keras)
            scan.findings.extend(inner.findings)
            scan.globals |= inner.globals
            return
        # A large member is tensor data, or hostile. The pickle machine over its first bytes
        # tells them apart: raw numbers fail within a few opcodes without importing anything.
        prefix = fh.read(PROBE_BYTES)
    if prefix.startswith(NPY_MAGIC):
        _scan_npy(prefix, member, scan, check_size=False)  # the header decides; data is numbers
        return
    if prefix.startswith(HDF5_MAGIC):
        _scan_hdf5(prefix, member, scan, in_keras=in_keras)
        return
    is_pickle = _scan_pickles(prefix, member, _Scan())
    nested = prefix[:4] in _ZIP_MAGICS or _really_compressed(prefix)
    if is_pickle or nested or info.filename.endswith((".pkl", ".pickle", ".joblib")):
        scan.add(
            "archive.too_large",
            Severity.FAIL,
            member,
            f"member of {info.file_size} bytes holds a pickle or an archive too large to scan",
        )


class _SeekableBuffer:
    """A read-only file object over bytes or an mmap, for `zipfile`."""

    def __init__(self, buf: Buffer) -> None:
        self.buf = buf
        self.pos = 0

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        base = {os.SEEK_SET: 0, os.SEEK_CUR: self.pos, os.SEEK_END: len(self.buf)}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def read(self, n: int = -1) -> bytes:
        end = len(self.buf) if n is None or n < 0 else min(len(self.buf), self.pos + n)
        data = bytes(self.buf[self.pos : end])
        self.pos = max(self.pos, end)
        return data


# --- dispatch ---------------------------------------------------------------------------------


_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")  # a local file header; an empty archive


def _is_zip(buf: Buffer) -> bool:
    if buf[:4] in _ZIP_MAGICS:
        return True
    # A zip is read from its end (the central directory), so data in front of it, a pickle
    # for instance, does not stop zip readers: check for a polyglot too.
    return zipfile.is_zipfile(cast(Any, _SeekableBuffer(buf)))


def _scan_buffer(buf: Buffer, where: str, scan: _Scan, depth: int, *, in_keras: bool = False) -> None:
    if depth > MAX_DEPTH:
        scan.add("archive.depth", Severity.FAIL, where, f"nested deeper than {MAX_DEPTH} archives")
        return
    # Formats with a magic number first. Their magics are not valid pickle openings, so a file
    # cannot be both (the zip check below handles pickle-then-zip polyglots).
    if buf[:6] == NPY_MAGIC:
        _scan_npy(buf, where, scan)
        return
    hdf5_at = _hdf5_offset(buf)
    if hdf5_at is not None:
        _scan_hdf5(buf, where, scan, in_keras=in_keras)
        if hdf5_at > 0:
            # The user block in front of the superblock is free-form: it can hold a pickle.
            scan.format = ModelFormat.HDF5 if not _scan_pickles(buf, where, scan) else scan.format
        return
    if buf[:4] in _ZIP_MAGICS:
        _scan_zip(buf, where, scan, depth)
        return
    if _looks_like_safetensors(buf):
        _scan_safetensors(buf, where, scan)
        return
    if _scan_compressed(buf, where, scan, depth):
        return
    if buf[:4] == LZ4_FRAME_MAGIC:
        # joblib's lz4 compressor needs the lz4 package, which mlwarden does not ship.
        scan.add("compressed.unsupported", Severity.WARN, where, "lz4-compressed: cannot be scanned here")
        return
    format_before = scan.format
    is_pickle = _scan_pickles(buf, where, scan)
    if _is_zip(buf):
        _scan_zip(buf, where, scan, depth)
        if is_pickle:
            scan.add("polyglot", Severity.FAIL, where, "file is both a pickle and a zip archive")
    elif not is_pickle:
        scan.format = format_before


def _finish(path: str, size: int, scan: _Scan) -> FileScan:
    decision = decide(scan.findings)
    return FileScan(
        path=path,
        format=scan.format,
        size=size,
        safe=decision is not Decision.FAIL,
        decision=decision,
        findings=scan.findings,
        globals=sorted(scan.globals),
    )


def scan_bytes(data: bytes, name: str) -> FileScan:
    """Scan one blob (a file's content, an object-store object); `name` is only a label."""
    scan = _Scan()
    _scan_buffer(data, name, scan, depth=0)
    return _finish(name, len(data), scan)


def scan_buffer(buf: Buffer, name: str, *, sha256: str | None = None) -> FileScan:
    """Scan bytes already in hand (an in-memory copy, or a mapping of a private copy), labelled
    `name`; `sha256` is recorded as the digest of these very bytes (the caller computed it)."""
    scan = _Scan()
    if len(buf):
        _scan_buffer(buf, name, scan, depth=0)
    return _finish(name, len(buf), scan).model_copy(update={"sha256": sha256})


def scan_file(path: str | os.PathLike[str], *, name: str | None = None) -> FileScan:
    """Scan one file, memory-mapped so large weights are not read into memory."""
    label = name or os.fspath(path)
    with open(path, "rb") as fh:
        size = os.fstat(fh.fileno()).st_size
        if size == 0:
            return _finish(label, 0, _Scan())
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            scan = _Scan()
            _scan_buffer(mapped, label, scan, depth=0)
            return _finish(label, size, scan)


def scan_path(path: str | os.PathLike[str], *, allow_symlinks: bool = False) -> ScanReport:
    """Scan a file or every file of a folder (walked as `hashing.walk_tree` walks it).

    Raises `hashing.UnsafePathError` for paths the walk refuses and `InputError` for a
    missing path; file contents never raise.
    """
    files = [scan_file(entry.source, name=entry.path) for entry in walk_tree(path, allow_symlinks=allow_symlinks)]
    decision = decide([finding for scan in files for finding in scan.findings])
    return ScanReport(
        path=os.fspath(path),
        safe=decision is not Decision.FAIL,
        decision=decision,
        files=files,
    )


__all__ = [
    "SAFE_GLOBALS",
    "FileScan",
    "ModelFormat",
    "ScanReport",
    "is_allowed_global",
    "normalize_global",
    "scan_buffer",
    "scan_bytes",
    "scan_file",
    "scan_path",
]
