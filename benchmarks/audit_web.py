"""The auditors' web page's JSON API at a million entries: a program, not a test.

    uv run python benchmarks/audit_web.py                        # 1,000,000 entries (~2-3 min, 2 cores)
    uv run python benchmarks/audit_web.py --entries 100000       # quick

Fills a SQLite trail through the real schema (`AuditStore.create()`: tables, indexes, triggers)
with one bulk insert per 50,000 rows: real hash chain, real Merkle tree nodes (`store.leaf_input`,
`chain_hash`, `CompactTree`), no envelope parsing. Then times the page's API in-process
(Starlette's test client: routing, parameter parsing, `run_query`, JSON), opened read-only
like `mlwarden audit serve`, and prints per path the p50/p95 beside its anchor from the same run:

- search paths (time range + one filter, two filters, a page deep in the results) against the
  naive OFFSET paging of the same order, at a random depth of the same result set (the anchor
  runs straight SQL, no HTTP: it is favoured);
- an entry's detail (with its inclusion proof built and checked) against the 100 ms budget.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from rich.console import Console
from rich.table import Table
from sqlalchemy import select
from starlette.testclient import TestClient

from mlwarden.audit_web import WebDeps, create_app
from services.audit_log import merkle
from services.audit_log.checkpoint import sign_checkpoint
from services.audit_log.merkle import CompactTree
from services.audit_log.query import run_query, to_audit_entry
from services.audit_log.store import (
    GENESIS_HASH,
    AuditStore,
    EntryFields,
    StoredEntry,
    audit_entries,
    chain_hash,
    leaf_input,
)
from shared.events import AuditPage, AuditQuery
from shared.signing import SigningKey

T0 = 1_700_000_000.0
SPAN_S = 30 * 86400.0  # a month of events
SERVICES = ["data-guard", "artifact-signer", "registry-gate", "serving-monitor", None]
TYPES = [
    "mlw.dataset.uploaded",
    "mlw.verdict.dataset",
    "mlw.model.built",
    "mlw.verdict.artifact",
    "mlw.verdict.admission",
]
#: What each service decides (producer events, service None, carry no decision).
DECIDES: dict[str | None, list[str | None]] = {
    "data-guard": ["pass", "pass", "warn", "fail"],
    "artifact-signer": ["pass", "pass", "fail"],
    "registry-gate": ["promoted", "rejected", "pending"],
    "serving-monitor": ["allow", "deny", "deny"],
    None: [None],
}
DECISIONS = ["pass", "warn", "fail", "promoted", "rejected", "pending", "allow", "deny"]
BUDGET_MS = 100.0
CHUNK = 50_000


def pct(samples: list[float], q: int) -> float:
    """The q-th percentile (inclusive method)."""
    return statistics.quantiles(samples, n=100, method="inclusive")[q - 1]


def entry(i: int, rng: random.Random, n: int) -> EntryFields:
    """Entry i of n: arrival order, event time close to it, ~400 bytes of body."""
    when = T0 + SPAN_S * i / n + rng.random() * 60
    service = rng.choice(SERVICES)
    body = {
        "specversion": "1.0",
        "id": f"bench-{i:09d}",
        "source": f"mlwarden/{service or 'cli'}",
        "type": rng.choice(TYPES),
        "time": when,
        "subject": f"model:m{rng.randrange(1000)}:{rng.randrange(5)}",
        "signer": service or f"user{rng.randrange(200)}",
        "signature": "x" * 88,
        "data": {"decision": rng.choice(DECIDES[service]), "sha256": f"{rng.getrandbits(256):064x}", "note": "x" * 100},
    }
    data = body["data"]
    assert isinstance(data, dict)
    return EntryFields(
        event_id=str(body["id"]),
        type=str(body["type"]),
        source=str(body["source"]),
        subject=str(body["subject"]),
        service=service,
        actor=None if service else str(body["signer"]),
        decision=data["decision"],
        client=f"client{rng.randrange(500)}" if body["type"] == "mlw.verdict.admission" else None,
        time=when,
        recorded_at=when + 0.5,
        body=orjson.dumps(body).decode(),
    )


def fill(url: str, n: int) -> float:
    """Bulk-insert n entries (chain and tree included) into a freshly created store."""
    store = AuditStore(url)
    store.create()
    rng = random.Random(7)
    tree = CompactTree()
    prev = GENESIS_HASH
    start = time.perf_counter()
    raw = store.engine.raw_connection()
    try:
        cur = raw.cursor()
        cur.execute("PRAGMA synchronous=OFF")
        names = [c.name for c in audit_entries.columns]
        insert = f"INSERT INTO audit_entries ({', '.join(names)}) VALUES ({', '.join('?' * len(names))})"
        for first in range(0, n, CHUNK):
            rows: list[tuple[Any, ...]] = []
            nodes: list[tuple[int, int, bytes]] = []
            for i in range(first, min(n, first + CHUNK)):
                fields = entry(i, rng, n)
                seq = i + 1
                leaf = leaf_input(seq, fields)
                entry_hash = chain_hash(prev, leaf)
                rows.append((seq, *(getattr(fields, c) for c in names[1:-2]), prev, entry_hash))
                nodes += [(k.tree_size, k.level, h) for k, h in tree.append(merkle.leaf_hash(leaf))]
                prev = entry_hash
            cur.execute("BEGIN")
            cur.executemany(insert, rows)
            cur.executemany("INSERT INTO audit_tree (tree_size, level, hash) VALUES (?, ?, ?)", nodes)
            cur.execute("COMMIT")
            print(f"  filled {first + len(rows):,} / {n:,}", file=sys.stderr, flush=True)
        cur.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        cur.execute("ANALYZE")
    finally:
        raw.close()
        store.close()
    return time.perf_counter() - start


def timed(fn: Callable[[], object]) -> float:
    """Milliseconds one call takes."""
    start = time.perf_counter()
    fn()
    return (time.perf_counter() - start) * 1000


def main() -> int:
    """Fill, measure, print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000, help="trail size (default: %(default)s)")
    parser.add_argument("--samples", type=int, default=200, help="requests per path (default: %(default)s)")
    parser.add_argument("--keep", type=Path, help="fill this file once and reuse it on later runs (same --entries)")
    args = parser.parse_args()
    n, samples = args.entries, args.samples
    rng = random.Random(11)
    with tempfile.TemporaryDirectory() as tmp:
        path = args.keep or Path(tmp) / "audit.db"
        url = f"sqlite:///{path.resolve()}"
        if not path.exists():
            took = fill(url, n)
            print(f"filled {n:,} entries in {took:.1f} s ({n / took:,.0f} rows/s)", file=sys.stderr)
        else:
            # A kept trail gets the current schema's indexes (as `create()` adds them to any trail).
            with AuditStore(url) as writer:
                writer.create()
        key = SigningKey.generate("audit-log")
        with AuditStore(url, read_only=True) as store:
            cp = sign_checkpoint(key, n, store.root(n), timestamp_ms=int((T0 + SPAN_S) * 1000))
            deps = WebDeps(store, lambda: [cp], key.private.public_key(), "bench", "bench")
            with TestClient(create_app(deps), base_url="http://127.0.0.1") as client:
                rows = measure(client, store, n, samples, rng)
    table = Table(
        "API path",
        "p50 ms",
        "p95 ms",
        "anchor",
        "anchor p95 ms",
        "anchor / p95",
        title=f"audit web page JSON API, {n:,} entries (SQLite, read-only)",
    )
    for row in rows:
        table.add_row(*row)
    Console(width=150).print(table)
    return 0


