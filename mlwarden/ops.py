"""The CLI's bus operations: publishing, watching, querying, issuing API keys."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fnmatch
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import nats.errors
import orjson
from nats.js import JetStreamContext
from pydantic import ValidationError
from rich.console import Console

from mlwarden.cliutil import bus_client
from shared.client import Client
from shared.envelope import Envelope
from shared.events import AuditPage, AuditQuery, DatasetRef, HealthReply, Sensitivity
from shared.settings import Settings
from shared.signing import SigningKey
from shared.topology import Subjects


def publishing_keys(settings: Settings, args: argparse.Namespace) -> list[SigningKey] | None:
    """The key `--key` names (its actor from `--actor` or the file's stem); None: the settings'."""
    if getattr(args, "key", None) is None:
        return None
    return [SigningKey.from_pem(args.actor or Path(args.key).stem, Path(args.key).read_bytes())]


async def publish(settings: Settings, args: argparse.Namespace) -> Envelope[Any]:
    """Publish what `mlwarden publish KIND ...` describes, signed by the actor's key."""
    async with bus_client(settings, source="mlwarden/cli", keys=publishing_keys(settings, args)) as client:
        actor = args.actor
        if args.kind == "dataset":
            from shared.crypto import load_or_create_master_key

            # Confidential and restricted data leave this machine encrypted (AES-GCM envelope).
            return await client.upload_dataset(
                args.path,
                dataset=args.name,
                version=args.version,
                label=args.label,
                uploader=args.uploader or actor,
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
                builder=args.builder or actor,
                lockfile=args.lockfile,
                datasets=datasets,
                upload=not args.local,
            )
        key = client.actor(actor)
        if args.kind == "promotion":
            return await client.request_promotion(
                key, model=args.model, version=args.version, stage=args.stage, root_digest=args.root_digest
            )
        if args.kind == "demotion":
            return await client.request_demotion(
                key, model=args.model, version=args.version, stage=args.stage, reason=args.reason
            )
        if args.kind == "rollback":
            return await client.request_rollback(
                key,
                model=args.model,
                version=args.version,
                stage=args.stage,
                root_digest=args.root_digest,
                reason=args.reason,
            )
        return await client.approve(
            key, request_id=args.request_id, model=args.model, version=args.version, stage=args.stage
        )


def published_facts(event: Envelope[Any], args: argparse.Namespace) -> dict[str, Any]:
    """What `publish --format json` prints: the event and the digests a next step needs."""
    facts: dict[str, Any] = {"id": event.id, "type": event.type, "subject": event.subject}
    if args.kind == "dataset":
        facts["sha256"] = event.data.sha256
    elif args.kind == "model":
        from services.artifact_signer.oms import hash_model

        # The OMS subject digest artifact-signer signs when the bytes it stored are these bytes
        # (same walk, same order): the promotion request names it.
        facts["root_digest"] = hash_model(args.path).root_digest
    elif args.kind in ("promotion", "demotion", "rollback"):
        facts["request_id"] = event.id
    else:
        facts["request_id"] = args.request_id
    return facts


@dataclass(frozen=True)
class WatchFilter:
    """Which events `watch` prints: any type / subject pattern matching (fnmatch), or all."""

    types: tuple[str, ...] = ()
    subjects: tuple[str, ...] = ()

    def __call__(self, event: Envelope[Any]) -> bool:
        """Whether `event` passes."""
        if self.types and not any(fnmatch.fnmatchcase(event.type, t) for t in self.types):
            return False
        subject = event.subject or ""
        return not self.subjects or any(fnmatch.fnmatchcase(subject, s) for s in self.subjects)


def describe(event: Envelope[Any]) -> str:
    """One line for a verdict, alert or dead letter."""
    data = event.data.model_dump() if hasattr(event.data, "model_dump") else dict(event.data)
    decision = data.get("decision", "")
    what = event.subject or data.get("kind", "")
    extra = data.get("reason") or data.get("message") or "; ".join(data.get("reasons", [])[:3])
    return f"{event.type:24} {what:28} {decision:9} {extra}"


async def watch(
    settings: Settings,
    console: Console,
    seconds: float | None,
    *,
    wanted: WatchFilter | None = None,
    as_json: bool = False,
    stop: asyncio.Event | None = None,
) -> None:
    """Print verdicts, alerts and dead letters live, each checked against the trust store,
    until `seconds` have passed or `stop` is set."""
    wanted = wanted or WatchFilter()
    stop = stop or asyncio.Event()
    from shared.trust import load_root_public

    async with bus_client(settings, source="mlwarden/watch") as client:
        root = load_root_public(settings.trust_root, settings.keys_dir)
        async with client.watch(verify_with=root) as watcher:
            # The status line goes to stderr under --format json: stdout is JSON lines only.
            status = Console(stderr=True) if as_json else console
            status.print(f"watching {settings.nats_url_redacted} (Ctrl-C to stop)")
            seen = 0
            deadline = None if seconds is None else time.monotonic() + seconds
            while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), 0.2)
                for event in watcher.events[seen:]:
                    if not wanted(event):
                        continue
                    problem = watcher.unverified.get(event.id)
                    if as_json:
                        line = {**orjson.loads(event.to_bytes()), "verified": problem is None}
                        if problem is not None:
                            line["problem"] = problem
                        sys.stdout.write(orjson.dumps(line).decode() + "\n")
                        sys.stdout.flush()
                        continue
                    # A forged verdict is shown for what it is, never as the service's word.
                    prefix = f"UNVERIFIED ({problem}) " if problem is not None else ""
                    console.print(prefix + describe(event), markup=False)
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


