"""The audit trail in SQL: one append-only, hash-linked table, written in group-committed batches.

Schema
------
Table `audit_entries`, one row per envelope received, whatever its stream:

    seq          integer PK, dense 1, 2, 3, ... (assigned by the writer, see below)
    event_id     the envelope `id`, UNIQUE: redeliveries and republished copies are skipped
    type, source, subject                the CloudEvents attributes
    service, actor, decision, client     extracted for queries (see `IncomingEvent.from_bytes`)
    time         the event's own time, float unix seconds
    recorded_at  when audit-log received it, float unix seconds
    body         the envelope JSON text exactly as received (signatures stay checkable)
    prev_hash, entry_hash                the hash chain

Indexes serve "a time range plus at most one filter", newest first: `(time, seq)`, and
`(x, time, seq)` for x in service, type, subject, actor, decision, client. A query walks one
index backwards from the end of its time range and stops after a page (see `query.py`).

Table `audit_tree` holds the RFC 9162 Merkle tree over the same entries (leaf index = seq - 1,
leaf = `leaf_input`), as its perfect subtrees `(tree_size, level) -> hash` (see `merkle.py`):
appended in the same transaction as the entries, so the tree always covers exactly the
committed entries.

Append-only
-----------
`create()` installs triggers that reject UPDATE and DELETE (and, on PostgreSQL, TRUNCATE) on
both tables. They stop mistakes and casual edits; someone with DDL rights can drop them, which
is why `verify.verify_trail` checks the chain, the tree and the signed checkpoints (kept outside
the database) rather than trusting the triggers.

Hash chain
----------
Every row is linked to the one before it (lower-case hex SHA-256 throughout)::

    leaf_input(row) = canonical_json({"v": 1, "seq", "event_id", "type", "source", "subject",
                                      "service", "actor", "decision", "client", "time",
                                      "recorded_at", "body"})
    entry_hash      = SHA-256(bytes.fromhex(prev_hash) || leaf_input(row))
    prev_hash       = entry_hash of row seq - 1, or 64 zeros (`GENESIS_HASH`) for seq 1

`canonical_json` is `shared.canonical`: keys sorted, no whitespace, UTF-8, a missing value as
`null`, floats in their shortest round-trip form (`1700000000.25`, `1700000000.0`). `v` versions
the format. `body` is a JSON string holding the received text, so the hash covers the original
event (and its signature) as well as every column derived from it; `seq` is inside, so moving a
row to another position breaks its hash even when its neighbours' links are rewritten.

`seq` is dense on purpose: a database sequence leaves gaps on rollback, and a gap must mean a
deleted row. It also gives every entry its RFC 9162 Merkle leaf index, `seq - 1`, over the same
`leaf_input` bytes (leaf hash = SHA-256(0x00 || leaf_input), issue 3). A plain chain only proves
internal consistency: whoever controls the database can recompute it from the first changed row
on, or drop the newest rows. Checking against a trusted earlier head (`verify_chain(anchor=...)`,
later the signed checkpoints) closes that gap.

Single writer
-------------
The design has one audit-log writer: the chain is a total order and `seq` is computed from the
current head. `append_batch` nevertheless takes the table's write lock first (SQLite
`BEGIN IMMEDIATE`, PostgreSQL `LOCK TABLE ... IN EXCLUSIVE MODE`), so an accidental second
writer waits instead of forking the chain; readers are not blocked (SQLite WAL, PostgreSQL MVCC).

Several audit-log instances elect the writer with a lease in the `mlw-state` bucket
(`services.audit_log.leader`); its fencing token (the lease's KV revision, with the bucket's
creation time as epoch) is claimed in table `audit_writers` (append-only, one row per claim)
inside the same locked transaction as a batch: a batch commits only if its token is the newest
claim, so a paused former leader cannot commit after a successor claimed (issue 13).
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final, NamedTuple, Self

import orjson
from sqlalchemy import (
    BigInteger,
    Column,
    ColumnElement,
    Connection,
    Double,
    Engine,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    func,
    select,
    text,
)
from sqlalchemy.engine import make_url
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.pool import ConnectionPoolEntry, StaticPool
from sqlalchemy.schema import CreateSchema

from services.audit_log import equivocation, merkle
from services.audit_log.equivocation import Equivocation
from services.audit_log.errors import (
    ConcurrentAppendError,
    FencedError,
    StoreUnavailableError,
    SubjectMismatch,
    TreeError,
)
from services.audit_log.merkle import CompactTree, NodeKey
from services.audit_log.provenance import provenance
from shared.envelope import TRACEPARENT_MAX, TRACESTATE_MAX, decode_any, parse_raw
from shared.errors import InputError, InvalidMessage
from shared.signing import TrustStore

#: `prev_hash` of the first entry.
GENESIS_HASH: Final = "0" * 64
#: Version of the `leaf_input` format, hashed into every entry.
LEAF_FORMAT_VERSION: Final = 1
#: Longest value kept in an indexed text column (service, actor, decision, client).
LABEL_MAX: Final = 256
#: Fields of `data` that name the actor, in order of preference (first string wins):
#: DatasetUploaded/DatasetVerdict, ModelBuilt/ArtifactVerdict, PromotionRequested/Verdict,
#: ApprovalGiven, AdmissionVerdict/Alert.
ACTOR_FIELDS: Final = ("uploader", "builder", "requester", "approver", "client")
#: Sources of the form `mlwarden/<service>[/...]` name the emitting service.
SOURCE_PREFIX: Final = "mlwarden/"
#: The `service` label of the entries audit-log writes itself.
_SERVICE_NAME: Final = "audit-log"

# How many ids one `IN (...)` duplicate probe carries: far below SQLite's 32,766 and
# PostgreSQL's 65,535 bind parameters.
_PROBE_CHUNK = 500
# Entries per transaction when building the tree of an older trail.
_TREE_BACKFILL_CHUNK = 5000
# WAL pages (4 KiB) a SQLite commit may leave before it copies them into the database file.
_WAL_AUTOCHECKPOINT_PAGES = 10_000

metadata = MetaData()

# BIGINT on PostgreSQL; plain INTEGER on SQLite, where only `INTEGER PRIMARY KEY` aliases the
# rowid (64-bit there anyway).
_SeqType = BigInteger().with_variant(Integer(), "sqlite")

audit_entries = Table(
    "audit_entries",
    metadata,
    # autoincrement stays declared for ad-hoc inserts, but the writer always sets seq itself.
    Column("seq", _SeqType, primary_key=True, autoincrement=True),
    Column("event_id", String(64), nullable=False),
    Column("type", String(128), nullable=False),
    Column("source", String(256), nullable=False),
    Column("subject", String(256)),
    Column("service", String(LABEL_MAX)),
    Column("actor", String(LABEL_MAX)),
    Column("decision", String(LABEL_MAX)),
    Column("client", String(LABEL_MAX)),
    Column("time", Double(), nullable=False),
    Column("recorded_at", Double(), nullable=False),
    Column("body", Text(), nullable=False),
    Column("prev_hash", String(64), nullable=False),
    Column("entry_hash", String(64), nullable=False),
    UniqueConstraint("event_id", name="uq_audit_entries_event_id"),
    # seq last: the index order is the query order (time, then seq), so a page is a short
    # backward range scan with no sort, on both backends.
    Index("ix_audit_entries_time", "time", "seq"),
    Index("ix_audit_entries_service_time", "service", "time", "seq"),
    Index("ix_audit_entries_type_time", "type", "time", "seq"),
    Index("ix_audit_entries_subject_time", "subject", "time", "seq"),
    Index("ix_audit_entries_actor_time", "actor", "time", "seq"),
    Index("ix_audit_entries_decision_time", "decision", "time", "seq"),
    Index("ix_audit_entries_client_time", "client", "time", "seq"),
)

#: The Merkle tree's perfect subtrees: the node covering leaves [tree_size - 2**level, tree_size).
audit_tree = Table(
    "audit_tree",
    metadata,
    Column("tree_size", _SeqType, primary_key=True, autoincrement=False),
    Column("level", SmallInteger(), primary_key=True, autoincrement=False),
    Column("hash", LargeBinary(32), nullable=False),
    # SQLite: the rows live in the primary-key b-tree itself rather than in a rowid table plus a
    # separate key index: one b-tree insert per node instead of two (about two nodes an entry).
    # A trail created before this keeps its rowid table, which works the same.
    sqlite_with_rowid=False,
)

#: Every writer claim (fencing token), newest = highest `claim`: see "Single writer" above.
audit_writers = Table(
    "audit_writers",
    metadata,
    Column("claim", _SeqType, primary_key=True, autoincrement=True),
    Column("epoch", String(64), nullable=False),
    Column("token", BigInteger(), nullable=False),
    Column("claimed_at", Double(), nullable=False),
)


class Fence(NamedTuple):
    """A writer's fencing token: the lease's KV revision within the lease bucket's epoch."""

    #: Identifies the lease bucket (its creation time): tokens compare only within one epoch.
    epoch: str
    #: The KV revision at which the lease was acquired.
    token: int


