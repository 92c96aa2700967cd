"""serving-monitor benchmark: figures beside their anchors, measured in one run.

    uv run python benchmarks/serving_monitor.py [--requests 20000]

1. GCRA (constant state per client) vs the naive sliding log (a deque of timestamps per client):
   checks per second at a sustained rate, and memory per client.
2. The whole admission decision (HMAC key check, scope, GCRA, validation of 30 features).
3. `mlw.serving.admit` round trips per second through a real nats-server, against the physical
   limit of this machine: a bare NATS responder that echoes, driven by the same client.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import Row, rate, show

from services.serving_monitor.admission import Admission
from services.serving_monitor.auth import ApiKeyStore
from services.serving_monitor.ratelimit import GcraLimiter
from services.serving_monitor.validation import FeatureSchema, FeatureSpec, SchemaRegistry
from shared.events import AdmitRequest


class SlidingLog:
    """The naive limiter: every timestamp in the window, per client (what not to do)."""

    def __init__(self, rate_per_second: float, window_s: float = 1.0) -> None:
        self.limit = rate_per_second * window_s
        self.window = window_s
        self.log: dict[str, collections.deque[float]] = {}

    def check(self, client: str, now: float) -> bool:
        """Allow when fewer than `limit` requests fell in the last window."""
        q = self.log.setdefault(client, collections.deque())
        while q and q[0] <= now - self.window:
            q.popleft()
        if len(q) < self.limit:
            q.append(now)
            return True
        return False


def limiter_rows(n: int) -> list[Row]:
    clients = [f"client-{i}" for i in range(1000)]
    rate_limit = 1000.0
    gcra = GcraLimiter(rate_limit, rate_limit)
    naive = SlidingLog(rate_limit)
    clock = [0.0]

    def tick() -> float:
        clock[0] += 1e-5
        return clock[0]

    i = [0]

    def gcra_call() -> None:
        i[0] += 1
        gcra.check(clients[i[0] % 1000], tick())

    def naive_call() -> None:
        i[0] += 1
        naive.check(clients[i[0] % 1000], tick())

    gcra_rate = rate(gcra_call, n * 10)
    naive_rate = rate(naive_call, n * 10)

    def memory(make: object) -> float:
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        limiter = make() if callable(make) else make
        t = 0.0
        for _ in range(200):  # 200 requests per client inside one window
            for c in clients:
                t += 1e-6
                limiter.check(c, t)
        used = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        return used / len(clients)

    gcra_mem = memory(lambda: GcraLimiter(rate_limit, rate_limit))
    naive_mem = memory(lambda: SlidingLog(rate_limit))
    return [
        Row("rate-limit checks", gcra_rate, "sliding log", naive_rate, "checks/s"),
        Row("memory per client at 200 req/window", gcra_mem, "sliding log", naive_mem, "B", higher_is_better=False),
    ]


def admission_rows(n: int) -> tuple[list[Row], Admission, str]:
    store = ApiKeyStore(ApiKeyStore.generate_pepper())
    key, _ = store.issue("webapp", ["churn"])
    features = [FeatureSpec(name=f"f{i}", min=-10, max=10) for i in range(30)]
    schemas = SchemaRegistry([FeatureSchema(model="churn", features=features)])
    admission = Admission(store, GcraLimiter(1e9, 1e9), schemas)
    row = {f"f{i}": 0.5 for i in range(30)}
    request = AdmitRequest(api_key=key, model="churn", inputs=[row])
    clock = [0.0]

    def decide() -> None:
        clock[0] += 1e-6
        admission.decide(request, clock[0])

    decide_rate = rate(decide, n)
    parse_rate = rate(lambda: AdmitRequest.model_validate(orjson.loads(request.model_dump_json())), n)
    return (
        [Row("admission decision (30 features)", decide_rate, "parse the request only", parse_rate, "req/s")],
        admission,
        key,
    )


async def bus_rows(n: int) -> list[Row]:
    from nats.aio.msg import Msg

    from mlwarden.bootstrap import bootstrap
    from services.serving_monitor.app import ServingSettings, create_app
    from services.serving_monitor.keystore import issue_key_on_bus, register_schema_on_bus
    from shared.bus import connect
    from shared.client import Client
    from shared.embedded import EmbeddedNats
    from shared.settings import Settings

    with tempfile.TemporaryDirectory() as tmp, EmbeddedNats(Path(tmp) / "nats") as server:
        settings = Settings(data_dir=Path(tmp) / "data", nats_url=server.url)
        nc = await connect(settings)
        await bootstrap(nc.jetstream(), settings)
        features = [FeatureSpec(name=f"f{i}", min=-10, max=10) for i in range(30)]
        await register_schema_on_bus(nc.jetstream(), FeatureSchema(model="churn", features=features))
        key = await issue_key_on_bus(nc.jetstream(), settings, "webapp", ["churn"])
        svc = create_app(settings, ServingSettings(rate_per_second=1e9, burst=1e9))
        await svc.start()
        await asyncio.sleep(0.5)
        body = orjson.dumps(
            AdmitRequest(api_key=key, model="churn", inputs=[{f"f{i}": 0.5 for i in range(30)}]).model_dump()
        )

        async def echo(msg: Msg) -> None:
            await msg.respond(b'{"allowed":true,"reason":"ok"}')

        await nc.subscribe("bench.echo", cb=echo)
        async with Client.connect(settings) as client:

            async def drive(subject: str) -> float:
                sem = asyncio.Semaphore(64)

                async def one() -> None:
                    async with sem:
                        reply = await client.nc.request(subject, body, timeout=10)
                        assert b'"allowed":true' in reply.data, reply.data

                start = time.perf_counter()
                await asyncio.gather(*(one() for _ in range(n)))
                return n / (time.perf_counter() - start)

            await drive("bench.echo")  # warm up both paths
            await drive("mlw.serving.admit")
            echo_rate = await drive("bench.echo")
            admit_rate = await drive("mlw.serving.admit")
        await svc.stop()
        await nc.drain()
    return [Row("mlw.serving.admit round trips (64 in flight)", admit_rate, "bare NATS echo", echo_rate, "req/s")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=20_000)
    args = parser.parse_args()
    rows = limiter_rows(args.requests)
    decide_rows, _, _ = admission_rows(args.requests)
    rows += decide_rows
    rows += asyncio.run(bus_rows(args.requests))
    show("serving-monitor", rows)


if __name__ == "__main__":
    main()
