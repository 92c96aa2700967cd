"""The offline commands CI pipelines run: exit codes and JSON output."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest
from sklearn.datasets import load_breast_cancer

from mlwarden.cli import main
from shared.signing import SigningKey


def _csv(path: Path, flip: float = 0.0) -> Path:
    x, y = load_breast_cancer(return_X_y=True)
    y = y.copy()
    if flip:
        idx = np.random.default_rng(3).choice(len(y), int(flip * len(y)), replace=False)
        y[idx] = 1 - y[idx]
    lines = [",".join([f"f{i}" for i in range(x.shape[1])] + ["label"])]
    lines += [",".join(f"{v:.6g}" for v in row) + f",{t}" for row, t in zip(x, y, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _json(capsys: pytest.CaptureFixture[str]) -> Any:
    return orjson.loads(capsys.readouterr().out)


def test_check_dataset_passes_clean_data(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", "dataset", str(_csv(tmp_path / "d.csv")), "--label", "label", "--format", "json"])
    report = _json(capsys)
    assert code == 0
    assert report["decision"] in ("pass", "warn")
    assert set(report) >= {"decision", "flagged_rows", "findings"}


def test_check_dataset_fails_flipped_labels_with_rows(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["check", "dataset", str(_csv(tmp_path / "d.csv", flip=0.12)), "--label", "label", "--format", "json"])
    report = _json(capsys)
    assert code == 1
    assert report["decision"] == "fail"
    assert report["flagged_rows"]
    assert all({"check", "severity", "message", "rows"} <= set(f) for f in report["findings"])


@pytest.mark.parametrize("content", [b"", b"\x00\x01garbage", b"a,b\n1,2\n"])
def test_check_dataset_bad_input_exits_2(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "bad.csv"
    path.write_bytes(content)
    assert main(["check", "dataset", str(path), "--label", "label"]) == 2


def test_check_dataset_missing_file_exits_2(tmp_path: Path) -> None:
    assert main(["check", "dataset", str(tmp_path / "nope.csv"), "--label", "y"]) == 2


def test_usage_error_exits_2() -> None:
    assert main(["check", "dataset"]) == 2


class _Evil:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("true",))


def test_scan_model_flags_a_hostile_pickle_and_passes_a_benign_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "ok.bin").write_bytes(pickle.dumps({"w": np.arange(3)}))
    assert main(["scan", "model", str(tmp_path / "ok.bin")]) == 0
    (tmp_path / "evil.txt").write_bytes(pickle.dumps(_Evil()))  # the name does not matter
    capsys.readouterr()
    assert main(["scan", "model", str(tmp_path), "--format", "json"]) == 1
    assert not _json(capsys)["safe"]


def test_sign_then_verify_and_tamper(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "weights.bin").write_bytes(os.urandom(4096))
    key = SigningKey.generate("ci")
    (tmp_path / "k.pem").write_bytes(key.to_pem())
    (tmp_path / "k.pub.pem").write_bytes(key.public_pem())
    sig = tmp_path / "model.sig"
    assert main(["sign", str(model), "--key", str(tmp_path / "k.pem"), "--signature", str(sig)]) == 0
    verify = ["verify", str(model), "--signature", str(sig), "--key", str(tmp_path / "k.pub.pem")]
    assert main(verify) == 0
    (model / "extra.txt").write_text("added later")
    assert main(verify) == 1


def test_check_dataset_reports_each_step_on_a_terminal_only(tmp_path: Path) -> None:
    # Issue 10: `check dataset` on a million rows ran 28 s without a word. On a terminal it now
    # names each step as it starts (on stderr); in a pipe it stays silent.
    import argparse
    import io

    from rich.console import Console

    from mlwarden.offline import check_dataset
    from services.data_guard.detect import analyze
    from services.data_guard.loader import load_table

    data = _csv(tmp_path / "d.csv")
    table = load_table(data.read_bytes(), "csv", "label", max_bytes=10**8, max_rows=10**6)
    steps: list[str] = []
    analyze(table, table, progress=steps.append)
    assert steps[0] == "drift against the reference" and steps[-1] == "duplicates"
    assert "labels" in steps and any(s.startswith("outliers") for s in steps)

    args = argparse.Namespace(data=data, label="label", reference=None, format="json")
    piped = io.StringIO()
    out = Console(file=io.StringIO())
    assert check_dataset(args, out, lambda _v: None, progress=Console(file=piped)) == 0
    assert piped.getvalue() == ""
