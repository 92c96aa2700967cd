"""The operators' HTTP endpoints (issue 10): readiness decided from the service's state, and a
server that answers /healthz, /readyz and /metrics and leaves nothing open when stopped."""

from __future__ import annotations

import asyncio

import pytest

from shared.probes import ProbeServer, ReadinessState, http_get, readiness_problems
from tests._poll import until

READY = ReadinessState(started=True, stopping=False, connected=True, trust_loaded=True)


def test_a_started_connected_trusting_service_is_ready() -> None:
    assert readiness_problems(READY) == []


def test_each_missing_condition_is_named() -> None:
    state = ReadinessState(
        started=False,
        stopping=False,
        connected=False,
        trust_loaded=False,
        stopped_consumers=["data-guard"],
        missing_consumers=["audit-log-events does not exist in MLW_EVENTS"],
    )
    assert readiness_problems(state) == [
        "not connected to NATS",
        "trust store not loaded",
        "starting",
        "consumer data-guard not running",
        "consumer audit-log-events does not exist in MLW_EVENTS",
    ]


def test_the_service_s_own_checks_are_added() -> None:
    state = ReadinessState(
        started=True,
        stopping=False,
        connected=True,
        trust_loaded=True,
        service_problems=["holds the writer lease but is not ingesting"],
    )
    assert readiness_problems(state) == ["holds the writer lease but is not ingesting"]


def test_a_stopping_service_is_not_ready_whatever_else_holds() -> None:
    state = ReadinessState(started=True, stopping=True, connected=True, trust_loaded=True)
    assert readiness_problems(state) == ["stopping"]


class _Fake:
    """Readiness and metrics a test sets."""

    def __init__(self) -> None:
        self.problems = ["not connected to NATS"]
        self.accepts: list[str | None] = []

    async def readiness(self) -> list[str]:
        return list(self.problems)

    async def metrics(self, accept: str | None) -> tuple[bytes, str]:
        self.accepts.append(accept)
        return b"mlwarden_ready 1.0\n", "text/plain; version=0.0.4; charset=utf-8"


async def test_probe_server_answers_health_readiness_and_metrics() -> None:
    fake = _Fake()
    server = ProbeServer("127.0.0.1", 0, metrics=fake.metrics, readiness=fake.readiness)
    await server.start()
    try:
        assert await http_get(f"{server.url}/healthz") == (200, b"ok\n")
        assert await http_get(f"{server.url}/readyz") == (503, b"not ready: not connected to NATS\n")
        fake.problems = []
        assert await http_get(f"{server.url}/readyz?verbose=1") == (200, b"ready\n")
        assert await http_get(f"{server.url}/metrics") == (200, b"mlwarden_ready 1.0\n")
        assert (await http_get(f"{server.url}/nothing"))[0] == 404
    finally:
        await server.stop()


async def test_probe_server_refuses_other_methods_and_garbage() -> None:
    fake = _Fake()
    server = ProbeServer("127.0.0.1", 0, metrics=fake.metrics, readiness=fake.readiness)
    await server.start()
    try:
        for request, status in ((b"POST /readyz HTTP/1.1\r\n\r\n", b"405"), (b"hello\r\n\r\n", b"400")):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(request)
            answer = await reader.read()
            writer.close()
            await writer.wait_closed()
            assert answer.split(b" ")[1] == status
    finally:
        await server.stop()


async def test_stopping_closes_the_port_and_open_connections() -> None:
    fake = _Fake()
    server = ProbeServer("127.0.0.1", 0, metrics=fake.metrics, readiness=fake.readiness)
    await server.start()
    port = server.port
    # A client that connects and never sends its request: stop must not wait for it.
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        await until(lambda: server._connections, what="the server to accept the idle client")
        await server.stop()
        assert await reader.read() == b""  # closed by the server
    finally:
        writer.close()
        await writer.wait_closed()
    with pytest.raises(ConnectionRefusedError):
        await http_get(f"http://127.0.0.1:{port}/healthz")
    await server.stop()  # idempotent


async def test_a_taken_port_fails_to_start() -> None:
    fake = _Fake()
    first = ProbeServer("127.0.0.1", 0, metrics=fake.metrics, readiness=fake.readiness)
    await first.start()
    try:
        second = ProbeServer("127.0.0.1", first.port, metrics=fake.metrics, readiness=fake.readiness)
        with pytest.raises(OSError, match="in use"):
            await second.start()
    finally:
        await first.stop()
