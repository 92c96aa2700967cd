"""audit-log benchmark: a program, not a test. Prints one table of figures measured side by side.

    uv run python benchmarks/audit_log.py                 # default: 1,000,000 entries (~6-9 min, 2 cores)
    uv run python benchmarks/audit_log.py --entries 100000 --messages 20000   # quick

Rows:
- ingestion through real JetStream (embedded nats-server): audit-log's Ingestor (parse, hash
  chain, Merkle tree, group commit in its writer process, ack after commit, checkpoints)
  against a bare nats-py consumer that only fetches in batches of the same size and acks each
  message, on the same stream in the same run (before and after; the faster is the anchor);
- rows/s of batched (group) commits against one commit per row;
- auditor queries (a time range plus one filter, newest first, one page) at `--entries` rows;
- inclusion and consistency proof generation and verification at `--entries` rows.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from services.audit_log import merkle
from services.audit_log.app import Checkpointer, Ingestor
from services.audit_log.checkpoint import CheckpointMirror, CheckpointPolicy
from services.audit_log.proof import build_inclusion_proof, check_inclusion_proof
from services.audit_log.query import run_query
from services.audit_log.store import AuditStore, IncomingEvent
from services.audit_log.writer import ProcessWriter
from shared.bus import ServiceRuntime
from shared.canonical import canonical_json
from shared.embedded import EmbeddedNats
from shared.events import AuditCheckpoint, AuditQuery
from shared.signing import SigningKey, TrustStore
from shared.topology import ConsumerSpec, Subjects, ensure_topology

T0 = 1_700_000_000.0
SPAN_S = 30 * 86400.0  # a month of events
SERVICES = ["data-guard", "artifact-signer", "registry-gate", "serving-monitor", "cli"]
TYPES = [
    "mlw.dataset.uploaded",
    "mlw.verdict.dataset",
    "mlw.model.built",
    "mlw.verdict.artifact",
    "mlw.verdict.admission",
]
DECISIONS = ["pass", "warn", "fail", "allow", "deny"]
#: Messages per fetch, for audit-log's ingestor and for the bare consumer it is compared with.
BATCH = 1024


@dataclass
class Row:
    """One line of the result table."""

    what: str
    figure: str
    anchor: str = ""
    ratio: str = ""


def envelope(i: int, rng: random.Random, *, type_: str | None = None) -> bytes:
    """A realistic event of ~400 bytes, with every indexed field set (`type_`, or a random type)."""
    t = T0 + rng.random() * SPAN_S
    drawn = rng.choice(TYPES)
    body = {
        "specversion": "1.0",
        "id": f"bench-{i:09d}",
        "source": f"mlwarden/{rng.choice(SERVICES)}",
        "type": type_ or drawn,
        "time": datetime.fromtimestamp(t, UTC).isoformat(),
        "subject": f"model:m{rng.randrange(1000)}:{rng.randrange(5)}",
        "datacontenttype": "application/json",
        "data": {
            "uploader": f"user{rng.randrange(200)}",
            "decision": rng.choice(DECISIONS),
            "client": f"client{rng.randrange(500)}",
            "sha256": f"{rng.getrandbits(256):064x}",
            "note": "x" * 120,
        },
    }
    return orjson.dumps(body)


def sign_body(body: bytes, key: SigningKey) -> bytes:
    """`body` with `signer` and the Ed25519 signature over its canonical JSON (docs/signatures.md)."""
    event = orjson.loads(body)
    event["signer"] = key.key_id
    event["signature"] = key.sign(canonical_json(event))
    return orjson.dumps(event)


@dataclass
class BenchRuntime:
    """What the Ingestor asks of a runtime when every event is valid and the database healthy:
    the trust store, and the outage bookkeeping (nothing to report here)."""

    trust: TrustStore
    metrics: None = None

    async def infrastructure_recovered(self) -> None:
        """Nothing was failing."""

    async def infrastructure_failed(self, failure: object) -> None:
        """A benchmark stops at the first failure."""
        raise RuntimeError(f"audit-log ingestion failed during the benchmark: {failure!r}")


def timed(fn: Callable[[], Any]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def pct(samples: list[float], q: float) -> float:
    return statistics.quantiles(samples, n=100, method="inclusive")[int(q) - 1] if len(samples) > 1 else samples[0]


# --- ingestion through JetStream ----------------------------------------------------------------


async def bench_ingestion(messages: int, workdir: Path, rows: list[Row]) -> None:
    import nats

    rng = random.Random(1)
    # Published on mlw.dataset.uploaded, so of that type: audit-log refuses a type that is not
    # the subject (issue 8). Signed by one of eight actors, as producer events are: audit-log's
    # writer verifies every signature before it labels the entry (issue 8).
    actors = [SigningKey.generate(f"actor{k}") for k in range(8)]
    trust = TrustStore()
    for actor in actors:
        trust.add(actor.key_id, actor.public_b64(), kind="actor")
    bodies = [sign_body(envelope(i, rng, type_=Subjects.DATASET_UPLOADED), actors[i % 8]) for i in range(messages)]
    server = EmbeddedNats(workdir / "nats").start()
    try:
        nc = await nats.connect(server.url)
        js = nc.jetstream()
        await ensure_topology(js)
        for first in range(0, messages, 2000):
            chunk = bodies[first : first + 2000]
            await asyncio.gather(
                *(
                    js.publish(Subjects.DATASET_UPLOADED, b, headers={"Nats-Msg-Id": f"bench-{first + k}"})
                    for k, b in enumerate(chunk)
                )
            )

        # (1) the anchor: a bare nats-py consumer, batched fetches of the ingestor's size, one
        # awaited ack per message (as the ingestor acks), measured before and after audit-log
        # on the same stream; the faster of the two is the anchor (the stricter choice).
        async def bare_consume(durable: str) -> float:
            spec = ConsumerSpec("MLW_EVENTS", durable, ("mlw.>",), max_ack_pending=20_000)
            await js.add_consumer(spec.stream, spec.config())
            sub = await js.pull_subscribe_bind(durable=spec.durable, stream=spec.stream)
            got = 0
            start = time.perf_counter()
            while got < messages:
                for msg in await sub.fetch(BATCH, timeout=5):
                    await msg.ack()
                    got += 1
            took = time.perf_counter() - start
            await sub.unsubscribe()
            return messages / took

        bare_before = await bare_consume("bench-bare-1")

        # (2) audit-log's ingestion: the same stream through its own durable, parsing, chaining
        # and committing in its writer process (started first, as the service does at start).
        store_url = f"sqlite:///{workdir / 'ingest.db'}"
        store = AuditStore(store_url)
        store.create()
        key = SigningKey.generate("audit-log")

        async def publish(cp: AuditCheckpoint) -> None:
            await js.publish(Subjects.AUDIT_CHECKPOINTS, orjson.dumps(cp.model_dump(mode="json")))

        checkpointer = Checkpointer(
            store,
            key,
            CheckpointPolicy(every_entries=1000, every_seconds=5.0),
            CheckpointMirror(workdir / "cps.jsonl"),
            publish,
            origin="bench",
        )

        async def on_commit() -> None:
            await checkpointer.maybe_issue()

        # The runtime gives the trust store; its dead-letter and alert paths are never taken
        # by valid events.
        writer = ProcessWriter(store_url)
        await writer.start()
        runtime = cast(ServiceRuntime, BenchRuntime(trust))
        ingestor = Ingestor(writer, runtime, batch=BATCH, on_commit=on_commit)
        start = time.perf_counter()
        await ingestor.start(js)
        while ingestor.stored < messages:
            if not ingestor.running:  # a fetch loop died: say why instead of waiting forever
                for task in ingestor._tasks:
                    if task.done() and task.exception() is not None:
                        raise RuntimeError("audit-log ingestion stopped") from task.exception()
            await asyncio.sleep(0.01)
        audit_s = time.perf_counter() - start
        await ingestor.stop()
        bare_after = await bare_consume("bench-bare-2")
        await nc.close()
        bare_rate, audit_rate = max(bare_before, bare_after), messages / audit_s
        rows.append(
            Row(
                f"bare nats-py consume ({messages:,} msgs, fetch {BATCH}, ack each)",
                f"{bare_rate:,.0f} msg/s",
                "before / after audit-log",
                f"{bare_before:,.0f} / {bare_after:,.0f} msg/s",
            )
        )
        rows.append(
            Row(
                "audit-log ingestion (chain + tree + group commit + checkpoints)",
                f"{audit_rate:,.0f} msg/s",
                "bare consume",
                f"{audit_rate / bare_rate:.2f}x (goal >= 0.8x)",
            )
        )
        assert store.count() == messages
        store.close()
    finally:
        server.stop()


# --- commits --------------------------------------------------------------------------------------


def bench_commits(workdir: Path, rows: list[Row], n: int = 3000) -> None:
    rng = random.Random(2)
    items = [IncomingEvent.from_bytes(envelope(i, rng), recorded_at=T0) for i in range(2 * n)]
    batched = AuditStore(f"sqlite:///{workdir / 'batched.db'}")
    batched.create()
    per_row = AuditStore(f"sqlite:///{workdir / 'per-row.db'}")
    per_row.create()
    b = timed(lambda: [batched.append_batch(items[i : i + 256]) for i in range(0, n, 256)])
    p = timed(lambda: [per_row.append_batch([item]) for item in items[n : 2 * n]])
    rows.append(
        Row(
            f"SQLite rows/s, batches of 256 ({n:,} rows)",
            f"{n / b:,.0f} rows/s",
            "one commit per row",
            f"{(n / b) / (n / p):.1f}x",
        )
    )
    rows.append(Row("SQLite rows/s, one commit per row", f"{n / p:,.0f} rows/s"))
    batched.close()
    per_row.close()


# --- a large trail: queries and proofs -------------------------------------------------------------


def fill(store: AuditStore, entries: int) -> float:
    rng = random.Random(3)
    start = time.perf_counter()
    batch: list[IncomingEvent] = []
    for i in range(entries):
        batch.append(IncomingEvent.from_bytes(envelope(i, rng), recorded_at=T0 + SPAN_S + i * 1e-3))
        if len(batch) == 5000:
            store.append_batch(batch)
            batch = []
            if i % 100_000 < 5000:
                print(f"  filled {i + 1:,} / {entries:,}", file=sys.stderr, flush=True)
    if batch:
        store.append_batch(batch)
    return time.perf_counter() - start


def bench_queries(store: AuditStore, entries: int, rows: list[Row], samples: int = 300) -> None:
    rng = random.Random(4)
    filters: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("service", lambda: {"service": rng.choice(SERVICES[:4])}),
        ("type", lambda: {"type": rng.choice(TYPES)}),
        ("subject", lambda: {"subject": f"model:m{rng.randrange(1000)}:{rng.randrange(5)}"}),
        ("actor", lambda: {"actor": f"user{rng.randrange(200)}"}),
        ("decision", lambda: {"decision": rng.choice(DECISIONS)}),
        ("client", lambda: {"client": f"client{rng.randrange(500)}"}),
    ]
    run_query(store, AuditQuery(limit=50))  # warm the cache
    all_times: list[float] = []
    for name, make in filters:
        times = []
        for _ in range(samples):
            # A window of 1 hour to 7 days anywhere in the month.
            width = rng.choice([3600.0, 86400.0, 7 * 86400.0])
            since = T0 + rng.random() * (SPAN_S - width)
            query = AuditQuery(since=since, until=since + width, limit=50, **make())
            start = time.perf_counter()
            run_query(store, query)
            times.append((time.perf_counter() - start) * 1000)
        all_times += times
        rows.append(
            Row(
                f"query time range + {name}, {entries:,} entries",
                f"p50 {pct(times, 50):.2f} ms / p95 {pct(times, 95):.2f} ms",
            )
        )
    p95 = pct(all_times, 95)
    rows.append(
        Row(
            f"query, all filters, {entries:,} entries",
            f"p50 {pct(all_times, 50):.2f} ms / p95 {p95:.2f} ms",
            "goal p95 <= 10 ms",
            f"{p95 / 10:.2f}x of the budget",
        )
    )


def bench_proofs(store: AuditStore, entries: int, rows: list[Row], samples: int = 300) -> None:
    rng = random.Random(5)
    key = SigningKey.generate("audit-log")
    from services.audit_log.checkpoint import sign_checkpoint

    cp = sign_checkpoint(key, entries, store.root(entries), timestamp_ms=1)
    public = key.private.public_key()
    gen, ver = [], []
    for _ in range(samples):
        index = rng.randrange(entries)
        start = time.perf_counter()
        proof = build_inclusion_proof(store, cp, event_id=f"bench-{index:09d}")
        gen.append((time.perf_counter() - start) * 1000)
        start = time.perf_counter()
        check_inclusion_proof(proof, public)
        ver.append((time.perf_counter() - start) * 1000)
    rows.append(
        Row(
            f"inclusion proof generation, {entries:,} entries", f"p50 {pct(gen, 50):.2f} ms / p95 {pct(gen, 95):.2f} ms"
        )
    )
    rows.append(
        Row(
            "inclusion proof verification (offline, + signature)",
            f"p50 {pct(ver, 50):.2f} ms / p95 {pct(ver, 95):.2f} ms",
        )
    )
    cgen, cver = [], []
    for _ in range(samples // 3):
        first = rng.randrange(1, entries)
        start = time.perf_counter()
        path = store.consistency_proof(first, entries)
        cgen.append((time.perf_counter() - start) * 1000)
        old = store.root(first)
        start = time.perf_counter()
        merkle.verify_consistency(first, entries, old, bytes.fromhex(cp.root_hash), path)
        cver.append((time.perf_counter() - start) * 1000)
    rows.append(Row("consistency proof generation", f"p50 {pct(cgen, 50):.2f} ms / p95 {pct(cgen, 95):.2f} ms"))
    rows.append(Row("consistency proof verification", f"p50 {pct(cver, 50):.3f} ms / p95 {pct(cver, 95):.3f} ms"))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--entries", type=int, default=1_000_000, help="trail size for queries and proofs")
    parser.add_argument("--messages", type=int, default=50_000, help="messages through JetStream")
    parser.add_argument("--db", help="SQLAlchemy URL for the large trail (default: a temporary SQLite file)")
    parser.add_argument("--skip-ingest", action="store_true")
    args = parser.parse_args()
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="mlw-bench-") as tmp:
        workdir = Path(tmp)
        if not args.skip_ingest:
            print("ingestion through JetStream ...", file=sys.stderr, flush=True)
            asyncio.run(bench_ingestion(args.messages, workdir, rows))
        print("commits ...", file=sys.stderr, flush=True)
        bench_commits(workdir, rows)
        store = AuditStore(args.db or f"sqlite:///{workdir / 'large.db'}")
        store.create()
        if store.count() != args.entries:
            if store.count():
                print(f"{args.db} holds {store.count():,} entries, not {args.entries:,}", file=sys.stderr)
                return 2
            print(f"filling {args.entries:,} entries ...", file=sys.stderr, flush=True)
            took = fill(store, args.entries)
            rows.append(
                Row(f"fill {args.entries:,} entries (append_batch of 5000)", f"{args.entries / took:,.0f} rows/s")
            )
        print("queries and proofs ...", file=sys.stderr, flush=True)
        bench_queries(store, args.entries, rows)
        bench_proofs(store, args.entries, rows)
        store.close()
    width = max(len(r.what) for r in rows)
    fig = max(len(r.figure) for r in rows)
    print(f"{'measure':<{width}}  {'figure':<{fig}}  anchor / ratio")
    print("-" * (width + fig + 40))
    for r in rows:
        extra = f"{r.anchor}: {r.ratio}" if r.anchor else ""
        print(f"{r.what:<{width}}  {r.figure:<{fig}}  {extra}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
