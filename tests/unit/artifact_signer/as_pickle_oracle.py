"""A differential oracle for the pickle scanner (issue 12), and the pickles it is fed.

Ground truth without executing anything: `pickle.Unpickler` subclasses whose `find_class`
records the (module, name) it is asked for and returns an inert stand-in, a class that accepts
any call, `__new__`, `__setstate__`, item and append calls and returns more stand-ins. The real
`find_class` is never called, so nothing is imported; stand-ins have no behaviour, so nothing
the pickle builds can run. Two readers record the same stream: the C `pickle.Unpickler`
(what `pickle.load` runs) and the pure-Python `pickle._Unpickler`, which also tells the
protocol in force at each `find_class` (`self.proto`, set by the latest PROTO opcode). A
third, joblib-style reader follows `joblib.load`: after BUILD of a `NumpyArrayWrapper` it
reads the array bytes as data (or a nested pickle for object arrays), as
`joblib.numpy_pickle.NumpyArrayWrapper.read_array` does.

A pickle is *truly unsafe* if a recorded name, resolved as CPython's `find_class` resolves it
(`_compat_pickle` below protocol 3; the name as given otherwise; a dotted name is a walk of
attributes, never an exact allow-list entry), is not in `scanner.SAFE_GLOBALS`. The scanner
must call every truly unsafe pickle unsafe (a *miss* otherwise), and must pass benign-shaped
pickles that load to the end with allowed names only (a *false alarm* otherwise).

The generator (hypothesis) writes pickles by hand from GLOBAL, STACK_GLOBAL and INST over
names taken from installed modules (attribute chains included), with memo tricks (MEMOIZE,
PUT/BINPUT/LONG_BINPUT, GET/BINGET/LONG_BINGET, decoy strings), protocol switches in mid-stream
and Python 2 names, nested in zip, torch-style zip (`archive/data.pkl`), gzip and joblib
containers (a payload hidden as array bytes included).
"""

from __future__ import annotations

import _compat_pickle
import collections
import gzip
import importlib
import io
import pickle
import re
import struct
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from hypothesis import strategies as st

from services.artifact_signer import scanner

# --- inert stand-ins ---------------------------------------------------------------------------


def _new_stand_in(*args: object, **kwargs: object) -> _Inert:
    return _Inert()


class _Bound:
    """A descriptor that gives the same function however it is looked up (on a stand-in class
    or on an instance), so BUILD on a class and on an instance both reach a no-op."""

    def __init__(self, fn: Callable[..., object]) -> None:
        self.fn = fn

    def __get__(self, obj: object, owner: object = None) -> Callable[..., object]:
        fn = self.fn
        if isinstance(obj, _Inert):
            return lambda *args, **kwargs: fn(obj, *args, **kwargs)
        return lambda *args, **kwargs: fn(None, *args, **kwargs)


def _keep_state(obj: _Inert | None, state: object = None, *rest: object) -> None:
    if obj is not None:
        obj.__dict__["_oracle_state"] = state


def _ignore(obj: _Inert | None, *args: object, **kwargs: object) -> None:
    return None


def _call(obj: _Inert | None, *args: object, **kwargs: object) -> _Inert:
    return _Inert()


class _Inert:
    """What every global becomes: has no behaviour beyond accepting what the Unpickler does."""

    def __new__(cls, *args: object, **kwargs: object) -> _Inert:
        return object.__new__(cls)

    def __init__(self, *args: object, **kwargs: object) -> None:
        self.__dict__["_oracle_args"] = args

    __setstate__ = _Bound(_keep_state)
    __call__ = _Bound(_call)
    __setitem__ = _Bound(_ignore)
    append = _Bound(_ignore)
    extend = _Bound(_ignore)
    add = _Bound(_ignore)


def _stand_in(module: object, name: object) -> type[_Inert]:
    return type("StandIn", (_Inert,), {"_oracle_name": (module, name)})


