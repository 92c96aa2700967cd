"""intake: each file read once, its signed digest and its scan from the same bytes (issue 12)."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Any

import pytest

from services.artifact_signer import intake
from services.artifact_signer.intake import ArtifactTooLarge, inspect_model
from services.artifact_signer.oms import hash_model


class Hostile:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo pwned",))


def _model(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "model.pkl").write_bytes(pickle.dumps({"w": [1.0, 2.0]}))
    (root / "sub" / "weights.bin").write_bytes(os.urandom(300_000))
    (root / "empty").write_bytes(b"")
    (root / ".git").mkdir()
    (root / ".git" / "HEAD").write_bytes(b"ref: refs/heads/main\n")
    return root


def test_manifest_is_the_one_hash_model_signs(tmp_path: Path) -> None:
    root = _model(tmp_path / "m")
    inspection = inspect_model(root)
    expected = hash_model(root)
    assert inspection.manifest.resources == expected.resources
    assert inspection.manifest.root_digest == expected.root_digest
    assert inspection.manifest.total_bytes == expected.total_bytes


def test_single_file_model_is_one_resource_named_dot(tmp_path: Path) -> None:
    (tmp_path / "model.pkl").write_bytes(pickle.dumps([1, 2]))
    inspection = inspect_model(tmp_path / "model.pkl")
    assert inspection.manifest.root_digest == hash_model(tmp_path / "model.pkl").root_digest
    assert [r.name for r in inspection.manifest.resources] == ["."]


def test_every_scanned_file_carries_the_digest_of_the_bytes_scanned(tmp_path: Path) -> None:
    root = _model(tmp_path / "m")
    inspection = inspect_model(root)
    scanned = {f.path: f.sha256 for f in inspection.scan.files}
    for path, digest in scanned.items():
        assert digest == hashlib.sha256((root / path).read_bytes()).hexdigest()
    # Ignored paths are scanned, not signed; everything signed was scanned with that digest.
    assert ".git/HEAD" in scanned
    assert {r.name: r.digest for r in inspection.manifest.resources} == {
        p: d for p, d in scanned.items() if not p.startswith(".git/")
    }


@pytest.mark.parametrize("in_memory", [intake.IN_MEMORY_BYTES, 1024])
def test_file_replaced_after_its_read_is_judged_on_the_bytes_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, in_memory: int
) -> None:
    # in_memory=1024: the hostile pickle (padded past 1 KiB) goes through the private copy.
    monkeypatch.setattr(intake, "IN_MEMORY_BYTES", in_memory)
    monkeypatch.setattr(intake, "CHUNK_BYTES", 512)
    root = tmp_path / "m"
    root.mkdir()
    hostile = pickle.dumps({"model": Hostile(), "pad": "x" * 4096})
    (root / "model.pkl").write_bytes(hostile)
    benign = tmp_path / "benign.pkl"
    benign.write_bytes(pickle.dumps({"w": [1.0]}))

    def swap(path: str) -> None:
        if path == "model.pkl":
            os.replace(benign, root / "model.pkl")

    inspection = inspect_model(root, after_read=swap, workers=1)
    assert (root / "model.pkl").read_bytes() != hostile  # the swap happened
    assert not inspection.scan.safe
    (resource,) = inspection.manifest.resources
    assert resource.digest == hashlib.sha256(hostile).hexdigest() == inspection.scan.files[0].sha256


def test_large_file_through_the_private_copy_has_the_right_digest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(intake, "IN_MEMORY_BYTES", 4096)
    monkeypatch.setattr(intake, "CHUNK_BYTES", 1000)
    data = os.urandom(50_000)
    (tmp_path / "big.bin").write_bytes(data)
    inspection = inspect_model(tmp_path / "big.bin")
    assert inspection.scan.files[0].sha256 == hashlib.sha256(data).hexdigest()
    assert inspection.scan.files[0].size == len(data)


def test_size_limit_is_enforced_while_reading(tmp_path: Path) -> None:
    root = _model(tmp_path / "m")
    with pytest.raises(ArtifactTooLarge):
        inspect_model(root, max_bytes=1000)
    inspect_model(root, max_bytes=10_000_000)