#: Tables whose rows may never change or disappear.
APPEND_ONLY_TABLES: Final = (audit_entries.name, audit_tree.name, audit_writers.name)
_GUARD_FUNCTION = "mlw_audit_append_only"


@dataclass(frozen=True, slots=True)
class EntryFields:
    """The columns of an entry that come from the event and its arrival (everything hashed but seq)."""

    event_id: str
    type: str
    source: str
    subject: str | None
    service: str | None
    actor: str | None
    decision: str | None
    client: str | None
    time: float
    recorded_at: float
    body: str


def leaf_input(seq: int, fields: EntryFields) -> bytes:
    """The canonical bytes of one entry that the chain and the Merkle leaf hash."""
    # `shared.canonical.canonical_json` byte for byte, minus its recursive walk for non-finite
    # floats (a third of the cost of an append): the only floats here are the two times.
    if not (math.isfinite(fields.time) and math.isfinite(fields.recorded_at)):
        raise InvalidMessage(f"non-finite time in entry {seq}")
    return orjson.dumps(
        {
            "v": LEAF_FORMAT_VERSION,
            "seq": seq,
            "event_id": fields.event_id,
            "type": fields.type,
            "source": fields.source,
            "subject": fields.subject,
            "service": fields.service,
            "actor": fields.actor,
            "decision": fields.decision,
            "client": fields.client,
            "time": fields.time,
            "recorded_at": fields.recorded_at,
            "body": fields.body,
        },
        option=orjson.OPT_SORT_KEYS,
    )


