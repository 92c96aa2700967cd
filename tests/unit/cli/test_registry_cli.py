"""`mlwarden registry status`: its output, with the bus call replaced (the real one is in
tests/integration/test_it_registry_lifecycle.py)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from mlwarden import registry_cli
from mlwarden.cli import main
from shared.events import PromotionVerdict, RegistryStatus, StageCurrent

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
