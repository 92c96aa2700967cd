"""Issue 8: the same event id with other content is equivocation, kept as evidence; an identical
redelivery stays a silent no-op. On SQLite and PostgreSQL."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import orjson

from services.audit_log.equivocation import EQUIVOCATION_TYPE, record_ids
from services.audit_log.store import AuditStore, IncomingEvent
from services.audit_log.verify import verify_chain
from shared.events import Severity

EventFactory = Callable[..., bytes]


def parsed(body: bytes, recorded_at: float = 1.0) -> IncomingEvent:
    return IncomingEvent.from_bytes(body, recorded_at=recorded_at)


def evidence(store: AuditStore) -> list[dict[str, object]]:
    return [orjson.loads(e.body)["data"] for e in store.iter_entries() if e.type == EQUIVOCATION_TYPE]


def test_a_second_body_under_a_stored_id_is_kept_as_evidence_not_dropped(
    store: AuditStore, event_bytes: EventFactory
) -> None:
    first = event_bytes(event_id="x", subject="dataset:iris:1", data={"uploader": "alice", "sha256": "a" * 64})
    second = event_bytes(event_id="x", subject="dataset:iris:1", data={"uploader": "alice", "sha256": "b" * 64})
    store.append_batch([parsed(first)])
    result = store.append_batch([parsed(second, recorded_at=2.0)])
    assert (result.inserted, result.duplicates) == (1, 0)
    [found] = result.equivocations
    assert (found.event_id, found.first_seq, found.differs_in, found.new) == ("x", 1, ("data",), True)
    assert found.first_sha256 == hashlib.sha256(first).hexdigest()
    assert found.second_sha256 == hashlib.sha256(second).hexdigest()
    assert found.severity is Severity.FAIL
    entries = list(store.iter_entries())
    assert [e.event_id for e in entries] == ["x", found.record_id]
    assert entries[0].body == first.decode()
    record = entries[1]
    assert (record.type, record.service, record.subject, record.actor) == (
        EQUIVOCATION_TYPE,
        "audit-log",
        "dataset:iris:1",
        None,
    )
    [data] = evidence(store)
    assert data["second_body"] == second.decode()
    assert (data["first_sha256"], data["second_sha256"]) == (found.first_sha256, found.second_sha256)
    assert verify_chain(store).ok


def test_an_identical_redelivery_is_a_silent_no_op(store: AuditStore, event_bytes: EventFactory) -> None:
    body = event_bytes(event_id="same")
    store.append_batch([parsed(body)])
    # Same bytes, or the same JSON with members reordered: the same statement.
    reordered = orjson.dumps(dict(reversed(list(orjson.loads(body).items()))))
    result = store.append_batch([parsed(body, recorded_at=5.0), parsed(reordered, recorded_at=5.0)])
    assert (result.inserted, result.duplicates, result.equivocations) == (0, 2, ())
    assert store.count() == 1


def test_a_redelivered_second_copy_reports_again_but_stores_its_evidence_once(
    store: AuditStore, event_bytes: EventFactory
) -> None:
    store.append_batch([parsed(event_bytes(event_id="x", data={"decision": "fail"}))])
    second = event_bytes(event_id="x", data={"decision": "pass"})
    one = store.append_batch([parsed(second)])
    again = store.append_batch([parsed(second, recorded_at=9.0)])
    assert (again.inserted, again.duplicates) == (0, 1)
    # Reported again (the first attempt may have died before alerting), not stored again.
    assert [(e.record_id, e.new) for e in again.equivocations] == [(one.equivocations[0].record_id, False)]
    assert len(evidence(store)) == 1


def test_equivocation_within_one_batch_and_a_third_version_each_leave_evidence(
    store: AuditStore, event_bytes: EventFactory
) -> None:
    versions = [event_bytes(event_id="x", data={"n": n}) for n in range(3)]
    result = store.append_batch([parsed(v) for v in versions])
    assert result.inserted == 3
    assert [e.first_seq for e in result.equivocations] == [1, 1]
    assert [d["second_body"] for d in evidence(store)] == [versions[1].decode(), versions[2].decode()]


def test_only_time_and_signature_differing_is_a_warning(store: AuditStore, event_bytes: EventFactory) -> None:
    store.append_batch([parsed(event_bytes(event_id="v", time=1.0, signer="registry-gate"))])
    later = orjson.loads(event_bytes(event_id="v", time=2.0, signer="registry-gate"))
    later["signature"] = "b3RoZXI="
    [found] = store.append_batch([parsed(orjson.dumps(later))]).equivocations
    assert found.differs_in == ("signature", "time")
    assert found.severity is Severity.WARN


def test_a_squatted_evidence_id_does_not_hide_the_evidence(store: AuditStore, event_bytes: EventFactory) -> None:
    # The attacker predicts the derived evidence ids and occupies them before equivocating.
    first = event_bytes(event_id="x", data={"n": 1})
    second = event_bytes(event_id="x", data={"n": 2})
    squats = [parsed(event_bytes(event_id=i)) for i in record_ids("x", hashlib.sha256(second).hexdigest())]
    store.append_batch([parsed(first), *squats])
    [found] = store.append_batch([parsed(second)]).equivocations
    assert found.new and found.record_id not in {s.event_id for s in squats}
    assert [d["second_body"] for d in evidence(store)] == [second.decode()]
