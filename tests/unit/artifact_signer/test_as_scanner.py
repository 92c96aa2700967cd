"""The model scanner against a corpus built here: benign files pass, hostile ones are caught.

Nothing in this file ever unpickles a hostile payload: they are built as bytes (or with
`__reduce__`, which only describes the call) and handed to the scanner.
"""

from __future__ import annotations

import builtins
import collections
import gzip
import io
import json
import operator
import os
import pickle
import struct
import subprocess
import sys
import types
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from services.artifact_signer import scanner
from services.artifact_signer.scanner import (
    FileScan,
    ModelFormat,
    is_allowed_global,
    scan_bytes,
    scan_file,
    scan_path,
)
from shared.events import Decision

# --- corpus: benign ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def sklearn_models() -> dict[str, Any]:
    x, y = load_iris(return_X_y=True)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)).fit(x, y)
    forest = RandomForestClassifier(n_estimators=4, max_depth=4, random_state=0).fit(x, y)
    seeded = Pipeline([("scale", StandardScaler()), ("rf", RandomForestClassifier(n_estimators=2))])
    seeded.set_params(rf__random_state=np.random.RandomState(1)).fit(x, y)
    return {"pipeline": pipeline, "forest": forest, "seeded": seeded}


def joblib_bytes(obj: object, **kwargs: Any) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(obj, buffer, **kwargs)
    return buffer.getvalue()


def npy_bytes(array: np.ndarray[Any, Any]) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=True)
    return buffer.getvalue()


def safetensors_bytes(tensors: dict[str, np.ndarray[Any, Any]], *, header_override: Any = None) -> bytes:
    """The safetensors layout, written by hand: u64 header length, JSON header, raw data."""
    codes = {np.dtype("float32"): "F32", np.dtype("int64"): "I64", np.dtype("float16"): "F16"}
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    data = b""
    for name, array in tensors.items():
        raw = np.ascontiguousarray(array).tobytes()
        header[name] = {
            "dtype": codes[array.dtype],
            "shape": list(array.shape),
            "data_offsets": [len(data), len(data) + len(raw)],
        }
        data += raw
    text = json.dumps(header_override if header_override is not None else header).encode()
    text += b" " * (-len(text) % 8)  # the reference writer pads the header to 8 bytes
    return struct.pack("<Q", len(text)) + text + data


@pytest.fixture
def fake_torch(monkeypatch: pytest.MonkeyPatch) -> types.SimpleNamespace:
    """Just enough of a `torch` module for pickle to write what torch.save writes."""
    torch = types.ModuleType("torch")
    utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args: Any) -> None:
        raise AssertionError("never called: the scanner does not load")

    class FloatStorage:
        pass

    _rebuild_tensor_v2.__module__, _rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    FloatStorage.__module__, FloatStorage.__qualname__ = "torch", "FloatStorage"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2  # type: ignore[attr-defined]
    torch.FloatStorage = FloatStorage  # type: ignore[attr-defined]
    torch._utils = utils  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    return types.SimpleNamespace(rebuild=_rebuild_tensor_v2, FloatStorage=FloatStorage)


class _Storage:
    def __init__(self, key: str, numel: int) -> None:
        self.key, self.numel = key, numel


class _Tensor:
    def __init__(self, torch: types.SimpleNamespace, storage: _Storage, shape: tuple[int, ...]) -> None:
        self.torch, self.storage, self.shape = torch, storage, shape

    def __reduce__(self) -> Any:
        stride = (self.shape[1], 1) if len(self.shape) == 2 else (1,)
        return (self.torch.rebuild, (self.storage, 0, self.shape, stride, False, collections.OrderedDict()))


