"""artifact-signer on a real bus: OMS bundles and companion statements, tampering, hostile pickles,
lock files."""

from __future__ import annotations

import hashlib
import os
import pickle
from pathlib import Path
from typing import Any

import orjson
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from services.artifact_signer.attest import CHECKS_PREDICATE, SLSA_PROVENANCE_V1, verify_companion
from services.artifact_signer.oms import BUNDLE_MEDIA_TYPE, verify_model
from shared.events import ArtifactVerifyReply, ArtifactVerifyRequest, DatasetRef
from shared.signing import SigningKey
from shared.topology import ARTIFACTS_BUCKET, Subjects

# Real digests (of b"a" and b"b"): the gate refuses placeholder digests such as "a" * 64 (issue 12).
LOCK = (
    f"scikit-learn==1.9.1 --hash=sha256:{hashlib.sha256(b'a').hexdigest()}\n"
    f"numpy==2.4.6 --hash=sha256:{hashlib.sha256(b'b').hexdigest()}\n"
)


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


async def _build(running: Any, folder: Path, version: str, **extra: Any) -> Any:
    async with running.client.watch() as watcher:
        event = await running.client.model_built(
            folder, model="iris", version=version, builder="ci-bot", lockfile=folder / "requirements.txt", **extra
        )
        return await watcher.wait(_verdict_for(event.id), 30)


async def test_build_is_signed_as_an_oms_bundle_and_tampering_is_caught(bus: Any) -> None:
    running = await bus("audit-log", "artifact-signer")
    folder = _model_dir(running.settings.files_dir / "artifacts" / "iris-1", _fitted())
    train = DatasetRef(dataset="iris", version="1", sha256="c" * 64)
    verdict = await _build(running, folder, "1", datasets=[train])
    assert verdict is not None and verdict.data.decision == "pass", verdict.data.findings
    assert verdict.data.files == 3
    # The event carries references; the bundle lives in the object store and verifies with
    # artifact-signer's Ed25519 public key, over the same root digest as the verdict.
    store = await running.client.js.object_store(ARTIFACTS_BUCKET)
    bundle = bytes((await store.get(verdict.data.manifest_key)).data or b"")
    assert orjson.loads(bundle)["mediaType"] == BUNDLE_MEDIA_TYPE
    key = running.settings.keys_dir / "artifact-signer.pem"
    public = SigningKey.from_pem("artifact-signer", key.read_bytes()).private.public_key()
    offline = verify_model(folder, bundle, public)
    assert offline.ok and offline.root_digest == verdict.data.root_digest
    provenance = verify_companion(
        bytes((await store.get(verdict.data.provenance_key)).data or b""),
        public,
        root_digest=verdict.data.root_digest,
        predicate_type=SLSA_PROVENANCE_V1,
    )
    dependencies = provenance["buildDefinition"]["resolvedDependencies"]
    assert {"sha256": "c" * 64} in [d["digest"] for d in dependencies]
    assert provenance["runDetails"]["builder"]["id"] == "ci-bot"
    checks = verify_companion(
        bytes((await store.get(verdict.data.checks_key)).data or b""),
        public,
        root_digest=verdict.data.root_digest,
        predicate_type=CHECKS_PREDICATE,
    )
    assert checks["decision"] == "pass" and checks["scan"]["safe"] is True

    async def check() -> ArtifactVerifyReply:
        body = orjson.dumps(ArtifactVerifyRequest(model="iris", version="1").model_dump())
        return ArtifactVerifyReply.model_validate_json(await running.client.request(Subjects.ARTIFACT_VERIFY, body))

    assert (await check()).ok
    data = bytearray((folder / "model.pkl").read_bytes())
    data[len(data) // 2] ^= 0x01
    (folder / "model.pkl").write_bytes(bytes(data))
    tampered = await check()
    assert not tampered.ok
    assert tampered.problems == ["changed: model.pkl"]


async def test_hostile_pickle_fails_the_build(bus: Any) -> None:
    running = await bus("audit-log", "artifact-signer")
    folder = _model_dir(running.settings.files_dir / "artifacts" / "evil", {"model": Hostile()})
    verdict = await _build(running, folder, "2")
    assert verdict is not None and verdict.data.decision == "fail"
    assert any("os" in f.message or "system" in f.message for f in verdict.data.findings)


async def test_unpinned_lock_file_fails_naming_the_package(bus: Any) -> None:
    running = await bus("audit-log", "artifact-signer")
    folder = _model_dir(running.settings.files_dir / "artifacts" / "loose", _fitted())
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
