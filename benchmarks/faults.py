"""Fault table (issue 13): a program, not a test. Each scenario breaks one thing for real, then
measures what the trail made of it; one row each.

    uv run python benchmarks/faults.py                # every scenario (about 3 minutes)
    uv run python benchmarks/faults.py --only sigkill

Database scenarios run audit-log (its writer process included) in this process against a
private nats-server, with audit-log's ack wait shortened to `--ack-wait` so that "three times
the redelivery window" (ack wait x the old 5 deliveries) fits in seconds; `recovery` is from the
fault lifted to the last event recorded. The SIGKILL scenario runs data-guard as a child process
with the production topology (`shared.topology.DEFAULT_ACK_WAIT_S`): `recovery` is from the kill to the last verdict.
Needs root for `chattr` and `mount` (skipped rows say why), and PostgreSQL at MLW_TEST_PG_URL.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from nats.js import JetStreamContext
from rich.console import Console
from rich.table import Table
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sqlalchemy import create_engine, make_url, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import shared.bus
from mlwarden.bootstrap import actor_key, bootstrap
from services.audit_log.store import AuditStore
from services.audit_log.verify import verify_chain
from shared.bus import connect, publish_event
from shared.client import Client
from shared.embedded import EmbeddedNats, free_port
from shared.envelope import new_event
from shared.events import Alert, PredictionRecord, Severity
from shared.settings import Settings
from shared.topology import CONSUMERS, DEFAULT_ACK_WAIT_S, Subjects
from tests._faults import (
    DiskFull,
    Figures,
    Immutable,
    TcpProxy,
    audit_outage,
    chattr_works,
    counts,
    mount_tmpfs,
    unmount,
)
from tests._poll import until

# Real digests: registry-gate and artifact-signer refuse placeholder pins.
LOCK = (
    f"scikit-learn==1.9.1 --hash=sha256:{hashlib.sha256(b'a').hexdigest()}\n"
    f"numpy==2.4.6 --hash=sha256:{hashlib.sha256(b'b').hexdigest()}\n"
)
PG_URL = os.environ.get("MLW_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
Row = tuple[str, str, str, str, str, str, str]


def _row(f: Figures) -> Row:
    verify = "ok" if f.verify else "BROKEN"
    return (f.fault, str(f.published), str(f.recorded), str(f.duplicates), str(f.lost), verify, f"{f.recovery_s:.1f} s")


async def _sqlite_unwritable(root: Path, nats: EmbeddedNats, outage_s: float) -> Row:
    why = chattr_works(root)
    if why is not None:
        return ("SQLite unwritable", "-", "-", "-", "-", "-", f"skipped: {why}")
    settings = Settings(data_dir=root / "unwritable", nats_url=nats.url)
    db = (settings.data_dir / "audit.db").resolve()
    fig = await audit_outage(settings, Immutable(db), reader_url=settings.audit_url, outage_s=outage_s)
    return _row(fig)


async def _sqlite_disk_full(root: Path, nats: EmbeddedNats, outage_s: float) -> Row:
    mount = root / "small-disk"
    why = mount_tmpfs(mount)
    if why is not None:
        return ("SQLite disk full", "-", "-", "-", "-", "-", f"skipped: {why}")
    try:
        url = f"sqlite:///{mount / 'audit.db'}"
        settings = Settings(data_dir=root / "diskfull", nats_url=nats.url, audit_db_url=url)
        return _row(await audit_outage(settings, DiskFull(mount), reader_url=url, outage_s=outage_s))
    finally:
        unmount(mount)


async def _postgres_unreachable(root: Path, nats: EmbeddedNats, outage_s: float) -> Row:
    schema = f"mlw_faults_{uuid.uuid4().hex[:12]}"
    engine = create_engine(PG_URL, connect_args={"connect_timeout": 3})
    try:
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:  # noqa: BLE001 - reported in the row
        engine.dispose()
        return ("PostgreSQL unreachable", "-", "-", "-", "-", "-", f"skipped: {exc!r}"[:80])
    target = make_url(PG_URL)
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432)
    port = await proxy.start()
    options = f"?options=-csearch_path%3D{schema}"
    proxied = target.set(host="127.0.0.1", port=port).render_as_string(hide_password=False) + options
    settings = Settings(data_dir=root / "postgres", nats_url=nats.url, audit_db_url=proxied)
    try:
        return _row(await audit_outage(settings, proxy, reader_url=PG_URL + options, outage_s=outage_s))
    finally:
        await proxy.stop()
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


def _csv(path: Path, seed: int, rows: int = 4000) -> Path:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, 8))
    y = (x[:, 0] + x[:, 1] > 0).astype(int)
    lines = [",".join([f"f{i}" for i in range(8)] + ["label"])]
    lines += [",".join(f"{v:.6g}" for v in r) + f",{label}" for r, label in zip(x, y, strict=True)]
    path.write_text("\n".join(lines) + "\n")
    return path


def _spawn(settings: Settings, service: str = "data-guard", log: Path | None = None) -> subprocess.Popen[bytes]:
    """`mlwarden run SERVICE` as a child process (its stderr to `log` when given)."""
    env = {**os.environ, "MLW_DATA_DIR": str(settings.data_dir), "MLW_NATS_URL": settings.nats_url}
    err = log.open("ab") if log is not None else subprocess.DEVNULL
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "mlwarden", "run", service], env=env, stdout=subprocess.DEVNULL, stderr=err
        )
    finally:
        if log is not None:
            err.close()  # type: ignore[union-attr]


def _model_dir(root: Path, seed: int) -> Path:
    """A small genuine scikit-learn model folder with a hashed lock file."""
    root.mkdir(parents=True, exist_ok=True)
    x, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=200, random_state=seed).fit(x, y)
    (root / "model.pkl").write_bytes(pickle.dumps(model))
    (root / "requirements.txt").write_text(LOCK)
    return root


@dataclass
class Load:
    """What one service is fed in a crash scenario, and how to tell an input was handled."""

    service: str
    inputs: int
    #: Publish input i; returns its event id.
    publish: Callable[[Client, Settings, int], Awaitable[str]]
    #: Verdict subject whose events answer inputs (None: the durable's ack floor tells).
    answers: str | None
    #: The field of a verdict naming the input it answers.
    reply_field: str = "in_reply_to"
    #: Which of the service's durables (`CONSUMERS[service]`) reads the inputs.
    durable: int = 0


async def _upload(client: Client, settings: Settings, i: int) -> str:
    path = _csv(settings.files_dir / f"d{i}.csv", i + 1)
    event = await client.upload_dataset(path, dataset="crash", version=str(i), label="label", uploader="pipeline")
    return event.id


async def _build(client: Client, settings: Settings, i: int) -> str:
    folder = _model_dir(settings.files_dir / "artifacts" / f"m{i}", i)
    event = await client.model_built(
        folder, model="crash", version=str(i), builder="ci-bot", lockfile=folder / "requirements.txt"
    )
    return event.id


async def _request(client: Client, settings: Settings, i: int) -> str:
    # No artifact verdict exists for these: registry-gate answers each with its reasons.
    digest = hashlib.sha256(f"model {i}".encode()).hexdigest()
    event = await client.request_promotion(
        actor_key(settings, "alice"), model=f"crash{i}", version="1", stage="production", root_digest=digest
    )
    return event.id


async def _predictions(client: Client, settings: Settings, i: int) -> str:
    rng = np.random.default_rng(i)
    records = [
        PredictionRecord(
            client=f"client-{i % 7}", features={f"f{j}": float(v) for j, v in enumerate(row)}, prediction=0
        )
        for row in rng.normal(size=(100, 4))
    ]
    return (await client.log_predictions("iris", records)).id


async def _alert(client: Client, settings: Settings, i: int) -> str:
    event = new_event("mlw.alert.tests", Alert(kind="test", severity=Severity.INFO, message=f"event {i}"), source="x")
    await publish_event(client.js, "mlw.alert.tests", event)
    return event.id


LOADS: dict[str, Load] = {
    "data-guard": Load("data-guard", 6, _upload, Subjects.VERDICT_DATASET),
    "artifact-signer": Load("artifact-signer", 4, _build, Subjects.VERDICT_ARTIFACT),
    "registry-gate": Load("registry-gate", 30, _request, Subjects.VERDICT_PROMOTION, reply_field="request_id"),
    "serving-monitor": Load("serving-monitor", 60, _predictions, None),
    "audit-log": Load("audit-log", 400, _alert, None, durable=2),
}


async def _acked_through(js: JetStreamContext, load: Load) -> int:
    """The stream sequence up to which the load's durable has acked everything."""
    spec = CONSUMERS[load.service][load.durable]
    info = await js.consumer_info(spec.stream, spec.durable)
    return int(info.ack_floor.stream_seq or 0) if not (info.num_pending or info.num_ack_pending) else 0