def torch_zip_bytes(
    torch: types.SimpleNamespace, *, data_pkl: bytes | None = None, extra: dict[str, bytes] | None = None
) -> bytes:
    """A PyTorch-style checkpoint: `archive/data.pkl` (protocol 2, persistent ids for
    storages, as torch.save writes it) and raw storages under `archive/data/`."""
    rng = np.random.default_rng(0)
    weights = {"fc.weight": (rng.standard_normal((4, 3)), (4, 3)), "fc.bias": (rng.standard_normal(4), (4,))}
    state = collections.OrderedDict()
    storages: dict[str, bytes] = {}
    for i, (name, (array, shape)) in enumerate(weights.items()):
        storages[str(i)] = array.astype(np.float32).tobytes()
        state[name] = _Tensor(torch, _Storage(str(i), array.size), shape)

    class TorchPickler(pickle.Pickler):
        def persistent_id(self, obj: Any) -> Any:
            if isinstance(obj, _Storage):
                return ("storage", torch.FloatStorage, obj.key, "cpu", obj.numel)
            return None

    buffer = io.BytesIO()
    TorchPickler(buffer, protocol=2).dump(state)
    members = {
        "archive/data.pkl": data_pkl if data_pkl is not None else buffer.getvalue(),
        "archive/byteorder": b"little",
        "archive/version": b"3\n",
        "archive/.data/serialization_id": b"1234567890",
        **{f"archive/data/{key}": raw for key, raw in storages.items()},
        **(extra or {}),
    }
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def zip_bytes(members: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", compression) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return out.getvalue()


def keras_bytes(layers: list[dict[str, Any]]) -> bytes:
    config = {
        "module": "keras",
        "class_name": "Sequential",
        "config": {"name": "sequential", "layers": layers},
        "registered_name": None,
    }
    hdf5 = b"\x89HDF\r\n\x1a\n" + b"\x00" * 200
    return zip_bytes(
        {
            "metadata.json": b'{"keras_version": "3.6.0"}',
            "config.json": json.dumps(config).encode(),
            "model.weights.h5": hdf5,
        }
    )


DENSE = {"module": "keras.layers", "class_name": "Dense", "config": {"units": 4}, "registered_name": None}
LAMBDA = {
    "module": "keras.layers",
    "class_name": "Lambda",
    "config": {"function": {"class_name": "__lambda__", "config": {"code": "4wEAAAAAAAAA..."}}},
    "registered_name": None,
}


def assert_safe(scan: FileScan) -> None:
    assert scan.safe and scan.decision is Decision.PASS, [f.message for f in scan.findings]


def assert_caught(scan: FileScan, *needles: str) -> None:
    assert not scan.safe and scan.decision is Decision.FAIL
    text = " ".join(f.message for f in scan.findings)
    for needle in needles:
        assert needle in text, text


# --- benign files pass ------------------------------------------------------------------------


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_pickled_sklearn_models_pass_at_every_protocol(sklearn_models: dict[str, Any], protocol: int) -> None:
    scan = scan_bytes(pickle.dumps(sklearn_models, protocol=protocol), "models.pkl")
    assert_safe(scan)
    assert scan.format is ModelFormat.PICKLE
    assert "sklearn.linear_model._logistic.LogisticRegression" in scan.globals
    assert "sklearn.tree._tree.Tree" in scan.globals


@pytest.mark.parametrize("compress", [0, 3, ("gzip", 3), ("bz2", 3), ("xz", 3), ("lzma", 3)])
def test_joblib_dumped_sklearn_models_pass(sklearn_models: dict[str, Any], compress: Any) -> None:
    scan = scan_bytes(joblib_bytes(sklearn_models, compress=compress), "models.joblib")
    assert_safe(scan)
    assert scan.format is ModelFormat.JOBLIB


def test_joblib_with_object_arrays_passes() -> None:
    data = {"names": np.array(["a", "b"], dtype=object), "x": np.arange(6.0).reshape(2, 3), "s": np.array([b"ab"])}
    assert_safe(scan_bytes(joblib_bytes(data), "mixed.joblib"))


def test_numpy_arrays_pickles_npy_and_npz_pass() -> None:
    arrays: dict[str, Any] = {
        "f": np.arange(12.0).reshape(3, 4),
        "i": np.arange(5),
        "s": np.array(["x", "yz"]),
        "r": np.float64(2.5),
    }
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert_safe(scan_bytes(pickle.dumps(arrays, protocol=protocol), "arrays.pkl"))
    npy = scan_bytes(npy_bytes(arrays["f"]), "a.npy")
    assert_safe(npy)
    assert npy.format is ModelFormat.NUMPY
    npz_buffer = io.BytesIO()
    np.savez_compressed(npz_buffer, f=arrays["f"], i=arrays["i"])
    npz = scan_bytes(npz_buffer.getvalue(), "a.npz")
    assert_safe(npz)
    assert npz.format is ModelFormat.NPZ


def test_handwritten_safetensors_passes() -> None:
    data = safetensors_bytes({"w": np.ones((2, 3), np.float32), "idx": np.arange(4), "h": np.zeros(3, np.float16)})
    scan = scan_bytes(data, "model.safetensors")
    assert_safe(scan)
    assert scan.format is ModelFormat.SAFETENSORS


def test_pytorch_style_zip_checkpoint_passes(fake_torch: types.SimpleNamespace) -> None:
    scan = scan_bytes(torch_zip_bytes(fake_torch), "model.pt")
    assert_safe(scan)
    assert scan.format is ModelFormat.PYTORCH
    assert {"torch._utils._rebuild_tensor_v2", "torch.FloatStorage", "collections.OrderedDict"} <= set(scan.globals)


def test_raw_tensor_members_are_not_mistaken_for_pickles(fake_torch: types.SimpleNamespace) -> None:
    # Storages hold arbitrary numbers; some start with bytes that are pickle opcodes.
    rng = np.random.default_rng(7)
    extra = {f"archive/data/r{i}": rng.bytes(2048) for i in range(300)}
    extra |= {f"archive/data/i{i}": rng.integers(0, 2000, 256).astype(np.int64).tobytes() for i in range(300)}
    extra["archive/data/proto_like"] = np.array([640, 7, 0], dtype=np.int64).tobytes()  # b"\x80\x02\x00..."
    assert_safe(scan_bytes(torch_zip_bytes(fake_torch, extra=extra), "model.pt"))


def test_keras_archive_without_lambda_passes() -> None:
    scan = scan_bytes(keras_bytes([DENSE]), "model.keras")
    assert_safe(scan)
    assert scan.format is ModelFormat.KERAS


def test_plain_text_and_empty_files_pass(tmp_path: Path) -> None:
    (tmp_path / "README.md").write_text("# model card\nTrained on iris.\n")
    (tmp_path / "empty").write_bytes(b"")
    report = scan_path(tmp_path)
    assert report.safe and report.decision is Decision.PASS
    assert {scan.format for scan in report.files} == {ModelFormat.UNKNOWN}


# --- hostile pickles are caught ---------------------------------------------------------------


class Reduce:
    """Pickles as a call of `func(*args)`: what an attacker's __reduce__ does."""

    def __init__(self, func: Callable[..., Any], *args: Any) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> Any:
        return (self.func, self.args)


@pytest.mark.parametrize("protocol", range(pickle.HIGHEST_PROTOCOL + 1))
def test_reduce_with_os_system_is_caught_at_every_protocol(protocol: int) -> None:
    scan = scan_bytes(pickle.dumps(Reduce(os.system, "echo pwned"), protocol=protocol), "model.pkl")
    assert_caught(scan, f"{os.system.__module__}.system", "known dangerous")


@pytest.mark.parametrize(
    ("func", "name"),
    [
        (builtins.eval, "builtins.eval"),
        (builtins.exec, "builtins.exec"),
        (builtins.getattr, "builtins.getattr"),
        (builtins.__import__, "builtins.__import__"),
        (subprocess.Popen, "subprocess.Popen"),
        (operator.attrgetter, "operator.attrgetter"),
    ],
)
def test_dangerous_callables_are_caught(func: Callable[..., Any], name: str) -> None:
    assert_caught(scan_bytes(pickle.dumps(Reduce(func, "x")), "m.pkl"), name)


def test_benign_model_carrying_a_payload_is_caught(sklearn_models: dict[str, Any]) -> None:
    bundle = {"model": sklearn_models["pipeline"], "hook": Reduce(builtins.exec, "import os")}
    assert_caught(scan_bytes(joblib_bytes(bundle), "model.joblib"), "builtins.exec")


def test_protocol_0_global_and_inst_and_obj_are_caught() -> None:
    assert_caught(scan_bytes(b"cos\nsystem\n(S'echo pwned'\ntR.", "p0.pkl"), "os.system")
    assert_caught(scan_bytes(b"(S'echo pwned'\nios\nsystem\n.", "inst.pkl"), "os.system")
    assert_caught(scan_bytes(b"\x80\x02(cos\nsystem\nS'echo'\no.", "obj.pkl"), "os.system")


def short_str(text: str) -> bytes:
    raw = text.encode()
    return b"\x8c" + bytes([len(raw)]) + raw


def memo_payload(source: str) -> bytes:
    # The real names are memoized and popped; decoy strings are pushed last, so a scanner
    # that reads "the two strings before STACK_GLOBAL" sees collections.OrderedDict.
    return (
        b"\x80\x04"
        + short_str("builtins") + b"\x94"  # MEMOIZE -> 0
        + short_str("eval") + b"q\x05"  # BINPUT 5
        + b"00"  # POP POP
        + short_str("collections") + short_str("OrderedDict") + b"00"
        + b"h\x00" + b"h\x05"  # BINGET 0, BINGET 5
        + b"\x93"  # STACK_GLOBAL -> builtins.eval
        + short_str(source) + b"\x85R."
    )  # fmt: skip


def test_stack_global_with_names_fetched_through_the_memo_is_caught() -> None:
    assert pickle.loads(memo_payload("6 * 7")) == 42  # the shape is real: it calls eval
    scan = scan_bytes(memo_payload("print('pwned')"), "memo.pkl")
    assert_caught(scan, "builtins.eval")
    assert "collections.OrderedDict" not in scan.globals


def test_stack_global_through_long_binput_and_long_binget_is_caught() -> None:
    payload = (
        b"\x80\x04" + short_str("os") + b"r\x00\x01\x00\x00" + short_str("system") + b"r\x01\x01\x00\x00"
        + b"00" + b"j\x00\x01\x00\x00j\x01\x01\x00\x00\x93" + short_str("id") + b"\x85R."
    )  # fmt: skip
    assert_caught(scan_bytes(payload, "long.pkl"), "os.system")


def test_unresolvable_stack_global_is_caught() -> None:
    # Module and name are not literal strings (ints here; results of calls in a real attack).
    assert_caught(scan_bytes(b"\x80\x04K\x01K\x02\x93)R.", "x.pkl"), "not a literal string")


def test_sklearn_gadget_outside_the_estimator_pattern_is_caught() -> None:
    payload = b"\x80\x04" + short_str("sklearn.utils._testing") + short_str("assert_run_python_script") + b"\x93."
    assert_caught(scan_bytes(payload, "gadget.pkl"), "assert_run_python_script")
    dotted = b"\x80\x04" + short_str("sklearn.pipeline") + short_str("Pipeline.__init__.__globals__") + b"\x93."
    assert_caught(scan_bytes(dotted, "dotted.pkl"), "__globals__")


def test_build_on_an_allowed_class_is_caught() -> None:
    # BUILD on a class object sets attributes on the class itself (rewiring an allowed global).
    payload = b"\x80\x02ccollections\nOrderedDict\n}S'__reduce__'\ncos\nsystem\nsb."
    assert_caught(scan_bytes(payload, "build.pkl"), "BUILD sets attributes")
    assert_caught(scan_bytes(b"\x80\x02ccollections\nOrderedDict\n}b.", "build2.pkl"), "BUILD sets attributes")


def test_calling_a_computed_object_is_caught() -> None:
    # REDUCE whose callable is the result of an earlier call, not a named global.
    payload = b"\x80\x02ccollections\nOrderedDict\n)R)R."
    assert_caught(scan_bytes(payload, "chain.pkl"), "not a named global")


def test_extension_registry_opcode_is_caught() -> None:
    assert_caught(scan_bytes(b"\x80\x02\x82\x01)R.", "ext.pkl"), "extension registry")


@pytest.mark.parametrize(
    "payload",
    [
        pickle.dumps({"a": [1, 2, 3]}, protocol=4)[:12],  # truncated
        b"\x80\x04\x95\x05\x00\x00\x00\x00\x00\x00\x00}\x94(\x8c\x01a",  # ends mid-stream
        b"\x80\x02]q\x00(K\x01K\x02e\xff\xff.",  # unknown opcode
        b"\x80\x02K\x01K\x02K\x03\x86\x86\x86.",  # stack underflow
        b"\x80\x02]K\x01h\x07.",  # memo read before write
    ],
)
def test_malformed_pickles_are_unsafe_and_never_crash(payload: bytes) -> None:
    assert_caught(scan_bytes(payload, "bad.pkl"), "malformed")


def test_second_pickle_in_the_same_file_is_scanned() -> None:
    # Legacy torch.save writes pickles back to back and loads each of them.
    data = pickle.dumps(1, protocol=2) + pickle.dumps({"v": 2}) + pickle.dumps(Reduce(os.system, "id"), protocol=2)
    assert_caught(scan_bytes(data, "legacy.pt"), "system", "pickle at offset")


def test_payload_hidden_as_joblib_array_data_is_caught(tmp_path: Path) -> None:
    # joblib.load reads the bytes after a NumpyArrayWrapper as array data; pickle.load reads
    # them as opcodes. Here they are both: harmless numbers to joblib, os.system to pickle.
    hidden = b"cos\nsystem\n(S'echo pwned'\ntR0"
    wrapper = (
        b"\x80\x04cjoblib.numpy_pickle\nNumpyArrayWrapper\n)\x81}("
        + short_str("subclass") + b"cnumpy\nndarray\n"
        + short_str("shape") + b"K" + bytes([len(hidden)]) + b"\x85"
        + short_str("order") + short_str("C")
        + short_str("dtype") + b"cnumpy\ndtype\n" + short_str("u1") + b"\x89\x88\x87R"
        + b"(K\x03" + short_str("|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb"
        + short_str("allow_mmap") + b"\x89ub"
    )  # fmt: skip
    data = wrapper + hidden + b"."
    (tmp_path / "polyglot.joblib").write_bytes(data)
    loaded = joblib.load(tmp_path / "polyglot.joblib")  # joblib sees plain numbers (no call)
    assert bytes(loaded) == hidden
    scan = scan_bytes(data, "polyglot.joblib")
    assert scan.format is ModelFormat.JOBLIB
    assert_caught(scan, "read by pickle.load", "os.system")


def test_payload_in_a_joblib_object_array_is_caught() -> None:
    data = {"x": np.array([Reduce(os.system, "id"), 1], dtype=object)}
    assert_caught(scan_bytes(joblib_bytes(data), "objarr.joblib"), "system")


def test_lz4_stream_that_cannot_be_scanned_warns() -> None:
    scan = scan_bytes(b"\x04\x22\x4d\x18" + os.urandom(64), "model.joblib.lz4")
    assert scan.decision is Decision.WARN


def test_compressed_hostile_joblib_is_caught() -> None:
    assert_caught(scan_bytes(joblib_bytes(Reduce(os.system, "id"), compress=("gzip", 3)), "m.joblib"), "system")
    assert_caught(scan_bytes(gzip.compress(pickle.dumps(Reduce(eval, "1"))), "m.gz"), "builtins.eval")


# --- hostile files in other formats -----------------------------------------------------------


def test_pickle_named_txt_is_found_by_content(tmp_path: Path) -> None:
    (tmp_path / "model").mkdir()
    (tmp_path / "model" / "notes.txt").write_bytes(pickle.dumps(Reduce(os.system, "id")))
    (tmp_path / "model" / "weights.safetensors").write_bytes(safetensors_bytes({"w": np.ones(2, np.float32)}))
    report = scan_path(tmp_path / "model")
    assert not report.safe
    by_path = {scan.path: scan for scan in report.files}
    assert by_path["notes.txt"].format is ModelFormat.PICKLE
    assert_caught(by_path["notes.txt"], "system")
    assert_safe(by_path["weights.safetensors"])


def test_pickle_in_a_zip_under_an_odd_member_name_is_caught(fake_torch: types.SimpleNamespace) -> None:
    evil = pickle.dumps(Reduce(os.system, "id"), protocol=0)  # no PROTO header at all
    scan = scan_bytes(torch_zip_bytes(fake_torch, extra={"archive/data/../../README": evil}), "model.pt")
    assert_caught(scan, "archive/data/../../README", "system", "zip slip")
    scan = scan_bytes(zip_bytes({"docs/LICENSE": pickle.dumps(Reduce(eval, "1"))}), "bundle.zip")
    assert_caught(scan, "bundle.zip!docs/LICENSE", "builtins.eval")


def test_hostile_data_pkl_in_a_torch_checkpoint_is_caught(fake_torch: types.SimpleNamespace) -> None:
    scan = scan_bytes(torch_zip_bytes(fake_torch, data_pkl=pickle.dumps(Reduce(os.system, "id"), protocol=2)), "m.pt")
    assert_caught(scan, "archive/data.pkl", "system")


def test_zip_inside_a_zip_is_scanned() -> None:
    inner = zip_bytes({"x/data.pkl": pickle.dumps(Reduce(exec, "1"))})
    assert_caught(scan_bytes(zip_bytes({"nested.bin": inner}), "outer.zip"), "outer.zip!nested.bin!x/data.pkl")


def test_pickle_zip_polyglot_is_caught() -> None:
    # A zip is found from its end, so bytes in front of it still load as a pickle.
    data = pickle.dumps([1, 2]) + zip_bytes({"a.txt": b"hello"})
    assert_caught(scan_bytes(data, "poly.bin"), "both a pickle and a zip")


def test_object_npy_is_caught() -> None:
    scan = scan_bytes(npy_bytes(np.array([Reduce(os.system, "id")], dtype=object)), "x.npy")
    assert_caught(scan, "object array", "system")
    structured = np.zeros(2, dtype=[("a", "f8"), ("b", "O")])
    assert_caught(scan_bytes(npy_bytes(structured), "s.npy"), "object array")


def test_object_array_in_npz_is_caught() -> None:
    buffer = io.BytesIO()
    np.savez(buffer, ok=np.arange(3), bad=np.array([1, "x"], dtype=object))
    assert_caught(scan_bytes(buffer.getvalue(), "x.npz"), "bad.npy", "object array")


def test_keras_lambda_layer_is_caught() -> None:
    assert_caught(scan_bytes(keras_bytes([DENSE, LAMBDA]), "model.keras"), "Lambda")


def test_keras_lambda_in_legacy_hdf5_is_caught_and_plain_hdf5_warns() -> None:
    attr = json.dumps({"class_name": "Sequential", "config": {"layers": [LAMBDA]}}).encode()
    assert_caught(scan_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 64 + attr, "m.h5"), "Lambda")
    plain = scan_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 64, "weights.h5")
    assert plain.decision is Decision.WARN and plain.format is ModelFormat.HDF5


