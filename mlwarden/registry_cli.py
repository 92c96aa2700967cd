"""`mlwarden registry status | bom | policy apply`: where each model stands in registry-gate, what
a promoted version is made of, and the registry policy's versions (issue 11).

`status` asks registry-gate over `mlw.registry.status` and prints the policy version in force, the
current version per stage and the requests still pending (`--format json` for the whole
`RegistryStatus`).

`policy apply FILE` publishes the file as a signed `mlw.registry.policy` change (the actor needs
the `policy-admin` role); registry-gate answers on `mlw.verdict.policy` with the new version and
the document's sha256, or with every problem that refused it.

`bom MODEL:VERSION` writes a CycloneDX 1.6 ML-BOM (`--format cyclonedx-json`, to stdout or
`--out FILE`). Its facts come from the audit trail and `mlw-artifacts`, each signature checked
again here against the root-signed trust store (`services.registry_gate.bom`): neither
registry-gate's unsigned state nor an answer on the bus is taken on trust.

Exit codes: 0 done, 2 usage or bus error (as every bus command), or no trustworthy BOM (a
version never promoted, a missing or forged fact).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlwarden.cliutil import EXIT_OK, _print_json, _settings, out, printable

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from services.registry_gate.bom import BomFacts
    from shared.client import Client
    from shared.envelope import Envelope
    from shared.events import AuditEntry, RegistryStatus
    from shared.settings import Settings

#: Most audit entries `registry bom` reads about one model version or dataset (10 pages).
MAX_TRAIL_ENTRIES = 10_000


async def registry_status(settings: Settings, model: str | None) -> RegistryStatus:
    """Ask registry-gate where `model` (every model when None) stands."""
    import orjson

    from mlwarden.cliutil import bus_client
    from shared.client import RequestFailed
    from shared.events import ErrorReply, RegistryStatus, RegistryStatusRequest
    from shared.service import reply_or_error
    from shared.topology import Subjects

    body = orjson.dumps(RegistryStatusRequest(model=model).model_dump(mode="json"))
    async with bus_client(settings, source="mlwarden/registry") as client:
        raw = await client.request(Subjects.REGISTRY_STATUS, body)
    reply = reply_or_error(raw, RegistryStatus)
    if isinstance(reply, ErrorReply):
        raise RequestFailed(Subjects.REGISTRY_STATUS, reply)
    return reply


async def _trail(client: Client, subject: str) -> list[AuditEntry]:
    """Every audit entry about `subject` (e.g. `model:churn:3`), oldest first."""
    from shared.errors import InputError
    from shared.events import AuditQuery

    entries: list[AuditEntry] = []
    cursor: int | None = None
    while True:
        page = await client.audit_query(AuditQuery(subject=subject, limit=1000, cursor=cursor))
        entries += page.entries
        if page.next_cursor is None or not page.entries:
            return sorted(entries, key=lambda e: e.seq)
        if len(entries) >= MAX_TRAIL_ENTRIES:
            raise InputError(f"more than {MAX_TRAIL_ENTRIES} audit entries about {subject}")
        cursor = page.next_cursor


async def bom_facts(client: Client, root: Ed25519PublicKey, model: str, version: str) -> BomFacts:
    """Gather what the audit trail and `mlw-artifacts` hold about `model:version` and keep what
    verifies (`services.registry_gate.bom.facts_from_trail`)."""
    from nats.js.errors import BucketNotFoundError, NotFoundError, ObjectNotFoundError

    from services.registry_gate.bom import facts_from_trail
    from shared.bus import load_trust
    from shared.events import ArtifactVerdict, DatasetRef
    from shared.topology import ARTIFACTS_BUCKET, SERVICES, Subjects

    model_entries = await _trail(client, f"model:{model}:{version}")
    # Which datasets and checks statement to fetch: named by any artifact verdict in the trail.
    # Nothing is believed yet; `facts_from_trail` keeps only what verifies.
    refs: dict[tuple[str, str], DatasetRef] = {}
    checks_keys: set[str] = set()
    actors: set[str] = set()
    for entry in model_entries:
        data = entry.event.get("data")
        if entry.type == Subjects.VERDICT_ARTIFACT and isinstance(data, dict):
            try:
                verdict = ArtifactVerdict.model_validate(data)
            except ValueError:
                continue
            refs.update({(r.dataset, r.version): r for r in verdict.datasets})
            if verdict.checks_key:
                checks_keys.add(verdict.checks_key)
        signer = entry.event.get("signer")
        if isinstance(signer, str) and signer not in SERVICES:
            actors.add(signer)
    dataset_entries = [e for name, ver in refs for e in await _trail(client, f"dataset:{name}:{ver}")]
    # By id, with `get`s: an auditor may read entries, not list the bucket.
    trust = await load_trust(client.js, root, [*SERVICES, *sorted(actors)])
    bundles: dict[str, bytes] = {}
    if checks_keys:
        store = await client.js.object_store(ARTIFACTS_BUCKET)
        for key in sorted(checks_keys):
            try:
                bundles[key] = bytes((await store.get(key)).data or b"")
            except (ObjectNotFoundError, BucketNotFoundError, NotFoundError):
                continue
    return facts_from_trail(model, version, model_entries, dataset_entries, trust, bundles)


async def registry_bom(settings: Settings, model: str, version: str) -> str:
    """The CycloneDX 1.6 JSON ML-BOM of `model:version` (raise `BomError` when none can be trusted)."""
    from mlwarden.cliutil import bus_client
    from services.registry_gate.bom import bom_json
    from shared.trust import load_root_public

    root = load_root_public(settings.trust_root, settings.keys_dir)
    async with bus_client(settings, source="mlwarden/registry") as client:
        facts = await bom_facts(client, root, model, version)
    return bom_json(facts)


def _name_version(value: str) -> tuple[str, str]:
    name, sep, version = value.partition(":")
    if not sep or not name or not version:
        raise argparse.ArgumentTypeError(f"expected NAME:VERSION, got {value!r}")
    return name, version


def cmd_registry_bom(args: argparse.Namespace) -> int:
    """Write the CycloneDX ML-BOM of a promoted model version."""
    model, version = args.target
    document = asyncio.run(registry_bom(_settings(args), model, version))
    if args.out is None:
        sys.stdout.write(document + "\n")
    else:
        args.out.write_text(document + "\n")
        out.print(f"wrote the CycloneDX 1.6 ML-BOM of {printable(model)}:{printable(version)} to {printable(args.out)}")
    return EXIT_OK


async def recall_dataset(
    settings: Settings, args: argparse.Namespace, dataset: str, version: str, reason: str, sha256: str | None
) -> Envelope[Any]:
    """Publish a dataset recall signed by the actor's key (`--key`, or the settings' actor key)."""
    from mlwarden.cliutil import bus_client
    from mlwarden.ops import publishing_keys

    async with bus_client(settings, source="mlwarden/cli", keys=publishing_keys(settings, args)) as client:
        key = client.actor(args.actor)
        return await client.recall_dataset(key, dataset=dataset, version=version, reason=reason, sha256=sha256)


def cmd_recall_dataset(args: argparse.Namespace) -> int:
    """Recall a dataset version: registry-gate pulls every model version trained on it (signed; needs the
    recall-officer role)."""
    dataset, version = args.target
    event = asyncio.run(recall_dataset(_settings(args), args, dataset, version, args.reason, args.sha256))
    out.print(f"published {event.type} id={event.id} (registry-gate answers on mlw.verdict.recall)")
    return EXIT_OK


async def apply_policy(
    settings: Settings, args: argparse.Namespace, document: str, reason: str, expected_version: int | None
) -> Envelope[Any]:
    """Publish a registry policy change signed by the actor's key (`--key`, or the settings' actor key)."""
    from mlwarden.cliutil import bus_client
    from mlwarden.ops import publishing_keys

    async with bus_client(settings, source="mlwarden/cli", keys=publishing_keys(settings, args)) as client:
        key = client.actor(args.actor)
        return await client.change_registry_policy(key, document, reason=reason, expected_version=expected_version)


def cmd_registry_policy_apply(args: argparse.Namespace) -> int:
    """Publish a registry policy file as the next version (signed; needs the policy-admin role):
    registry-gate validates and applies it, or refuses it with every problem."""
    from services.registry_gate.policy import document_sha256
    from shared.errors import InputError

    try:
        document = args.file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read {args.file}: {exc}") from exc
    event = asyncio.run(apply_policy(_settings(args), args, document, args.reason, args.expected_version))
    facts = {"id": event.id, "type": event.type, "request_id": event.id, "sha256": document_sha256(document)}
    if args.format == "json":
        _print_json(facts)
    else:
        out.print(
            f"published {event.type} id={event.id} sha256={facts['sha256']}"
            " (registry-gate answers on mlw.verdict.policy)",
            markup=False,
        )
    return EXIT_OK


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


def cmd_registry_status(args: argparse.Namespace) -> int:
    """Show the current version per stage and the pending requests (registry-gate)."""
    status = asyncio.run(registry_status(_settings(args), args.model))
    if args.format == "json":
        _print_json(status.model_dump(mode="json"))
        return EXIT_OK
    from rich.table import Table

    if status.policy is not None:
        rules = status.policy
        out.print(
            f"policy version {rules.version} (sha256 {rules.sha256[:16]}…) applied by {printable(rules.applied_by)}"
            f" at {_when(rules.since)}" + (f": {printable(rules.reason)}" if rules.reason else ""),
            markup=False,
        )
    current = Table("model", "stage", "version", "root digest", "by", "since", "why", title="current version per stage")
    for c in status.current:
        current.add_row(
            printable(c.model),
            printable(c.stage),
            printable(c.version or "(none: demoted)"),
            c.root_digest[:16],
            c.action,
            _when(c.since),
            printable(c.reason or "-"),
        )
    out.print(current)
    pending = Table(
        "request", "action", "model", "version", "stage", "requester", "approvers", "expires", title="pending"
    )
    for p in status.pending:
        pending.add_row(
            p.request_id,
            p.action,
            printable(p.model),
            printable(p.version),
            printable(p.stage),
            printable(p.requester),
            printable(", ".join(p.approvers) or "-"),
            _when(p.expires_at),
        )
    out.print(pending)
    return EXIT_OK


def add_registry_commands(sub: Any, add: Callable[..., argparse.ArgumentParser], common: Callable[..., None]) -> None:
    """Register the `registry` command group."""
    registry = sub.add_parser("registry", help="registry-gate: stages, versions, requests").add_subparsers(
        dest="registry_cmd", required=True
    )
    p = add("status", cmd_registry_status, registry)
    common(p)
    p.add_argument("--model", help="one model (default: every model)")
    p.add_argument("--format", choices=["text", "json"], default="text", help="output format")
    p = add("bom", cmd_registry_bom, registry)
    common(p)
    p.add_argument("target", type=_name_version, metavar="MODEL:VERSION", help="a promoted model version")
    p.add_argument(
        "--format",
        choices=["cyclonedx-json"],
        default="cyclonedx-json",
        help="CycloneDX 1.6 JSON (the only format so far)",
    )
    p.add_argument("--out", type=Path, help="write it to this file (default: stdout)")
    policy = registry.add_parser("policy", help="the registry policy's versions").add_subparsers(
        dest="policy_cmd", required=True
    )
    p = add("apply", cmd_registry_policy_apply, policy)
    common(p)
    p.add_argument("file", type=Path, metavar="FILE", help="the whole policy, YAML (as registry-policy.yaml)")
    p.add_argument("--reason", required=True, help="why (audited; `registry status` shows it)")
    p.add_argument(
        "--expected-version",
        type=int,
        help="apply only while this version is in force (default: whatever is in force)",
    )
    p.add_argument(
        "--format",
        choices=["text", "json"],
        default="text",
        help="json: one object with the event id, the request id and the document's sha256",
    )
    p.add_argument(
        "--key", type=Path, help="your actor's Ed25519 private key, PEM (default $MLW_ACTOR_KEY; dev: demo actors)"
    )
    p.add_argument("--actor", help="your actor id in the trust store (default: the key file's name)")


def add_recall_commands(sub: Any, add: Callable[..., argparse.ArgumentParser], common: Callable[..., None]) -> None:
    """Register the `recall` command group."""
    recall = sub.add_parser("recall", help="recall what models were built on (registry-gate)").add_subparsers(
        dest="recall_cmd", required=True
    )
    p = add("dataset", cmd_recall_dataset, recall)
    common(p)
    p.add_argument("target", type=_name_version, metavar="NAME:VERSION", help="the dataset version to recall")
    p.add_argument("--reason", required=True, help="why (audited; `registry status` shows it)")
    p.add_argument("--sha256", help="only the bytes with this digest (default: every digest of that version)")
    p.add_argument(
        "--key", type=Path, help="your actor's Ed25519 private key, PEM (default $MLW_ACTOR_KEY; dev: demo actors)"
    )
    p.add_argument("--actor", help="your actor id in the trust store (default: the key file's name)")
