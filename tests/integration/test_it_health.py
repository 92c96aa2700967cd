"""`mlwarden health` asks every service whether it is alive, not only the bus (issue 13)."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any

import nats.errors
import orjson

from mlwarden.ops import HealthReport, health
from shared.topology import SERVICES, Subjects
from tests._poll import until


async def _mlwarden_health(settings: Any) -> tuple[int, dict[str, Any]]:
    env = {**os.environ, "MLW_NATS_URL": settings.nats_url, "MLW_DATA_DIR": str(settings.data_dir)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "mlwarden", "health", "--format", "json", env=env, stdout=asyncio.subprocess.PIPE
    )
    out, _ = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode or 0, orjson.loads(out)


async def test_health_fails_and_names_the_services_that_are_not_running(bus: Any) -> None:
    running = await bus("audit-log", "data-guard")

    async def the_running_ones_answered() -> tuple[int, dict[str, Any]] | None:
        # Each service has 2 s to answer: on a loaded machine a running one may miss it once.
        code, report = await _mlwarden_health(running.settings)
        alive = {row["service"] for row in report["services"] if row["alive"]}
        return (code, report) if {"audit-log", "data-guard"} <= alive else None

    code, report = await until(the_running_ones_answered, what="audit-log and data-guard answering")
    assert code == 1
    assert not report["healthy"]
    alive = {row["service"]: row["alive"] for row in report["services"]}
    assert alive == {name: name in ("audit-log", "data-guard") for name in SERVICES}
    for name in ("artifact-signer", "registry-gate", "serving-monitor"):
        assert any(problem.startswith(f"{name}: not running") for problem in report["problems"]), report


async def test_health_passes_when_every_service_answers(bus: Any) -> None:
    running = await bus(*SERVICES)

    async def healthy() -> HealthReport | None:
        report = await health(running.settings)  # a loaded machine may miss the 2 s once
        return report if report.healthy else None

    report = await until(healthy, what="every service answering")
    assert report.problems == []
    assert [row.service for row in report.services] == list(SERVICES)
    assert all(row.alive and row.latency_ms is not None for row in report.services)


async def test_a_stopped_service_stops_answering(bus: Any) -> None:
    running = await bus("audit-log", "data-guard")

    async def answered() -> bytes | None:
        # The endpoint is subscribed in FastStream's after-startup hook: poll, do not race it.
        try:
            return await running.client.request(Subjects.health("data-guard"), b"", timeout=2.0)
        except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
            return None

    assert (await until(answered, what="data-guard's health answer")).startswith(b"{")
    await running.stop("data-guard")

    async def alive() -> set[str]:
        return {row.service for row in (await health(running.settings)).services if row.alive}

    # data-guard never answers again; audit-log, running, answers (allowing a loaded machine to
    # miss its 2 s once).
    assert await until(lambda: _only_audit_log(alive), what="only audit-log answering") == {"audit-log"}


async def _only_audit_log(alive: Any) -> set[str] | None:
    found: set[str] = await alive()
    assert "data-guard" not in found, found
    return found if found == {"audit-log"} else None