def test_pickle_in_an_hdf5_user_block_is_caught() -> None:
    block = pickle.dumps(Reduce(os.system, "id"))
    data = block + b"\x00" * (512 - len(block)) + b"\x89HDF\r\n\x1a\n" + b"\x00" * 64
    assert_caught(scan_bytes(data, "m.h5"), "system")


def _tensor_header(**tensors: tuple[str, list[int], list[int]]) -> dict[str, Any]:
    return {name: {"dtype": d, "shape": s, "data_offsets": o} for name, (d, s, o) in tensors.items()}


@pytest.mark.parametrize(
    ("header", "needle"),
    [
        (_tensor_header(a=("F32", [2], [0, 8]), b=("F32", [2], [4, 12])), "overlaps"),
        (_tensor_header(a=("F32", [2], [0, 8]), b=("F32", [2], [8, 4096])), "out of range"),
        (_tensor_header(a=("F32", [4], [0, 8])), "bytes for shape"),
        (_tensor_header(a=("F32", [1], [4, 8])), "gap"),
        (_tensor_header(a=("F32", [2], [0, -8])), "out of range"),
        ({"a": 5}, "needs exactly dtype"),
    ],
)
def test_malformed_safetensors_headers_are_caught(header: Any, needle: str) -> None:
    data = safetensors_bytes({"a": np.ones(2, np.float32), "b": np.ones(1, np.float32)}, header_override=header)
    assert_caught(scan_bytes(data, "model.safetensors"), needle)