async def _crash(root: Path, nats: EmbeddedNats, load: Load, how: str, hold_s: float) -> Row:
    """Run audit-log and `load.service` as processes, feed it, SIGKILL (then restart) or SIGSTOP
    (for `hold_s`, then SIGCONT) it while it holds fetched, unacked input, and measure."""
    settings = Settings(data_dir=root / f"{how}-{load.service}", nats_url=nats.url)
    settings.files_dir.mkdir(parents=True, exist_ok=True)
    nc = await connect(settings)
    js = nc.jetstream()
    await bootstrap(js, settings)
    logs = settings.data_dir / "logs"
    logs.mkdir(exist_ok=True)
    procs = {name: _spawn(settings, name, logs / f"{name}.log") for name in {"audit-log", load.service}}
    reader = AuditStore(settings.audit_url)
    spec = CONSUMERS[load.service][load.durable]
    try:
        async with (
            Client.connect(settings, source="benchmarks/faults") as client,
            client.watch((load.answers,) if load.answers else ("mlw.alert.none",)) as watcher,
        ):

            def answered(ids: list[str]) -> list[str]:
                return [
                    getattr(e.data, load.reply_field)
                    for e in watcher.events
                    if getattr(e.data, load.reply_field, None) in ids
                ]

            async def handled(ids: list[str], last_seq: int) -> int:
                if load.service == "audit-log":
                    return max(counts(reader, ids)[1], 0)
                if load.answers is None:
                    return len(ids) if await _acked_through(js, load) >= last_seq else 0
                return len(set(answered(ids)))

            warm = [await load.publish(client, settings, 10_000)]
            warm_seq = (await js.stream_info(spec.stream)).state.last_seq

            async def up() -> int:
                return await handled(warm, warm_seq)

            await until(up, what=f"{load.service} up", timeout=180)
            ids: list[str] = []

            async def feed() -> None:
                for i in range(load.inputs):
                    ids.append(await load.publish(client, settings, i))

            feeder = asyncio.create_task(feed())

            # Break it while it holds fetched, unacked input (polled, with a deadline), with the
            # load still arriving.
            async def in_flight() -> bool:
                return bool((await js.consumer_info(spec.stream, spec.durable)).num_ack_pending)

            await until(in_flight, what="input in flight", timeout=60, interval=0.002)
            victim = procs[load.service]
            if how == "SIGKILL":
                victim.send_signal(signal.SIGKILL)
                victim.wait()
                procs[load.service] = _spawn(settings, load.service, logs / f"{load.service}.log")
            else:
                victim.send_signal(signal.SIGSTOP)
                # The fault's duration, not a wait for something: stopped past the ack wait.
                await asyncio.sleep(hold_s)
                victim.send_signal(signal.SIGCONT)
            broken = time.monotonic()
            await feeder
            last_seq = (await js.stream_info(spec.stream)).state.last_seq

            async def done() -> bool:
                return await handled(ids, last_seq) >= len(ids)

            await until(done, what="every input handled", timeout=300)
            recovery = time.monotonic() - broken
            await until(lambda: counts(reader, ids)[1] == len(ids), what="every input in the trail", timeout=120)
            rows, distinct = counts(reader, ids)
            replies = answered(ids)
            dupes = (rows - distinct) + (len(replies) - len(set(replies)))
            recorded = await handled(ids, last_seq)
            report = await asyncio.to_thread(verify_chain, reader)
            held = f", stopped {hold_s:.0f} s" if how == "SIGSTOP" else ""
            return (
                f"{how} {load.service} (ack wait {spec.ack_wait_s:.0f} s{held})",
                str(len(ids)),
                str(min(recorded, distinct)),
                str(dupes),
                str(len(ids) - min(recorded, distinct)),
                "ok" if report.ok else "BROKEN",
                f"{recovery:.1f} s",
            )
    except BaseException:
        for log in sorted(logs.glob("*.log")):
            print(f"--- {log.name} (last lines)\n" + "\n".join(log.read_text().splitlines()[-15:]), file=sys.stderr)
        raise
    finally:
        for proc in procs.values():
            proc.send_signal(signal.SIGCONT)
            proc.terminate()
            proc.wait(15)
        reader.close()
        await nc.drain()


