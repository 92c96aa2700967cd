"""registry-gate benchmark: figures beside their anchors, measured in one run.

    uv run python benchmarks/registry_gate.py [--requests 300]

1. One decision (verify the actor's Ed25519 signature, record, evaluate) against the floor every
   signed request pays: Ed25519 verification alone.
2. Promotion requests through a real nats-server to their signed verdicts, one at a time in stream
   order, against a bare JetStream relay on the same server (durable pull consumer that reads each
   message and publishes one reply into the verdict stream, acked after the publish).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import Row, rate, show

from services.registry_gate.gate import RegistryState, evaluate
from services.registry_gate.policy import policy_for_actors
from shared.envelope import decode, new_event
from shared.events import ArtifactVerdict, DatasetRef, DatasetVerdict, Decision, PromotionRequested
from shared.signing import SigningKey

DIGEST = "ab" * 32
DATA = "cd" * 32


def decision_rows(n: int) -> list[Row]:
    actors = {name: SigningKey.generate(name) for name in ("alice", "bob", "carol")}
    roles = {"alice": ["ml-engineer"], "bob": ["reviewer"], "carol": ["reviewer"]}
    policy = policy_for_actors({n: (k.public_b64(), roles[n]) for n, k in actors.items()})
    trust = policy.trust_store()
    state = RegistryState()
    ref = DatasetRef(dataset="train", version="1", sha256=DATA)
    state.record_dataset_verdict(
        DatasetVerdict(dataset="train", version="1", sha256=DATA, decision=Decision.PASS, in_reply_to="x")
    )
    bodies = []
    for i in range(n):
        state.record_artifact_verdict(
            ArtifactVerdict(
                model="m", version=str(i), root_digest=DIGEST, decision=Decision.PASS, datasets=[ref], in_reply_to="y"
            )
        )
        request = PromotionRequested(
            model="m", version=str(i), stage="production", requester="alice", root_digest=DIGEST
        )
        bodies.append(new_event("mlw.registry.promotion", request, source="bench").signed(actors["alice"]).to_bytes())
    i = [0]

    def decide() -> None:
        event = decode(bodies[i[0] % n], PromotionRequested)
        signer = event.verify(trust)
        state.record_request(event.id, event.data, signer)
        evaluate(event.id, state, policy, now=0.0)
        i[0] += 1

    envelopes = [decode(b, PromotionRequested) for b in bodies]
    j = [0]

    def verify_only() -> None:
        envelopes[j[0] % n].verify(trust)
        j[0] += 1

    return [
        Row(
            "decode + verify + record + evaluate",
            rate(decide, n),
            "Ed25519 verify alone",
            rate(verify_only, n),
            "req/s",
        )
    ]


async def bus_rows(n: int) -> list[Row]:
    from nats.js.api import ConsumerConfig

    from mlwarden.bootstrap import actor_key, bootstrap
    from services.registry_gate.app import create_app
    from shared.bus import connect, publish_event
    from shared.client import Client
    from shared.embedded import EmbeddedNats
    from shared.settings import Settings
    from shared.topology import Subjects

    with tempfile.TemporaryDirectory() as tmp, EmbeddedNats(Path(tmp) / "nats") as server:
        settings = Settings(data_dir=Path(tmp) / "data", nats_url=server.url)
        nc = await connect(settings)
        js = nc.jetstream()
        await bootstrap(js, settings)
        alice = actor_key(settings, "alice")

        # Anchor: a bare relay, the least any in-order verdict service does per message.
        await js.add_stream(name="BENCH_IN", subjects=["bench.in"])
        await js.add_consumer("BENCH_IN", ConsumerConfig(durable_name="relay", ack_policy="explicit"))
        sub = await js.pull_subscribe_bind(durable="relay", stream="BENCH_IN")
        relay_done = asyncio.Event()
        relayed = [0]

        async def relay() -> None:
            while relayed[0] < n:
                try:
                    msgs = await sub.fetch(1, timeout=1)
                except TimeoutError:
                    continue
                for msg in msgs:
                    await js.publish("mlw.verdict.bench", msg.data)
                    await msg.ack()
                    relayed[0] += 1
            relay_done.set()

        body = b"x" * 400
        for i in range(n):
            await js.publish("bench.in", body, headers={"Nats-Msg-Id": f"b{i}"})
        start = time.perf_counter()
        task = asyncio.create_task(relay())
        await relay_done.wait()
        relay_rate = n / (time.perf_counter() - start)
        await task
        await sub.unsubscribe()

        svc = create_app(settings)
        async with Client.connect(settings) as client, client.watch(("mlw.verdict.promotion",)) as watcher:
            for i in range(n):
                request = PromotionRequested(
                    model="bench", version=str(i), stage="production", requester="alice", root_digest=DIGEST
                )
                event = new_event(Subjects.PROMOTION_REQUESTED, request, source="bench").signed(alice)
                await publish_event(js, Subjects.PROMOTION_REQUESTED, event)
            start = time.perf_counter()
            await svc.start()
            while len(watcher.events) < n:
                await asyncio.sleep(0.01)
            gate_rate = n / (time.perf_counter() - start)
        await svc.stop()
        await nc.drain()
    return [
        Row("promotion requests -> signed verdicts (in order)", gate_rate, "bare JetStream relay", relay_rate, "req/s")
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=300)
    args = parser.parse_args()
    rows = decision_rows(args.requests)
    rows += asyncio.run(bus_rows(args.requests))
    show("registry-gate", rows)


if __name__ == "__main__":
    main()
