"""artifact-signer signs only bytes it scanned, and reads uploaded models back from the object store
(issue 12, "Hash and scan the same bytes").

The race is made deterministic, with no sleep: the moment artifact-signer closes `model.pkl`
after reading it, the test renames another file over it, as an attacker racing the signer would.
Before the fix, `judge()` hashed the folder, closed every file, then opened them again to scan:
the hostile pickle was hashed (and its digest signed) while the benign one was scanned, so the
verdict was `pass`.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from test_it_artifact_signer import LOCK, Hostile, _build, _fitted, _model_dir

from services.artifact_signer.attest import CHECKS_PREDICATE, verify_companion
from services.artifact_signer.oms import hash_model, manifest_from_statement, verify_statement
from shared.artifacts import file_key, upload_model
from shared.events import ArtifactVerifyReply, ArtifactVerifyRequest, ObjectRef
from shared.signing import SigningKey
from shared.topology import ARTIFACTS_BUCKET, UPLOADS_BUCKET, Subjects


def swap_after_first_close(monkeypatch: pytest.MonkeyPatch, target: Path, replacement: Path) -> list[str]:
    """Rename `replacement` over `target` right after the process first closes a descriptor on
    `target`; return a list that holds one entry once the swap happened."""
    real_close: Callable[[int], None] = os.close
    swapped: list[str] = []
    wanted = str(target.resolve())

    def close(fd: int) -> None:
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            path = ""
        real_close(fd)
        if not swapped and path == wanted:
            os.replace(replacement, target)
            swapped.append(path)

    monkeypatch.setattr(os, "close", close)
    return swapped


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc to name a descriptor's file")
async def test_file_swapped_after_it_was_read_is_judged_on_the_bytes_read(
    bus: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    running = await bus("audit-log", "artifact-signer")
    folder = running.settings.files_dir / "artifacts" / "swap"
    folder.mkdir(parents=True)
    hostile = pickle.dumps({"model": Hostile()})
    (folder / "model.pkl").write_bytes(hostile)
    (folder / "config.json").write_bytes(orjson.dumps({"classes": 3}))
    (folder / "requirements.txt").write_text(LOCK)
    benign = running.settings.files_dir / "benign.pkl"
    benign.write_bytes(pickle.dumps(_fitted()))

    swapped = swap_after_first_close(monkeypatch, folder / "model.pkl", benign)
    verdict = await _build(running, folder, "1")
    monkeypatch.undo()

    assert swapped, "the signer never closed model.pkl: the race was not run"
    assert verdict is not None
    # The hostile bytes were read: they must be what was judged, whatever is on disk now.
    assert verdict.data.decision == "fail", verdict.data.findings
    assert any("system" in f.message for f in verdict.data.findings), verdict.data.findings
    # What was signed is what was scanned: every digest in the OMS bundle is the digest the
    # checks statement reports for the scanned bytes of that file.
    store = await running.client.js.object_store(ARTIFACTS_BUCKET)
    public = SigningKey.from_pem(
        "artifact-signer", (running.settings.keys_dir / "artifact-signer.pem").read_bytes()
    ).private.public_key()
    manifest = manifest_from_statement(
        verify_statement(bytes((await store.get(verdict.data.manifest_key)).data or b""), public)
    )
    checks = verify_companion(
        bytes((await store.get(verdict.data.checks_key)).data or b""),
        public,
        root_digest=verdict.data.root_digest,
        predicate_type=CHECKS_PREDICATE,
    )
    scanned = {f["path"]: f["sha256"] for f in checks["scan"]["files"]}
    assert {r.name: r.digest for r in manifest.resources} == scanned


# --- uploaded models: no shared volume ------------------------------------------------------


async def _uploaded_build(running: Any, artifact: Path | ObjectRef, version: str, lockfile: Path) -> Any:
    async with running.client.watch() as watcher:
        event = await running.client.model_built(
            artifact, model="iris", version=version, builder="ci-bot", lockfile=lockfile, upload=True
        )
        assert event.data.artifact.kind == "object" and event.data.lockfile.kind == "object"
        return await watcher.wait(lambda e: e.type == Subjects.VERDICT_ARTIFACT and e.data.in_reply_to == event.id, 30)


async def test_uploaded_model_is_signed_from_the_object_store(bus: Any, tmp_path: Path) -> None:
    running = await bus("audit-log", "artifact-signer")
    # Outside every root artifact-signer may read: only the upload can reach it.
    folder = _model_dir(tmp_path / "iris", _fitted())
    verdict = await _uploaded_build(running, folder, "7", folder / "requirements.txt")
    assert verdict is not None and verdict.data.decision == "pass", verdict.data.findings
    assert verdict.data.files == 3
    assert verdict.data.root_digest == hash_model(folder).root_digest
    body = orjson.dumps(ArtifactVerifyRequest(model="iris", version="7").model_dump())
    reply = ArtifactVerifyReply.model_validate_json(await running.client.request(Subjects.ARTIFACT_VERIFY, body, 30))
    assert reply.ok and reply.root_digest == verdict.data.root_digest, reply.problems


async def test_tampered_stored_object_fails_the_build(bus: Any, tmp_path: Path) -> None:
    running = await bus("audit-log", "artifact-signer")
    folder = _model_dir(tmp_path / "iris", _fitted())
    ref = await upload_model(running.client.js, folder, model="iris", version="8")
    # Someone with write access replaces a stored file after the index was written.
    store = await running.client.js.object_store(UPLOADS_BUCKET)
    await store.put(file_key(ref.key or "", "model.pkl"), pickle.dumps({"model": Hostile()}))
    verdict = await _uploaded_build(running, ref, "8", folder / "requirements.txt")
    assert verdict is not None and verdict.data.decision == "fail"
    assert verdict.data.findings[0].check in ("input.digest_mismatch", "input.too_large"), verdict.data.findings
    assert "model.pkl" in verdict.data.findings[0].message