def chain_hash(prev_hash: str, leaf: bytes) -> str:
    """`entry_hash` = SHA-256(prev_hash bytes || leaf input), lower-case hex."""
    return hashlib.sha256(bytes.fromhex(prev_hash) + leaf).hexdigest()


@dataclass(frozen=True, slots=True)
class IncomingEvent(EntryFields):
    """One received envelope, reduced to the columns it is stored and queried by."""

    @classmethod
    def from_bytes(
        cls,
        body: bytes,
        *,
        recorded_at: float,
        arrived_on: str | None = None,
        trust: TrustStore | None = None,
    ) -> Self:
        """Parse a CloudEvents envelope and extract its indexed columns.

        Raises `InvalidMessage` for bytes that are not a valid envelope, and for an indexed
        value no database column can hold (over `LABEL_MAX` characters, or a NUL character,
        which PostgreSQL text refuses): the wiring turns those into dead letters, which are
        stored in their turn. `arrived_on` is the NATS subject the message came on: every
        mlwarden event's `type` is the subject it is published on, so an envelope claiming
        another type is refused (`SubjectMismatch`) rather than indexed under the type it
        claims (issue 8: a producer allowed to log predictions posed as a promotion verdict).

        With `trust` (the service always passes its root-signed trust store) the `service`,
        `actor` and `client` labels come only from a verified signature
        (`services.audit_log.provenance`); without it (offline tools reading a trail they
        already trust) they are read from `source` and `data` as written.
        """
        if not math.isfinite(recorded_at):
            raise InputError(f"recorded_at must be finite, got {recorded_at!r}")
        size = len(body)
        raw = parse_raw(body)
        attrs = _plain_envelope(raw)
        if attrs is None:
            # Anything off the common shape goes through the full model, which gives the
            # refusal and its reason (or accepts the rarer forms it allows, like a bare date).
            env = decode_any(body)
            attrs = _Attributes(
                env.id, env.type, env.source, env.subject, env.signer, env.time, env.data.model_extra or {}
            )
        if arrived_on is not None and attrs.type != arrived_on:
            raise SubjectMismatch(claimed=attrs.type, arrived_on=arrived_on, size=size)
        data = attrs.data
        # A producer may omit the offset; reading it as local time would make the stored (and
        # hashed) value depend on the audit host's time zone.
        when = attrs.time if attrs.time.tzinfo is not None else attrs.time.replace(tzinfo=UTC)
        if trust is not None:
            found = provenance(raw, attrs.type, trust, recorded_at)
            service, actor, client = found.service, found.actor, found.client
        else:
            actor = next((v for k in ACTOR_FIELDS if isinstance(v := data.get(k), str) and v), None)
            service, client = _service_of(attrs.source, attrs.signer), data.get("client")
        return cls(
            event_id=_checked(attrs.id, "id", size),
            type=_checked(attrs.type, "type", size),
            source=_checked(attrs.source, "source", size),
            subject=_label(attrs.subject, "subject", size),
            service=_label(service, "service", size),
            actor=_label(actor, "actor", size),
            decision=_label(data.get("decision"), "data.decision", size),
            client=_label(client, "data.client", size),
            time=when.timestamp(),
            recorded_at=recorded_at,
            # orjson accepted these bytes, so they are valid UTF-8 and hold no raw NUL.
            body=body.decode("utf-8"),
        )


class _Attributes(NamedTuple):
    """The envelope attributes an entry is built from."""

    id: str
    type: str
    source: str
    subject: str | None
    signer: str | None
    time: datetime
    data: dict[str, Any]


#: Top-level members `shared.envelope.Envelope` allows (it forbids any other).
_ENVELOPE_MEMBERS: Final = frozenset(
    (
        "specversion",
        "id",
        "source",
        "type",
        "time",
        "subject",
        "datacontenttype",
        "data",
        "signer",
        "signature",
        "traceparent",
        "tracestate",
    )
)
#: (member, max length) of the required and of the optional string attributes, as the model has them.
_REQUIRED_STRINGS: Final = (("id", 64), ("source", 256), ("type", 128))
_OPTIONAL_STRINGS: Final = (
    ("subject", 256),
    ("signer", 128),
    ("signature", 256),
    ("traceparent", TRACEPARENT_MAX),
    ("tracestate", TRACESTATE_MAX),
)
#: RFC 3339 date-times in the form producers write (`shared.envelope` writes this form): the fast
#: path reads only these; pydantic accepts more (dates, timestamps, lower-case, ...) and is asked.
_PLAIN_TIME: Final = re.compile(
    r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(?:\.\d{1,6})?(?:Z|[+-](?:[01]\d|2[0-3]):[0-5]\d)?"
)


def _plain_envelope(raw: dict[str, Any]) -> _Attributes | None:
    """The attributes of an envelope that is plainly valid, or None when only the model can tell.

    A quarter of the cost of `shared.envelope.decode_any` (pydantic), which ingestion pays per
    message (issue 3's throughput goal). It accepts a subset of what the model accepts and reads
    the same values from it, so refusals stay the model's: anything it is unsure of, valid or not,
    returns None and goes through the model (tests/unit/audit_log/test_audit_log_incoming.py
    checks the two agree).
    """
    if not raw.keys() <= _ENVELOPE_MEMBERS:
        return None
    if raw.get("specversion", "1.0") != "1.0" or raw.get("datacontenttype", "application/json") != "application/json":
        return None
    for name, longest in _REQUIRED_STRINGS:
        value = raw.get(name)
        if type(value) is not str or not 0 < len(value) <= longest:
            return None
    for name, longest in _OPTIONAL_STRINGS:
        value = raw.get(name)
        if value is not None and (type(value) is not str or len(value) > longest):
            return None
    data, time_text = raw.get("data"), raw.get("time")
    if type(data) is not dict or type(time_text) is not str or _PLAIN_TIME.fullmatch(time_text) is None:
        return None
    try:
        when = datetime.fromisoformat(time_text)
    except ValueError:  # e.g. February 30th: the model words the refusal
        return None
    return _Attributes(raw["id"], raw["type"], raw["source"], raw.get("subject"), raw.get("signer"), when, data)