# --- recording readers -------------------------------------------------------------------------


@dataclass
class Reading:
    """What one reader asked find_class for, and whether the load ran to STOP."""

    asked: list[tuple[int, str, str]] = field(default_factory=list)  # (protocol, module, name)
    completed: bool = False
    error: str = ""


class _RecordingC(pickle.Unpickler):
    """The C Unpickler (`pickle.load`): raw names, in order."""

    def __init__(self, file: io.BytesIO, reading: Reading) -> None:
        super().__init__(file)
        self.reading = reading

    def find_class(self, module: str, name: str) -> Any:
        self.reading.asked.append((-1, module, name))  # the C Unpickler does not expose its protocol
        return _stand_in(module, name)

    def persistent_load(self, pid: object) -> Any:
        return _Inert()


# The pure-Python Unpickler is private and untyped in typeshed: typed as Any here.
_PyUnpickler: Any = pickle._Unpickler  # type: ignore[attr-defined]


class _RecordingPy(_PyUnpickler):
    """The pure-Python Unpickler: the same names, with the protocol in force."""

    def __init__(self, file: io.BytesIO, reading: Reading, *, joblib: bool = False) -> None:
        super().__init__(file)
        self.reading = reading
        self.joblib = joblib
        if joblib:
            # `dispatch` is a class-level table of opcode -> method; this reader's BUILD differs.
            table: dict[int, Callable[..., None]] = dict(_PyUnpickler.dispatch)
            table[pickle.BUILD[0]] = _RecordingPy._joblib_build
            self.dispatch = table

    def find_class(self, module: str, name: str) -> Any:
        self.reading.asked.append((self.proto, module, name))
        return _stand_in(module, name)

    def persistent_load(self, pid: object) -> Any:
        return _Inert()

    def _joblib_build(self) -> None:
        # joblib.numpy_pickle.NumpyUnpickler.load_build, with NumpyArrayWrapper.read_array's
        # reading of the array bytes (never building the array).
        _PyUnpickler.load_build(self)
        wrapper = self.stack[-1]
        if getattr(type(wrapper), "_oracle_name", None) != ("joblib.numpy_pickle", "NumpyArrayWrapper"):
            return
        self.stack.pop()
        state = wrapper.__dict__.get("_oracle_state")
        dtype = state.get("dtype") if isinstance(state, dict) else None
        code = getattr(dtype, "__dict__", {}).get("_oracle_args", ("",))[0]
        shape = state.get("shape") if isinstance(state, dict) else None
        if not (isinstance(code, str) and isinstance(shape, tuple) and all(isinstance(n, int) for n in shape)):
            raise pickle.UnpicklingError("oracle: unreadable joblib array wrapper")
        if code.startswith("O"):
            nested = _RecordingPy(self._file, self.reading)
            nested.load()
        else:
            if not re.fullmatch(r"[<>|=]?[a-z]\d{0,2}", code):
                raise pickle.UnpicklingError(f"oracle: dtype {code!r}")
            if state.get("numpy_array_alignment_bytes") is not None:
                self.read(self.read(1)[0])
            count = int(np.prod(shape, dtype=np.int64)) if shape else 1
            if len(self.read(count * np.dtype(code).itemsize)) != count * np.dtype(code).itemsize:
                raise pickle.UnpicklingError("oracle: array data past the end")
        self.stack.append(_Inert())


def read(data: bytes, *, how: str) -> Reading:
    """Record what `how` ("pickle.load", "python" or "joblib.load") would import from `data`."""
    reading = Reading()
    reader: Any
    if how == "pickle.load":
        reader = _RecordingC(io.BytesIO(data), reading)
    else:
        reader = _RecordingPy(io.BytesIO(data), reading, joblib=how == "joblib.load")
    try:
        reader.load()
        reading.completed = True
    except Exception as exc:  # noqa: BLE001 (a hostile stream may raise anything; what was imported before stands)
        reading.error = f"{type(exc).__name__}: {exc}"
    return reading


