"""The FastStream skeleton every service shares: a broker, a start-up that declares the topology
and loads the service's identity, durable JetStream consumers and request/reply endpoints.

Ack policy, deliberately: FastStream's default for JetStream (REJECT_ON_ERROR) terminates a
message on any exception, transient ones included, so subscribers here use `AckPolicy.MANUAL`
and `ServiceRuntime.process` acks, naks with a delay or dead-letters. Pull mode is per-message
handlers over a batched fetch (`PullSub(batch_size=N)`); `PullSub(batch=True)` stalls with
nats-py 2.16.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import nats.errors
import orjson
from faststream import FastStream
from faststream.middlewares import AckPolicy
from faststream.nats import JStream, NatsBroker, NatsMessage, PullSub
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError
from nats.protocol.parser import PERMISSIONS_ERR
from pydantic import BaseModel, ValidationError

from shared.aio import TASK_STOP_S, await_chain, cancel_and_wait, finish_within
from shared.bus import ServiceRuntime, connect_options, start_runtime
from shared.envelope import MAX_MESSAGE_BYTES, Envelope, preview_b64
from shared.errors import MlwardenError
from shared.events import DeadLetter, ErrorReply, HealthReply
from shared.metrics import ServiceMetrics
from shared.probes import ProbeServer, ReadinessState, readiness_problems
from shared.settings import Settings
from shared.topology import CONSUMERS, Subjects, ensure_topology

DataT = TypeVar("DataT", bound=BaseModel)
ReqT = TypeVar("ReqT", bound=BaseModel)
T = TypeVar("T")

log = logging.getLogger("mlwarden.service")

#: How long a readiness check or a scrape waits for JetStream to describe one consumer.
CONSUMER_INFO_TIMEOUT_S = 2.0

#: From a stop request (SIGTERM) to a stopped service, at most about this long (issue 13 asks
#: for 10 s; compose's default grace is 10 s). Unacknowledged messages are redelivered.
STOP_GRACE_S = 8.0

#: While a service waits for NATS at start-up, one "waiting for NATS" line this often.
WAIT_LOG_EVERY_S = 10.0


def _translate_fetch_timeouts() -> None:
    """Make `PullSubscription.fetch` raise only `nats.errors.TimeoutError` on a timeout.

    nats-py 2.16 raises a bare `asyncio.TimeoutError` from `fetch()` when its deadline runs
    out before the lingering pull request (`nats/js/client.py`, `_fetch_n`), while FastStream
    0.7.8's pull loop suppresses only `nats.errors.TimeoutError`; the loop task then dies and
    FastStream's supervisor restarts it with an error traceback. One translation here keeps the
    loop quiet and running. (`nats.errors.TimeoutError` subclasses the builtin, so code that
    catches the builtin still does.)
    """
    original = JetStreamContext.PullSubscription.fetch
    if getattr(original, "_mlwarden_translated", False):
        return

    async def fetch(self: JetStreamContext.PullSubscription, *args: Any, **kwargs: Any) -> list[Msg]:
        try:
            return await original(self, *args, **kwargs)
        except NatsTimeoutError:
            raise
        except TimeoutError as exc:
            raise NatsTimeoutError from exc

    fetch._mlwarden_translated = True  # type: ignore[attr-defined]
    JetStreamContext.PullSubscription.fetch = fetch  # type: ignore[method-assign]


_translate_fetch_timeouts()


class ServiceApp:
    """One service's FastStream app and its bus runtime."""

    def __init__(self, service: str, settings: Settings) -> None:
        self.service = service
        self.settings = settings
        #: This instance's Prometheus metrics (served when `settings.metrics_port` is set).
        self.metrics = ServiceMetrics(service)
        self.broker = NatsBroker(
            **connect_options(settings),
            error_cb=self._on_nats_error,
            logger=logging.getLogger(f"mlwarden.{service}"),
            middlewares=[self.metrics.middleware()],
        )
        #: `/metrics`, `/healthz`, `/readyz` while running, when `settings.metrics_port` is set.
        self.probes: ProbeServer | None = None
        #: The FastStream subscriber of each durable consumer this service reads.
        self._consumers: dict[str, Any] = {}
        self._serving = False
        self._stopping = False
        self._readiness_checks: list[Callable[[], list[str]]] = []
        self._connected = False
        self._attempts = 0
        self._last_wait_log = -math.inf
        self.app = FastStream(self.broker, logger=logging.getLogger(f"mlwarden.{service}"))
        self._runtime: ServiceRuntime | None = None
        #: Service-owned objects tests and the CLI may look at (store, ingestor, state).
        self.state: dict[str, Any] = {}
        self._startup_hooks: list[Callable[[ServiceRuntime], Awaitable[None]]] = []
        self._shutdown_hooks: list[Callable[[], Awaitable[None]]] = []
        self._replies: list[tuple[str, type[Any], Callable[[Any], Awaitable[BaseModel]]]] = []
        self._reply_subs: list[Any] = []
        self._rejections = _Rejections()
        self._flusher: asyncio.Task[None] | None = None
        self._started_at = time.monotonic()
        self.app.on_startup(self._startup)
        # After the broker started its consumers: a service answers health only once it serves.
        self.app.after_startup(self._answer_health)
        self.app.on_shutdown(self._shutdown)

    async def start(self) -> None:
        """Start the app. A start-up that fails or is cancelled at any step closes what it had
        opened: FastStream runs no shutdown hook when starting its consumers or an after-startup
        hook fails, which left the NATS connection (and the probe socket) open."""
        try:
            await self.app.start()
        except BaseException:
            with contextlib.suppress(Exception):
                await self._shutdown()
            with contextlib.suppress(Exception):
                await self.broker.stop()
            raise

    async def stop(self, grace: float = STOP_GRACE_S) -> bool:
        """Stop within about `grace` seconds: shutdown hooks, consumers, then the connection.

        Returns whether the stop finished by itself. If it did not (a drain that waits on a
        peer, a hook that hangs), it says where it was stuck, cancels it and closes the
        connection: whatever was not acknowledged is redelivered by JetStream. A cancellation
        of the caller cancels the stop too.
        """
        stopping = asyncio.create_task(self.app.stop(), name=f"{self.service}:stop")
        try:
            done, _ = await asyncio.wait({stopping}, timeout=grace)
        except asyncio.CancelledError:
            stopping.cancel()
            raise
        if done:
            stopping.result()
            return True
        log.warning("%s: not stopped after %g s; it was waiting in:\n%s", self.service, grace, await_chain(stopping))
        await cancel_and_wait([stopping], timeout=TASK_STOP_S)
        connection = self.broker._connection  # None when it never connected
        if connection is not None and not connection.is_closed:
            closing = asyncio.create_task(connection.close(), name=f"{self.service}:close")
            if not await finish_within(closing, TASK_STOP_S):
                log.warning("%s: the NATS connection did not close in %g s", self.service, TASK_STOP_S)
        await finish_within(asyncio.create_task(self._stop_probes()), TASK_STOP_S)
        return False

    def get(self, key: str, kind: type[T]) -> T:
        """The object a start-up hook put in `state[key]`, checked to be a `kind`."""
        value = self.state.get(key)
        if not isinstance(value, kind):
            raise RuntimeError(f"{self.service} has not started ({key!r} is not set)")
        return value

    @property
    def runtime(self) -> ServiceRuntime:
        """The runtime, available once the app has started."""
        if self._runtime is None:
            raise RuntimeError(f"{self.service} has not started")
        return self._runtime

    def on_start(
        self, hook: Callable[[ServiceRuntime], Awaitable[None]]
    ) -> Callable[[ServiceRuntime], Awaitable[None]]:
        """Run `hook` once the runtime exists, before consumers start (load models, state)."""
        self._startup_hooks.append(hook)
        return hook

    def ready_when(self, check: Callable[[], list[str]]) -> Callable[[], list[str]]:
        """Add a readiness check of the service's own: `check()` returns why it is not ready."""
        self._readiness_checks.append(check)
        return check

    def on_stop(self, hook: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """Run `hook` when the app stops (close databases, flush)."""
        self._shutdown_hooks.append(hook)
        return hook

    async def _on_nats_error(self, exc: Exception) -> None:
        """nats-py's error callback. Before the first connection every failed attempt lands
        here: say that we are waiting, and for what (issue 13: a service that cannot reach NATS
        used to wait silently forever). Afterwards, a permissions violation names the subject
        the server refused, which the operation itself would only report as a timeout."""
        reason = (str(exc).strip() or type(exc).__name__).splitlines()[0]
        if not self._connected:
            self._attempts += 1
            now = time.monotonic()
            # The first attempts, then one line per WAIT_LOG_EVERY_S: nats-py retries twice a second.
            if self._attempts <= 3 or now - self._last_wait_log >= WAIT_LOG_EVERY_S:
                self._last_wait_log = now
                log.warning(
                    "%s: waiting for NATS at %s (attempt %d): %s",
                    self.service,
                    self.settings.nats_url_redacted,
                    self._attempts,
                    reason,
                )
            return
        if PERMISSIONS_ERR in reason.lower():
            log.error("%s: NATS refused: %s", self.service, reason)
        else:
            # Lost connections and reconnects are FastStream's to report ("Connection broken").
            log.debug("%s: NATS error: %s", self.service, reason)

    async def _startup(self) -> None:
        self._stopping = False
        if self.settings.metrics_port is not None:
            # Before connecting: /healthz answers and /readyz says why not while NATS is awaited.
            self.probes = ProbeServer(
                self.settings.metrics_host, self.settings.metrics_port, metrics=self.scrape, readiness=self.readiness
            )
            try:
                await self.probes.start()
            except OSError as exc:
                self.probes = None
                raise ProbeStartError(
                    f"{self.service}: cannot serve metrics on {self.settings.metrics_host}:"
                    f"{self.settings.metrics_port}: {exc.strerror or exc} (set MLW_METRICS_PORT to a free port)",
                    port=self.settings.metrics_port,
                ) from exc
            log.info("%s: metrics and probes on %s", self.service, self.probes.url)
        try:
            await self.broker.connect()
        except BaseException:
            # Cancelled while waiting for NATS (a stop request): close what is open.
            await self._stop_probes()
            raise
        self._connected = True
        if self._attempts:
            log.info(
                "%s: connected to NATS at %s after %d failed attempts",
                self.service,
                self.settings.nats_url_redacted,
                self._attempts,
            )
        try:
            nc = self.broker.connection
            if self.settings.declare_topology:
                # In a secured deployment the operator declared it; this identity may not.
                await ensure_topology(nc.jetstream(), replicas=self.settings.js_replicas)
            self._runtime = await start_runtime(self.service, self.settings, nc)
            self._runtime.metrics = self.metrics
            for hook in self._startup_hooks:
                await hook(self._runtime)
            await self._subscribe_replies()
        except BaseException:
            # A service that refuses to start (untrusted key, unreadable policy) closes its
            # connection instead of leaking it.
            await self._shutdown()
            await self.broker.stop()
            raise
        if self._replies:
            self._flusher = asyncio.create_task(self._flush_rejections(), name=f"{self.service}:rejections")

    async def _flush_rejections(self, every_s: float = 1.0) -> None:
        """Put refused requests in the audit trail as dead letters, coalesced per subject and
        reason each second, so a flood of junk costs a bounded number of audit rows."""
        while True:
            await asyncio.sleep(every_s)
            for letter in self._rejections.drain(self.service):
                try:
                    await self.runtime.emit(Subjects.deadletter(self.service), letter)
                    self.metrics.dead_lettered(letter.original_subject, letter.count)
                except Exception as exc:  # noqa: BLE001 - keep answering requests regardless
                    log.warning("%s: could not record a rejection: %r", self.service, exc)

    async def _shutdown(self) -> None:
        self._stopping = True
        self._serving = False
        self.metrics.ready.labels(self.service).set(0)
        try:
            await self._stop_work()
        finally:
            await self._stop_probes()

    async def _stop_probes(self) -> None:
        probes, self.probes = self.probes, None
        if probes is not None:
            await probes.stop()

    async def _stop_work(self) -> None:
        if self._flusher is not None:
            await cancel_and_wait([self._flusher], timeout=TASK_STOP_S)
        for letter in self._rejections.drain(self.service):
            with contextlib.suppress(Exception):
                await self.runtime.emit(Subjects.deadletter(self.service), letter)
                self.metrics.dead_lettered(letter.original_subject, letter.count)
        for sub in self._reply_subs:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._reply_subs.clear()
        for hook in self._shutdown_hooks:
            await hook()
        if self._runtime is not None:
            await self._runtime.stop()

    def consume(
        self,
        subject: str,
        model: type[DataT],
        *,
        batch: int = 8,
    ) -> Callable[[Callable[[Envelope[DataT]], Awaitable[None]]], Callable[[Envelope[DataT]], Awaitable[None]]]:
        """Register `handler(event)` for one subject on the durable consumer that reads it."""

        def register(
            handler: Callable[[Envelope[DataT]], Awaitable[None]],
        ) -> Callable[[Envelope[DataT]], Awaitable[None]]:
            self.consume_routes(subject, {subject: (model, handler)}, batch=batch, doc=handler.__doc__)
            return handler

        return register

    def consume_routes(
        self,
        filter_subject: str,
        routes: dict[str, tuple[type[Any], Callable[[Envelope[Any]], Awaitable[None]]]],
        *,
        batch: int = 8,
        doc: str | None = None,
    ) -> None:
        """Read one durable consumer (declared in `shared.topology` with `filter_subject`) and
        dispatch each message by subject; subjects without a route are acked and skipped.

        `batch=1` processes strictly in stream order (FastStream runs a fetched batch
        concurrently).
        """
        durable = self._durable_for(filter_subject)
        stream = self._stream_for(durable)

        async def on_message(msg: NatsMessage) -> None:
            raw = msg.raw_message
            route = routes.get(raw.subject)
            if route is None:
                await raw.ack()
                return
            model, handler = route
            await self.runtime.process(raw, model, handler)

        on_message.__name__ = f"on_{durable.replace('-', '_')}"
        subscriber = self.broker.subscriber(
            filter_subject,
            stream=JStream(stream, declare=False),
            durable=durable,
            pull_sub=PullSub(batch_size=batch, timeout=1.0),
            # FastStream would pass nats-py's default `_INBOX.` explicitly; use this identity's.
            inbox_prefix=f"{self.settings.inbox_prefix}.".encode(),
            ack_policy=AckPolicy.MANUAL,
            title=f"{self.service}:{durable}",
            description=doc or f"routes: {', '.join(sorted(routes))}",
        )
        subscriber(on_message)
        self._consumers[durable] = subscriber

    def reply(
        self,
        subject: str,
        model: type[ReqT],
    ) -> Callable[[Callable[[ReqT], Awaitable[BaseModel]]], Callable[[ReqT], Awaitable[BaseModel]]]:
        """Register a request/reply endpoint: plain JSON body in, JSON reply out.

        Replicas share the work through a queue group. Malformed requests get an `ErrorReply`,
        never silence. These endpoints sit on the serving hot path, so they are plain nats-py
        subscriptions made at start-up: FastStream's per-message pipeline (dependency
        resolution, worker-thread hops) cost ten times the decision itself in
        `benchmarks/serving_monitor.py`.
        """

        def register(handler: Callable[[ReqT], Awaitable[BaseModel]]) -> Callable[[ReqT], Awaitable[BaseModel]]:
            self._replies.append((subject, model, handler))
            return handler

        return register

    async def _answer(self, msg: Msg, model: type[ReqT], handler: Callable[[ReqT], Awaitable[BaseModel]]) -> None:
        body = msg.data
        try:
            if len(body) > MAX_MESSAGE_BYTES:
                raise ValueError(f"request of {len(body)} bytes is too large")
            request = model.model_validate(orjson.loads(body))
        except (orjson.JSONDecodeError, ValidationError, ValueError) as exc:
            reason = str(exc)[:1000]
            self._rejections.note(msg.subject, body, reason)
            await _respond(msg, _error("bad_request", reason))
            return
        try:
            reply = await handler(request)
        except MlwardenError as exc:
            await _respond(msg, _error(type(exc).__name__, str(exc)))
            return
        except Exception as exc:
            log.exception("%s: %s failed", self.service, msg.subject)
            await _respond(msg, _error("internal", repr(exc)[:500]))
            return
        await _respond(msg, orjson.dumps(reply.model_dump(mode="json")))

    async def _answer_health(self) -> None:
        """Answer `mlw.health.<service>` (core NATS, in a queue group like every endpoint) for
        `mlwarden health`: a reply proves this process's event loop and connection are alive."""

        async def on_health(msg: Msg) -> None:
            runtime = self.runtime
            reply = HealthReply(
                service=self.service,
                uptime_s=round(time.monotonic() - self._started_at, 3),
                processed=runtime.processed,
                dead_letters=runtime.dead_letters,
            )
            await _respond(msg, orjson.dumps(reply.model_dump(mode="json")))

        nc = self.broker.connection
        self._reply_subs.append(await nc.subscribe(Subjects.health(self.service), queue=self.service, cb=on_health))
        # The server knows every endpoint of this service before start-up returns.
        await nc.flush()
        self._serving = True

    async def readiness(self) -> list[str]:
        """Why this instance is not ready to do its work (empty when it is): connected to NATS,
        the trust store loaded with its own key, start-up finished, each durable consumer's
        subscriber running and the consumer known to JetStream. Also updates `mlwarden_ready`."""
        connection = self.broker._connection  # None before the first connection
        connected = connection is not None and connection.is_connected
        runtime = self._runtime
        missing = await self._sample_consumers() if connected and runtime is not None else []
        problems = readiness_problems(
            ReadinessState(
                started=self._serving,
                stopping=self._stopping,
                connected=connected,
                trust_loaded=runtime is not None and self.service in runtime.trust,
                stopped_consumers=[name for name, sub in self._consumers.items() if not sub.running],
                missing_consumers=missing,
                service_problems=[problem for check in self._readiness_checks for problem in check()],
            )
        )
        self.metrics.ready.labels(self.service).set(0 if problems else 1)
        return problems

    async def scrape(self, accept: str | None = None) -> tuple[bytes, str]:
        """The metrics in Prometheus (or OpenMetrics) text, with fresh consumer and readiness samples."""
        await self.readiness()
        return self.metrics.exposition(accept)

    async def _sample_consumers(self) -> list[str]:
        """Ask JetStream for each durable consumer's backlog (into the metrics); return the
        consumers it could not report on, with why."""
        problems: list[str] = []
        js = self.runtime.js
        for spec in CONSUMERS.get(self.service, ()):
            try:
                info = await js.consumer_info(spec.stream, spec.durable, timeout=CONSUMER_INFO_TIMEOUT_S)
            except NotFoundError:
                problems.append(f"{spec.durable} does not exist in {spec.stream}")
                continue
            except (nats.errors.Error, TimeoutError) as exc:
                problems.append(f"{spec.durable}: JetStream did not answer ({type(exc).__name__})")
                continue
            self.metrics.consumer(
                spec.stream, spec.durable, pending=info.num_pending or 0, ack_pending=info.num_ack_pending or 0
            )
        return problems

    async def _subscribe_replies(self) -> None:
        nc = self.broker.connection
        for subject, model, handler in self._replies:

            async def on_request(
                msg: Msg,
                model: type[BaseModel] = model,
                handler: Callable[[Any], Awaitable[BaseModel]] = handler,
            ) -> None:
                await self._answer(msg, model, handler)

            self._reply_subs.append(await nc.subscribe(subject, queue=self.service, cb=on_request))

    def _durable_for(self, subject: str) -> str:
        for spec in CONSUMERS[self.service]:
            if subject in spec.filter_subjects:
                return spec.durable
        raise KeyError(f"no durable consumer of {self.service} reads {subject}")

    def _stream_for(self, durable: str) -> str:
        for spec in CONSUMERS[self.service]:
            if spec.durable == durable:
                return spec.stream
        raise KeyError(durable)


class ProbeStartError(MlwardenError, OSError):
    """The metrics port could not be opened (taken, or not allowed)."""

    def __init__(self, message: str, *, port: int) -> None:
        super().__init__(message)
        self.port = port


class _Rejections:
    """Refused requests waiting to be recorded: the first sample and a count per kind."""

    def __init__(self, limit: int = 100) -> None:
        self.limit = limit
        self.pending: dict[tuple[str, str], tuple[bytes, int]] = {}

    def note(self, subject: str, body: bytes, reason: str) -> None:
        key = (subject, reason.split(":", 1)[0][:200])
        sample, count = self.pending.get(key, (body, 0))
        if key in self.pending or len(self.pending) < self.limit:
            self.pending[key] = (sample, count + 1)

    def drain(self, service: str) -> list[DeadLetter]:
        pending, self.pending = self.pending, {}
        return [
            DeadLetter(
                service=service,
                original_subject=subject,
                reason=f"request refused: {reason}",
                payload_b64=preview_b64(sample),
                payload_size=len(sample),
                payload_sha256=hashlib.sha256(sample).hexdigest(),
                count=count,
            )
            for (subject, reason), (sample, count) in pending.items()
        ]


async def _respond(msg: Msg, data: bytes) -> None:
    if msg.reply:
        await msg.respond(data)


def _error(code: str, detail: str) -> bytes:
    return orjson.dumps(ErrorReply(error=code, detail=detail).model_dump(mode="json"))


def reply_or_error(raw: bytes, model: type[ReqT]) -> ReqT | ErrorReply:
    """Parse a reply that may be an `ErrorReply` (clients use this)."""
    value: Any = orjson.loads(raw)
    if isinstance(value, dict) and "error" in value and set(value) <= {"error", "detail"}:
        return ErrorReply.model_validate(value)
    return model.model_validate(value)