def _service_of(source: str, signer: str | None) -> str | None:
    """`mlwarden/<service>[/...]` names the service; otherwise the signer's key id, if any."""
    if source.startswith(SOURCE_PREFIX):
        name = source[len(SOURCE_PREFIX) :].split("/", 1)[0]
        if name:
            return name
    return signer or None


def _checked(value: str, field: str, size: int) -> str:
    if "\x00" in value:
        raise InvalidMessage(f"{field} contains a NUL character", size=size)
    return value


def _label(value: object, field: str, size: int) -> str | None:
    # A value of the wrong JSON type is simply not indexed: the body still holds it.
    if not isinstance(value, str) or not value:
        return None
    if len(value) > LABEL_MAX:
        raise InvalidMessage(f"{field} is longer than {LABEL_MAX} characters", size=size)
    return _checked(value, field, size)


@dataclass(frozen=True, slots=True)
class StoredEntry(EntryFields):
    """One row of `audit_entries`."""

    seq: int
    prev_hash: str
    entry_hash: str

    @property
    def leaf_index(self) -> int:
        """Position in the RFC 9162 Merkle tree over the entries (0-based)."""
        return self.seq - 1

    def leaf_input(self) -> bytes:
        """The canonical bytes hashed for this entry."""
        return leaf_input(self.seq, self)

    def computed_hash(self) -> str:
        """What `entry_hash` must be, recomputed from the stored fields and `prev_hash`."""
        return chain_hash(self.prev_hash, self.leaf_input())


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The newest entry's position and hash (seq 0 and `GENESIS_HASH` when empty)."""

    seq: int
    entry_hash: str


@dataclass(frozen=True, slots=True)
class AppendResult:
    """Outcome of one `append_batch`."""

    #: Rows appended (new events and equivocation evidence).
    inserted: int
    #: Items skipped: the same content under an id earlier in the batch or already stored, or
    #: a second copy whose equivocation evidence is already stored.
    duplicates: int
    #: seq of the first and last inserted row (None when nothing was inserted).
    first_seq: int | None = None
    last_seq: int | None = None
    #: Every item that reused a stored id with other content (evidence new or already stored).
    equivocations: tuple[Equivocation, ...] = ()


class _Known(NamedTuple):
    """What the writer needs of an entry already in the trail (or earlier in the batch)."""

    seq: int
    body: str
    subject: str | None


_FIELD_NAMES: Final = tuple(c.name for c in audit_entries.columns)


def _entry(row: Any) -> StoredEntry:
    return StoredEntry(**{name: row._mapping[name] for name in _FIELD_NAMES})


