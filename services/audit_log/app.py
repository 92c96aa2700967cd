"""audit-log's wiring: read every stream through durable consumers, group-commit each fetched
batch to SQL, ack only after the commit, sign checkpoints, and answer auditors' queries,
proof and checkpoint requests.

Ingestion is the one place that uses nats-py's batched fetch directly rather than a FastStream
per-message handler: a whole fetched batch must go into one transaction before any message of it
is acked (group commit), which per-message handlers cannot express. The batch is parsed, chained
and committed by a writer process (`services.audit_log.writer`) so that the event loop, which
costs about as much as a bare nats-py consumer, keeps a core of its own (issue 3's throughput
goal).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from services.audit_log.checkpoint import (
    AuditKey,
    CheckpointError,
    CheckpointMirror,
    CheckpointPolicy,
    sign_checkpoint,
    verify_checkpoint,
)
from services.audit_log.equivocation import Equivocation
from services.audit_log.proof import EntryNotFoundError, build_inclusion_proof
from services.audit_log.query import run_query
from services.audit_log.settings import AuditSettings, mirror_path
from services.audit_log.store import AuditStore, Fence
from services.audit_log.writer import BatchOutcome, BatchWriter, InlineWriter, ProcessWriter, Received, WriterError
from shared.bus import BUG_ATTEMPTS, ServiceRuntime, keep_in_progress, retry_delay
from shared.envelope import decode
from shared.errors import FailureClass, InputError, InvalidMessage
from shared.events import (
    AuditCheckpoint,
    AuditCheckpointReply,
    AuditCheckpointRequest,
    AuditInclusionProof,
    AuditPage,
    AuditProofRequest,
    AuditQuery,
    Severity,
)
from shared.lease import KvLease, holder_id
from shared.service import ServiceApp
from shared.settings import Settings
from shared.signing import KeyHistory, SigningKey
from shared.topology import CHECKPOINTS, CONSUMERS, STATE_BUCKET, Subjects

SERVICE = "audit-log"
#: The writer lease's key in the state bucket (`shared.lease`).
LEASE_KEY = "audit-log.lease"
log = logging.getLogger("mlwarden.audit-log")


class Ingestor:
    """Moves messages from the three durable consumers into the store, one transaction a batch.

    The event loop only fetches and acks; a `BatchWriter` parses, chains and commits (in its own
    process by default, see `services.audit_log.writer`). Every message is acked only after the
    writer confirmed the commit of its batch.
    """

    def __init__(
        self,
        writer: BatchWriter,
        runtime: ServiceRuntime,
        batch: int,
        *,
        on_commit: Callable[[], Awaitable[None]] | None = None,
        depth: int = 2,
    ) -> None:
        self.writer = writer
        self.runtime = runtime
        self.batch = batch
        #: Batches a stream may have at the writer at once: with 2, the writer already holds the
        #: next batch when it finishes one, while the loop acks the first and fetches a third.
        self.depth = depth
        #: Called after a batch that stored something was committed and acked (checkpointing).
        self.on_commit = on_commit
        self.stored = 0
        self.duplicates = 0
        #: The writer lease's fencing token: the store refuses a batch under any other claim.
        self.fence: Fence | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._subs: list[JetStreamContext.PullSubscription] = []
        self._running = False
        self._retrying = asyncio.Lock()

    async def start(self, js: JetStreamContext) -> None:
        """Start the writer, bind to every audit-log durable and start one fetch loop per stream."""
        await self.writer.start()
        self._running = True
        for spec in CONSUMERS[SERVICE]:
            sub = await js.pull_subscribe_bind(durable=spec.durable, stream=spec.stream)
            self._subs.append(sub)
            self._tasks.append(asyncio.create_task(self._loop(sub), name=f"audit:{spec.durable}"))

    @property
    def running(self) -> bool:
        """Whether every stream's fetch loop is running."""
        return self._running and bool(self._tasks) and not any(task.done() for task in self._tasks)

    async def stop(self) -> None:
        """Stop fetching; batches at the writer are committed and acked first."""
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
        await self.writer.stop()

    async def _loop(self, sub: JetStreamContext.PullSubscription) -> None:
        # Pipelined: while the writer commits batch k (and already holds k + 1), this loop acks
        # what was committed and fetches the next batch. The writer commits in submission order,
        # so the chain follows the stream, and each batch is acked only after its own commit.
        inflight: deque[asyncio.Task[None]] = deque()
        try:
            while self._running:
                try:
                    msgs = await sub.fetch(self.batch, timeout=1.0)
                except (TimeoutError, NatsTimeoutError):
                    while inflight:
                        await self._settle(inflight.popleft())
                    continue
                except asyncio.CancelledError:
                    raise
                except Exception as exc:  # noqa: BLE001 - keep consuming through reconnects
                    log.warning("audit-log: fetch failed: %r", exc)
                    await asyncio.sleep(0.5)
                    continue
                if not msgs:
                    continue  # nats-py may answer a pull with no messages (a status, not a timeout)
                # Adaptive group commit: while the writer is busy with this stream's earlier
                # batches, keep fetching into this one (a fetch returns what is there, often
                # only a few messages when producers trickle).
                while len(msgs) < self.batch and len(inflight) >= self.depth and not inflight[0].done():
                    try:
                        msgs += await sub.fetch(self.batch - len(msgs), timeout=0.05)
                    except (TimeoutError, NatsTimeoutError):
                        break
                # This batch waits for a slot at the writer, through a whole database outage if
                # need be: keep it in progress meanwhile, so it is not redelivered behind itself.
                async with keep_in_progress(*msgs):
                    while len(inflight) >= self.depth or (inflight and inflight[0].done()):
                        await self._settle(inflight.popleft())
                # Submitted now, in order: the task hands the batch to the writer at once.
                inflight.append(asyncio.create_task(self.ingest(msgs)))
        finally:
            # Let the batches at the writer finish and be acked; anything unacked is redelivered.
            if inflight:
                await asyncio.shield(asyncio.gather(*(self._settle(task) for task in inflight)))

    async def _settle(self, pending: asyncio.Task[None]) -> None:
        try:
            await pending
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # not acked: JetStream redelivers the batch
            log.exception("audit-log: batch not stored: %r", exc)
            await asyncio.sleep(0.5)

    async def ingest(self, msgs: list[Msg]) -> None:
        """Store a fetched batch in one transaction, then ack it; bad messages become dead letters.

        A batch leaves the stream only stored or dead-lettered (issue 13). While the database is
        unwritable or unreachable the batch is retried here, in place, with a growing capped
        delay and no attempt limit, its messages kept in progress so JetStream neither redelivers
        nor drops them; this stream's fetching pauses meanwhile (its pipeline is full). One alert
        when the outage starts, one when it ends, and the writer reopens its database by itself.
        Not a nak: a nak would hand the same batch back to this loop at once, out of order with
        the batches behind it, and fetching would go on filling the pipeline with doomed work.
        A batch that fails with a bug (an unexpected exception) is retried `BUG_ATTEMPTS` times,
        then split to store what it can: the message that makes the writer fail on its own is
        dead-lettered with an alert.
        """
        started = time.perf_counter()
        async with keep_in_progress(*msgs):
            try:
                outcome = await self._write_until_stored(msgs)
            except WriterError as exc:
                if exc.failure is not FailureClass.BUG:
                    raise  # stopping mid-outage: unacked, the batch comes again
                if len(msgs) > 1:
                    for msg in msgs:
                        await self.ingest([msg])
                    return
                await self._dead_letter_bug(msgs[0], exc)
                return
        self.stored += outcome.inserted
        self.duplicates += outcome.duplicates
        if self.runtime.metrics is not None:
            self.runtime.metrics.audit_batch(
                inserted=outcome.inserted, duplicates=outcome.duplicates, seconds=time.perf_counter() - started
            )
        for position, reason in outcome.refused:
            # The dead letter lands on MLW_VERDICTS and comes back through this very ingestor.
            await self.runtime.dead_letter(msgs[position], reason)
        for found in outcome.equivocations:
            await self.alert_equivocation(found)
        for msg in msgs:
            await msg.ack()
        if outcome.inserted and self.on_commit is not None:
            await self.on_commit()

    async def _write(self, msgs: list[Msg]) -> BatchOutcome:
        # The trust store verifies each event's signature in the writer (issue 8: labels come
        # from verified signers only).
        messages = [Received(msg.subject, msg.data) for msg in msgs]
        outcome = await self.writer.write(messages, time.time(), self.runtime.trust, fence=self.fence)
        if outcome.inserted:
            # Only a write proves the database is back: a batch of redelivered duplicates
            # needs only a read, which a read-only or full database still serves.
            await self.runtime.infrastructure_recovered()
        return outcome

    async def _write_until_stored(self, msgs: list[Msg]) -> BatchOutcome:
        try:
            return await self._write(msgs)
        except WriterError as exc:
            failure = exc
        # One failed batch probes the database at a time, in the order they failed: the others
        # wait here rather than hammer a database that is down.
        async with self._retrying:
            bug_attempts = 0
            attempt = 0
            while True:
                if failure.fenced:
                    # Another instance took the writer lease: leave the batch unacked for it.
                    raise failure
                if failure.failure is FailureClass.BUG:
                    bug_attempts += 1
                    if bug_attempts >= BUG_ATTEMPTS:
                        raise failure
                    log.warning("audit-log: batch failed (attempt %d): %s", bug_attempts, failure)
                else:
                    log.warning("audit-log: database unavailable, batch of %d kept: %s", len(msgs), failure)
                    await self.runtime.infrastructure_failed(failure)
                if not self._running:
                    raise failure
                attempt += 1
                await asyncio.sleep(retry_delay(attempt))
                try:
                    return await self._write(msgs)
                except WriterError as exc:
                    failure = exc

    async def _dead_letter_bug(self, msg: Msg, exc: WriterError) -> None:
        """Dead-letter a message the writer fails on by itself (a bug), with an alert."""
        await self.runtime.dead_letter(msg, f"audit-log failed {BUG_ATTEMPTS} times to store it: {exc}")
        await self.runtime.alert(
            "handler_bug",
            Severity.FAIL,
            f"audit-log dead-lettered a {msg.subject} message it failed {BUG_ATTEMPTS} times to store: {exc}"[:2000],
            in_reply_to=f"bug:{msg.subject}:{hashlib.sha256(msg.data).hexdigest()}",
            subject=msg.subject,
            error=exc.kind,
        )
        await msg.ack()

    async def alert_equivocation(self, found: Equivocation) -> None:
        """Alert that an event id came again with other content (issue 8).

        Also for a redelivered second copy whose evidence was stored by an earlier attempt:
        that attempt may have died before its alert was published. The alert's id derives from
        the evidence entry, so JetStream keeps one copy within its duplicate window.
        """
        differs = ", ".join(found.differs_in)
        await self.runtime.alert(
            "equivocation",
            found.severity,
            f"event {found.event_id} arrived again with different {differs}: the second copy is kept "
            f"as entry {found.record_id}; the first stays at seq {found.first_seq}",
            in_reply_to=found.record_id,
            event_id=found.event_id,
            record_id=found.record_id,
            first_seq=found.first_seq,
            first_sha256=found.first_sha256,
            second_sha256=found.second_sha256,
            differs_in=differs,
        )


