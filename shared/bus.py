"""What every service does on the bus, in one place: connect, publish signed events with their
id as `Nats-Msg-Id`, verify others' signatures, keep the trust store, and process one JetStream
message with at-least-once-in / exactly-once-effect semantics: failures settled by class (input
dead-lettered, infrastructure retried without limit, bugs dead-lettered after a few attempts).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import ssl
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeVar, assert_never

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from pydantic import BaseModel

from shared import tracing
from shared.aio import TASK_STOP_S, cancel_and_wait, finish_within
from shared.envelope import Envelope, decode, derived_id, new_event, preview_b64
from shared.errors import FailureClass, InvalidMessage, MlwardenError, SignatureError, classify_failure
from shared.events import Alert, DeadLetter, Severity
from shared.metrics import ServiceMetrics
from shared.settings import Settings
from shared.signing import Identity, SigningKey, TrustStore, load_or_create_key
from shared.topology import CONSUMERS, DEFAULT_ACK_WAIT_S, TRUST_BUCKET, Subjects, expected_signer
from shared.tracing import caused_by_current
from shared.trust import (
    Kind,
    Rejected,
    SignedTrustEntry,
    TrustEntry,
    TrustError,
    apply_update,
    build_store,
    load_root_public,
    new_entry,
    parse_entry,
    revoked_entry,
    sign_entry,
)

log = logging.getLogger("mlwarden.bus")

DataT = TypeVar("DataT", bound=BaseModel)

#: Delay before a failed message is redelivered; doubles with each delivery...
RETRY_BASE_DELAY_S = 0.5
#: ... up to this: after an outage, a message waits at most this long to be tried again.
RETRY_MAX_DELAY_S = 10.0
#: An outage is over when this long passed after a success with no new failure.
RECOVERY_QUIET_S = 5.0
#: A handler that fails with a bug (an unexpected exception) this many times is dead-lettered.
BUG_ATTEMPTS = 5
#: Keep a message in progress for at most this long: a handler stuck longer lets it go.
MAX_IN_PROGRESS_S = 30 * 60.0


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


async def open_nats(**options: Any) -> Client:
    """`nats.connect(**options)` that closes its socket when the connection is refused half-way.

    nats-py leaves the transport of a refused attempt open (an authorization violation with
    `allow_reconnect=False`, a cancelled or timed-out connect): in a long-running process that
    is a leaked socket per failed attempt.
    """
    nc = Client()
    try:
        await nc.connect(**options)
    except BaseException:
        with contextlib.suppress(Exception):
            await nc.close()
        raise
    return nc


#: How long closing a connection may take: draining its subscriptions and flushing, then closing.
CLOSE_TIMEOUT_S = 2.0


async def close_nats(nc: Client, *, timeout: float = CLOSE_TIMEOUT_S) -> bool:
    """Drain `nc` for at most `timeout` seconds, then close it for at most `timeout` more.

    Returns whether the drain finished. nats-py's `drain()` swallows a cancellation and then
    flushes (up to 10 s) before closing: `await nc.drain()` eats the caller's own cancellation
    (a stop deadline, Ctrl-C) and `wait_for(nc.drain(), t)` outlives `t`; this does neither.
    """
    if nc.is_closed:
        return True
    drained = await finish_within(asyncio.create_task(nc.drain(), name="nats-drain"), timeout)
    if not nc.is_closed and not await finish_within(asyncio.create_task(nc.close(), name="nats-close"), timeout):
        log.warning("a NATS connection did not close within %g s", timeout)
    return drained


async def connect(settings: Settings, *, name: str = "mlwarden") -> Client:
    """A nats-py connection; gives up after a few tries so a CLI does not hang forever."""
    options = connect_options(settings)
    options["max_reconnect_attempts"] = 5
    return await open_nats(name=name, connect_timeout=5, allow_reconnect=True, **options)


async def publish_event(js: JetStreamContext, subject: str, event: Envelope[Any]) -> None:
    """Publish to JetStream with the event id as `Nats-Msg-Id` and wait for the store's ack."""
    await js.publish(subject, event.to_bytes(), headers={"Nats-Msg-Id": event.id})