def get(client: TestClient, path: str, params: dict[str, str]) -> Any:
    """One API call that must succeed."""
    response = client.get(path, params=params)
    if response.status_code != 200:
        raise SystemExit(f"{path} {params}: {response.status_code} {response.text[:300]}")
    return response.json()


def window(rng: random.Random) -> dict[str, str]:
    """A random time range of one hour, a day or a week in the month."""
    width = rng.choice([3600.0, 86400.0, 7 * 86400.0])
    since = T0 + rng.random() * (SPAN_S - width)
    return {"since": str(since), "until": str(since + width)}


def one_filter(rng: random.Random) -> dict[str, str]:
    """One of the page's filters with a realistic value."""
    name = rng.choice(["service", "actor", "subject", "decision", "type"])
    value = {
        "service": lambda: rng.choice(SERVICES[:4]),
        "actor": lambda: f"user{rng.randrange(200)}",
        "subject": lambda: f"model:m{rng.randrange(1000)}:*",
        "decision": lambda: rng.choice(DECISIONS),
        "type": lambda: rng.choice(TYPES),
    }[name]()
    return {name: str(value)}


def offset_page(store: AuditStore, where: list[Any], offset: int) -> None:
    """The anchor: the same order, page size and entries (as `AuditEntry`), reached by OFFSET."""
    t = audit_entries.c
    stmt = select(audit_entries).where(*where).order_by(t.time.desc(), t.seq.desc()).limit(50).offset(offset)
    with store.engine.connect() as conn:
        rows = conn.execute(stmt).all()
    AuditPage(entries=[to_audit_entry(StoredEntry(**row._mapping)) for row in rows])