class Checkpointer:
    """Signs a checkpoint when the policy says so and publishes it to the stream and the mirror.

    It never signs a tree that is not an extension of the last checkpoint it knows (from the
    stream or the mirror): if the database lost or changed entries, it raises an alert instead
    of vouching for the rewritten history with audit-log's key.
    """

    def __init__(
        self,
        store: AuditStore,
        key: SigningKey,
        policy: CheckpointPolicy,
        mirror: CheckpointMirror,
        publish: Callable[[AuditCheckpoint], Awaitable[None]],
        *,
        origin: str,
        history: KeyHistory | None = None,
    ) -> None:
        self.store = store
        self.key = key
        #: audit-log's key history from the trust store: checkpoints signed before a rotation count.
        self.history = history
        self.policy = policy
        self.mirror = mirror
        self.publish = publish
        self.origin = origin
        self.latest: AuditCheckpoint | None = None
        self.refused: str | None = None
        self._lock = asyncio.Lock()

    def resume(self, candidates: list[AuditCheckpoint | None]) -> None:
        """Continue after the newest checkpoint this key (or, after a rotation, an earlier key of
        audit-log's) signed (stream or mirror)."""
        public: AuditKey = self.history or self.key.private.public_key()
        for cp in candidates:
            if cp is None:
                continue
            try:
                verify_checkpoint(cp, public)
            except CheckpointError:
                log.warning("audit-log: ignoring a checkpoint not signed by this key (size %d)", cp.tree_size)
                continue
            if self.latest is None or cp.tree_size > self.latest.tree_size:
                self.latest = cp

    async def maybe_issue(self, *, force: bool = False) -> AuditCheckpoint | None:
        """Sign and publish a checkpoint if one is due (or `force`); the newest checkpoint."""
        async with self._lock:
            size = await asyncio.to_thread(self.store.tree_size)
            now_ms = int(time.time() * 1000)
            latest = self.latest
            if latest is not None and size == latest.tree_size:
                return latest
            shrank = latest is not None and size < latest.tree_size
            if not (force or shrank or self.policy.due(size, latest, now_ms)):
                return latest
            checkpoint = await asyncio.to_thread(self._sign, size, now_ms)
            await asyncio.to_thread(self.mirror.append, checkpoint)
            self.latest = checkpoint
        # Published after the mirror write: a bus outage loses nothing the verifier needs,
        # and a republished checkpoint has the same id (JetStream keeps one copy).
        await self.publish(checkpoint)
        return checkpoint

    def _sign(self, size: int, now_ms: int) -> AuditCheckpoint:
        latest = self.latest
        if latest is not None:
            # Never sign a history that does not extend the last signed one.
            if size < latest.tree_size:
                raise CheckpointError(
                    f"the trail holds {size} entries but {latest.tree_size} were signed: entries were removed",
                    tree_size=size,
                )
            if self.store.root(latest.tree_size).hex() != latest.root_hash:
                raise CheckpointError(
                    f"the first {latest.tree_size} entries no longer match their signed checkpoint",
                    tree_size=latest.tree_size,
                )
        return sign_checkpoint(self.key, size, self.store.root(size), timestamp_ms=now_ms, origin=self.origin)


