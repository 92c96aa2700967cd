"""Scale out on a real cluster (issue 13): three nats-server nodes with routes, every stream and
bucket replicated three times, two instances each of data-guard and audit-log, a steady load of
signed uploads; SIGKILL a node, then the stream leader, then the audit-log instance that holds
the writer lease. Published = recorded, no duplicates, every verdict present, `audit verify` ok.

audit-log runs as subprocesses (they are SIGKILLed); data-guard in this process (two apps
sharing one durable consumer; each counts what it processed). Recovery times are printed
(`pytest -s`), never asserted: timing belongs in `benchmarks/`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from nats.aio.client import Client as Nats
from nats.js import JetStreamContext
from sqlalchemy import func, select

from mlwarden.bootstrap import actor_key, bootstrap
from mlwarden.cli import main
from mlwarden.services import factory
from services.audit_log.app import LEASE_KEY
from services.audit_log.store import AuditStore
from shared.bus import connect, publish_event
from shared.cluster import EmbeddedCluster
from shared.envelope import new_event
from shared.events import DatasetUploaded, ObjectRef
from shared.service import ServiceApp
from shared.settings import Settings
from shared.signing import SigningKey
from shared.storage import put_once
from shared.topology import DATASETS_BUCKET, EVENTS, STATE_BUCKET, STREAMS, Subjects
from tests._poll import until, until_sync

#: Short lease timings so that the failover happens within the test's budget.
LEASE_ENV = {"MLW_AUDIT_LEASE_TTL_S": "4", "MLW_AUDIT_LEASE_RENEW_S": "1"}
#: A fault must be recovered from within this (a hang bound, not a speed claim).
RECOVERY_DEADLINE_S = 120.0
CSV = "a,b,y\n" + "".join(f"{i % 7},{(i * 3) % 11},{i % 2}\n" for i in range(40))


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[EmbeddedCluster]:
    with EmbeddedCluster(tmp_path / "nats", size=3) as running:
        yield running


@dataclass
class Load:
    """A steady stream of signed uploads; each event is retried with its own id until acked."""

    js: JetStreamContext
    key: SigningKey
    #: upload event id -> (dataset name, monotonic time it was acked)
    published: dict[str, tuple[str, float]] = field(default_factory=dict)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, every_s: float = 0.25) -> None:
        i = 0
        while not self.stopping.is_set():
            await self.upload(f"ds-{i}")
            i += 1
            await asyncio.sleep(every_s)

    async def upload(self, dataset: str) -> None:
        data = CSV.encode()
        digest = hashlib.sha256(data).hexdigest()
        key = f"{dataset}/v1"
        await _retry(lambda: self._put(key, data, digest))
        event = new_event(
            Subjects.DATASET_UPLOADED,
            DatasetUploaded(
                dataset=dataset,
                version="v1",
                location=ObjectRef(kind="object", bucket=DATASETS_BUCKET, key=key),
                sha256=digest,
                format="csv",
                label_column="y",
                uploader=self.key.key_id,
            ),
            source="tests/cluster-load",
            subject=f"dataset:{dataset}:v1",
        ).signed(self.key)
        # The same id on every attempt: JetStream's duplicate window keeps one copy of a
        # publish whose ack was lost in a leader change.
        await _retry(lambda: publish_event(self.js, Subjects.DATASET_UPLOADED, event))
        self.published[event.id] = (dataset, time.monotonic())

    async def _put(self, key: str, data: bytes, digest: str) -> None:
        store = await self.js.object_store(DATASETS_BUCKET)
        await put_once(store, DATASETS_BUCKET, key, data, content_sha256=digest)


async def _retry(attempt: Callable[[], Awaitable[None]], deadline_s: float = RECOVERY_DEADLINE_S) -> None:
    end = time.monotonic() + deadline_s
    while True:
        try:
            await attempt()
            return
        except Exception:
            if time.monotonic() > end:
                raise
            await asyncio.sleep(0.2)


class Trail:
    """Reads the shared audit database (what both audit-log instances write)."""

    def __init__(self, store: AuditStore) -> None:
        self.store = store

    def uploads_and_verdicts(self) -> tuple[list[str], list[str]]:
        """Event ids of recorded uploads, and the `dataset:<name>:v1` subjects of recorded verdicts."""
        c = self.store.table.c
        with self.store.engine.connect() as conn:
            uploads = [r.event_id for r in conn.execute(select(c.event_id).where(c.type == Subjects.DATASET_UPLOADED))]
            verdicts = [r.subject for r in conn.execute(select(c.subject).where(c.type == Subjects.VERDICT_DATASET))]
        return uploads, verdicts

    def duplicate_ids(self) -> int:
        c = self.store.table.c
        with self.store.engine.connect() as conn:
            rows = conn.execute(select(func.count()).select_from(self.store.table)).scalar_one()
            distinct = conn.execute(select(func.count(func.distinct(c.event_id)))).scalar_one()
        return int(rows) - int(distinct)


async def _recovered_after(load: Load, trail: Trail, since: float) -> float:
    """Seconds from `since` until an upload published after it has its verdict in the trail."""

    def check() -> float | None:
        after = {f"dataset:{name}:v1" for name, at in list(load.published.values()) if at > since}
        _, verdicts = trail.uploads_and_verdicts()
        return time.monotonic() - since if after & set(verdicts) else None

    return await until(
        lambda: asyncio.to_thread(check), what="a verdict recorded after the fault", timeout=RECOVERY_DEADLINE_S
    )


def _spawn_audit_log(settings: Settings, name: str) -> subprocess.Popen[bytes]:
    ready = settings.data_dir / "run" / f"{name}.ready"
    ready.unlink(missing_ok=True)
    env = {
        **os.environ,
        **LEASE_ENV,
        "MLW_DATA_DIR": str(settings.data_dir),
        "MLW_NATS_URL": settings.nats_url,
        "MLW_JS_REPLICAS": "3",
    }
    log = (settings.data_dir / f"{name}.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlwarden", "run", "audit-log", "--ready-file", str(ready)],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log.close()
    until_sync(lambda: ready.exists() or proc.poll() is not None, what=f"{name} ready", timeout=120)
    assert proc.poll() is None, f"{name} exited; see {settings.data_dir / (name + '.log')}"
    return proc


async def _lease_pid(js: JetStreamContext) -> int | None:
    try:
        entry = await (await js.key_value(STATE_BUCKET)).get(LEASE_KEY)
    except Exception:  # noqa: BLE001 - no leader between two holders, or during an election
        return None
    pid = json.loads(entry.value or b"{}").get("pid")
    return pid if isinstance(pid, int) else None


@pytest.fixture
async def nc(cluster: EmbeddedCluster) -> AsyncIterator[Nats]:
    conn = await connect(Settings(nats_url=cluster.urls))
    yield conn
    await conn.close()


async def test_cluster_survives_a_node_kill_a_leader_kill_and_an_audit_writer_kill(
    tmp_path: Path, cluster: EmbeddedCluster, nc: Nats
) -> None:
    settings = Settings(data_dir=tmp_path / "data", nats_url=cluster.urls, js_replicas=3)
    js = nc.jetstream()
    await bootstrap(js, settings)
    for spec in STREAMS:
        assert (await js.stream_info(spec.name)).config.num_replicas == 3
    assert (await js.stream_info(f"KV_{STATE_BUCKET}")).config.num_replicas == 3

    trail = Trail(AuditStore(settings.audit_url))
    load = Load(js, actor_key(settings, "pipeline"))
    audit_logs: dict[str, subprocess.Popen[bytes]] = {}
    guards: list[ServiceApp] = []
    load_task: asyncio.Task[None] | None = None
    try:
        for name in ("audit-a", "audit-b"):
            audit_logs[name] = await asyncio.to_thread(_spawn_audit_log, settings, name)
        for _ in range(2):
            guard = factory("data-guard")(settings)
            await guard.start()
            guards.append(guard)
        load_task = asyncio.create_task(load.run())
        figures: dict[str, float] = {}

        started = time.monotonic() - 1.0
        await _recovered_after(load, trail, started)

        # (1) SIGKILL a node that does not lead the events stream, then bring it back.
        leader = (await js.stream_info(EVENTS.name)).cluster
        assert leader is not None and leader.leader is not None
        follower = next(n.server_name for n in cluster.nodes if n.server_name != leader.leader)
        killed = time.monotonic()
        cluster.kill(follower)
        figures["node kill"] = await _recovered_after(load, trail, killed)
        await asyncio.to_thread(cluster.restart, follower)

        # (2) SIGKILL the events stream's current leader (the cluster keeps quorum with two).
        info = (await js.stream_info(EVENTS.name)).cluster
        assert info is not None and info.leader is not None
        killed = time.monotonic()
        cluster.kill(info.leader)
        figures["stream leader kill"] = await _recovered_after(load, trail, killed)
        new_leader = await until(
            lambda: _events_leader(js), what="a new events stream leader", timeout=RECOVERY_DEADLINE_S
        )
        assert new_leader != info.leader

        # (3) SIGKILL the audit-log instance holding the writer lease: the standby takes over.
        holder_pid = await until(lambda: _lease_pid(js), what="an audit-log lease holder")
        holder = next(name for name, p in audit_logs.items() if p.pid == holder_pid)
        audit_logs[holder].send_signal(signal.SIGKILL)
        killed = time.monotonic()
        audit_logs[holder].wait()
        standby_pid = await until(
            lambda: _other_pid(js, holder_pid), what="the standby holding the lease", timeout=RECOVERY_DEADLINE_S
        )
        figures["lease takeover"] = time.monotonic() - killed
        assert standby_pid in {p.pid for p in audit_logs.values()}
        figures["audit-log leader kill"] = await _recovered_after(load, trail, killed)

        load.stopping.set()
        await load_task
        load_task = None

        # Everything published is recorded once, with its verdict (redeliveries included).
        def complete() -> bool:
            uploads, verdicts = trail.uploads_and_verdicts()
            wanted = {f"dataset:{name}:v1" for name, _ in load.published.values()}
            return set(uploads) == set(load.published) and wanted <= set(verdicts)

        await until(lambda: asyncio.to_thread(complete), what="every upload and verdict recorded", timeout=180)
        uploads, verdicts = trail.uploads_and_verdicts()
        assert sorted(uploads) == sorted(load.published), "published = recorded"
        assert len(verdicts) == len(set(verdicts)) == len(load.published), "one verdict per upload"
        assert trail.duplicate_ids() == 0
        # Both data-guard instances took a share of the one durable consumer.
        shares = [g.runtime.processed for g in guards]
        assert all(share > 0 for share in shares), shares
        # Two writers over time, each claim newer than the one before: no interleaving.
        claims = trail.store.writer_claims()
        assert len(claims) >= 2 and [c.token for c in claims] == sorted(c.token for c in claims)

        code = await asyncio.to_thread(
            main, ["audit", "verify", "--data-dir", str(settings.data_dir), "--nats", settings.nats_url]
        )
        assert code == 0
        print(
            f"\ncluster: published {len(load.published)}, recorded {len(uploads)}, verdicts {len(verdicts)},"
            f" duplicates 0, data-guard shares {shares}, writer claims {[c.token for c in claims]}"
        )
        for fault, seconds in figures.items():
            print(f"  recovery after {fault}: {seconds:.1f} s")
    finally:
        if load_task is not None:
            load.stopping.set()
            load_task.cancel()
        for guard in guards:
            await guard.stop()
        for proc in audit_logs.values():
            if proc.poll() is None:
                proc.terminate()
                proc.wait(20)


async def _events_leader(js: JetStreamContext) -> str | None:
    try:
        info = (await js.stream_info(EVENTS.name)).cluster
    except Exception:  # noqa: BLE001 - no leader yet
        return None
    return info.leader if info is not None else None


async def _other_pid(js: JetStreamContext, pid: int) -> int | None:
    found = await _lease_pid(js)
    return found if found is not None and found != pid else None
