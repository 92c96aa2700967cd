"""IncomingEvent.from_bytes: which columns an envelope is stored and queried by."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta, timezone

import orjson
import pytest

from services.audit_log.store import LABEL_MAX, IncomingEvent, _plain_envelope
from shared.envelope import decode_any, new_event, parse_raw
from shared.errors import InputError, InvalidMessage
from shared.events import (
    AdmissionVerdict,
    ApprovalGiven,
    DatasetVerdict,
    Decision,
    ModelBuilt,
    ObjectRef,
    PromotionVerdict,
)
from shared.signing import SigningKey

SHA = "a" * 64
T0 = datetime(2024, 5, 1, 12, 0, 0, 250_000, tzinfo=UTC)


def test_verdict_columns_come_from_source_data_and_subject() -> None:
    verdict = DatasetVerdict(
        dataset="iris",
        version="1",
        sha256=SHA,
        decision=Decision.FAIL,
        uploader="alice",
        in_reply_to="e1",
    )
    env = new_event(
        "mlw.verdict.dataset",
        verdict,
        source="mlwarden/data-guard",
        subject="dataset:iris:1",
        event_id="v-1",
        time=T0,
    )
    item = IncomingEvent.from_bytes(env.to_bytes(), recorded_at=1.5)
    assert item.event_id == "v-1"
    assert item.type == "mlw.verdict.dataset"
    assert item.service == "data-guard"
    assert item.actor == "alice"
    assert item.decision == "fail"
    assert item.client is None
    assert item.subject == "dataset:iris:1"
    assert item.time == T0.timestamp()
    assert item.recorded_at == 1.5


def test_body_is_kept_byte_for_byte() -> None:
    # Odd spacing and key order must survive: the signature covers what was received.
    body = (
        b'{ "data": {"uploader": "bob"},  "type": "mlw.dataset.uploaded", "id": "x1",'
        b' "source": "producer://lab", "time": "2024-05-01T12:00:00Z", "specversion": "1.0" }'
    )
    item = IncomingEvent.from_bytes(body, recorded_at=0.0)
    assert item.body.encode() == body
    assert item.service is None
    assert item.actor == "bob"


def test_service_falls_back_to_the_signer() -> None:
    key = SigningKey.generate("artifact-signer")
    built = ModelBuilt(model="churn", version="3", artifact=ObjectRef(kind="file", path="m.bin"), builder="ci")
    env = new_event("mlw.model.built", built, source="https://ci.example/job/7").signed(key)
    item = IncomingEvent.from_bytes(env.to_bytes(), recorded_at=0.0)
    assert item.service == "artifact-signer"
    assert item.actor == "ci"


@pytest.mark.parametrize(
    ("data", "actor"),
    [
        (
            PromotionVerdict(
                model="churn",
                version="3",
                stage="production",
                decision="rejected",
                requester="carol",
                approvers=["dave"],
                request_id="r1",
                in_reply_to="r1",
            ),
            "carol",
        ),
        (
            ApprovalGiven(request_id="r1", model="churn", version="3", stage="production", approver="dave"),
            "dave",
        ),
        (
            AdmissionVerdict(client="client-9", model="churn", decision="deny", reason="rate"),
            "client-9",
        ),
    ],
)
def test_actor_is_taken_from_the_field_each_event_type_uses(data: object, actor: str) -> None:
    env = new_event("mlw.test", data, source="mlwarden/registry-gate")  # type: ignore[type-var]
    assert IncomingEvent.from_bytes(env.to_bytes(), recorded_at=0.0).actor == actor


def test_admission_denial_indexes_client_and_decision() -> None:
    data = AdmissionVerdict(client="client-9", model="churn", decision="deny", reason="rate")
    env = new_event("mlw.verdict.admission", data, source="mlwarden/serving-monitor")
    item = IncomingEvent.from_bytes(env.to_bytes(), recorded_at=0.0)
    assert (item.client, item.decision, item.service) == ("client-9", "deny", "serving-monitor")


def test_time_without_offset_is_read_as_utc_not_host_local(monkeypatch: pytest.MonkeyPatch) -> None:
    # A host far from UTC: a naive time read as local would be off by nine hours.
    monkeypatch.setenv("TZ", "Asia/Tokyo")
    time.tzset()
    body = b'{"specversion":"1.0","id":"n1","source":"s","type":"t","time":"2024-05-01T12:00:00","data":{}}'
    aware = datetime(2024, 5, 1, 12, tzinfo=UTC)
    try:
        assert IncomingEvent.from_bytes(body, recorded_at=0.0).time == aware.timestamp()
    finally:
        monkeypatch.undo()
        time.tzset()


def test_time_with_offset_is_converted() -> None:
    body = b'{"specversion":"1.0","id":"n2","source":"s","type":"t","time":"2024-05-01T14:00:00+02:00","data":{}}'
    expected = datetime(2024, 5, 1, 14, tzinfo=timezone(timedelta(hours=2))).timestamp()
    assert IncomingEvent.from_bytes(body, recorded_at=0.0).time == expected


def test_non_string_labels_are_not_indexed() -> None:
    body = (
        b'{"specversion":"1.0","id":"n3","source":"s","type":"t","time":"2024-05-01T12:00:00Z",'
        b'"data":{"uploader":{"name":"x"},"builder":"ci","decision":7,"client":["a"]}}'
    )
    item = IncomingEvent.from_bytes(body, recorded_at=0.0)
    assert (item.actor, item.decision, item.client) == ("ci", None, None)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"id": "only-an-id"}',
        b'{"specversion":"1.0","id":"x","source":"s","type":"t","time":"yesterday","data":{}}',
        b'{"specversion":"1.0","id":"x","source":"s","type":"t","time":"2024-05-01T12:00:00Z","data":"not an object"}',
    ],
)
def test_bytes_that_are_not_an_envelope_are_refused(body: bytes) -> None:
    with pytest.raises(InvalidMessage):
        IncomingEvent.from_bytes(body, recorded_at=0.0)


def test_nul_in_an_indexed_field_is_refused_before_it_can_poison_a_batch() -> None:
    # PostgreSQL text cannot hold NUL: storing it would fail the whole group commit forever.
    body = b'{"specversion":"1.0","id":"x\\u0000y","source":"s","type":"t","time":"2024-05-01T12:00:00Z","data":{}}'
    with pytest.raises(InvalidMessage, match="NUL"):
        IncomingEvent.from_bytes(body, recorded_at=0.0)
    body = (
        b'{"specversion":"1.0","id":"x","source":"s","type":"t",'
        b'"time":"2024-05-01T12:00:00Z","data":{"uploader":"ev\\u0000il"}}'
    )
    with pytest.raises(InvalidMessage, match="actor"):
        IncomingEvent.from_bytes(body, recorded_at=0.0)


def test_oversized_actor_is_refused() -> None:
    actor = "a" * (LABEL_MAX + 1)
    body = (
        b'{"specversion":"1.0","id":"x","source":"s","type":"t","time":"2024-05-01T12:00:00Z",'
        b'"data":{"uploader":"' + actor.encode() + b'"}}'
    )
    with pytest.raises(InvalidMessage, match="longer than"):
        IncomingEvent.from_bytes(body, recorded_at=0.0)


def test_non_finite_recorded_at_is_refused() -> None:
    body = b'{"specversion":"1.0","id":"x","source":"s","type":"t","time":"2024-05-01T12:00:00Z","data":{}}'
    with pytest.raises(InputError):
        IncomingEvent.from_bytes(body, recorded_at=float("nan"))


# --- the fast path (`_plain_envelope`) against the model (`decode_any`) ------------------------------

_BASE: dict[str, object] = {
    "specversion": "1.0",
    "id": "x",
    "source": "mlwarden/data-guard",
    "type": "t",
    "time": "2024-05-01T12:00:00Z",
    "data": {"uploader": "alice"},
}


def _variant(**changes: object) -> bytes:
    """The base envelope with members replaced (or removed, where the value is `...`)."""
    env = {**_BASE, **changes}
    return orjson.dumps({k: v for k, v in env.items() if v is not ...})


_VARIANTS = [
    _variant(),
    _variant(specversion=...),
    _variant(specversion="0.3"),
    _variant(datacontenttype="application/json"),
    _variant(datacontenttype="text/plain"),
    _variant(id="i" * 64),
    _variant(id="i" * 65),
    _variant(id=""),
    _variant(id=7),
    _variant(id=...),
    _variant(source="s" * 256),
    _variant(source="s" * 257),
    _variant(type="t" * 128),
    _variant(type="t" * 129),
    _variant(subject=None),
    _variant(subject="s" * 256),
    _variant(subject="s" * 257),
    _variant(subject=["a"]),
    _variant(signer="k" * 128),
    _variant(signer="k" * 129),
    _variant(signature="z" * 256),
    _variant(signature="z" * 257),
    _variant(signature=3),
    _variant(extra="member"),
    _variant(data=None),
    _variant(data=[]),
    _variant(data={}),
    _variant(data={"_private": 1, "model_config": 2}),
    _variant(data=...),
    _variant(time=...),
    _variant(time=1_700_000_000),
    _variant(time="1700000000"),
    _variant(time="2024-05-01"),
    _variant(time="2024-05-01T12:00"),
    _variant(time="2024-05-01t12:00:00z"),
    _variant(time="2024-05-01 12:00:00Z"),
    _variant(time="2024-05-01T12:00:00"),
    _variant(time="2024-05-01T12:00:00.5Z"),
    _variant(time="2024-05-01T12:00:00.123456+02:00"),
    _variant(time="2024-05-01T12:00:00.1234567Z"),
    _variant(time="2024-05-01T12:00:00-00:00"),
    _variant(time="2024-05-01T12:00:00+23:59"),
    _variant(time="2024-05-01T12:00:00+24:00"),
    _variant(time="2024-05-01T12:00:00+0200"),
    _variant(time="2024-02-30T12:00:00Z"),
    _variant(time="2024-05-01T24:00:00Z"),
    _variant(time="2024-05-01T12:00:60Z"),
    _variant(time="0001-01-01T00:00:00Z"),
    _variant(time="9999-12-31T23:59:59+00:00"),
]


@pytest.mark.parametrize("body", _VARIANTS)
def test_fast_envelope_path_accepts_only_what_the_model_accepts_and_reads_the_same(body: bytes) -> None:
    fast = _plain_envelope(parse_raw(body))
    if fast is None:
        return  # the model decides, through `decode_any`
    env = decode_any(body)
    assert (fast.id, fast.type, fast.source, fast.subject, fast.signer) == (
        env.id,
        env.type,
        env.source,
        env.subject,
        env.signer,
    )
    assert fast.data == (env.data.model_extra or {})
    assert fast.time == env.time
    assert fast.time.utcoffset() == env.time.utcoffset()


def test_fast_envelope_path_takes_the_envelopes_producers_write() -> None:
    # Otherwise ingestion silently pays for pydantic on every message again.
    key = SigningKey.generate("data-guard")
    verdict = DatasetVerdict(
        dataset="iris", version="1", sha256=SHA, decision=Decision.PASS, uploader="a", in_reply_to="e"
    )
    env = new_event("mlw.verdict.dataset", verdict, source="mlwarden/data-guard", subject="dataset:iris:1").signed(key)
    assert _plain_envelope(parse_raw(env.to_bytes())) is not None
    assert _plain_envelope(parse_raw(_variant())) is not None


@pytest.mark.parametrize("body", _VARIANTS)
def test_from_bytes_refuses_exactly_what_decode_any_refuses(body: bytes) -> None:
    try:
        decode_any(body)
    except InvalidMessage:
        with pytest.raises(InvalidMessage):
            IncomingEvent.from_bytes(body, recorded_at=0.0)
    else:
        IncomingEvent.from_bytes(body, recorded_at=0.0)