class AuditStore:
    """The audit trail in a SQLite file or PostgreSQL, through SQLAlchemy Core.

    `url` is any SQLAlchemy URL: `sqlite:///path/audit.db` (WAL, `synchronous=NORMAL`) or
    `postgresql+psycopg://user@host/db`. `schema` (PostgreSQL only) puts the table in its own
    schema, created by `create()`.
    """

    def __init__(self, url: str, *, schema: str | None = None) -> None:
        parsed = make_url(url)
        self._url = parsed.render_as_string(hide_password=True)
        self._sqlite = parsed.get_backend_name() == "sqlite"
        self._postgres = parsed.get_backend_name() == "postgresql"
        if schema is not None and not self._postgres:
            raise InputError(f"a schema is only supported on PostgreSQL, not {self._url}")
        self._schema = schema
        self._in_memory = self._sqlite and parsed.database in (None, "", ":memory:")
        if self._sqlite:
            engine = create_engine(parsed, poolclass=StaticPool) if self._in_memory else create_engine(parsed)
            _configure_sqlite(engine)
        else:
            engine = create_engine(parsed, pool_pre_ping=True)
        self._base_engine = engine
        self._engine: Engine = engine.execution_options(schema_translate_map={None: schema}) if schema else engine

    @property
    def engine(self) -> Engine:
        """The SQLAlchemy engine (schema applied): for readers that need raw SQL, and for tests."""
        return self._engine

    @property
    def table(self) -> Table:
        """The `audit_entries` table (unqualified; the engine maps it into `schema`)."""
        return audit_entries

    @property
    def in_memory(self) -> bool:
        """An in-memory SQLite database: only this process (this store) can reach it."""
        return self._in_memory

    @property
    def url(self) -> str:
        """The database URL with any password hidden."""
        return self._url

    @property
    def tree_table(self) -> Table:
        """The `audit_tree` table of Merkle nodes."""
        return audit_tree

    def create(self) -> None:
        """Create the schema (if any), tables, indexes and append-only triggers (idempotent).

        Triggers an attacker dropped are put back. A trail written before the Merkle tree
        existed gets its tree built here, once.
        """
        with self._errors(), self._engine.begin() as conn:
            if self._schema is not None:
                conn.execute(CreateSchema(self._schema, if_not_exists=True))
            metadata.create_all(conn)
            for statement in self._guard_ddl():
                conn.execute(text(statement))
        self.build_missing_tree()

    def _guard_ddl(self) -> list[str]:
        """Triggers that make both tables append-only at the database level."""
        statements: list[str] = []
        if self._postgres:
            fn = self._qualified(_GUARD_FUNCTION)
            statements.append(
                f"CREATE OR REPLACE FUNCTION {fn}() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                "RAISE EXCEPTION 'mlwarden audit trail is append-only: % on % refused', TG_OP, TG_TABLE_NAME "
                "USING ERRCODE = 'integrity_constraint_violation'; END $$"
            )
            for table in APPEND_ONLY_TABLES:
                target = self._qualified(table)
                statements += [
                    f"CREATE OR REPLACE TRIGGER {table}_append_only BEFORE UPDATE OR DELETE ON {target} "
                    f"FOR EACH ROW EXECUTE FUNCTION {fn}()",
                    # TRUNCATE fires no row trigger: it needs its own.
                    f"CREATE OR REPLACE TRIGGER {table}_no_truncate BEFORE TRUNCATE ON {target} "
                    f"FOR EACH STATEMENT EXECUTE FUNCTION {fn}()",
                ]
        elif self._sqlite:
            for table in APPEND_ONLY_TABLES:
                for op in ("UPDATE", "DELETE"):
                    message = f"mlwarden audit trail is append-only: {op} on {table} refused"
                    statements.append(
                        f"CREATE TRIGGER IF NOT EXISTS {table}_no_{op.lower()} BEFORE {op} ON {table} "
                        f"BEGIN SELECT RAISE(ABORT, '{message}'); END"
                    )
        return statements

    def build_missing_tree(self) -> int:
        """Add tree nodes for entries the tree does not cover yet (a trail from before issue 3).

        Returns how many leaves were added. Reads in chunks and writes one transaction per chunk,
        under the write lock, so it can run while nothing else writes.
        """
        added = 0
        while True:
            with self._errors(), self._write() as conn:
                covered = self._tree_size(conn)
                rows = conn.execute(
                    select(audit_entries)
                    .where(audit_entries.c.seq > covered)
                    .order_by(audit_entries.c.seq)
                    .limit(_TREE_BACKFILL_CHUNK)
                ).all()
                if not rows:
                    return added
                tree = self._compact_tree(conn, covered)
                nodes: list[tuple[int, int, bytes]] = []
                for row in rows:
                    entry = _entry(row)
                    if entry.seq != tree.size + 1:
                        raise TreeError(f"entry seq {tree.size + 1} is missing; cannot build the tree", seq=entry.seq)
                    leaf = merkle.leaf_hash(entry.leaf_input())
                    nodes += [(key.tree_size, key.level, h) for key, h in tree.append(leaf)]
                self._bulk_insert(conn, audit_tree, nodes)
                added += len(rows)

    def close(self) -> None:
        """Close every pooled connection."""
        self._base_engine.dispose()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def append_batch(self, items: Sequence[IncomingEvent], *, fence: Fence | None = None) -> AppendResult:
        """Append new events in one transaction (group commit), linked into the chain in order.

        Idempotent on `event_id`: an id seen earlier in `items`, or already stored, with the
        same content is skipped and counted in `duplicates`. The same id with *different*
        content is equivocation (issue 8): the first copy stays, and an `mlw.audit.equivocation`
        entry holding both hashes and the second body is appended in its place (see
        `equivocation.py`); each one is returned in `equivocations` so the caller can alert.
        Either the whole batch is committed or none of it is; ack the messages only after this
        returns. With `fence`, nothing is committed (`FencedError`) unless it is the newest
        writer claim (`claim_writer`).
        """
        if not items:
            return AppendResult(inserted=0, duplicates=0)
        head = ChainHead(0, GENESIS_HASH)
        rows: list[tuple[Any, ...]] = []
        try:
            with self._errors(), self._write() as conn:
                if fence is not None:
                    self._check_fence(conn, fence)
                head = self._head(conn)
                fresh, duplicates, found = self._plan(conn, items, head.seq)
                prev, seq = head.entry_hash, head.seq
                tree = self._compact_tree(conn, seq) if fresh else CompactTree()
                nodes: list[tuple[int, int, bytes]] = []
                # Rows as driver tuples in column order (see `_bulk_insert`): this loop is most
                # of an append's Python time, and ingestion's throughput goal rides on it.
                for item in fresh:
                    seq += 1
                    leaf = leaf_input(seq, item)
                    entry_hash = chain_hash(prev, leaf)
                    rows.append(_row(item, seq, prev, entry_hash))
                    nodes += [(key.tree_size, key.level, h) for key, h in tree.append(merkle.leaf_hash(leaf))]
                    prev = entry_hash
                if rows:
                    self._bulk_insert(conn, audit_entries, rows)
                    self._bulk_insert(conn, audit_tree, nodes)
        except IntegrityError as exc:
            # Only possible when another writer bypassed the lock (or a row was inserted by
            # hand): the seq or the event id was taken in between. Nothing was committed.
            raise ConcurrentAppendError(_first_line(exc), url=self._url, first_seq=head.seq + 1) from exc
        return AppendResult(
            inserted=len(rows),
            duplicates=duplicates,
            first_seq=rows[0][0] if rows else None,
            last_seq=rows[-1][0] if rows else None,
            equivocations=tuple(found),
        )

    def _plan(
        self, conn: Connection, items: Sequence[IncomingEvent], head_seq: int
    ) -> tuple[list[IncomingEvent], int, list[Equivocation]]:
        """What to append (in order), how many items are plain duplicates, and the equivocations."""
        known = self._known(conn, list(dict.fromkeys(item.event_id for item in items)))
        fresh: list[IncomingEvent] = []
        found: list[Equivocation] = []
        duplicates = 0
        seq = head_seq
        for item in items:
            first = known.get(item.event_id)
            if first is None:
                seq += 1
                known[item.event_id] = _Known(seq, item.body, item.subject)
                fresh.append(item)
                continue
            differs = equivocation.differing_members(first.body, item.body)
            if not differs:
                duplicates += 1  # a redelivery: the same statement again
                continue
            record, record_id = self._evidence(conn, known, item, first)
            found.append(
                Equivocation(
                    event_id=item.event_id,
                    record_id=record_id,
                    first_seq=first.seq,
                    first_sha256=equivocation.sha256_hex(first.body),
                    second_sha256=equivocation.sha256_hex(item.body),
                    differs_in=differs,
                    new=record is not None,
                )
            )
            if record is None:
                duplicates += 1  # this second copy's evidence is already stored
                continue
            seq += 1
            known[record_id] = _Known(seq, record.body, record.subject)
            fresh.append(record)
        return fresh, duplicates, found

    def _evidence(
        self, conn: Connection, known: dict[str, _Known], second: IncomingEvent, first: _Known
    ) -> tuple[IncomingEvent | None, str]:
        """The evidence entry to append for `second` (None when already stored) and its id."""
        candidates = equivocation.record_ids(second.event_id, equivocation.sha256_hex(second.body))
        known.update(self._known(conn, [c for c in candidates if c not in known]))
        for record_id in [*candidates, equivocation.random_record_id()]:
            body = equivocation.evidence_body(
                record_id,
                event_id=second.event_id,
                first_seq=first.seq,
                first_body=first.body,
                second_body=second.body,
                subject=first.subject,
                time=second.time,
            )
            holder = known.get(record_id)
            if holder is not None and holder.body == body:
                return None, record_id
            if holder is None:
                record = IncomingEvent(
                    event_id=record_id,
                    type=equivocation.EQUIVOCATION_TYPE,
                    source=equivocation.SOURCE,
                    subject=first.subject,
                    service=_SERVICE_NAME,
                    actor=None,
                    decision=None,
                    client=None,
                    time=second.time,
                    recorded_at=second.recorded_at,
                    body=body,
                )
                return record, record_id
            # Taken by an entry that is not this evidence (a squatted id): try the next one.
        raise AssertionError("a random uuid4 is never taken")  # pragma: no cover

    def claim_writer(self, fence: Fence, *, now: float) -> None:
        """Record `fence` as the newest writer claim; from then on only it may append.

        Refused (`FencedError`) if a higher token of the same epoch was claimed already. A new
        epoch (the lease bucket was recreated, so its revisions restarted) is accepted.
        """
        with self._errors(), self._write() as conn:
            current = self._latest_claim(conn)
            if current == fence:
                return
            if current is not None and current.epoch == fence.epoch and current.token > fence.token:
                raise FencedError(
                    epoch=fence.epoch, token=fence.token, current_epoch=current.epoch, current_token=current.token
                )
            conn.execute(audit_writers.insert().values(epoch=fence.epoch, token=fence.token, claimed_at=now))

    def writer_claims(self) -> list[Fence]:
        """Every writer claim, oldest first (who held the lease, for forensics and tests)."""
        c = audit_writers.c
        with self._errors(), self._engine.connect() as conn:
            return [Fence(r.epoch, int(r.token)) for r in conn.execute(select(c.epoch, c.token).order_by(c.claim))]

    @staticmethod
    def _latest_claim(conn: Connection) -> Fence | None:
        c = audit_writers.c
        row = conn.execute(select(c.epoch, c.token).order_by(c.claim.desc()).limit(1)).first()
        return None if row is None else Fence(row.epoch, int(row.token))

    def _check_fence(self, conn: Connection, fence: Fence) -> None:
        current = self._latest_claim(conn)
        if current != fence:
            raise FencedError(
                epoch=fence.epoch,
                token=fence.token,
                current_epoch=current.epoch if current is not None else "",
                current_token=current.token if current is not None else 0,
            )

    def head(self) -> ChainHead:
        """The newest entry's seq and hash."""
        with self._errors(), self._engine.connect() as conn:
            return self._head(conn)

    def count(self) -> int:
        """How many entries are stored."""
        with self._errors(), self._engine.connect() as conn:
            return int(conn.execute(select(func.count()).select_from(audit_entries)).scalar_one())

    def find(self, event_id: str) -> StoredEntry | None:
        """The entry of one event id, if stored."""
        rows = self.select_entries(audit_entries.c.event_id == event_id, limit=1)
        return rows[0] if rows else None

    def iter_entries(self, chunk: int = 1000, *, after_seq: int = 0) -> Iterator[StoredEntry]:
        """Every entry with seq > `after_seq`, in seq order, `chunk` rows per query.

        Keyset pagination in short read transactions: constant memory, and no long-lived
        snapshot that would hold back SQLite's WAL checkpoints or PostgreSQL's vacuum.
        """
        if chunk < 1:
            raise InputError(f"chunk must be at least 1, got {chunk}")
        last = after_seq
        while True:
            rows = self.select_entries(audit_entries.c.seq > last, limit=chunk)
            yield from rows
            if len(rows) < chunk:
                return
            last = rows[-1].seq

    def select_entries(
        self,
        *where: ColumnElement[bool],
        newest_first: bool = False,
        limit: int | None = None,
        by_time: bool = False,
    ) -> list[StoredEntry]:
        """Entries matching every condition (over `table.c`), ordered by seq, or by (time, seq)."""
        c = audit_entries.c
        keys = [c.time, c.seq] if by_time else [c.seq]
        order = [k.desc() if newest_first else k.asc() for k in keys]
        stmt = select(audit_entries).where(*where).order_by(*order).limit(limit)
        with self._errors(), self._engine.connect() as conn:
            return [_entry(row) for row in conn.execute(stmt)]

    # --- the Merkle tree -------------------------------------------------------------------

    def tree_size(self) -> int:
        """How many leaves the stored tree covers (equal to `head().seq` unless tampered with)."""
        with self._errors(), self._engine.connect() as conn:
            return self._tree_size(conn)

    def tree_nodes(self, keys: set[NodeKey] | list[NodeKey]) -> dict[NodeKey, bytes]:
        """The stored hashes of `keys` (missing ones are simply absent)."""
        found: dict[NodeKey, bytes] = {}
        wanted = list(keys)
        t = audit_tree.c
        sizes = sorted({k.tree_size for k in wanted})
        with self._errors(), self._engine.connect() as conn:
            for start in range(0, len(sizes), _PROBE_CHUNK):
                # `tree_size IN (...)` is a primary-key prefix lookup on both backends (a row-value
                # IN is a full scan on SQLite); at most log2(n) nodes share a tree size.
                stmt = select(t.tree_size, t.level, t.hash).where(t.tree_size.in_(sizes[start : start + _PROBE_CHUNK]))
                for r in conn.execute(stmt):
                    key = NodeKey(int(r.tree_size), int(r.level))
                    found[key] = bytes(r.hash)
        return {k: found[k] for k in wanted if k in found}

    def iter_tree_nodes(self, after: int, upto: int) -> list[tuple[NodeKey, bytes]]:
        """Stored nodes completed by leaves after..upto (tree sizes in (after, upto]), in order."""
        t = audit_tree.c
        stmt = (
            select(t.tree_size, t.level, t.hash)
            .where(t.tree_size > after, t.tree_size <= upto)
            .order_by(t.tree_size, t.level)
        )
        with self._errors(), self._engine.connect() as conn:
            return [(NodeKey(int(r.tree_size), int(r.level)), bytes(r.hash)) for r in conn.execute(stmt)]

    def root(self, tree_size: int) -> bytes:
        """MTH of the first `tree_size` entries, from the stored nodes."""
        if tree_size == 0:
            return merkle.EMPTY_ROOT
        return merkle.fold(self._hashes(merkle.frontier(tree_size)))

    def inclusion_proof(self, index: int, tree_size: int) -> list[bytes]:
        """RFC 9162 PATH(index, D[tree_size]) from the stored nodes."""
        return self._proof(merkle.inclusion_ranges(index, tree_size), tree_size)

    def consistency_proof(self, first: int, second: int) -> list[bytes]:
        """RFC 9162 PROOF(first, D[second]) from the stored nodes (empty when first == second)."""
        if first == second or first == 0:
            return []
        return self._proof(merkle.consistency_ranges(first, second), second)

    def _proof(self, ranges: list[tuple[int, int]], tree_size: int) -> list[bytes]:
        covered = self.tree_size()
        if tree_size > covered:
            raise TreeError(f"the tree covers {covered} entries, not {tree_size}", seq=covered + 1)
        keys = merkle.needed_nodes(ranges)
        nodes = self.tree_nodes(keys)
        missing = keys - nodes.keys()
        if missing:
            first = min(missing)
            raise TreeError(f"Merkle node {tuple(first)} is missing", seq=first.start + 1)
        return merkle.range_hashes(ranges, nodes)

    def _hashes(self, keys: list[NodeKey]) -> list[bytes]:
        nodes = self.tree_nodes(keys)
        for key in keys:
            if key not in nodes:
                raise TreeError(f"Merkle node {tuple(key)} is missing", seq=key.start + 1)
        return [nodes[k] for k in keys]

    # --- internals ---------------------------------------------------------------------

    @staticmethod
    def _tree_size(conn: Connection) -> int:
        return int(conn.execute(select(func.coalesce(func.max(audit_tree.c.tree_size), 0))).scalar_one())

    @staticmethod
    def _compact_tree(conn: Connection, tree_size: int) -> CompactTree:
        """The frontier at `tree_size`, read inside the writer's transaction."""
        keys = merkle.frontier(tree_size)
        if not keys:
            return CompactTree()
        t = audit_tree.c
        stmt = select(t.tree_size, t.level, t.hash).where(t.tree_size.in_([k.tree_size for k in keys]))
        nodes = {NodeKey(int(r.tree_size), int(r.level)): bytes(r.hash) for r in conn.execute(stmt)}
        missing = [k for k in keys if k not in nodes]
        if missing:
            raise TreeError(
                f"Merkle frontier node {tuple(missing[0])} is missing: the tree does not match the entries",
                seq=missing[0].start + 1,
            )
        return CompactTree.from_frontier(tree_size, nodes)

    def _bulk_insert(self, conn: Connection, table: Table, rows: Sequence[tuple[Any, ...]]) -> None:
        """One driver-level executemany of tuples in `table.columns` order.

        Skips SQLAlchemy's per-row parameter processing (half the cost of an append at
        group-commit sizes); the values are plain str, int, float, bytes and None, which both
        drivers bind natively.
        """
        names = [c.name for c in table.columns]
        prep = self._engine.dialect.identifier_preparer
        mark = "?" if self._engine.dialect.paramstyle == "qmark" else "%s"
        sql = (
            f"INSERT INTO {self._qualified(table.name)} ({', '.join(prep.quote(n) for n in names)}) "
            f"VALUES ({', '.join([mark] * len(names))})"
        )
        conn.exec_driver_sql(sql, list(rows))

    def _qualified(self, name: str) -> str:
        prep = self._engine.dialect.identifier_preparer
        quoted = prep.quote(name)
        return f"{prep.quote_schema(self._schema)}.{quoted}" if self._schema else quoted

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        """A transaction that holds the table's write lock from its first statement."""
        with self._engine.connect() as conn:
            conn.execution_options(mlw_write=True)
            with conn.begin():
                if self._postgres:
                    conn.execute(text(f"LOCK TABLE {self._qualified_table()} IN EXCLUSIVE MODE"))
                yield conn

    def _qualified_table(self) -> str:
        prep = self._engine.dialect.identifier_preparer
        name = prep.quote(audit_entries.name)
        return f"{prep.quote_schema(self._schema)}.{name}" if self._schema else name

    @staticmethod
    def _head(conn: Connection) -> ChainHead:
        stmt = select(audit_entries.c.seq, audit_entries.c.entry_hash).order_by(audit_entries.c.seq.desc()).limit(1)
        row = conn.execute(stmt).first()
        return ChainHead(0, GENESIS_HASH) if row is None else ChainHead(int(row.seq), row.entry_hash)

    @staticmethod
    def _known(conn: Connection, event_ids: list[str]) -> dict[str, _Known]:
        """The stored entries of these ids (their bodies are read to tell a redelivery from
        equivocation; only ids already stored are read, which is rare outside redeliveries)."""
        found: dict[str, _Known] = {}
        c = audit_entries.c
        for start in range(0, len(event_ids), _PROBE_CHUNK):
            chunk = event_ids[start : start + _PROBE_CHUNK]
            stmt = select(c.event_id, c.seq, c.body, c.subject).where(c.event_id.in_(chunk))
            for row in conn.execute(stmt):
                found[row.event_id] = _Known(int(row.seq), row.body, row.subject)
        return found

    @contextmanager
    def _errors(self) -> Iterator[None]:
        # A locked SQLite file or an unreachable server is worth a retry; translate it at the
        # boundary so callers see one error family and never a driver's class.
        try:
            yield
        except OperationalError as exc:
            raise StoreUnavailableError(_first_line(exc), url=self._url) from exc


