"""The auditors' web page over HTTP (no browser): filters, keyset paging, escaping, checked
proofs that fail closed, timelines, and a database handle that cannot write."""

from __future__ import annotations

import subprocess
import sys
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from starlette.testclient import TestClient

from mlwarden.audit_web import WebDeps, create_app, parse_query
from services.audit_log.checkpoint import sign_checkpoint
from services.audit_log.store import AuditStore, IncomingEvent
from shared.embedded import free_port
from shared.errors import InputError
from shared.events import AuditCheckpoint
from shared.signing import SigningKey
from tests._poll import until_sync

if TYPE_CHECKING:
    from conftest import DbTarget

EventFactory = Callable[..., bytes]

T0 = 1_700_000_000.0
HOSTILE = "<script>alert('pwned')</script>"


@dataclass
class Page:
    """A trail, the page's read-only handle on it, and a client of the page."""

    writer: AuditStore
    reader: AuditStore
    deps: WebDeps
    client: TestClient
    key: SigningKey
    checkpoints: list[AuditCheckpoint]

    def sign(self) -> AuditCheckpoint:
        """Sign a checkpoint over the whole trail now (as audit-log does)."""
        size = self.writer.count()
        cp = sign_checkpoint(self.key, size, self.writer.root(size), timestamp_ms=int(T0 * 1000) + size)
        self.checkpoints.append(cp)
        return cp

    def json(self, path: str, **params: Any) -> Any:
        response = self.client.get(path, params=params)
        assert response.status_code == 200, response.text
        return response.json()


def _trail(event_bytes: EventFactory) -> list[IncomingEvent]:
    items: list[IncomingEvent] = []
    for i in range(30):
        items.append(
            IncomingEvent.from_bytes(
                event_bytes(
                    event_id=f"e-{i:03d}",
                    type_="mlw.dataset.uploaded",
                    source=f"mlwarden/{'data-guard' if i % 3 == 0 else 'cli'}",
                    subject=f"dataset:iris:{i % 4}",
                    time=T0 + i * 60,
                    data={"uploader": f"user{i % 5}", "decision": "fail" if i % 2 else "pass"},
                ),
                recorded_at=T0 + i * 60 + 1,
            )
        )
    return items


@pytest.fixture
def web(db_target: DbTarget, store: AuditStore, event_bytes: EventFactory) -> Iterator[Page]:
    """A 30-entry trail served by the page, with audit-log's key and one checkpoint over it."""
    store.append_batch(_trail(event_bytes))
    reader = AuditStore(db_target.url, schema=db_target.schema, read_only=True)
    key = SigningKey.generate("audit-log")
    checkpoints: list[AuditCheckpoint] = []
    deps = WebDeps(reader, lambda: checkpoints, key.private.public_key(), "test key", "test list")
    try:
        with TestClient(create_app(deps), base_url="http://127.0.0.1") as client:
            page = Page(store, reader, deps, client, key, checkpoints)
            page.sign()
            yield page
    finally:
        reader.close()


def test_filters_are_anded_and_newest_first(web: Page) -> None:
    body = web.json("/api/entries", service="data-guard", decision="fail")
    seqs = [e["seq"] for e in body["entries"]]
    # data-guard is every third entry (seq 1, 4, 7, ...), fail every second (seq 2, 4, 6, ...).
    assert seqs == [28, 22, 16, 10, 4]
    assert all(e["service"] == "data-guard" and e["decision"] == "fail" for e in body["entries"])
    actor = web.json("/api/entries", actor="user2", subject="dataset:iris:*")
    assert {e["actor"] for e in actor["entries"]} == {"user2"}
    ranged = web.json("/api/entries", since=str(T0 + 600), until="2023-11-14T22:33:20")  # T0 + 600 .. T0 + 1200
    assert [e["seq"] for e in ranged["entries"]] == list(range(20, 10, -1))


