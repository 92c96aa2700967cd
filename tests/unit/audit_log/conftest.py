"""Database targets for the audit-log tests: every store test runs on SQLite and PostgreSQL.

PostgreSQL is `postgresql+psycopg://postgres@127.0.0.1:5432/test` unless `MLW_TEST_PG_URL` says
otherwise. Each test gets its own schema (`mlw_audit_<random>`), dropped afterwards, so
concurrent runs never see each other's rows.

A reachable server is always used, CI or not. An unreachable one skips the PostgreSQL cases with
the URL and the reason in the skip message (shown by `-rs`), and fails them in CI (`CI=true`,
which `.ci/run` sets), where a missing database must not pass as green. The cases carry the
`postgres` marker: `pytest -m postgres` runs exactly them.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import orjson
import pytest
from sqlalchemy import create_engine, make_url, text
from sqlalchemy.exc import OperationalError

from services.audit_log.store import AuditStore

PG_DEFAULT_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


@dataclass(frozen=True)
class DbTarget:
    """Where one test's audit store lives."""

    backend: str
    url: str
    schema: str | None

    @property
    def cli_url(self) -> str:
        """A URL that reaches this store without a schema argument (for `mlwarden audit --db`)."""
        if self.schema is None:
            return self.url
        # libpq `options`: the per-test schema becomes the search path.
        return f"{self.url}?options=-csearch_path%3D{self.schema}"

    def open(self) -> AuditStore:
        """A new store handle on this target (tables created)."""
        store = AuditStore(self.url, schema=self.schema)
        store.create()
        return store


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The PostgreSQL URL, checked reachable once per session."""
    url = os.environ.get("MLW_TEST_PG_URL", PG_DEFAULT_URL)
    shown = make_url(url).render_as_string(hide_password=True)
    engine = create_engine(url, connect_args={"connect_timeout": 3})
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        # psycopg's message spans lines (and SQLAlchemy appends a help link): keep the first.
        reason = str(exc.orig or exc).strip().splitlines()[0]
        message = f"PostgreSQL unreachable at {shown} ({reason}); set MLW_TEST_PG_URL to a reachable server"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message} (CI=true: the PostgreSQL cases must run)")
        pytest.skip(message)
    finally:
        engine.dispose()
    return url


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_target(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[DbTarget]:
    """One database per test: a SQLite file, or a fresh PostgreSQL schema dropped afterwards."""
    if request.param == "sqlite":
        yield DbTarget("sqlite", f"sqlite:///{tmp_path / 'audit.db'}", None)
        return
    url: str = request.getfixturevalue("pg_url")
    schema = f"mlw_audit_{uuid.uuid4().hex[:12]}"
    try:
        yield DbTarget("postgresql", url, schema)
    finally:
        engine = create_engine(url)
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        engine.dispose()


@pytest.fixture
def store(db_target: DbTarget) -> Iterator[AuditStore]:
    """An empty, created audit store on the current target."""
    opened = db_target.open()
    yield opened
    opened.close()


DropGuards = Callable[[AuditStore], None]


@pytest.fixture
def drop_guards(db_target: DbTarget) -> DropGuards:
    """What an attacker with DDL rights does first: drop the append-only triggers."""

    def drop(store: AuditStore) -> None:
        with store.engine.begin() as conn:
            for table in ("audit_entries", "audit_tree"):
                if db_target.backend == "sqlite":
                    for op in ("update", "delete"):
                        conn.execute(text(f"DROP TRIGGER IF EXISTS {table}_no_{op}"))
                else:
                    qualified = f'"{db_target.schema}".{table}'
                    conn.execute(text(f"DROP TRIGGER IF EXISTS {table}_append_only ON {qualified}"))
                    conn.execute(text(f"DROP TRIGGER IF EXISTS {table}_no_truncate ON {qualified}"))

    return drop


@pytest.fixture
def make_store(db_target: DbTarget) -> Iterator[Callable[[], AuditStore]]:
    """A factory of further handles on the same database (a second writer, a reopened store)."""
    opened: list[AuditStore] = []

    def factory() -> AuditStore:
        opened.append(db_target.open())
        return opened[-1]

    yield factory
    for handle in opened:
        handle.close()


EventFactory = Callable[..., bytes]


@pytest.fixture
def event_bytes() -> EventFactory:
    """Build raw envelope bytes with any `data` (audit-log stores events of every schema)."""

    def build(
        *,
        event_id: str | None = None,
        type_: str = "mlw.dataset.uploaded",
        source: str = "mlwarden/cli",
        subject: str | None = None,
        time: float = 1_700_000_000.0,
        data: dict[str, object] | None = None,
        signer: str | None = None,
    ) -> bytes:
        envelope: dict[str, object] = {
            "specversion": "1.0",
            "id": event_id or str(uuid.uuid4()),
            "source": source,
            "type": type_,
            "time": datetime.fromtimestamp(time, UTC).isoformat(),
            "datacontenttype": "application/json",
            "data": data if data is not None else {},
        }
        if subject is not None:
            envelope["subject"] = subject
        if signer is not None:
            envelope["signer"] = signer
            envelope["signature"] = "c2lnbmF0dXJl"
        return orjson.dumps(envelope)

    return build
