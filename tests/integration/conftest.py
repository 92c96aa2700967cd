"""Integration fixtures: a real nats-server per test and the services running in-process."""

from __future__ import annotations

import gc
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from mlwarden.bootstrap import bootstrap
from mlwarden.services import factory
from shared.bus import close_nats, connect
from shared.client import Client
from shared.embedded import EmbeddedNats
from shared.service import ServiceApp
from shared.settings import Settings
from shared.topology import CONSUMERS


class Running:
    """Services started for one test, plus a client on the same bus."""

    def __init__(self, settings: Settings, client: Client, stack: AsyncExitStack) -> None:
        self.settings = settings
        self.client = client
        self.stack = stack
        self.apps: dict[str, ServiceApp] = {}

    async def start(self, name: str) -> ServiceApp:
        """Start (or restart) one service in this event loop."""
        svc = factory(name)(self.settings)
        await svc.start()
        self.apps[name] = svc
        return svc

    async def stop(self, name: str) -> None:
        """Stop one service gracefully."""
        svc = self.apps.pop(name)
        await svc.stop()

    async def settled(self) -> bool:
        """Whether every durable consumer of the running services has nothing left to deliver
        and nothing awaiting an ack: what will ever arrive has arrived. Poll it (`_poll.until`)
        before asserting that something did *not* happen, instead of sleeping."""
        for name in self.apps:
            for spec in CONSUMERS[name]:
                info = await self.client.js.consumer_info(spec.stream, spec.durable)
                if info.num_pending or info.num_ack_pending:
                    return False
        return True


@pytest.fixture
def settings(tmp_path: Path, nats_server: EmbeddedNats) -> Settings:
    """Settings pointing at the test's nats-server and a temporary data folder."""
    return Settings(data_dir=tmp_path / "data", nats_url=nats_server.url)


@pytest.fixture
async def bootstrapped(settings: Settings) -> Settings:
    """The test's settings, with the bus bootstrapped: topology, keys, trust store, policy."""
    nc = await connect(settings)
    try:
        await bootstrap(nc.jetstream(), settings)
    finally:
        await close_nats(nc)
    return settings


@pytest.fixture
async def bus(bootstrapped: Settings) -> AsyncIterator[Callable[..., object]]:
    """Bootstrapped bus (topology, keys, policy); yields a starter for services."""
    settings = bootstrapped
    async with AsyncExitStack() as stack:
        client = await stack.enter_async_context(Client.connect(settings, source="tests/producer"))
        running = Running(settings, client, stack)

        async def start(*names: str) -> Running:
            for name in names:
                await running.start(name)
            return running

        try:
            yield start
        finally:
            for name in list(running.apps):
                await running.stop(name)


@pytest.fixture(autouse=True)
def _collect_leaks_in_teardown() -> Iterator[None]:
    """Collect garbage as each test ends, so a connection or socket a test leaves open is
    reported (as a ResourceWarning, an error under `filterwarnings = error`) by that test,
    not by whichever later test the collector happens to run in."""
    yield
    gc.collect()