def measure(client: TestClient, store: AuditStore, n: int, samples: int, rng: random.Random) -> list[tuple[str, ...]]:
    """Time each API path and its anchor; rows of the result table."""
    t = audit_entries.c
    get(client, "/api/entries", {})  # warm the cache
    first: list[float] = []
    ranged: dict[str, list[float]] = {}
    two: list[float] = []
    never: list[float] = []
    deep: list[float] = []
    keyset_sql: list[float] = []
    anchor: list[float] = []
    deep_all: list[float] = []
    anchor_all: list[float] = []
    detail: list[float] = []
    timeline: list[float] = []
    for _ in range(samples):
        first.append(timed(lambda: get(client, "/api/entries", {"limit": "50"})))
        chosen = one_filter(rng)
        params = window(rng) | chosen
        took = timed(lambda p=params: get(client, "/api/entries", p | {"limit": "50"}))
        ranged.setdefault(next(iter(chosen)), []).append(took)
        service = str(rng.choice(SERVICES[:4]))
        pair = {"service": service, "decision": str(rng.choice(DECIDES[service]))}
        two.append(timed(lambda p=pair: get(client, "/api/entries", p | {"limit": "50"})))
        # Two common values that never meet (data-guard never allows): the worst case of a pair.
        other = str(rng.choice([d for d in DECISIONS if d not in DECIDES[service]]))
        none = {"service": service, "decision": other}
        never.append(timed(lambda p=none: get(client, "/api/entries", p | {"limit": "50"})))
        # A page deep in the results: the cursor of a random entry, as a reader who paged there holds.
        depth = rng.randrange(n // 2, n)
        cursor = {"cursor": str(n - depth), "decision": str(rng.choice(["pass", "deny"])), "limit": "50"}
        deep.append(timed(lambda p=cursor: get(client, "/api/entries", p)))
        query = AuditQuery(decision=cursor["decision"], cursor=n - depth, limit=50)
        keyset_sql.append(timed(lambda q=query: run_query(store, q)))
        # The anchor: that depth of the same filter by OFFSET (about a ninth of entries are "pass",
        # a tenth "deny").
        where = [t.decision == cursor["decision"]]
        anchor.append(timed(lambda w=where, d=depth // 10: offset_page(store, w, d)))
        # The same without a filter: page `depth` of the whole trail, by cursor and by OFFSET.
        deep_all.append(timed(lambda c=str(n - depth): get(client, "/api/entries", {"cursor": c, "limit": "50"})))
        anchor_all.append(timed(lambda d=depth: offset_page(store, [], d)))
        seq = rng.randrange(1, n + 1)
        detail.append(timed(lambda s=seq: get(client, f"/api/entries/{s}", {})))
        model = {"model": f"m{rng.randrange(1000)}", "version": str(rng.randrange(5))}
        timeline.append(timed(lambda m=model: get(client, "/api/timeline", m)))
    anchor_p95 = pct(anchor, 95)

    def row(
        name: str, times: list[float], versus: str = "OFFSET paging, same depth", base: float = anchor_p95
    ) -> tuple[str, ...]:
        p95 = pct(times, 95)
        return (name, f"{pct(times, 50):.1f}", f"{p95:.1f}", versus, f"{base:.1f}", f"{base / p95:.2f}")

    budget = f"budget p95 <= {BUDGET_MS:.0f} ms"
    return [
        row("/api/entries newest page, no filter", first, budget, BUDGET_MS),
        *(row(f"/api/entries time range + {name}", times, budget, BUDGET_MS) for name, times in sorted(ranged.items())),
        row("/api/entries time range + any one filter", [x for v in ranged.values() for x in v], budget, BUDGET_MS),
        row("/api/entries service + decision", two, budget, BUDGET_MS),
        row("/api/entries service + decision never met", never, budget, BUDGET_MS),
        row("/api/entries?cursor= deep page + decision", deep),
        row("  the same page, run_query alone (no HTTP)", keyset_sql),
        row("/api/entries?cursor= deep page, no filter", deep_all, "OFFSET paging, same depth", pct(anchor_all, 95)),
        row("/api/entries/{seq} with proof checked", detail, budget, BUDGET_MS),
        row("/api/timeline model version", timeline, budget, BUDGET_MS),
    ]


if __name__ == "__main__":
    raise SystemExit(main())