async def read_trust_bucket(js: JetStreamContext, ids: Iterable[str] | None = None) -> list[tuple[str, bytes, int]]:
    """Every revision of every trust-store entry, or the latest value of each of `ids`.

    Listing needs a watcher (services, the operator); producers and auditors may only get the
    ids they need (the signer of a verdict), so they pass `ids`.
    """
    kv = await js.key_value(TRUST_BUCKET)
    values: list[tuple[str, bytes, int]] = []
    if ids is not None:
        for key in ids:
            try:
                entry = await kv.get(key)
            except KeyNotFoundError:
                continue
            values.append((key, entry.value or b"", entry.revision or 0))
        return values
    # Read up to the bucket's last message as it stands now: nats-py's "no more pending" marker
    # can come before the values when the server delivers faster than the callback counts.
    info = await js.stream_info(kv_stream_name(TRUST_BUCKET))
    last = info.state.last_seq
    if not info.state.messages:
        return values
    watcher = await kv.watchall(include_history=True)
    try:
        while True:
            update = await watcher.updates(timeout=10.0)
            if update is None:
                continue
            values.append((update.key, update.value or b"", update.revision or 0))
            if (update.revision or 0) >= last:
                break
    finally:
        await watcher.stop()
    return values


def kv_stream_name(bucket: str) -> str:
    """The JetStream stream behind a key-value bucket."""
    return f"KV_{bucket}"


async def load_trust_checked(
    js: JetStreamContext, root: Ed25519PublicKey, ids: Iterable[str] | None = None
) -> tuple[TrustStore, list[Rejected]]:
    """The trust store from its bucket, every entry verified against the root key, and the
    values that were ignored because their root signature does not hold."""
    return build_store(await read_trust_bucket(js, ids), root)


async def load_trust(js: JetStreamContext, root: Ed25519PublicKey, ids: Iterable[str] | None = None) -> TrustStore:
    """The trust store from its bucket (root-signed entries only; others are logged and ignored)."""
    store, rejected = await load_trust_checked(js, root, ids)
    for bad in rejected:
        log.warning("trust store: ignored %s (revision %d): %s", bad.key, bad.revision, bad.reason)
    return store


async def put_entry(js: JetStreamContext, root: SigningKey, entry: TrustEntry) -> None:
    """Write one root-signed entry (the operator's `keys` commands)."""
    kv = await js.key_value(TRUST_BUCKET)
    await kv.put(entry.id, sign_entry(root, entry))


async def current_entry(js: JetStreamContext, root: Ed25519PublicKey, identity: str) -> TrustEntry | None:
    """The valid entry of `identity` with the highest serial in the bucket history (None when none)."""
    values = [v for v in await read_trust_bucket(js) if v[0] == identity]
    best: TrustEntry | None = None
    for key, value, _revision in values:
        if not value:
            continue
        try:
            entry = parse_entry(value, key=key, root=root)
        except TrustError:
            continue
        if best is None or entry.serial > best.serial:
            best = entry
    return best


async def _latest_is(js: JetStreamContext, entry: TrustEntry) -> bool:
    kv = await js.key_value(TRUST_BUCKET)
    try:
        latest = await kv.get(entry.id)
    except KeyNotFoundError:
        return False
    try:
        signed = SignedTrustEntry.model_validate_json(latest.value or b"")
    except ValueError:
        return False
    return signed.entry == entry