def test_safetensors_header_length_past_the_end_and_duplicate_keys_are_caught() -> None:
    assert_caught(scan_bytes(struct.pack("<Q", 5000) + b'{"a": 1}', "x.safetensors"), "past the end")
    tensor = b'{"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}'
    dup = b'{"a": ' + tensor + b', "a": ' + tensor + b"}"
    assert_caught(scan_bytes(struct.pack("<Q", len(dup)) + dup + b"\x00", "x.safetensors"), "duplicate")


def test_oversized_member_holding_a_pickle_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # A member larger than the scanner reads whole (a zip bomb, or a pickle padded to hide)
    # is probed: its first bytes show a pickle, so it is refused as too large to scan.
    monkeypatch.setattr(scanner, "MAX_INNER_BYTES", 1024 * 1024)
    padded = pickle.dumps(Reduce(os.system, "id"))[:-1] + b"0" * (2 * 1024 * 1024) + b"."
    assert_caught(scan_bytes(zip_bytes({"w.bin": padded}), "bomb.zip"), "too large to scan")
    weights = np.random.default_rng(0).standard_normal(400_000).astype(np.float32).tobytes()
    assert_safe(scan_bytes(zip_bytes({"archive/data/0": weights}), "big.pt"))


def test_compressed_stream_expanding_past_the_limit_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(scanner, "MAX_INNER_BYTES", 1024 * 1024)
    assert_caught(scan_bytes(gzip.compress(b"\0" * (4 * 1024 * 1024)), "bomb.gz"), "expands past")