def resolve(protocol: int, module: str, name: str) -> tuple[str, str]:
    """(module, name) as CPython 3.11 `Unpickler.find_class` resolves them at `protocol`."""
    if protocol < 3:
        if (module, name) in _compat_pickle.NAME_MAPPING:
            return _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
    return module, name


def outside_allow_list(reading: Reading) -> list[str]:
    """Recorded names that are not exact allow-list entries once resolved."""
    bad = []
    for protocol, module, name in reading.asked:
        resolved = resolve(protocol, module, name)
        if resolved not in scanner.SAFE_GLOBALS:
            bad.append(f"{resolved[0]}.{resolved[1]} (protocol {protocol})")
    return bad


# --- the names ---------------------------------------------------------------------------------

_INSPECTED = (
    "builtins",
    "os",
    "subprocess",
    "collections",
    "copyreg",
    "numpy",
    "numpy.random._pickle",
    "sklearn.calibration",
    "sklearn.ensemble._forest",
    "sklearn.linear_model._logistic",
    "sklearn.tree._tree",
    "joblib.numpy_pickle",
)


def _chains(module_name: str, depth: int = 3, limit: int = 250) -> list[str]:
    """Attribute paths reachable from a module (what a protocol-4 name can walk), sorted."""
    module = importlib.import_module(module_name)
    found: list[str] = []
    frontier: list[tuple[str, object]] = [("", module)]
    for _ in range(depth):
        following: list[tuple[str, object]] = []
        for prefix, obj in frontier:
            for attr in sorted(vars(obj) if hasattr(obj, "__dict__") else ())[:80]:
                if attr.startswith("__") and attr not in ("__builtins__", "__globals__", "__init__"):
                    continue
                path = f"{prefix}.{attr}" if prefix else attr
                found.append(path)
                try:
                    following.append((path, getattr(obj, attr)))
                except Exception:  # noqa: BLE001 (a lazy attribute that fails to resolve: keep its name only)
                    continue
        frontier = following
    return sorted(found, key=lambda p: (p.count("."), p))[:limit]


def _python2_names() -> list[tuple[str, str]]:
    names = [k for k in _compat_pickle.NAME_MAPPING if k[0] in ("__builtin__", "exceptions", "itertools", "UserDict")]
    return [*sorted(names)[:40], ("__builtin__", "eval"), ("__builtin__", "object"), ("copy_reg", "_reconstructor")]


ALLOWED: list[tuple[str, str]] = sorted(scanner.SAFE_GLOBALS)
DANGEROUS: list[tuple[str, str]] = [
    ("os", "system"),
    ("posix", "system"),
    ("subprocess", "Popen"),
    ("builtins", "eval"),
    ("builtins", "exec"),
    ("builtins", "getattr"),
    ("builtins", "__import__"),
    ("numpy", "load"),
    ("torch", "load"),
    ("sklearn.utils._testing", "assert_run_python_script"),
    ("sklearn.calibration", "np.f2py.subprocess.Popen"),  # the bypass
    ("sklearn.calibration", "Parallel"),
    ("collections", "OrderedDict.fromkeys"),
    ("numpy", "core.multiarray._reconstruct"),
    ("sklearn", "calibration.CalibratedClassifierCV"),
]
_CHAINED: list[tuple[str, str]] = [(module, chain) for module in _INSPECTED for chain in _chains(module)]
PYTHON2 = _python2_names()

_NAME = st.one_of(
    st.sampled_from(ALLOWED),
    st.sampled_from(DANGEROUS),
    st.sampled_from(_CHAINED),
    st.sampled_from(PYTHON2),
)


_ALLOWED_NAME = st.one_of(
    st.sampled_from(ALLOWED),
    st.sampled_from([n for n in PYTHON2 if any(resolve(p, *n) in scanner.SAFE_GLOBALS for p in (0, 1, 2))]),
)


