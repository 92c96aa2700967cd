"""Faults: a service killed with SIGKILL mid-stream and restarted loses nothing; the whole
system starts and stops through `mlwarden up`'s supervisor; the demo sees every verdict."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

from mlwarden.bootstrap import bootstrap
from mlwarden.supervisor import System
from services.audit_log.store import AuditStore
from services.audit_log.verify import verify_chain
from shared.bus import connect, publish_event
from shared.envelope import new_event
from shared.events import Alert, Severity
from shared.settings import Settings
from shared.topology import CONSUMERS
from tests._poll import DEFAULT_TIMEOUT_S, until

#: A restart of audit-log on a loaded machine, at most (start-up, trust store, lease).
RECOVERY_S = DEFAULT_TIMEOUT_S


def _spawn(name: str, settings: Settings) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MLW_DATA_DIR": str(settings.data_dir), "MLW_NATS_URL": settings.nats_url}
    return subprocess.Popen(
        [sys.executable, "-m", "mlwarden", "run", name], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


async def _count(store: AuditStore) -> int:
    try:
        return await asyncio.to_thread(store.count)
    except Exception:  # noqa: BLE001 - the table may not exist before the first start
        return 0


async def _all_stored(store: AuditStore, total: int) -> bool:
    return await _count(store) >= total


async def test_audit_log_killed_mid_stream_and_restarted_loses_nothing(settings: Settings) -> None:
    total = 3000
    nc = await connect(settings)
    js = nc.jetstream()
    await bootstrap(js, settings)
    store = AuditStore(settings.audit_url)
    proc = _spawn("audit-log", settings)
    try:
        for i in range(total):
            alert = Alert(kind="test", severity=Severity.INFO, message=f"event {i}")
            await publish_event(js, "mlw.alert.tests", new_event("mlw.alert.tests", alert, source="tests"))
        # Kill it while it is still ingesting (or as soon as it has stored anything).
        await until(lambda: _count(store), what="audit-log storing its first events")
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        stored_at_kill = await _count(store)
        assert stored_at_kill < total, "the kill came too late to prove anything"
        proc = _spawn("audit-log", settings)
        # What the killed process had fetched comes back after the consumer's ack wait: allow
        # that plus a restart on a loaded machine (a stop-8 run gave up after 30 s at 2,200).
        recovery = RECOVERY_S + max(spec.ack_wait_s for spec in CONSUMERS["audit-log"])
        await until(lambda: _all_stored(store, total), what=f"all {total} events stored", timeout=recovery)
        assert await _count(store) == total
        report = await asyncio.to_thread(verify_chain, store)
        assert report.ok, report.reason
    finally:
        proc.terminate()
        proc.wait(10)
        await nc.drain()


def test_system_starts_every_service_and_stops_them(tmp_path: Path) -> None:
    system = System(tmp_path / "state").start()
    try:
        assert set(system.processes) == {
            "audit-log",
            "data-guard",
            "artifact-signer",
            "registry-gate",
            "serving-monitor",
        }
        assert all(p.poll() is None for p in system.processes.values())
        assert (tmp_path / "state" / "keys" / "audit-log.pem").exists()
    finally:
        system.stop()
    assert system.nats is None
    assert not system.processes


def test_demo_sees_every_expected_verdict(tmp_path: Path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mlwarden", "demo", "--data-dir", str(tmp_path / "demo")],
        capture_output=True,
        text=True,
        timeout=240,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "expected verdicts seen" in result.stdout
