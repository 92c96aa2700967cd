"""Trace context on events (issue 10): W3C traceparent parsing, one trace id along a chain of
events, and a traceparent that is signed without changing how older events verify."""

from __future__ import annotations

import pytest

from shared.envelope import decode, new_event
from shared.errors import SignatureError
from shared.events import Alert, Severity
from shared.signing import SigningKey, TrustStore
from shared.tracing import (
    CURRENT,
    TraceContext,
    caused_by_current,
    derived_trace_id,
    new_trace,
    parse_traceparent,
    span_for,
    trace_of,
)

# The example of W3C Trace Context §3.2.
EXAMPLE = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def test_the_w3c_example_parses_and_prints_back() -> None:
    found = parse_traceparent(EXAMPLE, "congo=t61rcWkgMzE")
    assert found == TraceContext("0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331", "01", "congo=t61rcWkgMzE")
    assert found.traceparent == EXAMPLE


@pytest.mark.parametrize(
    "value",
    [
        None,
        42,
        "",
        "00-0AF7651916CD43DD8448EB211C80319C-B7AD6B7169203331-01",  # upper case
        "00-00000000000000000000000000000000-b7ad6b7169203331-01",  # zero trace id
        "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",  # zero parent id
        "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",  # forbidden version
        EXAMPLE + "-extra",  # version 00 has four fields
    ],
)
def test_malformed_traceparents_are_ignored_not_refused(value: object) -> None:
    assert parse_traceparent(value) is None
    # The event then gets the trace derived from its id.
    assert trace_of("event-1", {"traceparent": value}).trace_id == derived_trace_id("event-1")


def test_a_later_version_with_more_fields_is_read() -> None:
    found = parse_traceparent("01-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-whatever")
    assert found is not None and found.trace_id == "0af7651916cd43dd8448eb211c80319c"


def test_an_answer_keeps_the_trace_and_gets_a_span_of_its_own() -> None:
    upload = new_trace("upload-id")
    token = CURRENT.set(upload)
    try:
        verdict = caused_by_current("verdict-id")
    finally:
        CURRENT.reset(token)
    assert verdict.trace_id == upload.trace_id
    assert verdict.span_id == span_for("verdict-id") != upload.span_id
    # Outside a handler, a new trace.
    assert caused_by_current("other").trace_id != upload.trace_id


def test_an_event_without_trace_context_gets_a_stable_derived_trace() -> None:
    assert trace_of("abc", {}) == trace_of("abc", {"traceparent": None})
    assert trace_of("abc", {}).trace_id != trace_of("abd", {}).trace_id
    assert len(derived_trace_id("abc")) == 32


def _alert() -> Alert:
    return Alert(kind="test", severity=Severity.INFO, message="hello")


def test_traceparent_is_signed() -> None:
    key = SigningKey.generate("data-guard")
    trust = TrustStore({"data-guard": key.public_b64()})
    event = new_event("mlw.alert.data-guard", _alert(), source="mlwarden/data-guard", trace=new_trace("x")).signed(key)
    body = event.to_bytes()
    assert b'"traceparent":"00-' in body
    decoded = decode(body, Alert)
    assert decoded.verify(trust) == "data-guard"
    assert decoded.trace.trace_id == event.trace.trace_id
    # Moving the event into another trace breaks its signature.
    moved = body.replace(event.trace.trace_id.encode(), b"0af7651916cd43dd8448eb211c80319c")
    with pytest.raises(SignatureError):
        decode(moved, Alert).verify(trust)


def test_events_without_traceparent_sign_the_same_bytes_as_before() -> None:
    key = SigningKey.generate("data-guard")
    event = new_event("mlw.alert.data-guard", _alert(), source="mlwarden/data-guard").signed(key)
    assert b"traceparent" not in event.to_bytes()
    assert b"traceparent" not in event.signing_bytes()
    assert decode(event.to_bytes(), Alert).verify(TrustStore({"data-guard": key.public_b64()})) == "data-guard"
