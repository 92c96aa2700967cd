"""Metrics, probes and traces on a real bus (issue 10): each service serves /metrics, /healthz
and /readyz; an upload moves the verdict counter and the handler latency histogram; /readyz is
503 with its reason before NATS is there and while it is gone, 200 in between; an upload, its
verdict and their audit rows share one trace id."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from prometheus_client.parser import text_string_to_metric_families

from mlwarden.bootstrap import bootstrap
from mlwarden.services import factory
from mlwarden.supervisor import System
from shared.bus import connect
from shared.embedded import EmbeddedNats, free_port
from shared.events import AuditQuery
from shared.probes import http_get
from shared.settings import Settings
from shared.topology import SERVICES, Subjects
from tests._poll import until


@pytest.fixture
def settings(tmp_path: Path, nats_server: EmbeddedNats) -> Settings:
    """The bus fixture's settings, with every service serving its probes on a port the OS picks."""
    return Settings(data_dir=tmp_path / "data", nats_url=nats_server.url, metrics_port=0)


def _csv(path: Path) -> Path:
    rows = [f"{i % 7},{(i * 3) % 11},{i % 2}" for i in range(200)]
    path.write_text("a,b,label\n" + "\n".join(rows) + "\n")
    return path


def _samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def _value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], name: str, **labels: str) -> float:
    """The sum of `name` over the series that have `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, found), v in samples.items() if n == name and wanted <= found)


async def _scrape(url: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    status, body = await http_get(f"{url}/metrics")
    assert status == 200
    return _samples(body.decode())


async def test_an_upload_moves_the_verdict_counter_and_the_latency_histogram(bus: Any, tmp_path: Path) -> None:
    running = await bus("audit-log", "data-guard")
    guard = running.apps["data-guard"]
    assert guard.probes is not None and running.apps["audit-log"].probes is not None
    url = guard.probes.url
    assert url != running.apps["audit-log"].probes.url  # one port each

    assert await http_get(f"{url}/healthz") == (200, b"ok\n")
    assert await http_get(f"{url}/readyz") == (200, b"ready\n")
    before = await _scrape(url)
    assert _value(before, "mlwarden_verdicts_total") == 0
    assert _value(before, "mlwarden_ready", service="data-guard") == 1

    async with running.client.watch() as watcher:
        upload = await running.client.upload_dataset(
            _csv(tmp_path / "d.csv"), dataset="d", version="1", label="label", uploader="pipeline"
        )
        verdict = await watcher.wait(
            lambda e: e.type == Subjects.VERDICT_DATASET and e.data.in_reply_to == upload.id, 60
        )
    assert verdict is not None
    decision = str(verdict.data.decision)

    handler = {"app_name": "data-guard", "handler": Subjects.DATASET_UPLOADED}

    async def settled() -> dict[tuple[str, frozenset[tuple[str, str]]], float] | None:
        # The verdict is counted when it is published, inside the handler; FastStream's duration
        # histogram and the ack come after the handler returns (a loaded run scraped in between).
        after = await _scrape(url)
        done = (
            _value(after, "mlwarden_verdicts_total") >= 1
            and _value(after, "faststream_received_processed_messages_duration_seconds_count", **handler) >= 1
            and _value(after, "mlwarden_consumer_pending_messages", service="data-guard", durable="data-guard") == 0
        )
        return after if done else None

    after = await until(settled, what="the verdict, its handling time and its ack in data-guard's metrics")
    assert (
        _value(after, "mlwarden_verdicts_total", service="data-guard", type="mlw.verdict.dataset", decision=decision)
        == 1
    )
    assert _value(after, "faststream_received_messages_total", **handler) == 1
    assert _value(after, "faststream_received_processed_messages_duration_seconds_count", **handler) == 1
    assert _value(after, "faststream_received_processed_messages_duration_seconds_sum", **handler) > 0
    # Sampled at the scrape: everything delivered was acked.
    assert _value(after, "mlwarden_consumer_pending_messages", service="data-guard", durable="data-guard") == 0

    # audit-log (plain fetch loops, not FastStream subscribers) counts the entries it stored.
    audit_url = running.apps["audit-log"].probes.url

    async def audited() -> bool:
        seen = await _scrape(audit_url)
        return (
            _value(seen, "mlwarden_audit_entries_total", outcome="stored") >= 2
            and _value(seen, "mlwarden_audit_batch_duration_seconds_count") >= 1
        )

    await until(audited, what="audit-log's received-message count")


async def test_an_upload_its_verdict_and_their_audit_rows_share_one_trace(bus: Any, tmp_path: Path) -> None:
    running = await bus("audit-log", "data-guard")
    async with running.client.watch() as watcher:
        upload = await running.client.upload_dataset(
            _csv(tmp_path / "d.csv"), dataset="d", version="1", label="label", uploader="pipeline"
        )
        verdict = await watcher.wait(
            lambda e: e.type == Subjects.VERDICT_DATASET and e.data.in_reply_to == upload.id, 60
        )
    assert verdict is not None and upload.traceparent is not None and verdict.traceparent is not None
    trace_id = upload.trace.trace_id
    assert verdict.trace.trace_id == trace_id
    assert verdict.trace.span_id != upload.trace.span_id

    async def rows() -> list[Any] | None:
        page = await running.client.audit_query(AuditQuery(limit=100))
        found = [e for e in page.entries if e.event_id in (upload.id, verdict.id)]
        return found if len(found) == 2 else None

    entries = await until(rows, what="the upload and its verdict in the audit trail")
    assert {entry.trace_id for entry in entries} == {trace_id}

    # And as an auditor sees it: `mlwarden audit query --format json`.
    env = {"MLW_NATS_URL": running.settings.nats_url, "MLW_DATA_DIR": str(running.settings.data_dir), "PATH": ""}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "mlwarden",
        "audit",
        "query",
        "--format",
        "json",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode == 0, err.decode()
    shown = {e["event_id"]: e["trace_id"] for e in orjson.loads(out)["entries"]}
    assert shown[upload.id] == shown[verdict.id] == trace_id


@pytest.fixture
def later_nats(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A nats-server on a port chosen now and started by the test (stopped at the end)."""
    server = EmbeddedNats(tmp_path / "later-nats", port=free_port())
    try:
        yield server
    finally:
        server.stop()