async def register_key(
    js: JetStreamContext,
    root: SigningKey,
    key_id: str,
    public_b64: str,
    *,
    kind: Kind,
    roles: Iterable[str] = (),
    replace: bool = False,
) -> TrustEntry:
    """Register (or keep) `public_b64` for `key_id`, signed by the root.

    The same key again only updates roles. A different key for an existing identity is refused
    unless `replace` (the operator rotating it: the old key keeps verifying history).
    """
    previous = await current_entry(js, root.private.public_key(), key_id)
    if previous is not None and previous.revoked_at is None:
        if previous.current.public_key == public_b64 and previous.kind == kind and set(previous.roles) == set(roles):
            if not await _latest_is(js, previous):
                # Someone wrote over the entry (a bare key, an older copy): readers that `get`
                # the latest value would lose it. Re-sign it, one serial up.
                previous = previous.model_copy(update={"serial": previous.serial + 1, "issued_at": time.time()})
                await put_entry(js, root, previous)
            return previous
        if previous.current.public_key != public_b64 and not replace:
            raise TrustConflict(f"a different key is already trusted for {key_id!r}")
    entry = new_entry(key_id, kind, public_b64, roles=roles, previous=previous)
    await put_entry(js, root, entry)
    return entry


async def revoke_key(js: JetStreamContext, root: SigningKey, key_id: str, reason: str) -> TrustEntry:
    """Revoke `key_id`: nothing it signs from now on verifies."""
    previous = await current_entry(js, root.private.public_key(), key_id)
    if previous is None:
        raise TrustError(f"{key_id!r} is not in the trust store", key=key_id)
    entry = revoked_entry(previous, reason)
    await put_entry(js, root, entry)
    return entry


