"""Issue 8: what the audit commands read and print. The database named by `MLW_AUDIT_DB_URL` is
the one verified; stored fields reach the terminal without control characters or markup."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import orjson
import pytest

import mlwarden.ops
from mlwarden.cli import main
from mlwarden.cliutil import out, printable, redact_urls
from services.audit_log.checkpoint import CheckpointMirror, sign_checkpoint
from services.audit_log.query import run_query
from services.audit_log.settings import mirror_path
from services.audit_log.store import AuditStore, IncomingEvent
from shared.events import AuditPage, AuditQuery
from shared.settings import Settings
from shared.signing import load_or_create_key

EventFactory = Callable[..., bytes]
NO_BUS = "nats://127.0.0.1:1"
#: A version that turns the rest of the terminal red, and an OSC 8 hyperlink in a name.
HOSTILE_VERSION = "1\x1b[31m"
HOSTILE_ACTOR = "\x1b]8;;https://evil.example\x07mallory\x1b]8;;\x07[bold]x[/bold]\u202e"


def fill(url: str, data_dir: Path, event_bytes: EventFactory) -> AuditStore:
    store = AuditStore(url)
    store.create()
    store.append_batch(
        [
            IncomingEvent.from_bytes(
                event_bytes(
                    event_id=f"e{i}",
                    subject=f"dataset:iris:{HOSTILE_VERSION}",
                    data={"uploader": HOSTILE_ACTOR, "decision": "pass\x1b[0m"},
                ),
                recorded_at=1.0 + i,
            )
            for i in range(3)
        ]
    )
    key = load_or_create_key(data_dir / "keys" / "audit-log.pem", "audit-log")
    CheckpointMirror(mirror_path(data_dir)).append(sign_checkpoint(key, 3, store.root(3), timestamp_ms=1))
    return store


@pytest.fixture(autouse=True)
def wide_console(monkeypatch: pytest.MonkeyPatch) -> None:
    """Wide enough that no table cell is shortened with an ellipsis."""
    monkeypatch.setattr(out, "width", 400)


def test_verify_reads_the_database_named_by_mlw_audit_db_url(
    tmp_path: Path, event_bytes: EventFactory, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "data"
    url = f"sqlite:///{tmp_path / 'elsewhere' / 'trail.db'}"
    (tmp_path / "elsewhere").mkdir()
    fill(url, data_dir, event_bytes).close()
    monkeypatch.setenv("MLW_AUDIT_DB_URL", url)
    capsys.readouterr()
    code = main(["audit", "verify", "--data-dir", str(data_dir), "--nats", NO_BUS, "--format", "json"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert orjson.loads(captured.out)["entries"] == 3


def _assert_clean(text: str) -> None:
    assert "\x1b" not in text and "\x07" not in text and "\u202e" not in text
    # Markup in a stored field is shown, not interpreted.
    assert "[bold]x[/bold]" in text


def test_audit_trail_table_strips_control_characters_from_stored_fields(
    tmp_path: Path, event_bytes: EventFactory, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'audit.db'}"
    fill(url, tmp_path / "data", event_bytes).close()
    capsys.readouterr()
    assert main(["audit", "trail", "dataset", "iris", "--db", url, "--data-dir", str(tmp_path / "data")]) == 0
    captured = capsys.readouterr()
    _assert_clean(captured.out)
    assert "dataset:iris:1[31m" in captured.out


def test_audit_query_table_strips_control_characters_from_stored_fields(
    tmp_path: Path, event_bytes: EventFactory, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = fill(f"sqlite:///{tmp_path / 'audit.db'}", tmp_path / "data", event_bytes)

    async def answered_by_audit_log(_settings: Settings, query: AuditQuery) -> AuditPage:
        return run_query(store, query)

    monkeypatch.setattr(mlwarden.ops, "audit_query", answered_by_audit_log)
    capsys.readouterr()
    assert main(["audit", "query", "--nats", NO_BUS, "--subject", "dataset:iris:*"]) == 0
    _assert_clean(capsys.readouterr().out)
    store.close()


def test_error_text_is_redacted_and_made_printable() -> None:
    assert redact_urls("cannot reach nats://auditor:pw@h:4222,tls://svc:x@h2:4222") == (
        "cannot reach nats://auditor:***@h:4222,tls://svc:***@h2:4222"
    )
    assert printable("v\x1b[31m1 [red]x\u200f") == "v[31m1 \\[red]x"