# --- the allow-list and the API ---------------------------------------------------------------


def test_allow_list_accepts_estimator_classes_and_refuses_functions() -> None:
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        assert is_allowed_global("sklearn.ensemble._forest", "RandomForestClassifier", protocol=protocol)
        assert not is_allowed_global("sklearn.linear_model._logistic", "_logistic_regression_path", protocol=protocol)
        assert not is_allowed_global("sklearn.datasets._base", "load_iris", protocol=protocol)
        assert not is_allowed_global("__builtin__", "eval", protocol=protocol)
        assert not is_allowed_global("numpy", "load", protocol=protocol)
        assert not is_allowed_global("torch", "load", protocol=protocol)
    assert is_allowed_global("copy_reg", "_reconstructor", protocol=2)  # Python 2 name, mapped


def iter_scans(report_files: list[FileScan]) -> Iterator[str]:
    for scan in report_files:
        yield from (f.check for f in scan.findings)


def test_scan_path_reports_every_file_and_json_serializes(tmp_path: Path, sklearn_models: dict[str, Any]) -> None:
    (tmp_path / "model.joblib").write_bytes(joblib_bytes(sklearn_models["forest"]))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "evil.bin").write_bytes(pickle.dumps(Reduce(os.system, "id")))
    report = scan_path(tmp_path)
    assert [scan.path for scan in report.files] == ["model.joblib", "sub/evil.bin"]
    assert not report.safe and report.decision is Decision.FAIL
    assert "scanner.pickle.global" in set(iter_scans(report.files))
    assert json.loads(report.model_dump_json())["files"][1]["safe"] is False
    assert scan_file(tmp_path / "model.joblib").safe


