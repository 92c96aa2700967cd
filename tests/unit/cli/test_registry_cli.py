"""`mlwarden registry status | bom` and `recall dataset`: output and arguments, with the bus call
replaced (the real ones are in tests/integration/test_it_registry_lifecycle.py and
test_it_registry_bom.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mlwarden import registry_cli
from mlwarden.cli import main
from shared.envelope import new_event
from shared.events import PolicyChangeRequested, PolicyInForce, PromotionVerdict, RegistryStatus, StageCurrent

STATUS = RegistryStatus(
    promotions=[],
    current=[
        StageCurrent(
            model="churn",
            stage="production",
            version="3",
            root_digest="ab" * 32,
            action="promotion",
            request_id="req-3",
            since=1_800_000_000.0,
        )
    ],
    pending=[
        PromotionVerdict(
            model="churn",
            version="4",
            stage="production",
            decision="pending",
            requester="alice",
            approvers=["bob"],
            request_id="req-4",
            in_reply_to="req-4",
            expires_at=1_800_600_000.0,
        )
    ],
    policy=PolicyInForce(
        version=3, sha256="cd" * 32, applied_by="paula", request_id="chg-3", reason="tighten", since=1_800_000_000.0
    ),
)


@pytest.fixture
def asked(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    models: list[str | None] = []

    async def fake(settings: Any, model: str | None) -> RegistryStatus:
        models.append(model)
        return STATUS

    monkeypatch.setattr(registry_cli, "registry_status", fake)
    return models


def test_status_json_is_the_registry_status(asked: list[str | None], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["registry", "status", "--model", "churn", "--format", "json"]) == 0
    assert asked == ["churn"]
    assert RegistryStatus.model_validate(json.loads(capsys.readouterr().out)) == STATUS


def test_status_text_shows_current_versions_and_pending_requests(
    asked: list[str | None], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["registry", "status"]) == 0
    assert asked == [None]
    text = capsys.readouterr().out
    assert "production" in text and "req-4" in text and "bob" in text
    assert "policy version 3" in text and "paula" in text and "tighten" in text


@pytest.fixture
def bom_asked(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str]]:
    asked: list[tuple[str, str]] = []

    async def fake(settings: Any, model: str, version: str) -> str:
        asked.append((model, version))
        return '{"bomFormat": "CycloneDX"}'

    monkeypatch.setattr(registry_cli, "registry_bom", fake)
    return asked


def test_bom_prints_or_writes_the_document(
    bom_asked: list[tuple[str, str]], capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    assert main(["registry", "bom", "churn:3.1", "--format", "cyclonedx-json"]) == 0
    assert json.loads(capsys.readouterr().out) == {"bomFormat": "CycloneDX"}
    out = tmp_path / "bom.json"
    assert main(["registry", "bom", "churn:3.1", "--out", str(out)]) == 0
    assert json.loads(out.read_text()) == {"bomFormat": "CycloneDX"}
    assert bom_asked == [("churn", "3.1"), ("churn", "3.1")]


@pytest.mark.parametrize("target", ["churn", ":3", "churn:"])
def test_bom_and_recall_need_name_and_version(target: str, bom_asked: list[tuple[str, str]]) -> None:
    assert main(["registry", "bom", target]) == 2
    assert main(["recall", "dataset", target, "--reason", "r"]) == 2
    assert bom_asked == []


def test_recall_needs_a_reason() -> None:
    assert main(["recall", "dataset", "train:1"]) == 2


@pytest.fixture
def applied(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, str, int | None]]:
    sent: list[tuple[str, str, int | None]] = []

    async def fake(settings: Any, args: Any, document: str, reason: str, expected: int | None) -> Any:
        sent.append((document, reason, expected))
        body = PolicyChangeRequested(document=document, requester="paula", reason=reason, expected_version=expected)
        return new_event("mlw.registry.policy", body, source="mlwarden/cli", subject="policy:registry")

    monkeypatch.setattr(registry_cli, "apply_policy", fake)
    return sent


def test_policy_apply_sends_the_file_and_prints_its_sha256(
    applied: list[tuple[str, str, int | None]], capsys: pytest.CaptureFixture[str], tmp_path: Any
) -> None:
    import hashlib

    path = tmp_path / "policy.yaml"
    path.write_text("roles: [ml-engineer, reviewer]\n")
    argv = ["registry", "policy", "apply", str(path), "--reason", "r", "--expected-version", "2", "--format", "json"]
    assert main(argv) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
    assert printed["request_id"] == printed["id"] and printed["type"] == "mlw.registry.policy"
    assert applied == [(path.read_text(), "r", 2)]


def test_policy_apply_needs_a_readable_file_and_a_reason(
    applied: list[tuple[str, str, int | None]], tmp_path: Any
) -> None:
    assert main(["registry", "policy", "apply", str(tmp_path / "absent.yaml"), "--reason", "r"]) == 2
    assert main(["registry", "policy", "apply", str(tmp_path / "absent.yaml")]) == 2
    assert applied == []