def test_keyset_pages_cover_every_match_once(web: Page) -> None:
    seen: list[int] = []
    cursor: int | None = None
    pages = 0
    while True:
        params = {"limit": "7", "decision": "pass"} | ({"cursor": str(cursor)} if cursor else {})
        body = web.json("/api/entries", **params)
        seen += [e["seq"] for e in body["entries"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert seen == list(range(29, 0, -2))
    assert pages == 3
    html = web.client.get("/", params={"limit": "7", "decision": "pass"}).text
    assert 'href="/?limit=7&amp;decision=pass&amp;cursor=17"' in html


def test_bad_parameters_are_refused_with_the_reason(web: Page) -> None:
    response = web.client.get("/api/entries", params={"since": "yesterday-ish"})
    assert response.status_code == 400
    assert "not a time" in response.json()["error"]
    assert web.client.get("/", params={"limit": "0"}).status_code == 400
    with pytest.raises(InputError):
        parse_query({"cursor": "x"})


def test_an_entry_holding_script_renders_inert(web: Page, event_bytes: EventFactory) -> None:
    hostile = event_bytes(
        event_id="hostile-1",
        subject=f"dataset:{HOSTILE}:1",
        source="mlwarden/cli",
        time=T0 + 5000,
        data={"uploader": HOSTILE, "decision": "<b>pass</b>", "note": f'"><img src=x onerror=alert(1)>{HOSTILE}'},
    )
    web.writer.append_batch([IncomingEvent.from_bytes(hostile, recorded_at=T0 + 5001)])
    seq = web.writer.head().seq
    for path in ("/", f"/entries/{seq}"):
        response = web.client.get(path)
        assert response.status_code == 200
        html = response.text
        assert "<script" not in html and "<img" not in html and "<b>pass" not in html
        assert "&lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;" in html
        # Even a template mistake could not run a script: the policy allows none.
        assert "script-src" not in response.headers["content-security-policy"]
        assert response.headers["content-security-policy"].startswith("default-src 'none'")


def test_an_entry_is_verified_against_the_latest_signed_checkpoint(web: Page) -> None:
    body = web.json("/api/entries/5")
    assert body["proof"]["verified"] is True, body["proof"]
    assert body["proof"]["checkpoint"]["tree_size"] == 30
    assert body["event"]["id"] == "e-004"
    html = web.client.get("/entries/5").text
    assert "verified: included in the trail signed by audit-log at 30 entries" in html


def test_an_entry_is_not_verified_without_the_key(web: Page) -> None:
    web.deps.key = None
    proof = web.json("/api/entries/5")["proof"]
    assert proof["verified"] is False
    assert "no public key of audit-log" in proof["reason"]
    assert "NOT verified: no public key of audit-log" in web.client.get("/entries/5").text


def test_an_entry_is_not_verified_with_a_forged_or_missing_checkpoint(web: Page, event_bytes: EventFactory) -> None:
    forged = web.checkpoints[-1].model_copy(update={"signature": SigningKey.generate("x").sign(b"other")})
    web.checkpoints.append(forged)
    proof = web.json("/api/entries/5")["proof"]
    assert proof["verified"] is False and "signature" in proof["reason"]
    web.checkpoints.clear()
    assert "no signed checkpoint" in web.json("/api/entries/5")["proof"]["reason"]
    # An entry the latest checkpoint does not cover yet is not vouched for either.
    web.sign()
    web.writer.append_batch([IncomingEvent.from_bytes(event_bytes(event_id="late"), recorded_at=T0)])
    late = web.json(f"/api/entries/{web.writer.head().seq}")["proof"]
    assert late["verified"] is False and "newer than the latest signed checkpoint" in late["reason"]


def test_an_unsigned_entry_shows_no_verified_signer(web: Page) -> None:
    signer = web.json("/api/entries/1")["signer"]
    assert signer["verified"] is None and signer["note"].startswith("unsigned")
    assert web.client.get("/api/entries/999").status_code == 404


def test_a_signer_that_did_not_verify_is_named_as_a_claim_only(web: Page, event_bytes: EventFactory) -> None:
    forged = event_bytes(event_id="forged", signer="registry-gate", data={"uploader": "alice"})
    web.writer.append_batch([IncomingEvent.from_bytes(forged, recorded_at=T0)])
    signer = web.json(f"/api/entries/{web.writer.head().seq}")["signer"]
    assert signer["verified"] is None and signer["claimed"] == "registry-gate"
    assert signer["note"].startswith("NOT verified")
    html = web.client.get(f"/entries/{web.writer.head().seq}").text
    assert "none verified</span> (claims registry-gate)" in html


def test_checkpoints_and_a_verification_run(web: Page) -> None:
    before = web.json("/api/checkpoints")
    assert before["last_run"] is None
    assert [(c["tree_size"], c["verified"]) for c in before["checkpoints"]] == [(30, True)]
    response = web.client.post("/verify", follow_redirects=False)
    assert response.status_code == 303
    html = web.client.get("/checkpoints").text
    assert "intact: 30 entries" in html
    run = web.json("/api/checkpoints")["last_run"]
    assert run["ok"] is True and run["verified_size"] == 30


def test_a_verification_is_not_started_by_another_site(web: Page) -> None:
    refused = web.client.post("/verify", headers={"origin": "https://evil.example"}, follow_redirects=False)
    assert refused.status_code == 403
    assert web.json("/api/checkpoints")["last_run"] is None
    fetched = web.client.post("/verify", headers={"sec-fetch-site": "cross-site"}, follow_redirects=False)
    assert fetched.status_code == 403
    assert web.json("/api/checkpoints")["last_run"] is None
    same = web.client.post("/verify", headers={"origin": "http://127.0.0.1"}, follow_redirects=False)
    assert same.status_code == 303


def test_a_verification_run_fails_closed_without_a_key(web: Page) -> None:
    web.deps.key = None
    run = web.client.post("/api/verify").json()
    assert run["ok"] is False and "no public key" in run["reason"]


def test_the_timeline_of_a_model_version(web: Page, event_bytes: EventFactory) -> None:
    story = [
        ("mlw.verdict.dataset", "dataset:iris:1", {"dataset": "iris", "version": "1", "decision": "pass"}),
        ("mlw.verdict.dataset", "dataset:other:1", {"dataset": "other", "version": "1", "decision": "fail"}),
        ("mlw.model.built", "model:churn:3", {"builder": "ci", "datasets": [{"dataset": "iris", "version": "1"}]}),
        ("mlw.verdict.artifact", "model:churn:3", {"decision": "pass"}),
        ("mlw.registry.promotion", "model:churn:3", {"stage": "production", "requester": "alice"}),
        ("mlw.registry.approval", "model:churn:3", {"stage": "production", "approver": "bob"}),
        ("mlw.verdict.promotion", "model:churn:3", {"stage": "production", "decision": "promoted"}),
        ("mlw.verdict.promotion", "model:churn:4", {"stage": "production", "decision": "promoted"}),
        ("mlw.registry.demotion", "model:churn:3", {"stage": "production", "requester": "alice"}),
        (
            "mlw.verdict.promotion",
            "model:churn:3",
            {"stage": "production", "decision": "demoted", "action": "demotion"},
        ),
        ("mlw.registry.rollback", "model:churn:3", {"stage": "production", "requester": "alice"}),
        (
            "mlw.verdict.promotion",
            "model:churn:3",
            {"stage": "production", "decision": "promoted", "action": "rollback"},
        ),
        ("mlw.prediction.logged", "model:churn:3", {"records": []}),
    ]
    items = [
        IncomingEvent.from_bytes(
            event_bytes(type_=type_, subject=subject, data=data, time=T0 + 9000 + i), recorded_at=T0 + 9000 + i
        )
        for i, (type_, subject, data) in enumerate(story)
    ]
    web.writer.append_batch(items)
    steps = web.json("/api/timeline", model="churn", version="3")["steps"]
    assert [(s["step"], s["outcome"]) for s in steps] == [
        ("dataset verdict", "pass: iris:1"),
        ("model built", ""),
        ("artifact verdict", "pass"),
        ("promotion requested", "to production"),
        ("approval", "for production"),
        ("promotion verdict", "promoted (production)"),
        ("demotion requested", "stage production"),
        ("demotion verdict", "demoted (production)"),
        ("rollback requested", "stage production"),
        ("rollback verdict", "promoted (production)"),
    ]
    html = web.client.get("/timeline", params={"model": "churn", "version": "3"}).text
    assert html.count('class="step"') == 10
    assert web.client.get("/api/timeline", params={"model": "a:b", "version": "1"}).status_code == 400


def test_the_page_handle_cannot_write(web: Page, db_target: DbTarget) -> None:
    with pytest.raises(DBAPIError), web.reader.engine.begin() as conn:
        conn.execute(text("DELETE FROM audit_writers"))
    with pytest.raises(DBAPIError), web.reader.engine.begin() as conn:
        conn.execute(text("CREATE TABLE mlw_probe (a INTEGER)"))
    assert web.reader.count() == 30


def test_an_unreadable_entry_is_reported_not_a_traceback(web: Page, db_target: DbTarget) -> None:
    with web.writer.engine.begin() as conn:
        # What an attacker with DDL rights could leave behind: the guards dropped, a body broken.
        if db_target.backend == "sqlite":
            conn.execute(text("DROP TRIGGER audit_entries_no_update"))
        else:
            conn.execute(text(f'DROP TRIGGER audit_entries_append_only ON "{db_target.schema}".audit_entries'))
        table = web.writer.table
        conn.execute(table.update().where(table.c.seq == 30).values(body="not json"))
    response = web.client.get("/")
    assert response.status_code == 500
    assert "audit entry seq 30: body is not JSON" in response.text
    assert web.client.get("/api/entries").json()["error"].startswith("audit entry seq 30")
    assert "NOT verified" in web.client.get("/entries/30").text


def test_the_page_refuses_a_writable_store(store: AuditStore) -> None:
    with pytest.raises(InputError, match="read-only"):
        create_app(WebDeps(store, list, None))


def test_a_foreign_host_header_is_refused(web: Page) -> None:
    # DNS rebinding: a page elsewhere that resolves its own name to 127.0.0.1.
    assert web.client.get("/", headers={"host": "evil.example"}).status_code == 400


def test_audit_serve_serves_the_trail_read_only_on_localhost(
    tmp_path: Path, event_bytes: EventFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The command itself: `mlwarden audit serve` answers on the port it was given, from --db."""
    db = tmp_path / "audit.db"
    with AuditStore(f"sqlite:///{db}") as writer:
        writer.create()
        writer.append_batch(_trail(event_bytes))
    key = SigningKey.generate("audit-log")
    (tmp_path / "audit-log.pub.pem").write_bytes(key.public_pem())
    port = free_port()
    monkeypatch.delenv("MLW_AUDIT_DB_URL", raising=False)
    args = [sys.executable, "-m", "mlwarden", "audit", "serve", "--data-dir", str(tmp_path / "data")]
    args += ["--db", f"sqlite:///{db}", "--port", str(port), "--key", str(tmp_path / "audit-log.pub.pem")]
    args += ["--nats", f"nats://127.0.0.1:{free_port()}"]  # nothing listens: no bus, fast
    process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:

        def answer() -> Any:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/entries?limit=5", timeout=5) as response:
                    return orjson.loads(response.read())
            except OSError:
                assert process.poll() is None, process.stderr.read() if process.stderr else b""
                return None

        body = until_sync(answer, what="mlwarden audit serve answering")
        assert [e["seq"] for e in body["entries"]] == [30, 29, 28, 27, 26]
    finally:
        process.terminate()
        process.wait(timeout=30)
        if process.stderr is not None:
            process.stderr.close()