# --- issue 12: names resolved the way find_class resolves them ---------------------------------


def traversal_payload(module: str, name: str, command: str) -> bytes:
    """Protocol 4: module name STACK_GLOBAL, then a call with one string argument.

    For protocol >= 4 `pickle.Unpickler.find_class` imports `module` and then walks `name`
    split on dots with getattr (CPython `pickle._getattribute`), so `np.f2py.subprocess.Popen`
    reaches `subprocess.Popen` through `sklearn.calibration`'s module globals.
    """
    return b"\x80\x04" + short_str(module) + short_str(name) + b"\x93" + short_str(command) + b"\x85R."


def test_attribute_traversal_from_an_estimator_module_is_caught() -> None:
    import sklearn.calibration

    payload = traversal_payload("sklearn.calibration", "np.f2py.subprocess.Popen", "id")
    # The shape is real: the name resolves to subprocess.Popen through module attributes.
    assert sklearn.calibration.np.f2py.subprocess.Popen is subprocess.Popen  # type: ignore[attr-defined]
    # And it runs: pickle.load starts a process (a harmless `true` here).
    with pickle.loads(traversal_payload("sklearn.calibration", "np.f2py.subprocess.Popen", "true")) as process:
        assert isinstance(process, subprocess.Popen) and process.wait() == 0
    assert_caught(scan_bytes(payload, "calibrated.pkl"), "np.f2py.subprocess.Popen")


