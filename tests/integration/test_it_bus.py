"""The shared consumer runtime on a real JetStream: each handler failure settled by its class
(issue 13). Input is dead-lettered at once; an infrastructure failure is retried for as long as
it lasts (past the delivery limit that used to drop it), with one alert when it starts and one
when it ends; a bug is dead-lettered after `BUG_ATTEMPTS` with an alert."""

from __future__ import annotations

import base64
import gc
import sqlite3
import warnings
from typing import Any

import pytest

import shared.bus
from mlwarden.services import factory
from shared.bus import BUG_ATTEMPTS
from shared.client import Client
from shared.envelope import Envelope
from shared.errors import InvalidMessage
from shared.events import DatasetUploaded, ObjectRef
from shared.service import ServiceApp
from shared.settings import Settings
from shared.topology import CONSUMERS, Subjects
from tests._poll import until

#: Deliveries an outage must outlast: more than the old server-side limit of 5, and than the
#: bug limit, so a message that survives it shows infrastructure failures spend no attempts.
OUTAGE_DELIVERIES = 3 * BUG_ATTEMPTS


def _upload(version: str) -> DatasetUploaded:
    return DatasetUploaded(
        dataset="d",
        version=version,
        location=ObjectRef(kind="file", path="/nowhere"),
        sha256="0" * 64,
        format="csv",
        uploader="u",
    )


@pytest.fixture(autouse=True)
def quick_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """Short nak delays, so many deliveries fit in a test; the behaviour is the same."""
    monkeypatch.setattr(shared.bus, "RETRY_BASE_DELAY_S", 0.02)
    monkeypatch.setattr(shared.bus, "RECOVERY_QUIET_S", 1.0)
    monkeypatch.setattr(shared.bus, "RETRY_MAX_DELAY_S", 0.1)


def test_consumers_have_no_delivery_limit() -> None:
    # The server would drop a message after max_deliver whatever the failure: only the runtime
    # decides when a message is hopeless.
    assert all(spec.config().max_deliver == -1 for specs in CONSUMERS.values() for spec in specs)
    # A crashed process's fetched messages come back after the ack wait: seconds, not minutes.
    assert all(spec.ack_wait_s <= 10.0 for specs in CONSUMERS.values() for spec in specs)


async def test_each_failure_class_is_settled_by_its_rule(bootstrapped: Settings) -> None:
    settings = bootstrapped
    attempts: dict[str, int] = {}
    done: list[str] = []
    database_up = False

    async def handler(event: Envelope[Any]) -> None:
        version = event.data.version
        attempts[version] = attempts.get(version, 0) + 1
        if version == "input":
            raise InvalidMessage("rows do not match the declared schema")
        if version == "bug":
            raise KeyError("a field the code forgot")
        if version == "outage" and not database_up:
            raise sqlite3.OperationalError("attempt to write a readonly database")
        done.append(version)

    svc = ServiceApp("data-guard", settings)
    svc.consume_routes("mlw.dataset.>", {Subjects.DATASET_UPLOADED: (DatasetUploaded, handler)}, batch=4)
    await svc.start()
    try:
        async with Client.connect(settings) as client, client.watch(("mlw.deadletter.>", "mlw.alert.>")) as watcher:
            for version in ("input", "bug", "outage"):
                await client.publish(Subjects.DATASET_UPLOADED, _upload(version))

            def letter_for(version: str) -> Envelope[Any] | None:
                return next(
                    (
                        e
                        for e in watcher.events
                        if e.type == Subjects.deadletter("data-guard") and f'"version":"{version}"' in _payload(e)
                    ),
                    None,
                )

            # input: dead-lettered on its first delivery, with the reason.
            bad = await until(lambda: letter_for("input"), what="the input dead letter")
            assert bad.data.deliveries == 1
            assert "rows do not match" in bad.data.reason
            # bug: dead-lettered after BUG_ATTEMPTS, with an alert naming the error.
            bug = await until(lambda: letter_for("bug"), what="the bug dead letter")
            assert bug.data.deliveries == BUG_ATTEMPTS
            assert "KeyError" in bug.data.reason
            assert attempts["bug"] == BUG_ATTEMPTS
            await until(lambda: _alerts(watcher.events, "handler_bug"), what="the handler_bug alert")
            # infrastructure: retried well past any limit, alerted once while it lasts...
            await until(lambda: attempts.get("outage", 0) >= OUTAGE_DELIVERIES, what="outage retries")
            await until(lambda: _alerts(watcher.events, "infrastructure.unavailable"), what="the outage alert")
            assert letter_for("outage") is None
            # ...and recovers by itself when the resource is back, with one recovery alert.
            database_up = True
            await until(lambda: "outage" in done, what="the message processed after the outage")
            await until(lambda: _alerts(watcher.events, "infrastructure.recovered"), what="the recovery alert")
            assert len(_alerts(watcher.events, "infrastructure.unavailable")) == 1
            assert len(_alerts(watcher.events, "infrastructure.recovered")) == 1
            assert letter_for("outage") is None
            assert attempts["input"] == 1
    finally:
        await svc.stop()


def _payload(event: Envelope[Any]) -> str:
    return base64.b64decode(event.data.payload_b64).decode(errors="replace").replace(" ", "")


def _alerts(events: list[Envelope[Any]], kind: str) -> list[Envelope[Any]]:
    return [e for e in events if e.type.startswith("mlw.alert.") and e.data.kind == kind]


async def test_a_start_up_that_fails_after_connecting_closes_its_connection(
    bootstrapped: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    # FastStream runs no shutdown hook when an after-startup hook (or starting the consumers)
    # fails: the service's NATS connection stayed open in the caller's process.
    settings = bootstrapped

    async def refuse(self: ServiceApp) -> None:
        raise RuntimeError("health endpoint refused")

    monkeypatch.setattr(ServiceApp, "_answer_health", refuse)
    svc = factory("registry-gate")(settings)
    with pytest.raises(RuntimeError, match="health endpoint refused"):
        await svc.start()
    connection = svc.broker._connection
    assert connection is None or connection.is_closed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []
