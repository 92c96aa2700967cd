"""`mlwarden audit ...`: auditors query, verify, prove, check proofs, export and trace the trail.

`verify`, `export`, `trail` and the local fallback of `prove` read the database directly
(`--data-dir` or `--db`); checkpoints come from the `MLW_CHECKPOINTS` stream when the bus
answers, else from the mirror file audit-log keeps in the data directory.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlwarden.cliutil import EXIT_ERROR, EXIT_FAIL, EXIT_OK, _print_json, _settings, err, out, parse_time

# --- auditors --------------------------------------------------------------------------------


def cmd_audit_query(args: argparse.Namespace) -> int:
    """Query the audit trail through `mlw.audit.query`."""
    from mlwarden.ops import audit_query
    from shared.events import AuditQuery

    query = AuditQuery(
        since=args.since,
        until=args.until,
        service=args.service,
        type=args.type,
        subject=args.subject,
        actor=args.actor,
        decision=args.decision,
        client=args.client,
        limit=args.limit,
        cursor=args.cursor,
    )
    page = asyncio.run(audit_query(_settings(args), query))
    if args.format == "json":
        _print_json(page.model_dump(mode="json"))
        return EXIT_OK
    from rich.table import Table

    table = Table("seq", "time", "type", "service", "subject", "actor", "decision")
    for e in page.entries:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.time))
        table.add_row(str(e.seq), stamp, e.type, e.service or "", e.subject or "", e.actor or "", e.decision or "")
    out.print(table)
    if page.next_cursor is not None:
        out.print(f"more: --cursor {page.next_cursor}")
    return EXIT_OK


if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    from services.audit_log.store import AuditStore
    from shared.events import AuditCheckpoint, AuditInclusionProof
    from shared.settings import Settings

#: How long the CLI waits for the bus before falling back to local files.
BUS_TIMEOUT_S = 2.0


@dataclass
class Checkpoints:
    """Checkpoints as read for a verification, and where they came from."""

    items: list[AuditCheckpoint]
    source: str
    #: audit-log's public key from the trust store, when the bus answered.
    trusted_key: str | None = None


async def _connect_quick(settings: Settings) -> Any:
    """A connection that fails fast when nothing listens (then the caller falls back to files)."""
    import nats

    from shared.bus import connect_options

    options = connect_options(settings)
    # max_reconnect_attempts=0 would mean "forever" to nats-py: one attempt, no waiting.
    options.update(allow_reconnect=False, max_reconnect_attempts=1, reconnect_time_wait=0.1)

    async def quiet(_exc: Exception) -> None:
        # The caller reports the fallback in one line; no traceback from nats-py's default logger.
        return None

    return await nats.connect(name="mlwarden-audit", connect_timeout=BUS_TIMEOUT_S, error_cb=quiet, **options)


async def _read_bus_checkpoints(settings: Settings) -> Checkpoints:
    from nats.js.errors import NotFoundError

    from shared.envelope import decode
    from shared.events import AuditCheckpoint
    from shared.topology import CHECKPOINTS, Subjects

    nc = await _connect_quick(settings)
    try:
        js = nc.jetstream(timeout=BUS_TIMEOUT_S)
        info = await js.stream_info(CHECKPOINTS.name)
        items: list[AuditCheckpoint] = []
        if info.state.messages:
            for seq in range(info.state.first_seq, info.state.last_seq + 1):
                try:
                    raw = await js.get_msg(CHECKPOINTS.name, seq)
                except NotFoundError:
                    continue
                if raw.subject == Subjects.AUDIT_CHECKPOINTS and raw.data:
                    items.append(decode(raw.data, AuditCheckpoint).data)
        from shared.bus import load_trust
        from shared.trust import load_root_public

        # audit-log's key as the root-signed trust store holds it (a bare key there means nothing).
        store = await load_trust(js, load_root_public(settings.trust_root, settings.keys_dir), ["audit-log"])
        trusted = store.public_b64("audit-log")
        return Checkpoints(items, f"NATS stream {CHECKPOINTS.name} at {settings.nats_url}", trusted)
    finally:
        await nc.close()


def load_checkpoints(settings: Settings) -> Checkpoints:
    """Every published checkpoint: from the bus when it answers, else from the local mirror."""
    from services.audit_log.checkpoint import CheckpointMirror
    from services.audit_log.settings import mirror_path

    try:
        return asyncio.run(_read_bus_checkpoints(settings))
    except Exception as exc:  # noqa: BLE001 - any bus failure means: use the mirror
        reason = type(exc).__name__
    path = mirror_path(settings.data_dir)
    items = CheckpointMirror(path).read()
    return Checkpoints(items, f"local mirror {path} (bus unavailable: {reason})")


def load_audit_key(settings: Settings, key_arg: str | None, trusted: str | None = None) -> Ed25519PublicKey | None:
    """audit-log's public key: --key (PEM or base64 file), the trust store, or the data dir's key."""
    from shared.signing import SigningKey, load_public_key

    if key_arg:
        data = Path(key_arg).read_bytes()
        if b"PRIVATE KEY" in data:
            return SigningKey.from_pem("audit-log", data).private.public_key()
        return load_public_key(data if data.lstrip().startswith(b"-----BEGIN") else data.decode().strip())
    if trusted:
        return load_public_key(trusted)
    pem = settings.keys_dir / "audit-log.pem"
    if pem.exists():
        return SigningKey.from_pem("audit-log", pem.read_bytes()).private.public_key()
    return None


def _open_store(args: argparse.Namespace) -> AuditStore | None:
    from services.audit_log.store import AuditStore

    settings = _settings(args)
    if not args.db and not (settings.data_dir / "audit.db").exists():
        err.print(f"no audit database at {settings.data_dir / 'audit.db'}")
        return None
    return AuditStore(settings.audit_url)


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Recompute chain, Merkle tree and every signed checkpoint against the database."""
    from services.audit_log.verify import verify_trail

    settings = _settings(args)
    store = _open_store(args)
    if store is None:
        return EXIT_ERROR
    with store:
        cps = load_checkpoints(settings)
        public = load_audit_key(settings, args.key, cps.trusted_key)
        report = verify_trail(store, cps.items, public)
    if args.format == "json":
        _print_json(
            {
                "ok": report.ok,
                "entries": report.entries,
                "checkpoints": report.checkpoints,
                "verified_size": report.verified_size,
                "root_hash": report.root_hash,
                "first_bad_seq": report.first_bad_seq,
                "reason": report.reason,
                "checkpoint_source": cps.source,
            }
        )
    else:
        err.print(f"checkpoints: {len(cps.items)} from {cps.source}")
        if report.ok:
            out.print(
                f"[green]intact[/]: {report.entries} entries; hash chain and Merkle tree verified; "
                f"{report.checkpoints} signed checkpoints verified (up to {report.verified_size} entries)"
            )
            if not cps.items and report.entries:
                err.print("[yellow]warning:[/] no checkpoints: truncation and rewritten history cannot be detected")
        elif report.first_bad_seq is not None:
            out.print(f"[red]TAMPERED[/] first bad entry: seq {report.first_bad_seq}: {report.reason}")
        else:
            out.print(f"[red]TAMPERED[/]: {report.reason}")
    return EXIT_OK if report.ok else EXIT_FAIL


async def _prove_on_bus(settings: Settings, event_id: str) -> bytes:
    import orjson

    from shared.events import AuditProofRequest
    from shared.topology import Subjects

    nc = await _connect_quick(settings)
    try:
        body = orjson.dumps(AuditProofRequest(event_id=event_id).model_dump(mode="json"))
        msg = await nc.request(Subjects.AUDIT_PROOF, body, timeout=10.0)
        return bytes(msg.data)
    finally:
        await nc.close()


def _prove_locally(args: argparse.Namespace, event_id: str) -> AuditInclusionProof:
    from services.audit_log.checkpoint import CheckpointMirror
    from services.audit_log.proof import build_inclusion_proof
    from services.audit_log.settings import mirror_path
    from shared.errors import InputError

    settings = _settings(args)
    store = _open_store(args)
    if store is None:
        raise InputError("no audit database to prove from")
    latest = CheckpointMirror(mirror_path(settings.data_dir)).latest()
    if latest is None:
        raise InputError("no signed checkpoint yet (audit-log signs one every few seconds)")
    with store:
        return build_inclusion_proof(store, latest, event_id=event_id)


def cmd_audit_prove(args: argparse.Namespace) -> int:
    """Print an inclusion proof of one event against the latest signed checkpoint."""
    from shared.client import RequestFailed
    from shared.events import AuditInclusionProof
    from shared.service import reply_or_error

    settings = _settings(args)
    proof: AuditInclusionProof | None = None
    try:
        raw = asyncio.run(_prove_on_bus(settings, args.event_id))
    except Exception as exc:  # noqa: BLE001 - refused, timed out, no responders: nats-py has many
        err.print(f"bus unavailable ({type(exc).__name__}): proving from the local database and mirror")
    else:
        reply = reply_or_error(raw, AuditInclusionProof)
        if not isinstance(reply, AuditInclusionProof):
            raise RequestFailed("mlw.audit.proof", reply)
        proof = reply
    if proof is None:
        proof = _prove_locally(args, args.event_id)
    text = proof.model_dump_json(indent=2) + "\n"
    if args.out:
        Path(args.out).write_text(text)
        err.print(f"proof of {proof.event_id} (leaf {proof.leaf_index} of {proof.tree_size}) written to {args.out}")
    else:
        sys.stdout.write(text)
    return EXIT_OK


def cmd_audit_check_proof(args: argparse.Namespace) -> int:
    """Verify an inclusion proof offline with audit-log's public key only."""
    from pydantic import ValidationError

    from services.audit_log.checkpoint import CheckpointError
    from services.audit_log.merkle import ProofError
    from services.audit_log.proof import check_inclusion_proof
    from shared.events import AuditInclusionProof

    try:
        proof = AuditInclusionProof.model_validate_json(Path(args.file).read_bytes())
    except ValidationError as exc:
        err.print(f"[red]not a proof:[/] {str(exc)[:500]}")
        return EXIT_ERROR
    public = load_audit_key(_settings(args), args.key)
    if public is None:
        err.print("no public key: pass --key PUBLIC.pem")
        return EXIT_ERROR
    try:
        checked = check_inclusion_proof(proof, public)
    except (ProofError, CheckpointError) as exc:
        out.print(f"[red]INVALID[/]: {exc}")
        return EXIT_FAIL
    out.print(
        f"[green]valid[/]: event {checked.event_id} ({checked.event.get('type')}) is entry {checked.leaf_index} "
        f"of the {checked.tree_size}-entry trail signed at root {checked.root_hash}"
    )
    return EXIT_OK


def cmd_audit_export(args: argparse.Namespace) -> int:
    """Export entries of a time range as JSON lines or CSV, streaming, each with its leaf index."""
    from services.audit_log.export import iter_entries_by_time, write_export

    store = _open_store(args)
    if store is None:
        return EXIT_ERROR
    with store:
        entries = iter_entries_by_time(store, since=args.since, until=args.until)
        if args.out:
            with Path(args.out).open("w", newline="", encoding="utf-8") as fh:
                count = write_export(entries, fh, args.format)
            err.print(f"{count} entries written to {args.out}")
        else:
            write_export(entries, sys.stdout, args.format)
            sys.stdout.flush()
    return EXIT_OK


def cmd_audit_trail(args: argparse.Namespace) -> int:
    """Everything that happened to one model version or dataset, in order."""
    from services.audit_log.export import export_row, subject_history

    store = _open_store(args)
    if store is None:
        return EXIT_ERROR
    with store:
        entries = list(subject_history(store, args.kind, args.name))
    if args.format == "json":
        _print_json([{k: v for k, v in export_row(e).items() if k != "body"} for e in entries])
        return EXIT_OK
    from rich.table import Table

    table = Table("leaf", "time", "type", "service", "subject", "actor", "decision")
    for e in entries:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(e.time))
        table.add_row(
            str(e.leaf_index), stamp, e.type, e.service or "", e.subject or "", e.actor or "", e.decision or ""
        )
    out.print(table)
    if not entries:
        err.print(f"nothing recorded for {args.kind} {args.name}")
    return EXIT_OK


def add_audit_commands(sub: Any, add: Callable[..., argparse.ArgumentParser], common: Callable[..., None]) -> None:
    """Register the `audit` command group."""
    audit = sub.add_parser("audit", help="query, verify, prove and export the audit trail").add_subparsers(
        dest="audit_cmd", required=True
    )
    p = add("query", cmd_audit_query, audit)
    common(p)
    p.add_argument("--since", type=parse_time, help="7d, 12h, unix seconds or ISO 8601 (inclusive)")
    p.add_argument("--until", type=parse_time, help="same forms (exclusive)")
    p.add_argument("--service")
    p.add_argument("--type")
    p.add_argument("--subject", help="e.g. model:churn:3 or dataset:iris:1 (model:churn:* for every version)")
    p.add_argument("--model", dest="subject_model", help="shorthand for --subject model:NAME:* (every version)")
    p.add_argument("--actor")
    p.add_argument("--client", help="serving client id")
    p.add_argument("--decision")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--cursor", type=int)
    p.add_argument("--format", choices=["table", "json"], default="table")

    p = add("verify", cmd_audit_verify, audit)
    common(p)
    p.add_argument("--db", help="SQLAlchemy URL of the audit database")
    p.add_argument("--key", help="audit-log's public key (PEM or base64); default: trust store or data dir")
    p.add_argument("--format", choices=["text", "json"], default="text")

    p = add("prove", cmd_audit_prove, audit)
    common(p)
    p.add_argument("event_id")
    p.add_argument("--db", help="SQLAlchemy URL of the audit database (local fallback)")
    p.add_argument("--out", help="write the proof JSON here instead of stdout")

    p = add("check-proof", cmd_audit_check_proof, audit)
    common(p, nats=False)
    p.add_argument("file", help="a proof from `mlwarden audit prove`")
    p.add_argument("--key", help="audit-log's public key (PEM or base64); default: the data dir's key")

    p = add("export", cmd_audit_export, audit)
    common(p, nats=False)
    p.add_argument("--db", help="SQLAlchemy URL of the audit database")
    p.add_argument("--format", choices=["jsonl", "csv"], default="jsonl")
    p.add_argument("--since", type=parse_time)
    p.add_argument("--until", type=parse_time)
    p.add_argument("--out", help="file to write (default stdout)")

    p = add("trail", cmd_audit_trail, audit)
    common(p, nats=False)
    p.add_argument("kind", choices=["model", "dataset"])
    p.add_argument("name", help="NAME:VERSION (churn:3) or NAME for every version")
    p.add_argument("--db", help="SQLAlchemy URL of the audit database")
    p.add_argument("--format", choices=["table", "json"], default="table")
