"""Fault table (issue 13): a program, not a test. Each scenario breaks one thing for real, then
measures what the trail made of it; one row each.

    uv run python benchmarks/faults.py                # every scenario (about 3 minutes)
    uv run python benchmarks/faults.py --only sigkill

Database scenarios run audit-log (its writer process included) in this process against a
private nats-server, with audit-log's ack wait shortened to `--ack-wait` so that "three times
the redelivery window" (ack wait x the old 5 deliveries) fits in seconds; `recovery` is from the
fault lifted to the last event recorded. The SIGKILL scenario runs data-guard as a child process
with the production topology (30 s ack wait): `recovery` is from the kill to the last verdict.
Needs root for `chattr` and `mount` (skipped rows say why), and PostgreSQL at MLW_TEST_PG_URL.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import numpy as np
from rich.console import Console
from rich.table import Table
from sqlalchemy import create_engine, make_url, text

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import shared.bus
from mlwarden.bootstrap import bootstrap
from shared.bus import connect
from shared.client import Client
from shared.embedded import EmbeddedNats
from shared.settings import Settings
from shared.topology import CONSUMERS, Subjects
from tests._faults import DiskFull, Figures, Immutable, TcpProxy, audit_outage, chattr_works, mount_tmpfs, unmount
from tests._poll import until

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


def _spawn_data_guard(settings: Settings) -> subprocess.Popen[bytes]:
    env = {**os.environ, "MLW_DATA_DIR": str(settings.data_dir), "MLW_NATS_URL": settings.nats_url}
    return subprocess.Popen(
        [sys.executable, "-m", "mlwarden", "run", "data-guard"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def _sigkill_data_guard(root: Path, nats: EmbeddedNats, uploads: int) -> Row:
    settings = Settings(data_dir=root / "sigkill", nats_url=nats.url)
    nc = await connect(settings)
    js = nc.jetstream()
    await bootstrap(js, settings)
    spec = CONSUMERS["data-guard"][0]
    proc = _spawn_data_guard(settings)
    try:
        async with (
            Client.connect(settings, source="benchmarks/faults") as client,
            client.watch((Subjects.VERDICT_DATASET,)) as watcher,
        ):
            files = settings.files_dir
            files.mkdir(parents=True, exist_ok=True)
            warm = await client.upload_dataset(
                _csv(files / "warm.csv", 0), dataset="warm", version="1", label="label", uploader="pipeline"
            )
            await until(
                lambda: any(e.data.in_reply_to == warm.id for e in watcher.events), what="data-guard up", timeout=120
            )
            ids = []
            for i in range(uploads):
                path = _csv(files / f"d{i}.csv", i + 1)
                event = await client.upload_dataset(
                    path, dataset="kill", version=str(i), label="label", uploader="pipeline"
                )
                ids.append(event.id)

            # Kill it while it holds fetched, unacked uploads (polled, with a deadline).
            deadline = time.monotonic() + 60
            while not (await js.consumer_info(spec.stream, spec.durable)).num_ack_pending:
                if time.monotonic() > deadline:
                    raise TimeoutError("data-guard never fetched the uploads")
                await asyncio.sleep(0.01)
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed = time.monotonic()
            proc = _spawn_data_guard(settings)

            def answered() -> set[str]:
                return {e.data.in_reply_to for e in watcher.events if e.data.in_reply_to in ids}

            await until(lambda: len(answered()) == uploads, what="every verdict after the kill", timeout=180)
            recovery = time.monotonic() - killed
            verdict_ids = [e.id for e in watcher.events if e.data.in_reply_to in ids]
            dupes = len(verdict_ids) - len(set(verdict_ids))
            return (
                f"SIGKILL data-guard (ack wait {spec.ack_wait_s:.0f} s)",
                str(uploads),
                str(len(answered())),
                str(dupes),
                str(uploads - len(answered())),
                "n/a (verdicts)",
                f"{recovery:.1f} s",
            )
    finally:
        proc.terminate()
        proc.wait(15)
        await nc.drain()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ack-wait", type=float, default=1.0, help="audit-log's ack wait in the database scenarios")
    parser.add_argument("--uploads", type=int, default=6)
    parser.add_argument("--only", choices=["unwritable", "diskfull", "postgres", "sigkill"], default=None)
    args = parser.parse_args()
    outage_s = 3 * 5 * args.ack_wait
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="mlw-faults-") as tmp:
        root = Path(tmp)
        nats = EmbeddedNats(root / "nats")
        nats.start()
        try:
            if args.only in (None, "sigkill"):
                rows.append(await _sigkill_data_guard(root, nats, args.uploads))
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
