"""audit-log's wiring: read every stream through durable consumers, group-commit each fetched
batch to SQL, ack only after the commit, and answer auditors' queries.

Ingestion is the one place that uses nats-py's batched fetch directly rather than a FastStream
per-message handler: a whole fetched batch must go into one transaction before any message of it
is acked (group commit), which per-message handlers cannot express.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext

from services.audit_log.query import run_query
from services.audit_log.store import AuditStore, IncomingEvent
from shared.bus import ServiceRuntime
from shared.errors import InvalidMessage
from shared.events import AuditPage, AuditQuery
from shared.service import ServiceApp
from shared.settings import Settings
from shared.topology import CONSUMERS, Subjects

SERVICE = "audit-log"
log = logging.getLogger("mlwarden.audit-log")


class Ingestor:
    """Moves messages from the three durable consumers into the store, one transaction a batch."""

    def __init__(self, store: AuditStore, runtime: ServiceRuntime, batch: int) -> None:
        self.store = store
        self.runtime = runtime
        self.batch = batch
        self.stored = 0
        self.duplicates = 0
        # One writer at a time: the hash chain links each row to the one before it.
        self._write = asyncio.Lock()
        self._tasks: list[asyncio.Task[None]] = []
        self._subs: list[JetStreamContext.PullSubscription] = []
        self._running = False

    async def start(self, js: JetStreamContext) -> None:
        """Bind to every audit-log durable and start one fetch loop per stream."""
        self._running = True
        for spec in CONSUMERS[SERVICE]:
            sub = await js.pull_subscribe_bind(durable=spec.durable, stream=spec.stream)
            self._subs.append(sub)
            self._tasks.append(asyncio.create_task(self._loop(sub), name=f"audit:{spec.durable}"))

    async def stop(self) -> None:
        """Stop fetching; a batch being written finishes first."""
        self._running = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        for sub in self._subs:
            # Unacked messages simply return to the durable: nothing is lost.
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
        self._subs.clear()

    async def _loop(self, sub: JetStreamContext.PullSubscription) -> None:
        while self._running:
            try:
                msgs = await sub.fetch(self.batch, timeout=1.0)
            except (TimeoutError, NatsTimeoutError):
                continue
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep consuming through reconnects
                log.warning("audit-log: fetch failed: %r", exc)
                await asyncio.sleep(0.5)
                continue
            try:
                await self.ingest(msgs)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("audit-log: batch of %d not stored: %r", len(msgs), exc)
                await asyncio.sleep(0.5)

    async def ingest(self, msgs: list[Msg]) -> None:
        """Store a fetched batch in one transaction, then ack it; bad messages become dead letters."""
        recorded_at = time.time()
        items: list[IncomingEvent] = []
        bad: list[tuple[Msg, str]] = []
        for msg in msgs:
            try:
                items.append(IncomingEvent.from_bytes(msg.data, recorded_at=recorded_at))
            except InvalidMessage as exc:
                bad.append((msg, exc.reason))
        async with self._write:
            result = await asyncio.to_thread(self.store.append_batch, items)
        self.stored += result.inserted
        self.duplicates += result.duplicates
        for msg, reason in bad:
            # The dead letter lands on MLW_VERDICTS and comes back through this very ingestor.
            await self.runtime.dead_letter(msg, reason)
        for msg in msgs:
            await msg.ack()


def create_app(settings: Settings | None = None, *, store: AuditStore | None = None) -> ServiceApp:
    """Build audit-log: ingestion from every stream plus the `mlw.audit.query` endpoint."""
    settings = settings or Settings()
    svc = ServiceApp(SERVICE, settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    the_store = store or AuditStore(settings.audit_url)
    holder = svc.state
    holder["store"] = the_store

    @svc.on_start
    async def start_ingestion(runtime: ServiceRuntime) -> None:
        await asyncio.to_thread(the_store.create)
        ingestor = Ingestor(the_store, runtime, batch=max(settings.fetch_batch, 256))
        holder["ingestor"] = ingestor
        await ingestor.start(runtime.js)

    @svc.on_stop
    async def stop_ingestion() -> None:
        if "ingestor" in holder:
            await holder["ingestor"].stop()

    @svc.reply(Subjects.AUDIT_QUERY, AuditQuery)
    async def query(request: AuditQuery) -> AuditPage:
        """Answer an auditor's query: filters ANDed, newest first, cursor pagination."""
        return await asyncio.to_thread(run_query, the_store, request)

    return svc