#: How long `mlwarden health` waits for each service's reply and each JetStream answer; the
#: requests go out together, so the whole check takes about this plus the connection.
HEALTH_TIMEOUT_S = 2.0


@dataclass(frozen=True)
class ServiceHealth:
    """One service's answer to its liveness request, or why there was none."""

    service: str
    alive: bool
    detail: str
    latency_ms: float | None = None


@dataclass(frozen=True)
class HealthReport:
    """What `mlwarden health` found: every service's liveness, and every problem."""

    services: list[ServiceHealth]
    problems: list[str]

    @property
    def healthy(self) -> bool:
        """Every service answered, and the streams and trust store are in place."""
        return not self.problems

    def to_json(self) -> dict[str, Any]:
        """The report as `--format json` prints it."""
        return {
            "healthy": self.healthy,
            "services": [asdict(s) for s in self.services],
            "problems": self.problems,
        }


async def _ping(client: Client, service: str, timeout: float) -> ServiceHealth:
    started = time.monotonic()
    try:
        msg = await client.nc.request(Subjects.health(service), b"", timeout=timeout)
        reply = HealthReply.model_validate_json(msg.data)
    except nats.errors.NoRespondersError:
        return ServiceHealth(service, False, "not running (nothing answers its health request)")
    except nats.errors.TimeoutError:
        return ServiceHealth(service, False, f"no reply within {timeout:g} s")
    except ValidationError as exc:
        return ServiceHealth(service, False, f"malformed health reply: {exc.error_count()} errors")
    latency = (time.monotonic() - started) * 1000
    detail = f"up {reply.uptime_s:.0f} s, {reply.processed} processed, {reply.dead_letters} dead-lettered"
    return ServiceHealth(service, True, detail, round(latency, 1))


async def _stream_problem(js: JetStreamContext, stream: str) -> str | None:
    try:
        await js.stream_info(stream)
    except Exception as exc:  # noqa: BLE001 - report, do not crash
        return f"stream {stream}: {exc!r}"
    return None


async def health(settings: Settings, *, timeout: float = HEALTH_TIMEOUT_S) -> HealthReport:
    """Ask every service whether it is alive (`mlw.health.<service>`), and check that
    JetStream has mlwarden's streams and that every service key is trusted."""
    from shared.bus import load_trust
    from shared.topology import SERVICES, STREAMS
    from shared.trust import load_root_public

    async with bus_client(settings, source="mlwarden/health") as client:
        js = client.nc.jetstream(timeout=timeout)
        services, streams = await asyncio.gather(
            asyncio.gather(*(_ping(client, name, timeout) for name in SERVICES)),
            asyncio.gather(*(_stream_problem(js, spec.name) for spec in STREAMS)),
        )
        problems = [problem for problem in streams if problem is not None]
        try:
            trust = await load_trust(js, load_root_public(settings.trust_root, settings.keys_dir), SERVICES)
            problems += [f"no trusted key for {name}" for name in SERVICES if name not in trust]
        except Exception as exc:  # noqa: BLE001
            problems.append(f"trust store: {exc!r}")
    problems += [f"{s.service}: {s.detail}" for s in services if not s.alive]
    return HealthReport(list(services), problems)