async def latest_published_checkpoint(js: JetStreamContext) -> AuditCheckpoint | None:
    """The last checkpoint in the `MLW_CHECKPOINTS` stream, if any."""
    try:
        raw = await js.get_last_msg(CHECKPOINTS.name, Subjects.AUDIT_CHECKPOINTS)
    except NotFoundError:
        return None
    if raw.data is None:
        return None
    try:
        return decode(raw.data, AuditCheckpoint).data
    except InvalidMessage as exc:
        log.warning("audit-log: last published checkpoint is unreadable: %s", exc.reason)
        return None


def create_app(
    settings: Settings | None = None,
    *,
    store: AuditStore | None = None,
    audit_settings: AuditSettings | None = None,
) -> ServiceApp:
    """Build audit-log: ingestion from every stream, checkpoints, and the `mlw.audit.*` endpoints."""
    settings = settings or Settings()
    audit = audit_settings or AuditSettings()
    svc = ServiceApp(SERVICE, settings)
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    the_store = store or AuditStore(settings.audit_url)
    writer = InlineWriter(the_store) if store is not None or the_store.in_memory else ProcessWriter(settings.audit_url)
    holder = svc.state
    holder["store"] = the_store
    mirror = CheckpointMirror(mirror_path(settings.data_dir))
    tasks: list[asyncio.Task[None]] = []

    @svc.on_start
    async def start_ingestion(runtime: ServiceRuntime) -> None:
        await asyncio.to_thread(the_store.create)

        async def publish(checkpoint: AuditCheckpoint) -> None:
            about = f"checkpoint:{checkpoint.origin}:{checkpoint.tree_size}:{checkpoint.root_hash}"
            await runtime.emit(Subjects.AUDIT_CHECKPOINTS, checkpoint, in_reply_to=about, kind="checkpoint")

        checkpointer = Checkpointer(
            the_store,
            runtime.key,
            audit.policy,
            mirror,
            publish,
            origin=audit.origin,
            history=runtime.trust.history(runtime.service),
        )
        published = await latest_published_checkpoint(runtime.js)
        checkpointer.resume([await asyncio.to_thread(mirror.latest), published])
        holder["checkpointer"] = checkpointer

        async def checkpoint_now() -> None:
            try:
                await checkpointer.maybe_issue()
            except CheckpointError as exc:
                # Alert once per distinct problem; the ingestion goes on (the entries are kept).
                if checkpointer.refused != exc.reason:
                    checkpointer.refused = exc.reason
                    log.error("audit-log: refusing to sign a checkpoint: %s", exc.reason)
                    await runtime.alert("checkpoint_refused", Severity.FAIL, exc.reason)
            except Exception as exc:  # noqa: BLE001 - the next tick retries (bus down, database locked)
                log.warning("audit-log: checkpoint failed: %r", exc)

        async def timer() -> None:
            # Time-based checkpoints: new entries wait at most `checkpoint_interval_s` for one.
            while True:
                await asyncio.sleep(min(1.0, audit.checkpoint_interval_s / 2))
                if holder["lease"].held:
                    await checkpoint_now()

        # Up to 1024 messages a transaction: the commit, not the fetch, is the cost per message.
        ingestor = Ingestor(writer, runtime, batch=max(settings.fetch_batch, 1024), on_commit=checkpoint_now)
        holder["ingestor"] = ingestor

        # One writer at a time (issue 13): instances contend for a lease in the state bucket;
        # only the holder consumes, commits and signs, under its fencing token. Standbys answer
        # queries, proofs and checkpoint requests from the shared database.
        lease = KvLease(await runtime.js.key_value(STATE_BUCKET), LEASE_KEY, holder_id(SERVICE), audit.lease)
        holder["lease"] = lease
        # Tokens compare within one lease bucket: its creation time tells a recreated one apart.
        epoch = str((await runtime.js.stream_info(f"KV_{STATE_BUCKET}")).created or "")

        async def lead(token: int) -> None:
            fence = Fence(epoch, token)
            # Claimed before the first fetch: from now on a former leader's batch is refused.
            await asyncio.to_thread(the_store.claim_writer, fence, now=time.time())
            ingestor.fence = fence
            await ingestor.start(runtime.js)
            log.info("audit-log: writing as leader (token %d)", token)
            # At once, not at the first entry: a database that lost signed entries is reported now.
            await checkpoint_now()

        async def step_down() -> None:
            log.warning("audit-log: writer lease lost; standing by")
            await ingestor.stop()
            ingestor.fence = None

        # A lone instance (or the first) takes the lease before it reports ready.
        if await lease.try_acquire():
            assert lease.token is not None
            await lead(lease.token)
        tasks.append(asyncio.create_task(lease.run(lead, step_down), name="audit:lease"))
        tasks.append(asyncio.create_task(timer(), name="audit:checkpoints"))

    @svc.ready_when
    def ingesting() -> list[str]:
        # The lease holder must be consuming; a standby is ready to answer and to take over.
        lease, ingestor = holder.get("lease"), holder.get("ingestor")
        if lease is not None and ingestor is not None and lease.held and not ingestor.running:
            return ["holds the writer lease but is not ingesting"]
        return []

    @svc.on_stop
    async def stop_ingestion() -> None:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        tasks.clear()
        if "ingestor" in holder:
            await holder["ingestor"].stop()
        if "lease" in holder:
            # After the last commit: a standby takes over at its next look, not after the TTL.
            await holder["lease"].release()

    def checkpointer() -> Checkpointer:
        found: Checkpointer | None = holder.get("checkpointer")
        if found is None:
            raise InputError("audit-log is starting; retry")
        return found

    @svc.reply(Subjects.AUDIT_PROOF, AuditProofRequest)
    async def prove(request: AuditProofRequest) -> AuditInclusionProof:
        """Prove that one entry (by event id or leaf index) is in the signed trail (RFC 9162 inclusion)."""
        cps = checkpointer()
        entry = None
        if request.event_id is not None:
            entry = await asyncio.to_thread(the_store.find, request.event_id)
            if entry is None:
                raise EntryNotFoundError("no such entry in the audit trail", event_id=request.event_id)
        index = entry.leaf_index if entry is not None else request.leaf_index
        latest = cps.latest
        if index is not None and (latest is None or index >= latest.tree_size):
            # Not covered yet: sign now rather than make the auditor wait for the timer.
            latest = await cps.maybe_issue(force=True)
        if latest is None:
            raise EntryNotFoundError("the trail is empty", leaf_index=request.leaf_index)
        return await asyncio.to_thread(
            build_inclusion_proof, the_store, latest, event_id=request.event_id, leaf_index=request.leaf_index
        )

    @svc.reply(Subjects.AUDIT_CHECKPOINT, AuditCheckpointRequest)
    async def latest_checkpoint(request: AuditCheckpointRequest) -> AuditCheckpointReply:
        """The newest signed checkpoint, and optionally its RFC 9162 consistency proof from an older size."""
        cps = checkpointer()
        latest = cps.latest
        if request.fresh or latest is None:
            latest = await cps.maybe_issue(force=True)
        assert latest is not None
        path: list[bytes] = []
        if request.from_size is not None:
            if request.from_size > latest.tree_size:
                raise InputError(f"from_size {request.from_size} is beyond the checkpoint ({latest.tree_size})")
            path = await asyncio.to_thread(the_store.consistency_proof, request.from_size, latest.tree_size)
        return AuditCheckpointReply(checkpoint=latest, consistency_path=[h.hex() for h in path])

    @svc.reply(Subjects.AUDIT_QUERY, AuditQuery)
    async def query(request: AuditQuery) -> AuditPage:
        """Answer an auditor's query: filters ANDed, newest first, cursor pagination."""
        return await asyncio.to_thread(run_query, the_store, request)

    return svc
