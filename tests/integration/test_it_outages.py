"""The audit database unwritable, unreachable or out of space for three times the redelivery
window, then back (issue 13): published = recorded, no duplicate, `audit verify` ok, an alert
when it started and one when it ended, and no restart: the writer reopens its database by itself.

The redelivery window is what used to drop messages: ack wait x the old 5 deliveries. Here the
ack wait is 1 s (so the window is 5 s and the outage 15 s) and the retry delays are short; the
behaviour is the one of the 30 s production setting, only faster.
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import OperationalError

import shared.bus
from shared.embedded import EmbeddedNats
from shared.settings import Settings
from shared.topology import CONSUMERS
from tests._faults import DiskFull, Figures, Immutable, TcpProxy, audit_outage, chattr_works, mount_tmpfs, unmount

ACK_WAIT_S = 1.0
#: What used to drop a message: its ack wait times the old max_deliver of 5.
REDELIVERY_WINDOW_S = ACK_WAIT_S * 5
OUTAGE_S = 3 * REDELIVERY_WINDOW_S
PG_URL = os.environ.get("MLW_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


@pytest.fixture(autouse=True)
def short_redelivery(monkeypatch: pytest.MonkeyPatch) -> None:
    """audit-log's durables with a 1 s ack wait (declared by the bootstrap), short nak delays."""
    monkeypatch.setitem(
        CONSUMERS, "audit-log", tuple(dataclasses.replace(s, ack_wait_s=ACK_WAIT_S) for s in CONSUMERS["audit-log"])
    )
    monkeypatch.setattr(shared.bus, "RETRY_BASE_DELAY_S", 0.1)
    monkeypatch.setattr(shared.bus, "RECOVERY_QUIET_S", 1.0)
    monkeypatch.setattr(shared.bus, "RETRY_MAX_DELAY_S", 1.0)


def _assert_nothing_lost(figures: Figures) -> None:
    assert figures.recorded_during == 0, "the fault did not stop the writes"
    assert figures.recorded == figures.published
    assert figures.duplicates == 0
    assert figures.verify
    assert figures.dead_letters == 0
    assert (figures.outage_alerts, figures.recovery_alerts) == (1, 1)


async def test_sqlite_unwritable_past_the_redelivery_window_loses_nothing(settings: Settings, tmp_path: Path) -> None:
    why_not = chattr_works(tmp_path)
    if why_not is not None:
        pytest.skip(why_not)
    db = (settings.data_dir / "audit.db").resolve()
    figures = await audit_outage(settings, Immutable(db), reader_url=settings.audit_url, outage_s=OUTAGE_S)
    _assert_nothing_lost(figures)


async def test_sqlite_disk_full_past_the_redelivery_window_loses_nothing(
    nats_server: EmbeddedNats, tmp_path: Path
) -> None:
    mount = tmp_path / "small-disk"
    why_not = mount_tmpfs(mount)
    if why_not is not None:
        pytest.skip(f"{why_not}: the disk-full case needs a small file system the test owns")
    try:
        url = f"sqlite:///{mount / 'audit.db'}"
        settings = Settings(data_dir=tmp_path / "data", nats_url=nats_server.url, audit_db_url=url)
        figures = await audit_outage(settings, DiskFull(mount), reader_url=url, outage_s=OUTAGE_S)
    finally:
        unmount(mount)
    _assert_nothing_lost(figures)


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh schema on the machine's PostgreSQL (dropped afterwards); skip, saying why, if none."""
    engine = create_engine(PG_URL, connect_args={"connect_timeout": 3})
    schema = f"mlw_outage_{uuid.uuid4().hex[:12]}"
    try:
        with engine.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except OperationalError as exc:
        engine.dispose()
        reason = str(exc.orig or exc).strip().splitlines()[0]
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL unreachable at {PG_URL} ({reason}) (CI=true: the case must run)")
        pytest.skip(f"PostgreSQL unreachable at {PG_URL} ({reason}); set MLW_TEST_PG_URL to a reachable server")
    try:
        yield schema
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


@pytest.mark.postgres
async def test_postgres_unreachable_past_the_redelivery_window_loses_nothing(
    nats_server: EmbeddedNats, tmp_path: Path, pg_schema: str
) -> None:
    target = make_url(PG_URL)
    proxy = TcpProxy(target.host or "127.0.0.1", target.port or 5432)
    port = await proxy.start()
    options = f"?options=-csearch_path%3D{pg_schema}"
    proxied = target.set(host="127.0.0.1", port=port).render_as_string(hide_password=False) + options
    settings = Settings(data_dir=tmp_path / "data", nats_url=nats_server.url, audit_db_url=proxied)
    try:
        figures = await audit_outage(settings, proxy, reader_url=PG_URL + options, outage_s=OUTAGE_S)
    finally:
        await proxy.stop()
    _assert_nothing_lost(figures)
