"""serving-monitor on a real bus: admission, rate limit, validation, abuse alerts, audit rows."""

from __future__ import annotations

import asyncio
import contextlib
import io
import time
from typing import Any

import orjson
import pytest

from mlwarden.cli import main
from services.serving_monitor.app import Monitor
from services.serving_monitor.auth import parse_api_key
from services.serving_monitor.keystore import issue_key_on_bus, register_schema_on_bus
from services.serving_monitor.validation import FeatureSchema, FeatureSpec
from shared.events import AdmitReply, AdmitRequest, AuditQuery, PredictionRecord
from shared.topology import API_KEYS_BUCKET, Subjects
from tests._poll import DEFAULT_TIMEOUT_S, until

SCHEMA = FeatureSchema(
    model="churn",
    features=[FeatureSpec(name="age", min=0, max=120), FeatureSpec(name="spend", min=0, max=1e4)],
)
GOOD = {"age": 42.0, "spend": 120.5}


@pytest.fixture
async def serving(bus: Any) -> Any:
    running = await bus("audit-log", "serving-monitor")
    await register_schema_on_bus(running.client.js, SCHEMA)
    key = await issue_key_on_bus(running.client.js, running.settings, "webapp", ["churn"])
    # The service follows the buckets through watchers: wait until it knows the key and schema.
    monitor = running.apps["serving-monitor"].get("monitor", Monitor)
    await until(lambda: monitor.schemas.get(SCHEMA.model), what="serving-monitor to load the schema")
    await until(lambda: monitor.keys.authenticate(key, SCHEMA.model).ok, what="serving-monitor to load the key")
    return running, key


async def test_good_traffic_is_admitted(serving: Any) -> None:
    running, key = serving
    reply = await running.client.admit(AdmitRequest(api_key=key, model="churn", inputs=[GOOD]))
    assert reply.allowed and reply.client == "webapp"


@pytest.mark.parametrize(
    ("api_key", "reason"),
    [("garbage", "malformed_key"), ("mlw_0123456789abcdef_" + "A" * 43, "unknown_key")],
)
async def test_unauthenticated_calls_are_denied_and_audited(serving: Any, api_key: str, reason: str) -> None:
    running, _ = serving
    reply = await running.client.admit(AdmitRequest(api_key=api_key, model="churn", inputs=[GOOD]))
    assert not reply.allowed and reply.reason == reason

    async def denial_recorded() -> bool:
        page = await running.client.audit_query(AuditQuery(type=Subjects.VERDICT_ADMISSION))
        return any(e.event["data"]["reason"] == reason for e in page.entries)

    await until(denial_recorded, what="the denial in the audit trail")


async def test_a_burst_is_rate_limited_with_retry_after(serving: Any) -> None:
    running, key = serving
    replies = [await running.client.admit(AdmitRequest(api_key=key, model="churn", inputs=[GOOD])) for _ in range(80)]
    denied = [r for r in replies if not r.allowed]
    assert denied, "a burst of 80 beyond a burst allowance of 40 must be limited"
    assert all(r.reason == "rate_limited" and r.retry_after and r.retry_after > 0 for r in denied)


@pytest.mark.parametrize(
    "row",
    [{"age": None, "spend": 1.0}, {"age": 1e9, "spend": 1.0}, {"age": 30.0, "spend": 1.0, "evil": 1.0}, {"age": 30.0}],
)
async def test_invalid_inputs_are_denied(serving: Any, row: dict[str, float | None]) -> None:
    running, key = serving
    reply = await running.client.admit(AdmitRequest(api_key=key, model="churn", inputs=[row]))
    assert not reply.allowed and reply.reason == "invalid_inputs" and reply.problems


async def test_malformed_admit_request_gets_an_error_reply_and_is_audited(serving: Any) -> None:
    running, key = serving
    for _ in range(20):  # a flood of junk is coalesced, not one audit row each
        raw = await running.client.request(Subjects.SERVING_ADMIT, b'{"api_key": 1, "inputs": "x"}')
        assert b'"error":"bad_request"' in raw
    raw = await running.client.request(Subjects.SERVING_ADMIT, b"\xff\x00 not json")
    assert b'"error":"bad_request"' in raw
    # The service keeps serving.
    assert (await running.client.admit(AdmitRequest(api_key=key, model="churn", inputs=[GOOD]))).allowed

    async def letters() -> Any:
        page = await running.client.audit_query(AuditQuery(type="mlw.deadletter.serving-monitor"))
        return page if sum(e.event["data"]["count"] for e in page.entries) >= 21 else None

    page = await until(letters, what="21 coalesced rejections in the audit trail")
    assert sum(e.event["data"]["count"] for e in page.entries) == 21
    assert len(page.entries) <= 3


