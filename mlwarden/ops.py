"""The CLI's bus operations: publishing, watching, querying, issuing API keys."""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from rich.console import Console

from mlwarden.cliutil import bus_client
from shared.client import Client
from shared.envelope import Envelope
from shared.events import AuditPage, AuditQuery, DatasetRef, Sensitivity
from shared.settings import Settings
from shared.signing import SigningKey


async def publish(settings: Settings, args: argparse.Namespace) -> Envelope[Any]:
    """Publish what `mlwarden publish KIND ...` describes."""
    async with bus_client(settings, source="mlwarden/cli") as client:
        if args.kind == "dataset":
            from shared.crypto import load_or_create_master_key

            # Confidential and restricted data leave this machine encrypted (AES-GCM envelope).
            return await client.upload_dataset(
                args.path,
                dataset=args.name,
                version=args.version,
                label=args.label,
                uploader=args.uploader,
                sensitivity=Sensitivity(args.sensitivity),
                readers=[r for r in args.readers.split(",") if r],
                master_key=load_or_create_master_key(settings.keys_dir),
            )
        if args.kind == "model":
            datasets = []
            for spec in args.dataset:
                name, version, sha = spec.split(":")
                datasets.append(DatasetRef(dataset=name, version=version, sha256=sha))
            return await client.model_built(
                args.path,
                model=args.name,
                version=args.version,
                builder=args.builder,
                lockfile=args.lockfile,
                datasets=datasets,
            )
        key = SigningKey.from_pem(args.actor, args.key.read_bytes())
        if args.kind == "promotion":
            return await client.request_promotion(
                key, model=args.model, version=args.version, stage=args.stage, root_digest=args.root_digest
            )
        return await client.approve(
            key, request_id=args.request_id, model=args.model, version=args.version, stage=args.stage
        )


def describe(event: Envelope[Any]) -> str:
    """One line for a verdict, alert or dead letter."""
    data = event.data.model_dump() if hasattr(event.data, "model_dump") else dict(event.data)
    decision = data.get("decision", "")
    what = event.subject or data.get("kind", "")
    extra = data.get("reason") or data.get("message") or "; ".join(data.get("reasons", [])[:3])
    return f"{event.type:24} {what:28} {decision:9} {extra}"


async def watch(settings: Settings, console: Console, seconds: float | None) -> None:
    """Print verdicts, alerts and dead letters live."""
    async with bus_client(settings, source="mlwarden/watch") as client, client.watch() as watcher:
        console.print(f"watching {settings.nats_url_redacted} (Ctrl-C to stop)")
        seen = 0
        deadline = None if seconds is None else time.monotonic() + seconds
        while deadline is None or time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            for event in watcher.events[seen:]:
                console.print(describe(event), markup=False)
            seen = len(watcher.events)


async def audit_query(settings: Settings, query: AuditQuery) -> AuditPage:
    """Run one audit query."""
    async with bus_client(settings, source="mlwarden/audit") as client:
        return await client.audit_query(query)


async def issue_api_key(settings: Settings, client_id: str, models: list[str]) -> str:
    """Issue an API key through serving-monitor's key store; returns the plaintext once."""
    from services.serving_monitor.keystore import issue_key_on_bus

    async with Client.connect(settings, source="mlwarden/keys") as client:
        return await issue_key_on_bus(client.js, settings, client_id, models)


async def health(settings: Settings) -> list[str]:
    """What is wrong with the bus, if anything."""
    from shared.bus import load_trust
    from shared.topology import SERVICES, STREAMS

    problems: list[str] = []
    async with bus_client(settings, source="mlwarden/health") as client:
        for spec in STREAMS:
            try:
                await client.js.stream_info(spec.name)
            except Exception as exc:  # noqa: BLE001 - report, do not crash
                problems.append(f"stream {spec.name}: {exc!r}")
        try:
            trust = await load_trust(client.js)
            problems += [f"no trusted key for {name}" for name in SERVICES if name not in trust]
        except Exception as exc:  # noqa: BLE001
            problems.append(f"trust store: {exc!r}")
    return problems
