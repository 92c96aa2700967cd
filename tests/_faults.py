"""Faults a test owns (issue 13): a database made unwritable or unreachable, a full disk, and the
run that measures what the audit trail made of it. Used by tests/integration/test_it_outages.py
and by benchmarks/faults.py, which prints the fault table.

Every fault here is real and local to the test: `chattr +i` on the SQLite files (root ignores
file modes, not the immutable flag), a TCP proxy in front of PostgreSQL that the test stops and
restarts (never the machine's server), a tmpfs of a few MiB filled to the last byte.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from sqlalchemy import bindparam, text

from mlwarden.bootstrap import bootstrap
from mlwarden.services import factory
from services.audit_log.store import AuditStore
from services.audit_log.verify import verify_chain
from shared.aio import TASK_STOP_S
from shared.bus import connect, publish_event
from shared.client import Client
from shared.envelope import Envelope, new_event
from shared.events import Alert, Severity
from shared.settings import Settings
from shared.topology import Subjects
from tests._poll import until


class Fault(Protocol):
    """Something that breaks the audit database and puts it back."""

    name: str

    async def apply(self) -> None:
        """Break it."""

    async def lift(self) -> None:
        """Put it back."""


class Immutable:
    """The SQLite file and its -wal/-shm made immutable (`chattr +i`): every write fails with
    "attempt to write a readonly database", for root too."""

    name = "SQLite unwritable (chattr +i)"

    def __init__(self, db: Path) -> None:
        self.paths = [db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")]

    async def apply(self) -> None:
        """chattr +i on each file that exists."""
        _chattr("+i", [p for p in self.paths if p.exists()])

    async def lift(self) -> None:
        """chattr -i."""
        _chattr("-i", [p for p in self.paths if p.exists()])


def _chattr(flag: str, paths: list[Path]) -> None:
    if paths:
        subprocess.run(["chattr", flag, *map(str, paths)], check=True, capture_output=True)


def chattr_works(where: Path) -> str | None:
    """None when `chattr +i` makes a file unwritable here, else why not."""
    probe = where / "chattr-probe"
    probe.write_bytes(b"x")
    try:
        _chattr("+i", [probe])
    except (OSError, subprocess.CalledProcessError) as exc:
        return f"chattr +i is not available here: {exc!r}"
    try:
        try:
            probe.write_bytes(b"y")
        except PermissionError:
            return None
        return "chattr +i does not stop writes on this file system"
    finally:
        _chattr("-i", [probe])
        probe.unlink()


class TcpProxy:
    """A TCP proxy on a free loopback port to `target`; `stop` refuses new connections and cuts
    the open ones (the database is unreachable), `start` serves again on the same port."""

    name = "PostgreSQL unreachable (proxy stopped)"

    def __init__(self, target_host: str, target_port: int) -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self) -> int:
        """Listen (on the same port as before, if any); return the port."""
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def stop(self) -> None:
        """Stop listening and cut every open connection."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()
        # Let the cut connections' handlers end: they are the stream server's tasks, and one still
        # pending when the loop closes is cancelled, which Python 3.11's server logs as an error.
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=TASK_STOP_S)

    apply = stop

    async def lift(self) -> None:
        """Serve again."""
        await self.start()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        handler = asyncio.current_task()
        assert handler is not None
        self._handlers.add(handler)
        try:
            await self._proxy(client_r, client_w)
        finally:
            self._handlers.discard(handler)

    async def _proxy(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            server_r, server_w = await asyncio.open_connection(*self.target)
        except OSError:
            client_w.transport.abort()
            return
        if self._server is None:  # stopped while this connection was being made
            client_w.transport.abort()
            server_w.transport.abort()
            return
        self._writers |= {client_w, server_w}

        async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError, asyncio.CancelledError):
                while data := await reader.read(65536):
                    writer.write(data)
                    await writer.drain()
            writer.transport.abort()

        try:
            await asyncio.gather(pipe(client_r, server_w), pipe(server_r, client_w))
        finally:
            self._writers -= {client_w, server_w}


class DiskFull:
    """The file system holding the SQLite file filled to the last byte, then emptied."""

    name = "SQLite disk full (tmpfs)"

    def __init__(self, mount: Path) -> None:
        self.filler = mount / "filler"

    async def apply(self) -> None:
        """Write zeros until ENOSPC."""
        with contextlib.suppress(OSError), self.filler.open("wb") as out:
            chunk = b"\0" * 65536
            while True:
                out.write(chunk)
                out.flush()
        with contextlib.suppress(OSError), self.filler.open("ab") as out:
            while True:  # the last partial chunk
                out.write(b"\0" * 512)
                out.flush()

    async def lift(self) -> None:
        """Remove the filler."""
        self.filler.unlink(missing_ok=True)


