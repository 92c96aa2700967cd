"""artifact-signer on a real bus: signed manifests, tampering, hostile pickles, lock files."""

from __future__ import annotations

import os
import pickle
from pathlib import Path
from typing import Any

import orjson
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from services.artifact_signer.manifest import load_signed_manifest, verify_manifest
from shared.events import ArtifactVerifyReply, ArtifactVerifyRequest
from shared.signing import TrustStore
from shared.topology import ARTIFACTS_BUCKET, Subjects

LOCK = "scikit-learn==1.9.1 --hash=sha256:" + "a" * 64 + "\nnumpy==2.4.6 --hash=sha256:" + "b" * 64 + "\n"


class Hostile:
    def __reduce__(self) -> tuple[Any, ...]:
        return (os.system, ("echo pwned",))


def _model_dir(root: Path, payload: object) -> Path:
    root.mkdir(parents=True)
    (root / "model.pkl").write_bytes(pickle.dumps(payload))
    (root / "config.json").write_bytes(orjson.dumps({"classes": 3}))
    (root / "requirements.txt").write_text(LOCK)
    return root


def _fitted() -> LogisticRegression:
    x, y = load_iris(return_X_y=True)
    return LogisticRegression(max_iter=500).fit(x, y)


def _verdict_for(event_id: str) -> Any:
    return lambda e: e.type == Subjects.VERDICT_ARTIFACT and e.data.in_reply_to == event_id


async def _build(running: Any, folder: Path, version: str) -> Any:
    async with running.client.watch() as watcher:
        event = await running.client.model_built(
            folder, model="iris", version=version, builder="ci-bot", lockfile=folder / "requirements.txt"
        )
        return await watcher.wait(_verdict_for(event.id), 30)


async def test_build_is_signed_and_tampering_is_caught(bus: Any) -> None:
    running = await bus("audit-log", "artifact-signer")
    folder = _model_dir(running.settings.data_dir / "artifacts" / "iris-1", _fitted())
    verdict = await _build(running, folder, "1")
    assert verdict is not None and verdict.data.decision == "pass", verdict.data.findings
    assert verdict.data.files == 3
    # The stored manifest is a real Ed25519 signature that verifies with artifact-signer's key.
    store = await running.client.js.object_store(ARTIFACTS_BUCKET)
    signed = load_signed_manifest(bytes((await store.get(verdict.data.manifest_key)).data or b""))
    key = running.settings.keys_dir / "artifact-signer.pem"
    from shared.signing import SigningKey

    verify_manifest(signed, TrustStore({"artifact-signer": SigningKey.from_pem("a", key.read_bytes()).public_b64()}))
    assert signed.manifest.root_digest == verdict.data.root_digest

    async def check() -> ArtifactVerifyReply:
        body = orjson.dumps(ArtifactVerifyRequest(model="iris", version="1").model_dump())
        return ArtifactVerifyReply.model_validate_json(await running.client.request(Subjects.ARTIFACT_VERIFY, body))

    assert (await check()).ok
    data = bytearray((folder / "model.pkl").read_bytes())
    data[len(data) // 2] ^= 0x01
    (folder / "model.pkl").write_bytes(bytes(data))
    tampered = await check()
    assert not tampered.ok
    assert any("model.pkl" in p for p in tampered.problems)


async def test_hostile_pickle_fails_the_build(bus: Any) -> None:
    running = await bus("audit-log", "artifact-signer")
    folder = _model_dir(running.settings.data_dir / "artifacts" / "evil", {"model": Hostile()})
    verdict = await _build(running, folder, "2")
    assert verdict is not None and verdict.data.decision == "fail"
    assert any("os" in f.message or "system" in f.message for f in verdict.data.findings)


async def test_unpinned_lock_file_fails_naming_the_package(bus: Any) -> None:
    running = await bus("audit-log", "artifact-signer")
    folder = _model_dir(running.settings.data_dir / "artifacts" / "loose", _fitted())
    (folder / "requirements.txt").write_text(LOCK + "requests>=2\n")
    verdict = await _build(running, folder, "3")
    assert verdict is not None and verdict.data.decision == "fail"
    assert any("requests" in f.message for f in verdict.data.findings)


async def test_artifact_outside_the_allowed_roots_is_refused(bus: Any, tmp_path: Path) -> None:
    running = await bus("audit-log", "artifact-signer")
    folder = _model_dir(tmp_path / "elsewhere", _fitted())
    verdict = await _build(running, folder, "4")
    assert verdict is not None and verdict.data.decision == "fail"
    assert verdict.data.findings[0].check == "input.path_outside_roots"
