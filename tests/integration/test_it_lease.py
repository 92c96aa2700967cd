"""The writer lease (`shared.lease`) against a real nats-server: one holder at a time, a standby
takes over only after the TTL, and a holder that was paused past it loses the lease and is
fenced out of the audit store (issue 13)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from nats.js.kv import KeyValue

from services.audit_log.errors import FencedError
from services.audit_log.store import AuditStore, Fence
from services.audit_log.writer import Received, store_batch
from shared.bus import connect
from shared.embedded import EmbeddedNats
from shared.envelope import new_event
from shared.events import Alert, Severity
from shared.lease import KvLease, LeaseTimings
from shared.settings import Settings
from shared.topology import STATE_BUCKET, ensure_topology
from tests._poll import until


class Clock:
    """A monotonic clock the test moves: the TTL is a matter of this clock, not of sleeping."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def alert(i: int) -> Received:
    body = new_event("mlw.alert.tests", Alert(kind="t", severity=Severity.INFO, message=str(i)), source="tests")
    return Received("mlw.alert.tests", body.to_bytes())


@pytest.fixture
async def kv(nats_server: EmbeddedNats) -> AsyncIterator[KeyValue]:
    nc = await connect(Settings(nats_url=nats_server.url))
    await ensure_topology(nc.jetstream())
    yield await nc.jetstream().key_value(STATE_BUCKET)
    await nc.close()


async def test_a_standby_takes_the_lease_only_after_the_ttl_and_the_paused_holder_is_fenced(
    kv: KeyValue,
) -> None:
    timings = LeaseTimings(ttl_s=10.0, renew_s=2.0)
    clock = Clock()
    first = KvLease(kv, "audit-log.lease", "first", timings, clock=clock)
    second = KvLease(kv, "audit-log.lease", "second", timings, clock=clock)
    store = AuditStore("sqlite://")
    store.create()

    assert await first.try_acquire()
    assert first.token is not None
    store.claim_writer(Fence("e", first.token), now=1.0)
    assert store_batch(store, [alert(1)], 1.0, fence=Fence("e", first.token)).inserted == 1
    # The holder renews; the standby sees the revision move and keeps waiting.
    for _ in range(3):
        assert not await second.try_acquire()
        clock.now += timings.renew_s
        assert await first.renew()
    assert not await second.try_acquire()
    # The holder pauses (SIGSTOP, a long GC): no renewal for a TTL, as the standby measures it.
    clock.now += timings.ttl_s
    assert await second.try_acquire()
    assert second.token is not None and second.token > first.token
    store.claim_writer(Fence("e", second.token), now=2.0)
    # The former holder resumes with a batch in hand: the store refuses it before it notices...
    with pytest.raises(FencedError):
        store_batch(store, [alert(2)], 2.0, fence=Fence("e", first.token))
    # ...and its next renewal tells it the lease is gone.
    assert not await first.renew()
    assert not first.held and second.held
    assert store_batch(store, [alert(2)], 3.0, fence=Fence("e", second.token)).inserted == 1
    # A clean stop releases the lease: the other contender takes it at its next look.
    taken_over = second.token
    await second.release()
    assert await until(first.try_acquire, what="the released lease taken")
    assert first.token is not None and first.token > taken_over
