"""A service stops within its grace period whatever it is waiting on (issue 13, "nothing
hangs"). A stop hook that ignores cancellation stands for what hung a CI run for 300 s: a stop
awaited through `wait_for` (and nats-py's drain, which swallows the cancellation) that never
returned; the test's own deadline was swallowed with it."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client as Nats

from shared.bus import close_nats, open_nats
from shared.embedded import EmbeddedNats
from shared.service import ServiceApp
from shared.settings import Settings
from tests._poll import until


async def test_a_stop_hook_that_hangs_is_given_up_on_and_the_connection_closed(
    bootstrapped: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    settings = bootstrapped
    release = asyncio.Event()

    svc = ServiceApp("data-guard", settings)

    @svc.on_stop
    async def flush_for_ever() -> None:
        while not release.is_set():
            try:
                await release.wait()
            except asyncio.CancelledError:
                continue  # ignores every cancellation, as a stuck drain does

    await svc.start()
    connection = svc.broker.connection
    stopping = asyncio.create_task(svc.stop(grace=0.5))
    try:
        # Bounded: grace + the task and connection deadlines; the test's timeout catches a hang.
        done, _ = await asyncio.wait({stopping}, timeout=60)
        assert stopping in done, "stop() hung"
        assert stopping.result() is False
        assert connection.is_closed
        stuck = [r.getMessage() for r in caplog.records if "not stopped after" in r.getMessage()]
        assert stuck and "flush_for_ever" in stuck[0], stuck
    finally:
        release.set()
        await asyncio.wait({stopping}, timeout=10)


async def test_a_stop_that_ends_by_itself_reports_a_clean_stop(bootstrapped: Settings) -> None:
    svc = ServiceApp("data-guard", bootstrapped)
    await svc.start()
    connection = svc.broker.connection
    assert await svc.stop() is True
    assert connection.is_closed


@pytest.fixture
async def frozen(nats_server: EmbeddedNats) -> AsyncIterator[Nats]:
    """A connection with a subscription to a server that is then frozen (SIGSTOP: a long GC
    pause, a wedged VM): it never answers the drain's unsubscribes nor its flush."""
    nc = await open_nats(servers=[nats_server.url], allow_reconnect=False)
    await nc.subscribe("anything")
    assert nats_server.process is not None
    nats_server.process.send_signal(signal.SIGSTOP)
    try:
        yield nc
    finally:
        nats_server.process.send_signal(signal.SIGCONT)
        await close_nats(nc, timeout=5)


async def test_closing_a_connection_to_a_frozen_server_is_bounded(frozen: Nats) -> None:
    closing = asyncio.create_task(close_nats(frozen, timeout=0.5))
    done, _ = await asyncio.wait({closing}, timeout=60)
    assert closing in done, "close_nats hung"
    assert frozen.is_closed


async def test_cancelling_a_close_is_not_swallowed_by_the_drain(frozen: Nats) -> None:
    # nats-py's drain catches the cancellation: `await nc.drain()` returned normally when its
    # caller was cancelled, and the stop deadline of whoever was closing was lost with it.
    closing = asyncio.create_task(close_nats(frozen, timeout=30))
    await until(lambda: frozen.is_draining, what="the drain to start")
    closing.cancel()
    done, _ = await asyncio.wait({closing}, timeout=60)
    assert closing in done and closing.cancelled()