async def test_abusive_prediction_logs_raise_an_alert(serving: Any) -> None:
    running, _ = serving
    bad = [PredictionRecord(client="scraper", features={"age": -5.0, "spend": 1.0}, prediction=1) for _ in range(50)]
    async with running.client.watch() as watcher:
        await running.client.log_predictions("churn", bad)
        alert = await watcher.wait(
            lambda e: e.type == Subjects.alert("serving-monitor") and e.data.kind == "abuse.invalid_inputs", 10
        )
    assert alert is not None and alert.data.client == "scraper"


async def _admitted_until_denied(running: Any, key: str, deadline_s: float = DEFAULT_TIMEOUT_S) -> AdmitReply:
    """Poll admission until the key is refused for its authentication (not a rate limit)."""
    deadline = time.monotonic() + deadline_s
    while True:
        reply = await running.client.admit(AdmitRequest(api_key=key, model="churn", inputs=[GOOD]))
        if not reply.allowed and reply.reason not in ("rate_limited", "request_too_large"):
            return reply
        assert time.monotonic() < deadline, f"the key still works: {reply}"
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("how", ["delete", "purge"])
async def test_deleting_an_api_key_record_revokes_it_in_a_running_monitor(serving: Any, how: str) -> None:
    # Before: the watcher handed the delete marker (an empty value) to the record parser, which
    # failed; the failure was logged and ignored, and the deleted key kept working.
    running, key = serving
    assert (await running.client.admit(AdmitRequest(api_key=key, model="churn", inputs=[GOOD]))).allowed
    parsed = parse_api_key(key)
    assert parsed is not None
    kv = await running.client.js.key_value(API_KEYS_BUCKET)
    old = await kv.get(parsed[0])
    await (kv.delete(parsed[0]) if how == "delete" else kv.purge(parsed[0]))
    assert (await _admitted_until_denied(running, key)).reason == "revoked"
    # Putting the old, genuinely MAC'd record back does not un-revoke the key in this process.
    await kv.put(parsed[0], old.value or b"")
    survivor = await issue_key_on_bus(running.client.js, running.settings, "other", ["churn"])
    await _admitted_until_allowed(running, survivor)  # the watcher has seen what came before it
    reply = await running.client.admit(AdmitRequest(api_key=key, model="churn", inputs=[GOOD]))
    assert not reply.allowed and reply.reason == "revoked"


async def _admitted_until_allowed(running: Any, key: str, deadline_s: float = DEFAULT_TIMEOUT_S) -> None:
    deadline = time.monotonic() + deadline_s
    while not (await running.client.admit(AdmitRequest(api_key=key, model="churn", inputs=[GOOD]))).allowed:
        assert time.monotonic() < deadline, "the new key was never admitted"
        await asyncio.sleep(0.1)


async def test_keys_cli_lists_and_revokes_an_api_key(serving: Any) -> None:
    running, key = serving
    parsed = parse_api_key(key)
    assert parsed is not None
    argv = ["--nats", running.settings.nats_url, "--data-dir", str(running.settings.data_dir)]
    listing = await asyncio.to_thread(_run_cli, ["keys", "api-key", "list", "--json", *argv])
    assert [(r["key_id"], r["client"], r["revoked"]) for r in orjson.loads(listing)] == [(parsed[0], "webapp", False)]
    await asyncio.to_thread(_run_cli, ["keys", "api-key", "revoke", parsed[0], *argv])
    assert (await _admitted_until_denied(running, key)).reason == "revoked"
    assert orjson.loads(await asyncio.to_thread(_run_cli, ["keys", "api-key", "list", "--json", *argv])) == []
    # An id that is not (or no longer) there is a usage error, not a silent success.
    assert await asyncio.to_thread(main, ["keys", "api-key", "revoke", parsed[0], *argv]) == 2


def _run_cli(argv: list[str]) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        assert main(argv) == 0
    return out.getvalue()