# --- pickle writing ----------------------------------------------------------------------------


@dataclass
class _Writer:
    """Opcodes written by hand; memo indices are handed out in order (as MEMOIZE does)."""

    out: bytearray = field(default_factory=bytearray)
    memo: int = 0

    def op(self, raw: bytes) -> None:
        self.out += raw

    def string(self, text: str, how: str) -> None:
        raw = text.encode()
        match how:
            case "short":
                self.op(
                    b"\x8c" + bytes([len(raw)]) + raw if len(raw) < 256 else b"X" + struct.pack("<I", len(raw)) + raw
                )
            case "binunicode":
                self.op(b"X" + struct.pack("<I", len(raw)) + raw)
            case "unicode":
                self.op(b"V" + text.encode("raw-unicode-escape") + b"\n")
            case "string":  # a Python 2 str: decoded with the Unpickler's encoding (ASCII)
                self.op(b"S" + repr(text).encode() + b"\n")
            case _:  # "short_binstring"
                self.op(b"U" + bytes([len(raw)]) + raw if len(raw) < 256 else b"T" + struct.pack("<i", len(raw)) + raw)

    def put(self, how: str) -> int:
        index = self.memo
        self.memo += 1
        match how:
            case "memoize":
                self.op(b"\x94")
            case "put":
                self.op(b"p" + str(index).encode() + b"\n")
            case "binput":
                self.op(b"q" + bytes([index]) if index < 256 else b"r" + struct.pack("<I", index))
            case _:
                self.op(b"r" + struct.pack("<I", index))
        return index

    def get(self, index: int, how: str) -> None:
        match how:
            case "get":
                self.op(b"g" + str(index).encode() + b"\n")
            case "binget" if index < 256:
                self.op(b"h" + bytes([index]))
            case _:
                self.op(b"j" + struct.pack("<I", index))


_STRING_OPS = st.sampled_from(["short", "binunicode", "unicode", "string", "short_binstring"])
_PUT_OPS = st.sampled_from(["memoize", "put", "binput", "long_binput"])
_GET_OPS = st.sampled_from(["get", "binget", "long_binget"])


@dataclass(frozen=True)
class Item:
    """One global in the stream and what is done with it."""

    module: str
    name: str
    encoding: str  # GLOBAL | STACK_GLOBAL | MEMO | INST
    use: str  # none | call | newobj | build
    strings: tuple[str, ...]  # how each string is written
    memo_ops: tuple[str, str]  # PUT and GET flavours for the memo trick
    decoy: tuple[str, str]  # pushed and popped between memoizing and fetching the real names


@st.composite
def items(draw: st.DrawFn, names: st.SearchStrategy[tuple[str, str]] = _NAME) -> Item:
    """A global, how it is written, and how it is used."""
    module, name = draw(names)
    return Item(
        module=module,
        name=name,
        encoding=draw(st.sampled_from(["GLOBAL", "STACK_GLOBAL", "MEMO", "INST"])),
        use=draw(st.sampled_from(["none", "call", "newobj", "build"])),
        strings=(draw(_STRING_OPS), draw(_STRING_OPS)),
        memo_ops=(draw(_PUT_OPS), draw(_GET_OPS)),
        decoy=draw(st.sampled_from(ALLOWED)),
    )