@pytest.mark.parametrize(
    ("module", "name"),
    [
        ("sklearn.calibration", "np.f2py.subprocess.Popen"),  # the reported bypass
        ("sklearn.ensemble._forest", "Parallel"),  # a CamelCase re-export, not defined there
        ("sklearn.linear_model", "LogisticRegression.__init__.__globals__"),
        ("sklearn.calibration", "CalibratedClassifierCV.fit"),  # an allowed class's method
        ("collections", "OrderedDict.fromkeys"),  # traversal from an exact allowed name
        ("numpy", "core.multiarray._reconstruct"),  # allowed object, but reached by traversal
        ("sklearn", "calibration.CalibratedClassifierCV"),
        ("sklearn.ensemble.tests.test_forest", "RandomForestClassifier"),  # test modules
    ],
)
def test_names_allowed_only_as_exact_module_and_qualname(module: str, name: str) -> None:
    assert not is_allowed_global(module, name, protocol=4)
    assert_caught(scan_bytes(traversal_payload(module, name, "id"), "m.pkl"), f"{module}.{name}")


def test_python2_names_are_mapped_only_below_protocol_3() -> None:
    # find_class applies _compat_pickle only when proto < 3 (and fix_imports, the default).
    assert is_allowed_global("copy_reg", "_reconstructor", protocol=2)
    assert not is_allowed_global("copy_reg", "_reconstructor", protocol=3)
    assert not is_allowed_global("__builtin__", "eval", protocol=2)
    assert_safe(scan_bytes(b"\x80\x02ccopy_reg\n_reconstructor\n.", "p2.pkl"))
    assert_caught(scan_bytes(b"\x80\x03ccopy_reg\n_reconstructor\n.", "p3.pkl"), "copy_reg._reconstructor")


def test_protocol_switched_mid_stream_is_followed() -> None:
    # PROTO may appear again later in a stream; the Unpickler takes the latest one.
    payload = b"\x80\x02\x80\x04" + short_str("sklearn.calibration") + short_str("np.f2py.subprocess.Popen") + b"\x93."
    assert_caught(scan_bytes(payload, "switch.pkl"), "np.f2py.subprocess.Popen")


def test_sklearn_allow_list_is_exactly_what_the_installed_version_defines() -> None:
    # Regenerate with `uv run python -m services.artifact_signer._sklearn_globals` after an
    # upgrade, and review the diff: it is the list of classes a pickle may instantiate.
    from services.artifact_signer import _sklearn_globals

    assert _sklearn_globals.installed() == _sklearn_globals.SKLEARN_GLOBALS
    assert ("sklearn.ensemble._forest", "Parallel") not in scanner.SAFE_GLOBALS  # imported there, not defined


def test_no_allowed_name_is_reached_through_attributes() -> None:
    assert all(module and name and "." not in name for module, name in scanner.SAFE_GLOBALS)
