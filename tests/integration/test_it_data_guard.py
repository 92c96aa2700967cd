"""data-guard on a real bus: verdicts, tampered bytes, bad messages, duplicates, audit rows."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer

from shared.bus import publish_event
from shared.envelope import new_event
from shared.events import AuditQuery, DatasetUploaded, ObjectRef
from shared.topology import DATASETS_BUCKET, Subjects
from tests._poll import until


def _csv(path: Path, flip: float = 0.0, seed: int = 0) -> Path:
    data = load_breast_cancer()
    x, y = data.data, data.target.copy()
    if flip:
        rng = np.random.default_rng(seed)
        idx = rng.choice(len(y), int(flip * len(y)), replace=False)
        y[idx] = 1 - y[idx]
    header = ",".join([f"f{i}" for i in range(x.shape[1])] + ["label"])
    rows = [",".join(f"{v:.6g}" for v in row) + f",{label}" for row, label in zip(x, y, strict=True)]
    path.write_text(header + "\n" + "\n".join(rows) + "\n")
    return path


def _verdict_for(event_id: str) -> Any:
    return lambda e: e.type == Subjects.VERDICT_DATASET and e.data.in_reply_to == event_id


async def _audit_rows(running: Any, predicate: Any, expected: int, timeout: float = 30.0) -> list[Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    rows: list[Any] = []
    while loop.time() < deadline:
        page = await running.client.audit_query(AuditQuery(limit=1000))
        rows = [e for e in page.entries if predicate(e)]
        if len(rows) >= expected:
            return rows
        await asyncio.sleep(0.1)
    return rows


async def test_clean_upload_passes_and_poisoned_one_fails(bus: Any, tmp_path: Path) -> None:
    running = await bus("audit-log", "data-guard")
    client = running.client
    async with client.watch() as watcher:
        clean = await client.upload_dataset(
            _csv(tmp_path / "clean.csv"), dataset="bc", version="1", label="label", uploader="pipeline"
        )
        poisoned = await client.upload_dataset(
            _csv(tmp_path / "bad.csv", flip=0.12), dataset="bc", version="2", label="label", uploader="pipeline"
        )
        ok = await watcher.wait(_verdict_for(clean.id), 30)
        bad = await watcher.wait(_verdict_for(poisoned.id), 30)
    assert ok is not None and ok.data.decision in ("pass", "warn"), ok
    assert bad is not None and bad.data.decision == "fail"
    assert any(f.check.startswith("label_noise") and f.severity == "fail" for f in bad.data.findings)
    assert ok.signer == "data-guard"


async def test_tampered_bytes_fail_the_hash_check(bus: Any, tmp_path: Path) -> None:
    running = await bus("audit-log", "data-guard")
    client = running.client
    path = _csv(tmp_path / "clean.csv")
    claimed = hashlib.sha256(path.read_bytes()).hexdigest()
    store = await client.js.object_store(DATASETS_BUCKET)
    await store.put("bc/9", path.read_bytes() + b"1,2,3\n")  # swapped after the producer hashed it
    upload = DatasetUploaded(
        dataset="bc",
        version="9",
        location=ObjectRef(kind="object", bucket=DATASETS_BUCKET, key="bc/9"),
        sha256=claimed,
        format="csv",
        label_column="label",
        uploader="pipeline",
    )
    async with client.watch() as watcher:
        event = await client.publish(Subjects.DATASET_UPLOADED, upload, key=client.actor("pipeline"))
        verdict = await watcher.wait(_verdict_for(event.id), 20)
    assert verdict is not None and verdict.data.decision == "fail"
    assert verdict.data.findings[0].check == "input.hash_mismatch"


async def test_file_reference_outside_the_allowed_roots_is_refused(bus: Any) -> None:
    running = await bus("audit-log", "data-guard")
    upload = DatasetUploaded(
        dataset="secrets",
        version="1",
        location=ObjectRef(kind="file", path="/etc/passwd"),
        sha256="0" * 64,
        format="csv",
        uploader="pipeline",
    )
    async with running.client.watch() as watcher:
        event = await running.client.publish(Subjects.DATASET_UPLOADED, upload, key=running.client.actor("pipeline"))
        verdict = await watcher.wait(_verdict_for(event.id), 20)
    assert verdict is not None and verdict.data.decision == "fail"
    assert verdict.data.findings[0].check == "input.path_outside_roots"


@pytest.mark.parametrize("body", [b"{not json", b'{"specversion": "1.0", "id": "x"}', b"[1, 2]", b"\x00" * 2000])
async def test_malformed_message_is_dead_lettered_audited_and_service_keeps_serving(
    bus: Any, tmp_path: Path, body: bytes
) -> None:
    running = await bus("audit-log", "data-guard")
    client = running.client
    async with client.watch() as watcher:
        await client.js.publish(Subjects.DATASET_UPLOADED, body)
        letter = await watcher.wait(lambda e: e.type == "mlw.deadletter.data-guard", 10)
        assert letter is not None
        assert letter.data.payload_sha256 == hashlib.sha256(body).hexdigest()
        # ...and the next good upload is still judged.
        good = await client.upload_dataset(
            _csv(tmp_path / "c.csv"), dataset="bc", version="1", label="label", uploader="pipeline"
        )
        assert await watcher.wait(_verdict_for(good.id), 30) is not None
    rows = await _audit_rows(running, lambda e: e.type == "mlw.deadletter.data-guard", 1)
    assert len(rows) == 1


async def test_duplicate_publish_gives_one_verdict_and_one_audit_row(bus: Any, tmp_path: Path) -> None:
    running = await bus("audit-log", "data-guard")
    client = running.client
    path = _csv(tmp_path / "clean.csv")
    store = await client.js.object_store(DATASETS_BUCKET)
    await store.put("bc/1", path.read_bytes())
    event = new_event(
        Subjects.DATASET_UPLOADED,
        DatasetUploaded(
            dataset="bc",
            version="1",
            location=ObjectRef(kind="object", bucket=DATASETS_BUCKET, key="bc/1"),
            sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
            format="csv",
            label_column="label",
            uploader="pipeline",
        ),
        source="tests",
    )
    async with client.watch() as watcher:
        for _ in range(3):
            await publish_event(client.js, Subjects.DATASET_UPLOADED, event)
        assert await watcher.wait(_verdict_for(event.id), 30) is not None
    await _audit_rows(running, lambda e: e.type == Subjects.VERDICT_DATASET, 1)
    # Any (wrong) second copy has arrived once data-guard and audit-log have nothing in flight.
    await until(running.settled, what="data-guard and audit-log to drain their consumers")
    uploads = await _audit_rows(running, lambda e: e.event_id == event.id, 1)
    verdicts = await _audit_rows(running, lambda e: e.type == Subjects.VERDICT_DATASET, 1)
    assert len(uploads) == 1
    assert len(verdicts) == 1
