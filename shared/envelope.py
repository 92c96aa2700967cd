"""The CloudEvents 1.0 envelope every message travels in, and its signing.

`signer` and `signature` are CloudEvents extension attributes: the signature is Ed25519 over the
canonical JSON (`shared.canonical`) of the envelope without `signature`. `traceparent` and
`tracestate` are the CloudEvents distributed-tracing extension (`shared.tracing`); like every
attribute but `signature`, they are signed.
"""

from __future__ import annotations

import base64
import uuid
from datetime import UTC, datetime
from typing import Any, Generic, Literal, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError

from shared.canonical import canonical_json
from shared.errors import InvalidMessage, SignatureError
from shared.signing import SigningKey, TrustStore
from shared.tracing import TraceContext, trace_of

DataT = TypeVar("DataT", bound=BaseModel)

#: Longest `traceparent` accepted (version 00 is 55 characters; later versions may add fields).
TRACEPARENT_MAX = 256
#: Longest `tracestate` accepted (W3C Trace Context §3.3.1.1 asks to propagate at least 512).
TRACESTATE_MAX = 512

#: Messages larger than this are refused before parsing (NATS' default max_payload is 1 MiB).
MAX_MESSAGE_BYTES = 1024 * 1024

# Namespace for deterministic ids of events derived from another event, so a redelivered input
# produces the same output id and JetStream's duplicate window drops the second copy.
_DERIVED_NS = uuid.UUID("6f1c7c8e-55d7-4a59-9b0c-6d0c3f7f2a11")


class Envelope(BaseModel, Generic[DataT]):
    """A CloudEvents 1.0 structured-mode JSON event with mlwarden's signature extensions."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    specversion: Literal["1.0"] = Field(default="1.0", description="CloudEvents version")
    id: str = Field(min_length=1, max_length=64, description="unique id; also Nats-Msg-Id")
    source: str = Field(min_length=1, max_length=256, description="who emitted it, as a URI-ref")
    type: str = Field(min_length=1, max_length=128, description="event type, e.g. mlw.dataset.uploaded")
    time: datetime = Field(description="when it happened (RFC 3339)")
    subject: str | None = Field(default=None, max_length=256, description="what it is about")
    datacontenttype: Literal["application/json"] = "application/json"
    data: DataT
    signer: str | None = Field(default=None, max_length=128, description="key id of the signer")
    signature: str | None = Field(default=None, max_length=256, description="Ed25519, base64")
    traceparent: str | None = Field(
        default=None,
        max_length=TRACEPARENT_MAX,
        description=(
            "W3C Trace Context traceparent (CloudEvents distributed-tracing extension): the trace this"
            " event belongs to; signed like every attribute"
        ),
    )
    tracestate: str | None = Field(
        default=None, max_length=TRACESTATE_MAX, description="W3C Trace Context tracestate, carried unchanged"
    )
    # The JSON object this envelope was parsed from: verification covers exactly what was
    # received, so a field another producer's schema version adds or omits cannot break it.
    _raw: dict[str, Any] | None = PrivateAttr(default=None)

    def signing_bytes(self) -> bytes:
        """The canonical bytes the signature covers (everything but `signature`)."""
        if self._raw is not None:
            body = {k: v for k, v in self._raw.items() if k != "signature"}
        else:
            body = self.model_dump(mode="json", exclude={"signature"}, exclude_none=True)
        return canonical_json(body)

    @property
    def trace(self) -> TraceContext:
        """This event's trace context: the one it carries, else one derived from its id."""
        return trace_of(self.id, {"traceparent": self.traceparent, "tracestate": self.tracestate})

    def to_bytes(self) -> bytes:
        """JSON bytes for the wire."""
        return orjson.dumps(self.model_dump(mode="json", exclude_none=True))

    def signed(self, key: SigningKey) -> Envelope[DataT]:
        """Return a copy with `signer` set to the key id and a fresh signature."""
        unsigned = self.model_copy(update={"signer": key.key_id, "signature": None})
        unsigned._raw = None
        signed = unsigned.model_copy(update={"signature": key.sign(unsigned.signing_bytes())})
        signed._raw = None
        return signed

    def verify(
        self,
        trust: TrustStore,
        *,
        allowed_signers: set[str] | None = None,
        kind: Literal["service", "actor"] | None = None,
    ) -> str:
        """Check the signature against the trust store; return the signer id.

        `allowed_signers` restricts who may sign this kind of event (a serving-monitor key
        must not be able to sign a data-guard verdict); `kind` whether a service or an actor
        must have signed it (an actor's key never vouches for a verdict).
        """
        if not self.signer or not self.signature:
            raise SignatureError("event is not signed")
        if allowed_signers is not None and self.signer not in allowed_signers:
            raise SignatureError(f"{self.signer!r} may not sign {self.type}", signer=self.signer)
        trust.verify(self.signer, self.signing_bytes(), self.signature, kind=kind)
        return self.signer


