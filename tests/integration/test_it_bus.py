"""The shared consumer runtime on a real JetStream: bounded retries with delay, dead letters
after MAX_DELIVER, exactly one effect per event id."""

from __future__ import annotations

import asyncio
from typing import Any

from mlwarden.bootstrap import bootstrap
from shared.bus import connect
from shared.client import Client
from shared.envelope import Envelope
from shared.events import DatasetUploaded, ObjectRef
from shared.service import ServiceApp
from shared.settings import Settings
from shared.topology import MAX_DELIVER, Subjects


def _upload(version: str) -> DatasetUploaded:
    return DatasetUploaded(
        dataset="d",
        version=version,
        location=ObjectRef(kind="file", path="/nowhere"),
        sha256="0" * 64,
        format="csv",
        uploader="u",
    )


async def test_transient_failures_are_retried_then_succeed_and_hopeless_ones_are_dead_lettered(
    settings: Settings,
) -> None:
    nc = await connect(settings)
    await bootstrap(nc.jetstream(), settings)
    await nc.drain()
    attempts: dict[str, int] = {}
    done: list[str] = []

    async def flaky(event: Envelope[Any]) -> None:
        attempts[event.data.version] = attempts.get(event.data.version, 0) + 1
        if event.data.version == "hopeless" or attempts[event.data.version] < 3:
            raise ConnectionError("database briefly unavailable")
        done.append(event.id)

    svc = ServiceApp("data-guard", settings)
    svc.consume_routes("mlw.dataset.>", {Subjects.DATASET_UPLOADED: (DatasetUploaded, flaky)}, batch=4)
    await svc.app.start()
    try:
        async with Client.connect(settings) as client, client.watch(("mlw.deadletter.>",)) as watcher:
            ok = await client.publish(Subjects.DATASET_UPLOADED, _upload("flaky"))
            await client.publish(Subjects.DATASET_UPLOADED, _upload("hopeless"))
            letter = await watcher.wait(lambda e: e.data.original_subject == Subjects.DATASET_UPLOADED, 30)
            for _ in range(100):
                if done:
                    break
                await asyncio.sleep(0.1)
        assert done == [ok.id]
        assert attempts["flaky"] == 3
        assert letter is not None
        assert letter.data.deliveries == MAX_DELIVER
        assert "database briefly unavailable" in letter.data.reason
        assert attempts["hopeless"] == MAX_DELIVER
    finally:
        await svc.app.stop()