@dataclass
class ServiceRuntime:
    """The bus-facing half of one service: its identity, trust store and publishing."""

    service: str
    key: SigningKey
    trust: TrustStore
    js: JetStreamContext
    nc: Client
    root: Ed25519PublicKey
    processed: int = 0
    dead_letters: int = 0
    _trust_refresh: asyncio.Lock = field(default_factory=asyncio.Lock)
    _trust_task: asyncio.Task[None] | None = None
    _reported: set[tuple[str, int]] = field(default_factory=set)
    #: The infrastructure outage going on, if any (one alert when it starts, one when it ends).
    _outage: Outage | None = None
    #: Infrastructure failures seen per message (subject:stream seq): not counted as bug attempts.
    _infra_failures: dict[str, int] = field(default_factory=dict)
    _recovery: asyncio.Task[None] | None = None
    #: Called with each identity the trust store changes while following it (after it is applied):
    #: registry-gate recalls what a revoked key vouched for (issue 11). A failing listener is
    #: logged and does not stop the following.
    trust_listeners: list[Callable[[Identity], Awaitable[None]]] = field(default_factory=list)
    #: Where emitted verdicts, alerts and dead letters are counted (`ServiceApp` sets it).
    metrics: ServiceMetrics | None = None

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
        When answering an event (inside `process`), the new event joins that event's trace.
        """
        event_id = derived_id(self.service, in_reply_to, kind or subject) if in_reply_to else str(uuid.uuid4())
        trace = caused_by_current(event_id)
        event = new_event(subject, data, source=self.source, subject=about, event_id=event_id, trace=trace)
        signed = event.signed(self.key)
        await publish_event(self.js, subject, signed)
        if self.metrics is not None:
            self.metrics.emitted(subject, data)
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
        if self.metrics is not None:
            self.metrics.dead_lettered(msg.subject)
        log.warning("%s: dead letter from %s: %s", self.service, msg.subject, reason)

    async def _refresh_trust(self, signer: str | None) -> None:
        # An unknown signer triggers one re-read (an identity registered a moment ago may not
        # have reached the watcher yet); every entry read is checked against the root again.
        if signer and signer not in self.trust:
            async with self._trust_refresh:
                if signer not in self.trust:
                    store, rejected = await load_trust_checked(self.js, self.root)
                    self.trust = _merge(self.trust, store)
                    await self.report_untrusted(rejected)

    async def verify_verdict(self, event: Envelope[Any]) -> str:
        """Verify a verdict's signature and that its signer is the service that may sign that type.

        A forged verdict raises SignatureError after an alert is published; nothing else is done
        with it.
        """
        # One rule for who may sign a subject, shared with audit-log and subscribers.
        allowed = expected_signer(event.type)
        allowed_set = {allowed} if allowed else set()
        try:
            await self._refresh_trust(event.signer)
            return event.verify(self.trust, allowed_signers=allowed_set, kind="service")
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

    async def verify_actor(self, event: Envelope[Any], claimed: str | None, *, role: str | None = None) -> str:
        """Verify a producer event: signed by a registered, unrevoked actor's current key, whose
        id equals the identity the event claims (`claimed`, e.g. `uploader`) and who holds `role`.

        Return the verified actor id. On failure, alert and raise SignatureError: the caller
        answers with its signed rejection. Identity comes from the key, never from the field.
        """
        try:
            if not event.signer or not event.signature:
                raise SignatureError("event is not signed by its actor")
            await self._refresh_trust(event.signer)
            signer = event.verify(self.trust, kind="actor")
            if claimed is not None and claimed != signer:
                raise SignatureError(f"event claims to be from {claimed!r} but is signed by {signer!r}", signer=signer)
            if role is not None and role not in self.trust.roles_of(signer):
                raise SignatureError(f"{signer!r} does not hold the {role!r} role", signer=signer)
            return signer
        except SignatureError as exc:
            await self.alert(
                "forged_identity",
                Severity.FAIL,
                f"refused {event.type} {event.id}: {exc.reason}",
                in_reply_to=event.id,
                signer=event.signer or "",
                claimed=claimed or "",
                event_type=event.type,
            )
            raise

    async def report_untrusted(self, rejected: Iterable[Rejected]) -> None:
        """Alert once per trust-store value that was ignored (no valid root signature)."""
        for bad in rejected:
            if (bad.key, bad.revision) in self._reported:
                continue
            self._reported.add((bad.key, bad.revision))
            log.warning("%s: ignored trust entry %s: %s", self.service, bad.key, bad.reason)
            await self.alert(
                "untrusted_key",
                Severity.FAIL,
                f"trust-store entry {bad.key!r} ignored: {bad.reason}",
                in_reply_to=f"trust:{bad.key}:{bad.revision}",
                key=bad.key,
                revision=bad.revision,
            )

    def follow_trust(self) -> None:
        """Apply trust-store changes (registrations, rotations, revocations) as they happen."""
        if self._trust_task is None:
            self._trust_task = asyncio.create_task(self._follow_trust(), name=f"{self.service}:trust")

    async def stop(self) -> None:
        """Stop following the trust store (and waiting to confirm a recovery)."""
        tasks = [task for task in (self._recovery, self._trust_task) if task is not None]
        await cancel_and_wait(tasks, timeout=TASK_STOP_S)
        self._trust_task = None

    async def _follow_trust(self) -> None:
        kv = await self.js.key_value(TRUST_BUCKET)
        watcher = await kv.watchall()
        try:
            async for update in watcher:
                if update is None or not update.value:
                    continue
                try:
                    identity = apply_update(self.trust, update.key, update.value, self.root)
                except TrustError as exc:
                    await self.report_untrusted([Rejected(update.key, exc.reason, update.revision or 0)])
                    continue
                if identity is not None:
                    log.info("%s: trust store: %s now serial %d", self.service, identity.id, identity.serial)
                    for listener in self.trust_listeners:
                        try:
                            await listener(identity)
                        except Exception:  # a listener's failure must not stop trust updates
                            log.exception("%s: trust listener failed on %s", self.service, identity.id)
        finally:
            with contextlib.suppress(Exception):
                await watcher.stop()

    async def process(
        self,
        msg: Msg,
        model: type[DataT],
        handler: Callable[[Envelope[DataT]], Awaitable[None]],
    ) -> None:
        """Decode one JetStream message, run `handler`, then ack; a failure is settled by its
        class (`shared.errors.classify_failure`, DESIGN.md principle 6, issue 13):

        - input (bad JSON, a wrong schema, an oversized message, `InvalidMessage` from the
          handler) can never succeed: it goes to the dead-letter subject at once, with the
          reason, and is acked (the letter is stored first);
        - infrastructure (database, disk, object store, NATS) is retried with a growing, capped
          delay for as long as it lasts: the consumers have no delivery limit, so an outage
          never uses up a message. One alert when it starts, one when it is over;
        - a bug (any other exception) is retried `BUG_ATTEMPTS` times, then dead-lettered with
          an alert.

        While the handler works, the message is kept in progress (`+WPI`) every third of its ack
        wait, so the ack wait can be short and a crashed process's messages come back in
        seconds. Handlers are idempotent on the event id: a retry after a partial success does
        no harm. A message leaves the stream only acked after its work or dead-lettered.
        """
        try:
            event = decode(msg.data, model, expected_type=msg.subject)
        except InvalidMessage as exc:
            await self._settle_failure(msg, exc, FailureClass.INPUT)
            return
        # What the handler emits (verdicts, alerts, dead letters) joins this event's trace.
        token = tracing.CURRENT.set(event.trace)
        try:
            async with keep_in_progress(msg):
                await handler(event)
        except Exception as exc:  # noqa: BLE001 - the boundary: every failure is classified and settled
            await self._settle_failure(msg, exc, classify_failure(exc), event_id=event.id)
            return
        finally:
            tracing.CURRENT.reset(token)
        await msg.ack()
        self._infra_failures.pop(_message_key(msg), None)
        self.processed += 1
        await self.infrastructure_recovered()

    async def _settle_failure(
        self, msg: Msg, exc: BaseException, failure: FailureClass, *, event_id: str | None = None
    ) -> None:
        deliveries, _ = _delivery_info(msg)
        key = _message_key(msg)
        what = event_id or msg.subject
        try:
            match failure:
                case FailureClass.INPUT:
                    reason = exc.reason if isinstance(exc, InvalidMessage) else repr(exc)
                    await self.dead_letter(msg, reason)
                    await msg.ack()
                    self._infra_failures.pop(key, None)
                case FailureClass.INFRASTRUCTURE:
                    self._infra_failures[key] = self._infra_failures.get(key, 0) + 1
                    _trim(self._infra_failures)
                    log.warning("%s: infrastructure failure on %s, retrying: %r", self.service, what, exc)
                    await self.infrastructure_failed(exc)
                    await msg.nak(delay=retry_delay(deliveries))
                case FailureClass.BUG:
                    # Deliveries spent on infrastructure failures (seen by this process) do not
                    # count: a message that waited out an outage still gets its bug attempts.
                    attempts = max(1, deliveries - self._infra_failures.get(key, 0))
                    if attempts < BUG_ATTEMPTS:
                        log.warning("%s: %s failed (attempt %d), retrying: %r", self.service, what, attempts, exc)
                        await msg.nak(delay=retry_delay(attempts))
                        return
                    log.error("%s: %s failed %d times, dead-lettering: %r", self.service, what, attempts, exc)
                    await self.dead_letter(msg, f"failed {attempts} times: {exc!r}")
                    await self.alert(
                        "handler_bug",
                        Severity.FAIL,
                        f"{msg.subject} {what} dead-lettered after {attempts} failures: {exc!r}"[:2000],
                        in_reply_to=f"bug:{key}",
                        subject=msg.subject,
                        attempts=attempts,
                        error=type(exc).__name__,
                    )
                    await msg.ack()
                    self._infra_failures.pop(key, None)
                case _:
                    assert_never(failure)
        except Exception as settle_exc:  # noqa: BLE001 - the bus itself is failing: keep the message
            # Neither acked nor dead-lettered: it stays in the stream and comes again (after the
            # nak delay or the ack wait), whatever the class.
            log.warning("%s: could not settle %s (%s): %r", self.service, what, failure.value, settle_exc)
            with contextlib.suppress(Exception):
                await msg.nak(delay=retry_delay(deliveries))

    async def infrastructure_failed(self, exc: BaseException) -> None:
        """Alert once that an infrastructure failure started (again later if the bus was down too)."""
        outage = self._outage
        if outage is None:
            outage = self._outage = Outage(started=time.time(), reason=repr(exc)[:500])
            log.error("%s: infrastructure unavailable: %s", self.service, outage.reason)
        outage.failures += 1
        outage.healthy_since = None
        if outage.alerted:
            return
        try:
            await self.alert(
                "infrastructure.unavailable",
                Severity.FAIL,
                f"{self.service} cannot do its work: {outage.reason}; messages are retried until it returns",
                in_reply_to=outage.key(self.service),
                error=type(exc).__name__,
            )
            outage.alerted = True
        except Exception as alert_exc:  # noqa: BLE001 - NATS may be what is down; the next failure retries
            log.warning("%s: could not publish the outage alert: %r", self.service, alert_exc)

    async def infrastructure_recovered(self) -> None:
        """After a success: if an outage was going on, it is over once RECOVERY_QUIET_S pass
        with no new failure; then say so, once. A resource that flaps while it comes back (a
        connection opened during the outage failing once more) stays one outage, one alert."""
        outage = self._outage
        if outage is None or outage.healthy_since is not None:
            return
        outage.healthy_since = time.time()
        self._recovery = asyncio.create_task(self._confirm_recovery(outage), name=f"{self.service}:recovery")

    async def _confirm_recovery(self, outage: Outage) -> None:
        await asyncio.sleep(RECOVERY_QUIET_S)
        if self._outage is not outage or outage.healthy_since is None:
            return  # failed again meanwhile: the same outage goes on
        self._outage = None
        lasted = outage.healthy_since - outage.started
        log.warning("%s: infrastructure back after %.1f s (%d failures)", self.service, lasted, outage.failures)
        try:
            await self.alert(
                "infrastructure.recovered",
                Severity.INFO,
                f"{self.service} works again after {lasted:.1f} s ({outage.failures} retried failures)",
                in_reply_to=outage.key(self.service),
                seconds=round(lasted, 3),
                failures=outage.failures,
            )
        except Exception as alert_exc:  # noqa: BLE001 - the work is done; the alert is best effort
            log.warning("%s: could not publish the recovery alert: %r", self.service, alert_exc)


@dataclass
class Outage:
    """An infrastructure failure going on: when it started, why, and whether it was alerted."""

    started: float
    reason: str
    failures: int = 0
    alerted: bool = False
    #: When the first success after failures came (None while failing).
    healthy_since: float | None = None

    def key(self, service: str) -> str:
        """The idempotency key of this outage's alerts (one start, one recovery alert)."""
        return f"outage:{service}:{self.started:.6f}"