def mount_tmpfs(where: Path, size: str = "4m") -> str | None:
    """Mount a tmpfs of `size` at `where`; None on success, else why not."""
    where.mkdir(parents=True, exist_ok=True)
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], capture_output=True)
    if done.returncode != 0:
        return f"cannot mount a tmpfs here ({done.stderr.decode(errors='replace').strip() or done.returncode})"
    return None


def unmount(where: Path) -> None:
    """Unmount (lazily, so a file still open elsewhere does not keep it busy)."""
    subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)


@dataclass(frozen=True)
class Figures:
    """One row of the fault table."""

    fault: str
    published: int
    recorded: int
    duplicates: int
    verify: bool
    recovery_s: float
    #: Recorded while the fault lasted (0 for a database fault: nothing can be written).
    recorded_during: int
    outage_alerts: int
    recovery_alerts: int
    dead_letters: int

    @property
    def lost(self) -> int:
        """Published but not recorded."""
        return self.published - self.recorded


def counts(store: AuditStore, ids: list[str]) -> tuple[int, int]:
    """(rows, distinct event ids) of `ids` in the trail; (-1, -1) when it cannot be read now."""
    query = text("SELECT count(*), count(DISTINCT event_id) FROM audit_entries WHERE event_id IN :ids").bindparams(
        bindparam("ids", expanding=True)
    )
    try:
        with store.engine.connect() as conn:
            rows, distinct = conn.execute(query, {"ids": ids}).one()
    except Exception:  # noqa: BLE001 - the fault may stop reads too
        return -1, -1
    return int(rows), int(distinct)


async def audit_outage(
    settings: Settings, fault: Fault, *, reader_url: str, events: int = 200, outage_s: float = 15.0
) -> Figures:
    """Run audit-log (its writer process included) in this event loop; break its database with
    `fault`, publish `events` events, keep it broken for `outage_s`, lift it, and measure."""
    nc = await connect(settings)
    await bootstrap(nc.jetstream(), settings)
    await nc.drain()
    svc = factory("audit-log")(settings)
    await svc.start()
    reader = AuditStore(reader_url)
    source = "tests/faults"
    try:
        async with (
            Client.connect(settings, source=source) as client,
            client.watch((Subjects.alert("audit-log"), "mlw.deadletter.>")) as watcher,
        ):

            def alerts(kind: str) -> list[Envelope[Any]]:
                return [e for e in watcher.events if e.type.startswith("mlw.alert.") and e.data.kind == kind]

            async def publish(i: int) -> str:
                alert = Alert(kind="test", severity=Severity.INFO, message=f"event {i}")
                event = new_event("mlw.alert.tests", alert, source=source)
                await publish_event(client.js, "mlw.alert.tests", event)
                return event.id

            warm = [await publish(-1)]  # the database exists (with its WAL) before the fault
            await until(lambda: counts(reader, warm)[0] == 1, what="the first event recorded", timeout=60)
            await fault.apply()
            ids = [await publish(i) for i in range(events)]
            await until(lambda: alerts("infrastructure.unavailable"), what="the outage alert", timeout=60)
            # The fault's duration, not a wait for something to happen: the database stays
            # broken this long, however fast the rest is.
            await asyncio.sleep(outage_s)
            recorded_during = max(counts(reader, ids)[0], 0)
            lifted = time.monotonic()
            await fault.lift()
            await until(lambda: counts(reader, ids)[1] == events, what="every event recorded", timeout=120)
            recovery_s = time.monotonic() - lifted
            await until(lambda: alerts("infrastructure.recovered"), what="the recovery alert", timeout=60)
            rows, distinct = counts(reader, ids)
            report = await asyncio.to_thread(verify_chain, reader)
            letters = [e for e in watcher.events if e.type.startswith("mlw.deadletter.")]
            return Figures(
                fault=fault.name,
                published=events,
                recorded=distinct,
                duplicates=rows - distinct,
                verify=report.ok,
                recovery_s=recovery_s,
                recorded_during=recorded_during,
                outage_alerts=len(alerts("infrastructure.unavailable")),
                recovery_alerts=len(alerts("infrastructure.recovered")),
                dead_letters=len(letters),
            )
    finally:
        with contextlib.suppress(Exception):
            await fault.lift()
        await svc.stop()
        # audit-log's own handle (queries, checkpoints): its pooled connections were cut.
        svc.get("store", AuditStore).close()
        reader.close()