def _row(item: IncomingEvent, seq: int, prev_hash: str, entry_hash: str) -> tuple[Any, ...]:
    """An `audit_entries` row, in column order."""
    return (
        seq,
        item.event_id,
        item.type,
        item.source,
        item.subject,
        item.service,
        item.actor,
        item.decision,
        item.client,
        item.time,
        item.recorded_at,
        item.body,
        prev_hash,
        entry_hash,
    )


def _first_line(exc: BaseException) -> str:
    # The driver's message without SQLAlchemy's SQL echo and parameters (which hold event data).
    lines = str(getattr(exc, "orig", None) or exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _configure_sqlite(engine: Engine) -> None:
    """WAL and `synchronous=NORMAL` on every connection, and explicit transaction control.

    pysqlite's own implicit BEGIN is switched off (the SQLAlchemy-documented recipe) so that a
    write transaction can start with `BEGIN IMMEDIATE`, taking the write lock before the head is
    read; readers start a plain deferred `BEGIN` and never block the writer under WAL.
    """

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: ConnectionPoolEntry) -> None:
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        # WAL: readers and the writer do not block each other; NORMAL: fsync at checkpoints
        # only, still durable against a process crash (https://sqlite.org/wal.html).
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA busy_timeout=10000")
        # 64 MiB page cache (default 2 MiB): the seven query indexes take random inserts, and
        # at a million entries their hot pages no longer fit the default.
        cursor.execute("PRAGMA cache_size=-65536")
        # Copy the WAL into the database every ~40 MiB (default ~4 MiB): a group commit dirties
        # pages all over the nine b-trees, and a longer WAL copies each of them, and fsyncs,
        # once for many batches. Measured (benchmarks/audit_log.py batches): 20% less writer
        # time per entry; a commit still fsyncs nothing (NORMAL).
        cursor.execute(f"PRAGMA wal_autocheckpoint={_WAL_AUTOCHECKPOINT_PAGES}")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        immediate = conn.get_execution_options().get("mlw_write", False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")