def now() -> datetime:
    """The current time, UTC."""
    return datetime.now(UTC)


def new_event(
    type_: str,
    data: DataT,
    *,
    source: str,
    subject: str | None = None,
    event_id: str | None = None,
    time: datetime | None = None,
    trace: TraceContext | None = None,
) -> Envelope[DataT]:
    """Wrap `data` in a fresh envelope (with `trace` as its `traceparent`/`tracestate`)."""
    model: Any = Envelope[type(data)]  # type: ignore[misc]
    envelope: Envelope[DataT] = model(
        id=event_id or str(uuid.uuid4()),
        source=source,
        type=type_,
        time=time or now(),
        subject=subject,
        data=data,
        **(trace.attributes() if trace is not None else {}),
    )
    return envelope


def derived_id(service: str, input_id: str, kind: str = "") -> str:
    """A deterministic id for the event `service` emits in answer to `input_id`."""
    return str(uuid.uuid5(_DERIVED_NS, f"{service}\x00{kind}\x00{input_id}"))


def parse_raw(body: bytes) -> dict[str, Any]:
    """Parse bytes into a JSON object, refusing oversize, non-JSON and non-object input."""
    if len(body) > MAX_MESSAGE_BYTES:
        raise InvalidMessage(f"message of {len(body)} bytes exceeds {MAX_MESSAGE_BYTES}", size=len(body))
    try:
        value = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise InvalidMessage(f"not valid JSON: {exc}", size=len(body)) from exc
    if not isinstance(value, dict):
        raise InvalidMessage("a message must be a JSON object", size=len(body))
    return value


def decode(body: bytes, data_model: type[DataT], *, expected_type: str | None = None) -> Envelope[DataT]:
    """Parse and validate an envelope whose `data` is a `data_model`."""
    raw = parse_raw(body)
    try:
        env = Envelope[data_model].model_validate(raw)  # type: ignore[valid-type]
    except ValidationError as exc:
        raise InvalidMessage(f"schema violation: {_short_errors(exc)}", size=len(body)) from exc
    env._raw = raw
    if expected_type is not None and env.type != expected_type:
        raise InvalidMessage(f"expected type {expected_type}, got {env.type}", size=len(body))
    return env


def decode_any(body: bytes) -> Envelope[Any]:
    """Parse an envelope without validating `data` against a model (audit-log stores any event)."""
    raw = parse_raw(body)
    try:
        env: Envelope[Any] = Envelope[_AnyData].model_validate(raw)  # type: ignore[assignment]
    except ValidationError as exc:
        raise InvalidMessage(f"schema violation: {_short_errors(exc)}", size=len(body)) from exc
    env._raw = raw
    return env


class _AnyData(BaseModel):
    model_config = ConfigDict(extra="allow", frozen=True)


def _short_errors(exc: ValidationError) -> str:
    parts = []
    for err in exc.errors()[:5]:
        loc = ".".join(str(p) for p in err["loc"])
        parts.append(f"{loc}: {err['msg']}")
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (+{more} more)" if more > 0 else "")


def preview_b64(body: bytes, limit: int = 4096) -> str:
    """The first `limit` bytes of a message, base64 (for dead letters)."""
    return base64.b64encode(body[:limit]).decode()
