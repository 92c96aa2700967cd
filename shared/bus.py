"""What every service does on the bus, in one place: connect, publish signed events with their
id as `Nats-Msg-Id`, verify others' signatures, keep the trust store, and process one JetStream
message with at-least-once-in / exactly-once-effect semantics and a dead-letter subject.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

import nats
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError, NotFoundError
from pydantic import BaseModel

from shared.envelope import Envelope, decode, derived_id, new_event, preview_b64
from shared.errors import InvalidMessage, MlwardenError, SignatureError
from shared.events import Alert, DeadLetter, Severity
from shared.settings import Settings
from shared.signing import SigningKey, TrustStore, load_or_create_key
from shared.topology import MAX_DELIVER, TRUST_BUCKET, VERDICT_SIGNERS, Subjects

log = logging.getLogger("mlwarden.bus")

DataT = TypeVar("DataT", bound=BaseModel)

#: Delay before a message that failed transiently is redelivered; grows with each delivery.
RETRY_BASE_DELAY_S = 0.5


class TrustConflict(MlwardenError, RuntimeError):
    """A different key is already registered for this signer id."""


def connect_options(settings: Settings) -> dict[str, Any]:
    """Keyword arguments for `nats.connect` / `NatsBroker` from settings (creds, TLS)."""
    options: dict[str, Any] = {
        "servers": [u.strip() for u in settings.nats_url.split(",")],
        "max_reconnect_attempts": -1,
        "reconnect_time_wait": 0.5,
        "inbox_prefix": settings.inbox_prefix,
    }
    if settings.nats_creds is not None:
        options["user_credentials"] = str(settings.nats_creds)
    if settings.nats_tls_ca is not None:
        options["tls"] = ssl.create_default_context(cafile=str(settings.nats_tls_ca))
    return options


async def connect(settings: Settings, *, name: str = "mlwarden") -> Client:
    """A nats-py connection; gives up after a few tries so a CLI does not hang forever."""
    options = connect_options(settings)
    options["max_reconnect_attempts"] = 5
    return await nats.connect(name=name, connect_timeout=5, allow_reconnect=True, **options)


async def publish_event(js: JetStreamContext, subject: str, event: Envelope[Any]) -> None:
    """Publish to JetStream with the event id as `Nats-Msg-Id` and wait for the store's ack."""
    await js.publish(subject, event.to_bytes(), headers={"Nats-Msg-Id": event.id})


async def load_trust(js: JetStreamContext) -> TrustStore:
    """The trust store from its key-value bucket."""
    trust = TrustStore()
    kv = await js.key_value(TRUST_BUCKET)
    try:
        keys = await kv.keys()
    except NotFoundError:
        return trust
    for key in keys:
        entry = await kv.get(key)
        if entry.value:
            trust.add(key, entry.value.decode())
    return trust


async def register_key(js: JetStreamContext, key: SigningKey, *, replace: bool = False) -> None:
    """Put `key`'s public half into the trust store.

    Trust on first use: a different key already registered for the same id is refused (a rogue
    process cannot take over a service's identity by re-registering), unless `replace` is given
    by the operator rotating keys. In a secured deployment only the operator's credentials may
    write the bucket at all.
    """
    kv = await js.key_value(TRUST_BUCKET)
    try:
        entry = await kv.get(key.key_id)
        current = entry.value.decode() if entry.value else None
    except KeyNotFoundError:
        current = None
    if current == key.public_b64():
        return
    if current is not None and not replace:
        raise TrustConflict(f"a different key is already trusted for {key.key_id!r}")
    await kv.put(key.key_id, key.public_b64().encode())