def _write_item(w: _Writer, item: Item) -> None:
    if "\n" in item.module + item.name or " " in item.module:
        raise ValueError("names with newlines are not generated")
    match item.encoding:
        case "GLOBAL":
            w.op(b"c" + item.module.encode() + b"\n" + item.name.encode() + b"\n")
        case "INST":
            w.op(b"(" + b"i" + item.module.encode() + b"\n" + item.name.encode() + b"\n")
        case "STACK_GLOBAL":
            w.string(item.module, item.strings[0])
            w.string(item.name, item.strings[1])
            w.op(b"\x93")
        case _:  # MEMO: the real names go to the memo, decoys sit on the stack last, then are dropped
            w.string(item.module, item.strings[0])
            module_at = w.put(item.memo_ops[0])
            w.string(item.name, item.strings[1])
            name_at = w.put(item.memo_ops[0])
            w.op(b"00")
            w.string(item.decoy[0], "short")
            w.string(item.decoy[1], "short")
            w.op(b"00")
            w.get(module_at, item.memo_ops[1])
            w.get(name_at, item.memo_ops[1])
            w.op(b"\x93")
    match item.use:
        case "call" if item.encoding != "INST":
            w.string("x", "short")
            w.op(b"\x85R")  # TUPLE1 REDUCE
        case "newobj" if item.encoding != "INST":
            w.op(b")\x81")  # EMPTY_TUPLE NEWOBJ
        case "build":
            w.op(b"}b")  # EMPTY_DICT BUILD: on a global, it sets attributes of the class
        case _:
            pass


@dataclass(frozen=True)
class Program:
    """A whole stream: protocol, a possible switch in mid-stream, the items."""

    protocol: int
    switch_to: int | None
    switch_after: int
    body: tuple[Item, ...]


@st.composite
def programs(draw: st.DrawFn, names: st.SearchStrategy[tuple[str, str]] = _NAME) -> Program:
    """A pickle program of 1-3 globals."""
    body = tuple(draw(st.lists(items(names), min_size=1, max_size=3)))
    return Program(
        protocol=draw(st.integers(0, pickle.HIGHEST_PROTOCOL)),
        switch_to=draw(st.none() | st.integers(0, pickle.HIGHEST_PROTOCOL)),
        switch_after=draw(st.integers(0, len(body))),
        body=body,
    )


def write(program: Program, *, prefix: bytes = b"") -> bytes:
    """The pickle bytes: PROTO (from 2), MARK, the items, LIST, STOP. `prefix` goes after MARK."""
    w = _Writer()
    if program.protocol >= 2:
        w.op(b"\x80" + bytes([program.protocol]))
    w.op(b"(" + prefix)
    for i, item in enumerate(program.body):
        if program.switch_to is not None and i == program.switch_after:
            w.op(b"\x80" + bytes([program.switch_to]))
        _write_item(w, item)
    w.op(b"l.")
    return bytes(w.out)


def benign_shaped(program: Program) -> bool:
    """A shape the scanner should accept when every name is allowed: no BUILD on a global."""
    return all(item.use != "build" for item in program.body)


# --- containers --------------------------------------------------------------------------------


