"""audit-log's batch writer: parse, chain, tree and commit fetched batches, off the event loop.

Issue 3 asks ingestion to keep up with a bare nats-py consumer of the same stream. The event
loop's process is busy enough fetching and acking (nats-py costs about 40 us of CPU a message);
parsing, hashing and the SQL transaction cost as much again. `ProcessWriter` runs them in a
separate process (spawned, one a service) on the machine's other core, fed the raw message
bytes (with the subject each arrived on) a batch at a time; `InlineWriter` runs them in a
thread of the calling process, for in-memory databases and injected stores.

Either way the contract is the same: `write` returns only once the batch is committed (or
raises, and nothing of it is), so the caller acks after it; batches are committed one at a
time in the order they were submitted, which is the order of the hash chain.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import pickle
import signal
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import NamedTuple, Protocol

from services.audit_log.equivocation import Equivocation
from services.audit_log.errors import FencedError
from services.audit_log.store import AuditStore, Fence, IncomingEvent
from shared.errors import FailureClass, InvalidMessage, TransientError, classify_failure
from shared.signing import TrustStore

log = logging.getLogger("mlwarden.audit-log")

#: How long `ProcessWriter.start` waits for the child to open the database.
START_TIMEOUT_S = 60.0


@dataclass(frozen=True, slots=True)
class BatchOutcome:
    """What became of one batch of message bodies."""

    #: Entries appended to the trail.
    inserted: int
    #: Valid events already stored (or repeated within the batch): redeliveries.
    duplicates: int
    #: (position in the batch, reason) of each body that is not a storable envelope.
    refused: list[tuple[int, str]] = field(default_factory=list)
    #: Event ids that arrived again with other content; their evidence is committed.
    equivocations: list[Equivocation] = field(default_factory=list)


class WriterError(TransientError):
    """The writer could not store a batch (database down or locked, writer process gone).

    Nothing of the batch was committed: the ingestor retries it (an infrastructure failure, for
    as long as it lasts) or, for a bug, isolates the message that causes it (issue 13).
    """

    def __init__(self, reason: str, *, kind: str, failure: FailureClass = FailureClass.INFRASTRUCTURE) -> None:
        super().__init__(f"audit writer: {kind}: {reason}")
        self.reason = reason
        #: The class name of the underlying error.
        self.kind = kind
        #: What the failure says about the batch: infrastructure (retry until the database is
        #: back) or a bug (the batch itself makes the code fail).
        self.failure = failure

    @property
    def fenced(self) -> bool:
        """Another audit-log instance holds the writer lease now: this one must stop, not retry."""
        return self.kind == "FencedError"


class Received(NamedTuple):
    """One fetched message: the subject it arrived on and its raw body."""

    subject: str
    body: bytes


def store_batch(
    store: AuditStore,
    messages: list[Received],
    recorded_at: float,
    trust: TrustStore | None = None,
    fence: Fence | None = None,
) -> BatchOutcome:
    """Parse `messages` and append the valid ones in one transaction (the group commit).

    An envelope whose type is not the subject it arrived on is refused like a malformed one
    (issue 8): it becomes a dead letter naming the real subject, never an entry of the type
    it claims. With `trust`, each event's labels come from its verified signature. With
    `fence`, nothing is committed unless it is the store's newest writer claim (`FencedError`).
    """
    items: list[IncomingEvent] = []
    refused: list[tuple[int, str]] = []
    for position, (subject, body) in enumerate(messages):
        try:
            items.append(IncomingEvent.from_bytes(body, recorded_at=recorded_at, arrived_on=subject, trust=trust))
        except InvalidMessage as exc:
            refused.append((position, exc.reason))
    result = store.append_batch(items, fence=fence)
    return BatchOutcome(result.inserted, result.duplicates, refused, list(result.equivocations))


class BatchWriter(Protocol):
    """Stores batches of raw message bodies, one transaction each, in submission order."""

    async def start(self) -> None:
        """Get ready to write (a process writer starts its process and opens the database)."""

    async def write(
        self,
        messages: list[Received],
        recorded_at: float,
        trust: TrustStore | None = None,
        *,
        fence: Fence | None = None,
    ) -> BatchOutcome:
        """Store one batch; returns after the commit. Raises `WriterError` if nothing was stored.

        `trust` verifies each event's signature (labels come only from verified signers);
        `fence` is the writer lease's token, checked in the commit's transaction."""
        ...

    async def stop(self) -> None:
        """Finish the batches submitted and release the writer."""


class InlineWriter:
    """Writes in one worker thread of this process: the database work still holds the GIL."""

    def __init__(self, store: AuditStore) -> None:
        self.store = store
        # One thread: batches are committed one at a time, in submission order.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-writer")

    async def start(self) -> None:
        """Nothing to start: the store is already open."""

    async def write(
        self,
        messages: list[Received],
        recorded_at: float,
        trust: TrustStore | None = None,
        *,
        fence: Fence | None = None,
    ) -> BatchOutcome:
        """Store one batch in the worker thread."""
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._pool, store_batch, self.store, messages, recorded_at, trust, fence)
        except WriterError:
            raise
        except Exception as exc:  # nothing was committed; classified for the ingestor
            failure = classify_failure(exc)
            if failure is FailureClass.INFRASTRUCTURE and not isinstance(exc, FencedError) and not self.store.in_memory:
                # Drop the pooled connections: one opened while the file was read-only (or to a
                # server that went away) would keep failing after the resource is back.
                await loop.run_in_executor(self._pool, self.store.close)
            raise WriterError(str(exc), kind=type(exc).__name__, failure=failure) from exc

    async def stop(self) -> None:
        """Wait for the batches already submitted."""
        pool, self._pool = self._pool, ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-writer")
        await asyncio.to_thread(pool.shutdown, wait=True)


class ProcessWriter:
    """Writes in a child process that opens its own `AuditStore(url, schema=schema)`.

    The service process keeps its own store for queries, proofs and checkpoints: SQLite's WAL
    and PostgreSQL's MVCC let it read while the child writes, and it sees a batch as soon as
    `write` returned. Messages cross the pipe as (subject, raw bytes) pairs, a pickled list per batch.

    If the child dies, the batch in flight raises `WriterError` (unacked, so redelivered; if
    it was committed after all, the redelivery is a duplicate and skipped) and the next
    `write` starts a new child. If this process dies, the child reads end-of-file on its pipe
    after the batch at hand and exits.
    """

    def __init__(self, url: str, *, schema: str | None = None) -> None:
        self._url = url
        self._schema = schema
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        # One thread does each round trip: batches go down the pipe one at a time, in order,
        # and the next one is already waiting when the child answers.
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-writer-pipe")
        self._lock = threading.Lock()
        self._trust_sent: TrustStore | None = None
        self._version_sent = -1

    async def start(self) -> None:
        """Spawn the child and wait until it has opened the database."""
        await asyncio.get_running_loop().run_in_executor(self._pool, self._ensure_started)

    async def write(
        self,
        messages: list[Received],
        recorded_at: float,
        trust: TrustStore | None = None,
        *,
        fence: Fence | None = None,
    ) -> BatchOutcome:
        """Send one batch to the child; returns once the child has committed it."""
        # The trust store crosses the pipe only when it changed (a registration, a revocation).
        snapshot = None
        if trust is not None and (trust is not self._trust_sent or trust.version != self._version_sent):
            snapshot = trust.snapshot()
            self._trust_sent, self._version_sent = trust, trust.version
        # Plain (subject, body) tuples: the cheapest form to pickle.
        payload = pickle.dumps(
            (recorded_at, [tuple(m) for m in messages], snapshot, None if fence is None else tuple(fence)),
            protocol=pickle.HIGHEST_PROTOCOL,
        )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._pool, self._round_trip, payload)

    async def stop(self) -> None:
        """Let the batches submitted finish, then close the pipe and wait for the child."""
        pool, self._pool = self._pool, ThreadPoolExecutor(max_workers=1, thread_name_prefix="audit-writer-pipe")
        await asyncio.to_thread(pool.shutdown, wait=True)
        await asyncio.to_thread(self._close)

    def _ensure_started(self) -> Connection:
        with self._lock:
            if self._conn is not None and self._process is not None and self._process.is_alive():
                return self._conn
            self._close_locked()
            # spawn, not fork: the parent has an event loop, threads and open sockets.
            context = multiprocessing.get_context("spawn")
            parent, child = context.Pipe(duplex=True)
            process = context.Process(
                target=_writer_main, args=(child, self._url, self._schema), name="audit-log-writer", daemon=True
            )
            process.start()
            child.close()
            self._process, self._conn = process, parent
            self._trust_sent = None  # a new child has no trust store yet
            try:
                if not parent.poll(START_TIMEOUT_S):
                    raise WriterError(f"no answer within {START_TIMEOUT_S:.0f} s", kind="StartTimeout")
                self._unwrap(parent.recv_bytes())
            except (EOFError, OSError) as exc:
                self._close_locked()
                raise WriterError(f"writer process exited at start: {exc!r}", kind=type(exc).__name__) from exc
            except WriterError:
                self._close_locked()
                raise
            return parent

    def _round_trip(self, payload: bytes) -> BatchOutcome:
        try:
            conn = self._ensure_started()
            conn.send_bytes(payload)
            answer = conn.recv_bytes()
        except (EOFError, OSError) as exc:
            # The child died (or was killed): this batch is unacked and will come again.
            with self._lock:
                self._close_locked()
            raise WriterError(f"writer process gone: {exc!r}", kind=type(exc).__name__) from exc
        outcome = self._unwrap(answer)
        assert outcome is not None
        return outcome

    @staticmethod
    def _unwrap(answer: bytes) -> BatchOutcome | None:
        outcome: BatchOutcome | None
        ok, outcome, kind, reason, failure = pickle.loads(answer)
        if not ok:
            raise WriterError(reason, kind=kind, failure=FailureClass(failure))
        return outcome

    def _close(self) -> None:
        with self._lock:
            self._close_locked()

    def _close_locked(self) -> None:
        conn, process = self._conn, self._process
        self._conn = self._process = None
        if conn is not None:
            conn.close()  # the child reads end-of-file and exits
        if process is not None:
            process.join(10)
            if process.is_alive():
                process.kill()
                process.join()
            process.close()


def _writer_main(conn: Connection, url: str, schema: str | None) -> None:
    """The child: answer each batch with its outcome, or with the error that stopped it."""
    # Ctrl-C reaches the whole process group: the service stops this process through the pipe,
    # after the batches in flight, rather than have it die between two of them.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        store = AuditStore(url, schema=schema)
        store.head()  # reach the database now, so a bad URL fails the start, not the first batch
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send_bytes(pickle.dumps((False, None, type(exc).__name__, str(exc), classify_failure(exc).value)))
        return
    conn.send_bytes(pickle.dumps((True, None, "", "", "")))
    trust: TrustStore | None = None
    try:
        while True:
            try:
                recorded_at, pairs, snapshot, fenced_by = pickle.loads(conn.recv_bytes())
            except EOFError:
                return  # the service stopped or died
            if snapshot is not None:
                trust = TrustStore.from_snapshot(snapshot)
            answer: tuple[bool, BatchOutcome | None, str, str, str]
            try:
                messages = [Received(subject, body) for subject, body in pairs]
                fence = None if fenced_by is None else Fence(*fenced_by)
                answer = (True, store_batch(store, messages, recorded_at, trust, fence), "", "", "")
            except Exception as exc:  # noqa: BLE001 - nothing was committed; the parent retries
                failure = classify_failure(exc)
                answer = (False, None, type(exc).__name__, str(exc), failure.value)
                if failure is FailureClass.INFRASTRUCTURE and not isinstance(exc, FencedError):
                    # Reopen: a connection made while the file was read-only (or to a server that
                    # went away) keeps failing after the resource is back (issue 13: "attempt to
                    # write a readonly database" until the service was restarted).
                    store.close()
                    store = AuditStore(url, schema=schema)
            try:
                conn.send_bytes(pickle.dumps(answer, protocol=pickle.HIGHEST_PROTOCOL))
            except OSError:
                return
    finally:
        store.close()