def retry_delay(attempt: int) -> float:
    """The nak delay after `attempt` failed deliveries: doubling from RETRY_BASE_DELAY_S, capped
    at RETRY_MAX_DELAY_S (so a message comes back within that long after an outage ends)."""
    return min(RETRY_MAX_DELAY_S, RETRY_BASE_DELAY_S * 2 ** min(max(attempt, 1) - 1, 16))


def _ack_wait_of(msg: Msg) -> float:
    """The ack wait of the durable that delivered `msg`, from the topology (the default if unknown)."""
    try:
        meta = msg.metadata
    except Exception:  # noqa: BLE001 - a core message: no consumer
        return DEFAULT_ACK_WAIT_S
    for specs in CONSUMERS.values():
        for spec in specs:
            if spec.durable == meta.consumer and spec.stream == meta.stream:
                return spec.ack_wait_s
    return DEFAULT_ACK_WAIT_S


@contextlib.asynccontextmanager
async def keep_in_progress(*msgs: Msg, every_s: float | None = None) -> AsyncIterator[None]:
    """Tell JetStream the work on `msgs` goes on (`+WPI`, resetting their ack wait) every
    `every_s` (a third of the durable's ack wait by default) until the block exits, for at most
    MAX_IN_PROGRESS_S: a handler stuck for longer lets its messages be redelivered."""
    interval = every_s if every_s is not None else (_ack_wait_of(msgs[0]) if msgs else DEFAULT_ACK_WAIT_S) / 3

    async def beat() -> None:
        deadline = time.monotonic() + MAX_IN_PROGRESS_S
        while time.monotonic() < deadline:
            await asyncio.sleep(interval)
            for msg in msgs:
                try:
                    await msg.in_progress()
                except Exception as exc:  # noqa: BLE001 - a core message, or NATS down: the ack wait decides
                    log.debug("in-progress ack failed: %r", exc)

    task = asyncio.create_task(beat(), name="in-progress")
    try:
        yield
    finally:
        await cancel_and_wait([task], timeout=TASK_STOP_S)


