"""Trace context on events: the CloudEvents distributed-tracing extension (`traceparent`,
`tracestate`) in W3C Trace Context form, so an upload, its verdict and its audit row share one
trace id (issue 10).

The rules, all pure functions of the envelope:

- a producer starts a trace: a random trace id (`Client.publish`);
- a service answering an event keeps that event's trace id (`ServiceRuntime.process` puts the
  event's context in `CURRENT`, `ServiceRuntime.emit` reads it);
- an event without a (valid) `traceparent`, from an older or a foreign producer, gets a trace id
  derived from its event id, which every service and audit-log derive alike, so its answers still
  join up;
- the parent id (span id) of an event is derived from its own event id: a redelivered input
  re-emits the same bytes (the same derived event id), and a span maps to exactly one event.

`traceparent` is an ordinary envelope attribute, so the event's signature covers it
(docs/signatures.md, "Trace context"): a party on the bus cannot move an event into another trace.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

#: W3C Trace Context §3.2: version-traceid-parentid-flags, lower-case hex. A later version may
#: append fields after these four (§3.2.4, "future versions"): they are read, then dropped.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
#: Flags of the traces mlwarden starts: sampled (every event is recorded, in the audit trail).
SAMPLED = "01"


@dataclass(frozen=True, slots=True)
class TraceContext:
    """One event's place in a trace."""

    #: 32 lower-case hex digits, not all zero.
    trace_id: str
    #: The event's own span (W3C "parent-id" for whatever it causes): 16 hex digits.
    span_id: str
    #: W3C trace-flags, two hex digits.
    flags: str = SAMPLED
    #: W3C `tracestate`, carried along unchanged (vendor data mlwarden does not read).
    state: str | None = None

    @property
    def traceparent(self) -> str:
        """The W3C `traceparent` value (version 00)."""
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    def child(self, event_id: str) -> TraceContext:
        """The context of an event caused by this one: the same trace, the new event's span."""
        return TraceContext(self.trace_id, span_for(event_id), self.flags, self.state)

    def attributes(self) -> dict[str, str]:
        """The envelope attributes that carry this context."""
        found = {"traceparent": self.traceparent}
        if self.state:
            found["tracestate"] = self.state
        return found


#: The context of the event being handled in this task (set by `ServiceRuntime.process`).
CURRENT: ContextVar[TraceContext | None] = ContextVar("mlwarden_trace", default=None)


def span_for(event_id: str) -> str:
    """The span id of the event `event_id`: 16 hex digits derived from its id (never all zero)."""
    span = hashlib.sha256(b"mlwarden-span\x00" + event_id.encode()).hexdigest()[:16]
    return span if span != _ZERO_SPAN else "1".rjust(16, "0")


def derived_trace_id(event_id: str) -> str:
    """The trace id of an event that came without trace context: derived from its id, so every
    reader (services, audit-log, auditors) finds the same one."""
    trace = hashlib.sha256(b"mlwarden-trace\x00" + event_id.encode()).hexdigest()[:32]
    return trace if trace != _ZERO_TRACE else "1".rjust(32, "0")


def new_trace(event_id: str) -> TraceContext:
    """A new trace started by the event `event_id` (a producer's upload, a service's own event)."""
    trace = secrets.token_hex(16)
    while trace == _ZERO_TRACE:  # pragma: no cover - one chance in 2**128
        trace = secrets.token_hex(16)
    return TraceContext(trace, span_for(event_id))


def parse_traceparent(value: object, state: object = None) -> TraceContext | None:
    """The context in a `traceparent` value, or None when it is absent or malformed (W3C §3.2:
    a receiver that cannot parse it starts afresh; it is never a reason to refuse an event)."""
    if not isinstance(value, str):
        return None
    match = _TRACEPARENT.fullmatch(value)
    if match is None:
        return None
    version, trace_id, span_id, flags, rest = match.groups()
    # Version ff is forbidden; version 00 has exactly four fields (§3.2.2.1, §3.2.4).
    if version == "ff" or (version == "00" and rest) or trace_id == _ZERO_TRACE or span_id == _ZERO_SPAN:
        return None
    return TraceContext(trace_id, span_id, flags, state if isinstance(state, str) and state else None)


def trace_of(event_id: str, attributes: dict[str, Any]) -> TraceContext:
    """The trace context of an event from its attributes (`traceparent`, `tracestate`): the one
    it carries, else one derived from its id."""
    found = parse_traceparent(attributes.get("traceparent"), attributes.get("tracestate"))
    if found is not None:
        return found
    return TraceContext(derived_trace_id(event_id), span_for(event_id))


def caused_by_current(event_id: str) -> TraceContext:
    """The context of a new event `event_id`: a child of the event being handled, if any, else
    a new trace."""
    parent = CURRENT.get()
    return parent.child(event_id) if parent is not None else new_trace(event_id)
