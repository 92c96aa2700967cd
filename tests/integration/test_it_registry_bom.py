"""`mlwarden registry bom` on a real bus (issue 11): a real build signed by artifact-signer, a
promotion decided across a registry-gate restart, and the BOM built from the audit trail and the
signed checks statement; a forged promotion verdict on the bus makes no BOM."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import orjson
import pytest
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from mlwarden.bootstrap import actor_key
from mlwarden.cli import main
from mlwarden.registry_cli import registry_bom
from services.registry_gate.bom import NeverPromoted
from shared.events import AuditQuery, DatasetRef, DatasetVerdict, Decision, PromotionVerdict
from shared.signing import SigningKey
from shared.topology import Subjects
from tests._poll import until

TRAIN = DatasetRef(dataset="train", version="1", sha256=hashlib.sha256(b"train v1").hexdigest())
NUMPY_WHEEL = hashlib.sha256(b"numpy wheel").hexdigest()
LOCK = (
    f"numpy==2.4.6 --hash=sha256:{NUMPY_WHEEL}\n"
    f"scikit-learn==1.9.1 --hash=sha256:{hashlib.sha256(b'sklearn wheel').hexdigest()}\n"
)


def _model_dir(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "weights.bin").write_bytes(bytes(range(256)) * 16)
    (root / "config.json").write_bytes(orjson.dumps({"classes": 3}))
    (root / "requirements.txt").write_text(LOCK)
    return root


async def _build_on_passed_data(client: Any, watcher: Any, guard: SigningKey, folder: Path) -> Any:
    """data-guard's `pass` on the training data, then the build; artifact-signer's verdict on it."""
    dataset = DatasetVerdict(
        dataset="train",
        version="1",
        sha256=TRAIN.sha256,
        decision=Decision.PASS,
        in_reply_to="u",
        label_checked=True,
    )
    await client.publish(Subjects.VERDICT_DATASET, dataset, about="dataset:train:1", key=guard)
    build = await client.model_built(
        folder, model="churn", version="1", builder="ci-bot", lockfile=folder / "requirements.txt", datasets=[TRAIN]
    )
    return await watcher.wait(lambda e: e.type == Subjects.VERDICT_ARTIFACT and e.data.in_reply_to == build.id, 30)


def _valid(document: str) -> dict[str, Any]:
    errors = JsonStrictValidator(SchemaVersion.V1_6).validate_str(document)
    assert errors is None, errors
    parsed: dict[str, Any] = orjson.loads(document)
    return parsed


async def _bom_or_none(running: Any) -> str | None:
    try:
        return await registry_bom(running.settings, "churn", "1")
    except NeverPromoted:
        return None  # audit-log has not stored the promotion verdict yet


async def test_bom_of_a_promotion_decided_across_a_restart(bus: Any, tmp_path: Path) -> None:
    running = await bus("audit-log", "artifact-signer", "registry-gate")
    client = running.client
    settings = running.settings
    guard = SigningKey.from_pem("data-guard", (settings.keys_dir / "data-guard.pem").read_bytes())
    alice, bob, carol = (actor_key(settings, n) for n in ("alice", "bob", "carol"))
    folder = _model_dir(settings.files_dir / "artifacts" / "churn-1")
    async with client.watch() as watcher:
        artifact = await _build_on_passed_data(client, watcher, guard, folder)
        assert artifact is not None and artifact.data.decision == "pass", artifact and artifact.data.findings
        root = artifact.data.root_digest
        request = await client.request_promotion(
            alice, model="churn", version="1", stage="production", root_digest=root
        )
        await client.approve(bob, request_id=request.id, model="churn", version="1", stage="production")
        assert await watcher.wait(
            lambda e: e.type == Subjects.VERDICT_PROMOTION and e.data.request_id == request.id and e.data.approvers, 20
        )
        # Restart in the middle: the request and bob's approval replay from the journal.
        await running.stop("registry-gate")
        await running.start("registry-gate")
        await client.approve(carol, request_id=request.id, model="churn", version="1", stage="production")
        promoted = await watcher.wait(
            lambda e: (
                e.type == Subjects.VERDICT_PROMOTION
                and e.data.request_id == request.id
                and e.data.decision == "promoted"
            ),
            20,
        )
        assert promoted is not None

    bom = _valid(await until(lambda: _bom_or_none(running), what="a BOM once audit-log stored the promotion"))
    model = bom["metadata"]["component"]
    assert (model["type"], model["name"], model["version"]) == ("machine-learning-model", "churn", "1")
    assert model["hashes"] == [{"alg": "SHA-256", "content": root}]
    props = [(p["name"], p["value"]) for p in model["properties"]]
    approvals = [v for n, v in props if n == "mlwarden:approval"]
    assert [a.split("; ")[1] for a in approvals] == ["approver=bob", "approver=carol"]
    assert all(f"request={request.id}" in a for a in approvals)
    assert ("mlwarden:signature-bundle", f"mlw-artifacts/{artifact.data.manifest_key}") in props
    components = {c.get("purl", c["name"]): c for c in bom["components"]}
    assert components["train"]["type"] == "data"
    assert components["train"]["hashes"] == [{"alg": "SHA-256", "content": TRAIN.sha256}]
    assert {"name": "mlwarden:data-guard:decision", "value": "pass"} in components["train"]["properties"]
    assert components["pkg:pypi/numpy@2.4.6"]["hashes"] == [{"alg": "SHA-256", "content": NUMPY_WHEEL}]
    assert "pkg:pypi/scikit-learn@1.9.1" in components

    # The command: the same BOM in a file, exit 0.
    out = tmp_path / "churn-1.cdx.json"
    base = ["registry", "bom", "--nats", settings.nats_url, "--data-dir", str(settings.data_dir)]
    assert await asyncio.to_thread(main, [*base, "churn:1", "--format", "cyclonedx-json", "--out", str(out)]) == 0
    assert _valid(out.read_text())["metadata"]["component"]["hashes"] == model["hashes"]


async def test_forged_promotion_verdict_on_the_bus_makes_no_bom(bus: Any, capsys: pytest.CaptureFixture[str]) -> None:
    running = await bus("audit-log", "registry-gate")
    settings = running.settings
    forged = PromotionVerdict(
        model="churn",
        version="2",
        stage="production",
        decision="promoted",
        requester="alice",
        approvers=["bob", "carol"],
        request_id="made-up",
        in_reply_to="made-up",
        root_digest="ab" * 32,
    )
    # An actor's key, and another service's key: neither may sign registry-gate's verdicts.
    signer = SigningKey.from_pem("artifact-signer", (settings.keys_dir / "artifact-signer.pem").read_bytes())
    for key in (actor_key(settings, "alice"), signer):
        await running.client.publish(Subjects.VERDICT_PROMOTION, forged, about="model:churn:2", key=key)

    async def stored() -> bool:
        page = await running.client.audit_query(AuditQuery(subject="model:churn:2", type=Subjects.VERDICT_PROMOTION))
        return len(page.entries) == 2

    await until(stored, what="audit-log stored both forged verdicts")
    with pytest.raises(NeverPromoted, match="never promoted"):
        await registry_bom(settings, "churn", "2")
    base = ["registry", "bom", "--nats", settings.nats_url, "--data-dir", str(settings.data_dir)]
    capsys.readouterr()
    assert await asyncio.to_thread(main, [*base, "churn:2"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert len(captured.err.strip().splitlines()) == 1 and "churn:2: was never promoted" in captured.err