def _message_key(msg: Msg) -> str:
    deliveries, seq = _delivery_info(msg)
    del deliveries
    return f"{msg.subject}:{seq}" if seq is not None else hashlib.sha256(msg.data or b"").hexdigest()


def _trim(counts: dict[str, int], limit: int = 10_000) -> None:
    # Messages that left through another replica leave their count behind: forget the oldest.
    while len(counts) > limit:
        counts.pop(next(iter(counts)))


def _delivery_info(msg: Msg) -> tuple[int, int | None]:
    try:
        meta = msg.metadata
    except Exception:  # noqa: BLE001 - a core (non-JetStream) message has no metadata
        return 1, None
    return int(meta.num_delivered or 1), int(meta.sequence.stream) if meta.sequence else None


def _merge(current: TrustStore, fresh: TrustStore) -> TrustStore:
    # Keep the higher serial of each identity: a re-read never undoes a revocation already seen.
    for key_id in current.ids():
        known = current.identity(key_id)
        other = fresh.identity(key_id)
        if known is not None and (other is None or other.serial < known.serial):
            fresh.put(known)
    return fresh


async def start_runtime(service: str, settings: Settings, nc: Client) -> ServiceRuntime:
    """Load the service key, the root key and the trust store, and check the key is trusted.

    Services never register themselves: only the operator's root key puts an entry in the trust
    store (`mlwarden keys init`). A service whose key is not the trusted one refuses to start
    rather than publish verdicts every consumer would reject.
    """
    js = nc.jetstream()
    root = load_root_public(settings.trust_root, settings.keys_dir)
    key = load_or_create_key(settings.keys_dir / f"{service}.pem", service)
    probe = b"mlwarden start-up key check"
    attempt = 0
    while True:
        trust, rejected = await load_trust_checked(js, root)
        if service in trust or (attempt == 0 and not settings.wait_for_registration):
            break
        # Services may start before the operator's `keys init` (compose starts them together):
        # wait for the root-signed registration, never register ourselves.
        if attempt % 30 == 0:
            log.warning("%s: waiting for the operator to register this service's key (mlwarden keys init)", service)
        attempt += 1
        await asyncio.sleep(1.0)
    try:
        trust.verify(key.key_id, probe, key.sign(probe), kind="service")
    except SignatureError as exc:
        raise TrustConflict(
            f"{service}'s key in {settings.keys_dir} is not the trusted one ({exc.reason}); "
            "the operator registers service keys with `mlwarden keys init --nats URL`"
        ) from exc
    runtime = ServiceRuntime(service=service, key=key, trust=trust, js=js, nc=nc, root=root)
    await runtime.report_untrusted(rejected)
    runtime.follow_trust()
    return runtime