async def _nats_late(root: Path, uploads: int) -> Row:
    """data-guard (and audit-log) started while nothing listens at their NATS URL; the server
    comes up after they have said they are waiting; then the uploads."""
    settings = Settings(data_dir=root / "late", nats_url=f"nats://127.0.0.1:{free_port()}")
    settings.files_dir.mkdir(parents=True, exist_ok=True)
    logs = settings.data_dir / "logs"
    logs.mkdir(parents=True)
    procs = {name: _spawn(settings, name, logs / f"{name}.log") for name in ("audit-log", "data-guard")}
    nats = EmbeddedNats(root / "late-nats", port=int(settings.nats_url.rsplit(":", 1)[1]))
    try:
        await until(
            lambda: all("waiting for NATS" in (logs / f"{n}.log").read_text() for n in procs),
            what="both services waiting for NATS",
            timeout=60,
        )
        nats.start()
        started = time.monotonic()
        nc = await connect(settings)
        try:
            await bootstrap(nc.jetstream(), settings)
            reader = AuditStore(settings.audit_url)
            try:
                async with (
                    Client.connect(settings, source="benchmarks/faults") as client,
                    client.watch((Subjects.VERDICT_DATASET,)) as watcher,
                ):
                    ids = [await _upload(client, settings, i) for i in range(uploads)]

                    def answered() -> set[str]:
                        return {e.data.in_reply_to for e in watcher.events if e.data.in_reply_to in ids}

                    await until(lambda: len(answered()) == uploads, what="every verdict", timeout=300)
                    recovery = time.monotonic() - started
                    await until(lambda: counts(reader, ids)[1] == uploads, what="uploads in the trail", timeout=120)
                    rows, distinct = counts(reader, ids)
                    report = await asyncio.to_thread(verify_chain, reader)
                    return (
                        "NATS down at service start (data-guard, audit-log)",
                        str(uploads),
                        str(min(len(answered()), distinct)),
                        str(rows - distinct),
                        str(uploads - min(len(answered()), distinct)),
                        "ok" if report.ok else "BROKEN",
                        f"{recovery:.1f} s",
                    )
            finally:
                reader.close()
        finally:
            await nc.drain()
    finally:
        for proc in procs.values():
            proc.terminate()
            proc.wait(15)
        nats.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ack-wait", type=float, default=1.0, help="audit-log's ack wait in the database scenarios")
    parser.add_argument("--uploads", type=int, default=6)
    parser.add_argument(
        "--hold", type=float, default=DEFAULT_ACK_WAIT_S + 5, help="how long SIGSTOP lasts (past the ack wait)"
    )
    crashes = [f"sigkill-{name}" for name in LOADS] + ["sigstop-audit-log", "sigstop-data-guard", "nats-late"]
    parser.add_argument("--only", choices=["unwritable", "diskfull", "postgres", *crashes], default=None)
    args = parser.parse_args()
    outage_s = 3 * 5 * args.ack_wait
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="mlw-faults-") as tmp:
        root = Path(tmp)
        nats = EmbeddedNats(root / "nats")
        nats.start()
        try:
            for name, load in LOADS.items():
                if args.only in (None, f"sigkill-{name}"):
                    rows.append(await _crash(root, nats, load, "SIGKILL", 0.0))
            for name in ("audit-log", "data-guard"):
                if args.only in (None, f"sigstop-{name}"):
                    rows.append(await _crash(root, nats, LOADS[name], "SIGSTOP", args.hold))
            if args.only in (None, "nats-late"):
                rows.append(await _nats_late(root, args.uploads))
            # Database scenarios: short ack wait and nak delays (the behaviour is the same).
            CONSUMERS["audit-log"] = tuple(
                dataclasses.replace(s, ack_wait_s=args.ack_wait) for s in CONSUMERS["audit-log"]
            )
            shared.bus.RETRY_BASE_DELAY_S, shared.bus.RETRY_MAX_DELAY_S, shared.bus.RECOVERY_QUIET_S = 0.1, 1.0, 1.0
            scenarios = {
                "unwritable": _sqlite_unwritable,
                "diskfull": _sqlite_disk_full,
                "postgres": _postgres_unreachable,
            }
            for name, scenario in scenarios.items():
                if args.only in (None, name):
                    (root / name).mkdir()
                    rows.append(await scenario(root / name, nats, outage_s))
        finally:
            nats.stop()
    table = Table(
        "fault",
        "published",
        "recorded",
        "duplicates",
        "lost",
        "verify",
        "recovery time",
        title=f"mlwarden fault table (database faults held {outage_s:.0f} s"
        f" = 3 x the redelivery window of {5 * args.ack_wait:.0f} s)",
    )
    for row in rows:
        table.add_row(*row)
    Console(width=160).print(table)


if __name__ == "__main__":
    asyncio.run(main())