async def test_readyz_is_503_without_nats_and_200_once_connected(tmp_path: Path, later_nats: EmbeddedNats) -> None:
    settings = Settings(data_dir=tmp_path / "data", nats_url=later_nats.url, metrics_port=0)
    svc = factory("data-guard")(settings)
    starting = asyncio.create_task(svc.start(), name="data-guard:start")
    try:
        probes = await until(lambda: svc.probes, what="the probe server (it starts before NATS is reached)")
        url = probes.url
        assert await http_get(f"{url}/healthz") == (200, b"ok\n")
        status, body = await http_get(f"{url}/readyz")
        assert status == 503 and b"not connected to NATS" in body, body

        # NATS comes up (as compose may start it after the services); the operator bootstraps.
        await asyncio.to_thread(later_nats.start)
        nc = await connect(settings)
        try:
            await bootstrap(nc.jetstream(), settings)
        finally:
            await nc.drain()
        await asyncio.wait_for(starting, 60)
        assert await http_get(f"{url}/readyz") == (200, b"ready\n")

        # NATS goes away: not ready, with the reason; back: ready again.
        await asyncio.to_thread(later_nats.stop)

        async def unready() -> bytes | None:
            status, body = await http_get(f"{url}/readyz")
            return body if status == 503 else None

        assert b"not connected to NATS" in await until(unready, what="503 while NATS is down")
        await asyncio.to_thread(later_nats.start)

        async def ready() -> bool:
            return await http_get(f"{url}/readyz") == (200, b"ready\n")

        await until(ready, what="ready again after NATS is back")
    finally:
        if not starting.done():
            starting.cancel()
            await asyncio.gather(starting, return_exceptions=True)
        await svc.stop()
    assert svc.probes is None
    with pytest.raises(ConnectionRefusedError):
        await http_get(f"{url}/healthz")


def test_mlwarden_up_gives_each_service_its_own_metrics_port(tmp_path: Path) -> None:
    system = System(tmp_path / "state", metrics_port=0).start()
    try:
        urls = system.metrics_urls()
        assert set(urls) == set(SERVICES)
        assert len(set(urls.values())) == len(SERVICES)

        async def all_ready() -> list[tuple[int, bytes]]:
            return [await http_get(f"{url}/readyz") for url in urls.values()]

        assert asyncio.run(all_ready()) == [(200, b"ready\n")] * len(SERVICES)
    finally:
        system.stop()
