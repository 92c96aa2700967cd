"""One writer at a time (issue 13): a batch commits only under the newest writer claim."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pytest

from services.audit_log.errors import FencedError
from services.audit_log.store import AuditStore, Fence
from services.audit_log.verify import verify_chain
from services.audit_log.writer import InlineWriter, ProcessWriter, Received, WriterError, store_batch
from shared.topology import Subjects

if TYPE_CHECKING:
    from conftest import DbTarget

EventFactory = Callable[..., bytes]


def uploaded(event_bytes: EventFactory, *ids: str) -> list[Received]:
    return [Received(Subjects.DATASET_UPLOADED, event_bytes(event_id=i)) for i in ids]


def test_a_former_leader_cannot_commit_once_its_successor_claimed(store: AuditStore, event_bytes: EventFactory) -> None:
    old, new = Fence("epoch-1", 7), Fence("epoch-1", 12)
    store.claim_writer(old, now=1.0)
    assert store_batch(store, uploaded(event_bytes, "a"), 1.0, fence=old).inserted == 1
    store.claim_writer(new, now=2.0)
    with pytest.raises(FencedError) as refused:
        store_batch(store, uploaded(event_bytes, "b"), 2.0, fence=old)
    assert (refused.value.token, refused.value.current_token) == (7, 12)
    assert store_batch(store, uploaded(event_bytes, "b"), 3.0, fence=new).inserted == 1
    assert [e.event_id for e in store.iter_entries()] == ["a", "b"]
    assert store.writer_claims() == [old, new]
    assert verify_chain(store).ok


def test_an_older_token_cannot_claim_back_but_a_new_lease_epoch_can(store: AuditStore) -> None:
    store.claim_writer(Fence("epoch-1", 12), now=1.0)
    with pytest.raises(FencedError):
        store.claim_writer(Fence("epoch-1", 7), now=2.0)
    # The lease bucket was recreated (its revisions restarted): the new epoch's claim stands.
    store.claim_writer(Fence("epoch-2", 3), now=3.0)
    store.claim_writer(Fence("epoch-2", 3), now=4.0)  # idempotent
    assert store.writer_claims() == [Fence("epoch-1", 12), Fence("epoch-2", 3)]


def test_a_batch_without_a_claim_in_the_store_is_refused_under_a_fence(
    store: AuditStore, event_bytes: EventFactory
) -> None:
    with pytest.raises(FencedError):
        store_batch(store, uploaded(event_bytes, "a"), 1.0, fence=Fence("e", 1))
    assert store.count() == 0


async def test_both_writers_turn_a_fenced_batch_into_a_writer_error_and_commit_nothing(
    db_target: DbTarget, store: AuditStore, event_bytes: EventFactory
) -> None:
    store.claim_writer(Fence("e", 5), now=1.0)
    inline, process = InlineWriter(store), ProcessWriter(db_target.url, schema=db_target.schema)
    await process.start()
    try:
        for writer, event_id in ((inline, "x"), (process, "y")):
            with pytest.raises(WriterError) as refused:
                await writer.write(uploaded(event_bytes, event_id), 1.0, fence=Fence("e", 4))
            assert refused.value.kind == "FencedError"
        outcome = await process.write(uploaded(event_bytes, "z"), 2.0, fence=Fence("e", 5))
        assert outcome.inserted == 1
    finally:
        await inline.stop()
        await process.stop()
    assert [e.event_id for e in store.iter_entries()] == ["z"]