@dataclass
class ServiceRuntime:
    """The bus-facing half of one service: its identity, trust store and publishing."""

    service: str
    key: SigningKey
    trust: TrustStore
    js: JetStreamContext
    nc: Client
    processed: int = 0
    dead_letters: int = 0
    _trust_refresh: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def source(self) -> str:
        """CloudEvents `source` of everything this service emits."""
        return f"mlwarden/{self.service}"

    async def emit(
        self,
        subject: str,
        data: BaseModel,
        *,
        in_reply_to: str | None = None,
        kind: str = "",
        about: str | None = None,
    ) -> Envelope[Any]:
        """Sign and publish `data` on `subject`.

        When answering an input event the id is derived from it, so a redelivered input
        republishes the same id and JetStream's duplicate window keeps one copy.
        """
        event_id = derived_id(self.service, in_reply_to, kind or subject) if in_reply_to else None
        event = new_event(subject, data, source=self.source, subject=about, event_id=event_id)
        signed = event.signed(self.key)
        await publish_event(self.js, subject, signed)
        return signed

    async def alert(
        self,
        kind: str,
        severity: Severity,
        message: str,
        *,
        in_reply_to: str | None = None,
        **evidence: float | int | str | bool,
    ) -> None:
        """Publish an alert on this service's alert subject."""
        alert = Alert(kind=kind, severity=severity, message=message, evidence=evidence)
        await self.emit(Subjects.alert(self.service), alert, in_reply_to=in_reply_to, kind=kind)

    async def dead_letter(self, msg: Msg, reason: str) -> None:
        """Keep a message that can never be processed, with the reason, for audit-log."""
        body = msg.data or b""
        deliveries, seq = _delivery_info(msg)
        letter = DeadLetter(
            service=self.service,
            original_subject=msg.subject,
            reason=reason[:2000],
            payload_b64=preview_b64(body),
            payload_size=len(body),
            payload_sha256=hashlib.sha256(body).hexdigest(),
            deliveries=deliveries,
            stream_seq=seq,
        )
        # Keyed on the stream position, so a redelivery of the same bad message is one letter.
        key = f"{msg.subject}:{seq}" if seq is not None else hashlib.sha256(body).hexdigest()
        await self.emit(Subjects.deadletter(self.service), letter, in_reply_to=key, kind="deadletter")
        self.dead_letters += 1
        log.warning("%s: dead letter from %s: %s", self.service, msg.subject, reason)

    async def verify_verdict(self, event: Envelope[Any]) -> str:
        """Verify a verdict's signature and that its signer may sign that type.

        A forged verdict raises SignatureError after an alert is published; nothing else is done
        with it. An unknown signer triggers one re-read of the trust store first (a service may
        have registered after we started).
        """
        allowed = VERDICT_SIGNERS.get(event.type)
        allowed_set = {allowed} if allowed else set()
        try:
            if event.signer and event.signer not in self.trust:
                async with self._trust_refresh:
                    self.trust = await load_trust(self.js)
            return event.verify(self.trust, allowed_signers=allowed_set)
        except SignatureError as exc:
            await self.alert(
                "forged_verdict",
                Severity.FAIL,
                f"rejected {event.type} {event.id}: {exc.reason}",
                in_reply_to=event.id,
                signer=event.signer or "",
                event_type=event.type,
            )
            raise

    async def process(
        self,
        msg: Msg,
        model: type[DataT],
        handler: Callable[[Envelope[DataT]], Awaitable[None]],
    ) -> None:
        """Decode one JetStream message, run `handler`, then ack.

        - Bad JSON, a wrong schema or an oversized message can never succeed: it goes to the
          dead-letter subject at once and is acked (the letter is stored first).
        - Any other error is retried with a growing delay (nak); after MAX_DELIVER deliveries
          the message is dead-lettered. Handlers are idempotent on the event id, so a retry
          after a partial success does no harm.
        """
        try:
            event = decode(msg.data, model, expected_type=msg.subject)
        except InvalidMessage as exc:
            await self.dead_letter(msg, exc.reason)
            await msg.ack()
            return
        try:
            await handler(event)
        except Exception as exc:  # noqa: BLE001 - the boundary: every failure is retried or kept
            deliveries, _ = _delivery_info(msg)
            if deliveries >= MAX_DELIVER:
                await self.dead_letter(msg, f"failed {deliveries} times: {exc!r}")
                await msg.ack()
                return
            log.warning("%s: retrying %s after %r", self.service, event.id, exc)
            await msg.nak(delay=RETRY_BASE_DELAY_S * 2 ** (deliveries - 1))
            return
        await msg.ack()
        self.processed += 1


def _delivery_info(msg: Msg) -> tuple[int, int | None]:
    try:
        meta = msg.metadata
    except Exception:  # noqa: BLE001 - a core (non-JetStream) message has no metadata
        return 1, None
    return int(meta.num_delivered or 1), int(meta.sequence.stream) if meta.sequence else None


async def start_runtime(service: str, settings: Settings, nc: Client) -> ServiceRuntime:
    """Load or create the service key, register it, and load the trust store.

    Without `settings.declare_topology` (a secured deployment, where services may not write the
    trust store) the operator registered the key beforehand; a service whose key is not the
    trusted one refuses to start rather than publish verdicts every consumer would reject.
    """
    js = nc.jetstream()
    key = load_or_create_key(settings.keys_dir / f"{service}.pem", service)
    if settings.declare_topology:
        await register_key(js, key)
    trust = await load_trust(js)
    if not settings.declare_topology:
        probe = b"mlwarden start-up key check"
        try:
            trust.verify(key.key_id, probe, key.sign(probe))
        except SignatureError as exc:
            raise TrustConflict(
                f"{service}'s key in {settings.keys_dir} is not the trusted one ({exc.reason}); "
                "the operator registers service keys with `mlwarden keys init --nats URL`"
            ) from exc
    return ServiceRuntime(service=service, key=key, trust=trust, js=js, nc=nc)