def _zip(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def _short(text: str) -> bytes:
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def joblib_wrapper(array: bytes, *, aligned: bool) -> bytes:
    """A joblib NumpyArrayWrapper for a uint8 array whose bytes follow in the stream."""
    state = (
        b"}("
        + _short("subclass") + b"cnumpy\nndarray\n"
        + _short("shape") + b"J" + struct.pack("<i", len(array)) + b"\x85"
        + _short("order") + _short("C")
        + _short("dtype") + b"cnumpy\ndtype\n" + _short("u1") + b"\x89\x88\x87R"
        + b"(K\x03" + _short("|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
        + _short("allow_mmap") + b"\x89"
        + (_short("numpy_array_alignment_bytes") + b"K\x10" if aligned else b"")
        + b"ub"
    )  # fmt: skip
    return b"cjoblib.numpy_pickle\nNumpyArrayWrapper\n)\x81" + state + (b"\x00" if aligned else b"") + array


@dataclass(frozen=True)
class Case:
    """One generated file: its bytes, and each pickle a loader would read from it (and how)."""

    data: bytes
    loads: tuple[tuple[str, bytes], ...]  # (how, pickle bytes)
    benign_shape: bool
    label: str


@st.composite
def cases(draw: st.DrawFn) -> Case:
    """A generated pickle in one of the containers the scanner reads."""
    # Half the cases draw allowed names only (Python 2 spellings included), so that benign
    # pickles are common enough to measure false alarms on.
    allowed_only = draw(st.booleans())
    program = draw(programs(_ALLOWED_NAME if allowed_only else _NAME))
    shape = benign_shaped(program)
    container = draw(st.sampled_from(["raw", "zip", "torch-zip", "gzip", "joblib", "joblib-hidden"]))
    if container.startswith("joblib"):
        if container == "joblib-hidden":
            # Array bytes that pickle.load reads as opcodes: a global, used, then POPped.
            hidden = draw(programs(st.sampled_from(DANGEROUS + ALLOWED)))
            w = _Writer()
            _write_item(w, hidden.body[0])
            array = bytes(w.out) + b"0"
            shape = shape and benign_shaped(hidden)
        else:
            array = b"N0" * draw(st.integers(0, 8))  # numbers to joblib; NONE POP to pickle.load
        data = write(program, prefix=joblib_wrapper(array, aligned=draw(st.booleans())) + b"0")
        return Case(data, (("joblib.load", data), ("pickle.load", data)), shape, container)
    data = write(program)
    match container:
        case "zip":
            member = draw(st.sampled_from(["model.pkl", "weights/notes.txt", "x/data.pkl"]))
            return Case(_zip({member: data}), (("pickle.load", data),), shape, container)
        case "torch-zip":
            members = {"archive/data.pkl": data, "archive/version": b"3\n", "archive/data/0": b"\x00" * 64}
            return Case(_zip(members), (("pickle.load", data),), shape, container)
        case "gzip":
            return Case(gzip.compress(data), (("pickle.load", data),), shape, container)
        case _:
            return Case(data, (("pickle.load", data),), shape, container)


# --- judging -----------------------------------------------------------------------------------


@dataclass
class Judgement:
    """The oracle's and the scanner's verdicts on one case."""

    case: Case
    outside: list[str]
    completed: bool
    scanner_safe: bool
    readers_agree: bool

    @property
    def missed(self) -> bool:
        """Truly unsafe, judged safe: never acceptable."""
        return bool(self.outside) and self.scanner_safe

    @property
    def false_alarm(self) -> bool:
        """Allowed names only, loads to the end, benign shape, yet judged unsafe."""
        return not self.outside and self.completed and self.case.benign_shape and not self.scanner_safe


def judge(case: Case) -> Judgement:
    """Run the oracle's readers over every pickle of `case` and the scanner over its bytes."""
    outside: list[str] = []
    completed = True
    agree = True
    for how, data in case.loads:
        if how == "joblib.load":
            reading = read(data, how="joblib.load")
        else:
            reading = read(data, how="python")
            c_reading = read(data, how="pickle.load")
            # Both Unpicklers must ask for the same names, in the same order.
            agree = agree and [a[1:] for a in c_reading.asked] == [a[1:] for a in reading.asked]
        outside += outside_allow_list(reading)
        completed = completed and reading.completed
    return Judgement(case, outside, completed, scanner.scan_bytes(case.data, case.label).safe, agree)


def summary(judgements: Iterator[Judgement] | list[Judgement]) -> collections.Counter[str]:
    """Counts: cases, truly unsafe, misses, false alarms, reader disagreements."""
    counts: collections.Counter[str] = collections.Counter()
    for j in judgements:
        counts["cases"] += 1
        counts["truly unsafe"] += bool(j.outside)
        counts["benign, loads to the end"] += not j.outside and j.completed and j.case.benign_shape
        counts["missed"] += j.missed
        counts["false alarms"] += j.false_alarm
        counts["readers disagree"] += not j.readers_agree
    return counts


__all__ = ["ALLOWED", "DANGEROUS", "Case", "Judgement", "cases", "judge", "read", "summary"]
