"""`mlwarden audit ...`: auditors query, verify, prove, check proofs, export and trace the trail.

`verify`, `export`, `trail` and the local fallback of `prove` read the database directly
(`--data-dir` or `--db`); checkpoints come from the `MLW_CHECKPOINTS` stream when the bus
answers, else from the mirror file audit-log keeps in the data directory.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mlwarden.cliutil import EXIT_ERROR, EXIT_FAIL, EXIT_OK, _print_json, _settings, err, out, parse_time, printable

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
        # Every stored field is what some producer wrote: shown, never interpreted by the terminal.
        fields = (e.type, e.service, e.subject, e.actor, e.decision)
        table.add_row(str(e.seq), stamp, *(printable(f) for f in fields))
    out.print(table)
    if page.next_cursor is not None:
        out.print(f"more: --cursor {page.next_cursor}")
    return EXIT_OK


if TYPE_CHECKING:
    from services.audit_log.checkpoint import AuditKey
    from services.audit_log.store import AuditStore
    from services.audit_log.verify import TrailReport
    from shared.events import AuditCheckpoint, AuditCheckpointReply, AuditInclusionProof
    from shared.settings import Settings
    from shared.signing import KeyHistory

#: How long the CLI waits for the bus before falling back to local files.
BUS_TIMEOUT_S = 2.0


@dataclass
class Checkpoints:
    """Checkpoints as read for a verification, and where they came from."""

    items: list[AuditCheckpoint]
    source: str
    #: audit-log's key history from the root-signed trust store, when the bus answered.
    trusted_key: KeyHistory | None = None
    #: Stream sequence ranges of `MLW_CHECKPOINTS` with no message (`"3..4"`): checkpoints
    #: removed from a stream that denies delete and purge, i.e. by someone who changed it.
    stream_gaps: list[str] = field(default_factory=list)
    #: Checkpoints in the local mirror but not in the stream (a publish lost in a bus outage,
    #: or a checkpoint removed from the stream); they are verified like the others.
    missing_from_stream: list[AuditCheckpoint] = field(default_factory=list)


async def _connect_quick(settings: Settings) -> Any:
    """A connection that fails fast when nothing listens (then the caller falls back to files)."""
    from shared.bus import connect_options, open_nats

    options = connect_options(settings)
    # max_reconnect_attempts=0 would mean "forever" to nats-py: one attempt, no waiting.
    options.update(allow_reconnect=False, max_reconnect_attempts=1, reconnect_time_wait=0.1)

    async def quiet(_exc: Exception) -> None:
        # The caller reports the fallback in one line; no traceback from nats-py's default logger.
        return None

    return await open_nats(name="mlwarden-audit", connect_timeout=BUS_TIMEOUT_S, error_cb=quiet, **options)


def _ranges(numbers: list[int]) -> list[str]:
    """`[3, 4, 7]` -> `["3..4", "7"]`."""
    found: list[str] = []
    for _, group in itertools.groupby(enumerate(numbers), key=lambda pair: pair[1] - pair[0]):
        run = [n for _, n in group]
        found.append(f"{run[0]}..{run[-1]}" if len(run) > 1 else str(run[0]))
    return found


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
        missing: list[int] = []
        # From 1, not from first_seq: the stream has no limits, so a first_seq above 1 means
        # its first checkpoints were removed.
        for seq in range(1, info.state.last_seq + 1):
            try:
                raw = await js.get_msg(CHECKPOINTS.name, seq)
            except NotFoundError:
                missing.append(seq)
                continue
            if raw.subject == Subjects.AUDIT_CHECKPOINTS and raw.data:
                items.append(decode(raw.data, AuditCheckpoint).data)
        from shared.bus import load_trust
        from shared.trust import load_root_public

        # audit-log's key as the root-signed trust store holds it (a bare key there means nothing).
        store = await load_trust(js, load_root_public(settings.trust_root, settings.keys_dir), ["audit-log"])
        trusted = store.history("audit-log")
        source = f"NATS stream {CHECKPOINTS.name} at {settings.nats_url_redacted}"
        return Checkpoints(items, source, trusted, stream_gaps=_ranges(missing))
    finally:
        await nc.close()


def _checkpoint_key(cp: AuditCheckpoint) -> tuple[str, int, str, int]:
    return (cp.origin, cp.tree_size, cp.root_hash, cp.timestamp_ms)


def load_checkpoints(settings: Settings) -> Checkpoints:
    """Every published checkpoint: from the bus when it answers, plus those only in the local
    mirror; only the mirror when the bus does not answer."""
    from services.audit_log.checkpoint import CheckpointMirror
    from services.audit_log.settings import mirror_path

    path = mirror_path(settings.data_dir)
    try:
        found = asyncio.run(_read_bus_checkpoints(settings))
    except Exception as exc:  # noqa: BLE001 - any bus failure means: use the mirror
        reason = type(exc).__name__
    else:
        published = {_checkpoint_key(cp) for cp in found.items}
        found.missing_from_stream = [cp for cp in CheckpointMirror(path).read() if _checkpoint_key(cp) not in published]
        if found.missing_from_stream:
            # Verified with the others, in signing order (both sources are written in that order).
            found.items = sorted([*found.items, *found.missing_from_stream], key=lambda cp: cp.timestamp_ms)
            found.source += f" and local mirror {path}"
        return found
    return Checkpoints(CheckpointMirror(path).read(), f"local mirror {path} (bus unavailable: {reason})")


def _audit_key(
    settings: Settings, key_arg: str | None, trusted: KeyHistory | None = None
) -> tuple[AuditKey | None, str]:
    """audit-log's public key and where it came from: `--key`, `trust store` or `data dir`."""
    from shared.signing import SigningKey, load_public_key

    if key_arg:
        data = Path(key_arg).read_bytes()
        if b"PRIVATE KEY" in data:
            return SigningKey.from_pem("audit-log", data).private.public_key(), "--key"
        return load_public_key(data if data.lstrip().startswith(b"-----BEGIN") else data.decode().strip()), "--key"
    if trusted is not None:
        return trusted, "trust store"
    pem = settings.keys_dir / "audit-log.pem"
    if pem.exists():
        return SigningKey.from_pem("audit-log", pem.read_bytes()).private.public_key(), "data dir"
    return None, "none"


def load_audit_key(settings: Settings, key_arg: str | None, trusted: KeyHistory | None = None) -> AuditKey | None:
    """audit-log's public key: --key (PEM or base64 file), the trust store, or the data dir's key."""
    return _audit_key(settings, key_arg, trusted)[0]


def _witness_key(settings: Settings, key_arg: str | None, trusted: KeyHistory | None) -> AuditKey:
    """The key a kept checkpoint is checked with: `--key` or the trust store, never the data dir
    (whoever can rewrite the database and the data dir could put their own key there)."""
    from shared.errors import InputError

    public, source = _audit_key(settings, key_arg, trusted)
    if public is None or source == "data dir":
        raise InputError("a kept checkpoint needs audit-log's public key from the trust store (bus) or --key")
    return public


def read_checkpoint_file(path: Path) -> AuditCheckpoint:
    """A checkpoint an auditor kept (`audit checkpoint --out`)."""
    from pydantic import ValidationError

    from shared.errors import InputError
    from shared.events import AuditCheckpoint

    try:
        return AuditCheckpoint.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise InputError(f"{path} is not a checkpoint: {str(exc)[:300]}") from exc


def _open_store(args: argparse.Namespace) -> AuditStore | None:
    from services.audit_log.store import AuditStore

    settings = _settings(args)
    # --db or MLW_AUDIT_DB_URL name the database; only the data dir's default must exist already.
    if settings.audit_db_url is None and not (settings.data_dir / "audit.db").exists():
        err.print(f"no audit database at {settings.data_dir / 'audit.db'} (pass --db or set MLW_AUDIT_DB_URL)")
        return None
    return AuditStore(settings.audit_url)


@dataclass
class _Verdict:
    """What `audit verify` concludes beyond the trail report."""

    ok: bool
    reason: str
    anchored: bool


def _conclude(report: TrailReport, cps: Checkpoints, trusted: AuditCheckpoint | None, allow: bool) -> _Verdict:
    anchored = bool(cps.items) or trusted is not None
    if not report.ok:
        return _Verdict(False, report.reason, anchored)
    if cps.stream_gaps:
        return _Verdict(
            False,
            f"checkpoints were removed from the stream (messages {', '.join(cps.stream_gaps)} are missing)",
            anchored,
        )
    if not anchored and not allow:
        return _Verdict(
            False,
            "no signed checkpoint (bus unavailable or stream empty, no mirror, no --trusted-checkpoint): "
            "removed or rewritten entries cannot be detected; --allow-unanchored accepts this",
            anchored,
        )
    return _Verdict(True, "", anchored)


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Recompute chain, Merkle tree and every signed checkpoint against the database."""
    from services.audit_log.checkpoint import CheckpointError, verify_checkpoint
    from services.audit_log.verify import verify_trail

    settings = _settings(args)
    store = _open_store(args)
    if store is None:
        return EXIT_ERROR
    with store:
        cps = load_checkpoints(settings)
        public, key_source = _audit_key(settings, args.key, cps.trusted_key)
        trusted: AuditCheckpoint | None = None
        items = list(cps.items)
        if args.trusted_checkpoint:
            trusted = read_checkpoint_file(Path(args.trusted_checkpoint))
            public = _witness_key(settings, args.key, cps.trusted_key)
            key_source = "--key" if args.key else "trust store"
            try:
                verify_checkpoint(trusted, public)
            except CheckpointError as exc:
                reason = f"the trusted checkpoint does not verify with audit-log's key ({key_source}): {exc.reason}"
                if args.format == "json":
                    _print_json({"ok": False, "reason": reason, "trusted_checkpoint": trusted.tree_size})
                else:
                    out.print(f"[red]INVALID[/]: {printable(reason)}")
                return EXIT_FAIL
            # In signing order with the others: sizes may never shrink along it.
            items = sorted([*items, trusted], key=lambda cp: cp.timestamp_ms)
        report = verify_trail(store, items, public)
    verdict = _conclude(report, cps, trusted, args.allow_unanchored)
    if args.format == "json":
        _print_json(
            {
                "ok": verdict.ok,
                "anchored": verdict.anchored,
                "entries": report.entries,
                "checkpoints": report.checkpoints,
                "verified_size": report.verified_size,
                "root_hash": report.root_hash,
                "first_bad_seq": report.first_bad_seq,
                "reason": verdict.reason,
                "checkpoint_source": cps.source,
                "key_source": key_source,
                "stream_gaps": cps.stream_gaps,
                "missing_from_stream": [cp.tree_size for cp in cps.missing_from_stream],
                "trusted_checkpoint": trusted.tree_size if trusted is not None else None,
            }
        )
        return EXIT_OK if verdict.ok else EXIT_FAIL
    err.print(f"checkpoints: {len(cps.items)} from {printable(cps.source)}")
    if trusted is not None:
        err.print(f"trusted checkpoint: {trusted.tree_size} entries, from {printable(args.trusted_checkpoint)}")
    if cps.missing_from_stream:
        sizes = ", ".join(str(cp.tree_size) for cp in cps.missing_from_stream)
        err.print(f"[yellow]warning:[/] checkpoints for {sizes} entries are in the mirror but not in the stream")
    if key_source == "data dir" and items:
        err.print("[yellow]note:[/] audit-log's key was read from the data dir; --key or the bus is stronger")
    if not report.ok and report.first_bad_seq is not None:
        out.print(f"[red]TAMPERED[/] first bad entry: seq {report.first_bad_seq}: {printable(verdict.reason)}")
    elif not report.ok or cps.stream_gaps:
        out.print(f"[red]TAMPERED[/]: {printable(verdict.reason)}")
    elif not verdict.ok:
        out.print(f"[red]UNANCHORED[/]: {report.entries} entries chained, but {printable(verdict.reason)}")
    else:
        out.print(
            f"[green]intact[/]: {report.entries} entries; hash chain and Merkle tree verified; "
            f"{report.checkpoints} signed checkpoints verified (up to {report.verified_size} entries)"
        )
        if not verdict.anchored:
            err.print("[yellow]warning:[/] no checkpoints: truncation and rewritten history cannot be detected")
    return EXIT_OK if verdict.ok else EXIT_FAIL


async def _checkpoint_on_bus(
    settings: Settings, from_size: int | None
) -> tuple[AuditCheckpointReply, KeyHistory | None]:
    """audit-log's latest checkpoint (with PROOF(from_size, latest) when asked) and the trusted key."""
    import orjson

    from shared.client import RequestFailed
    from shared.events import AuditCheckpointReply, AuditCheckpointRequest
    from shared.service import reply_or_error
    from shared.topology import Subjects

    nc = await _connect_quick(settings)
    try:
        body = orjson.dumps(AuditCheckpointRequest(from_size=from_size).model_dump(mode="json"))
        msg = await nc.request(Subjects.AUDIT_CHECKPOINT, body, timeout=10.0)
        reply = reply_or_error(bytes(msg.data), AuditCheckpointReply)
        if not isinstance(reply, AuditCheckpointReply):
            raise RequestFailed(Subjects.AUDIT_CHECKPOINT, reply)
        from shared.bus import load_trust
        from shared.trust import load_root_public

        root = load_root_public(settings.trust_root, settings.keys_dir)
        store = await load_trust(nc.jetstream(timeout=BUS_TIMEOUT_S), root, ["audit-log"])
        return reply, store.history("audit-log")
    finally:
        await nc.close()


def _latest_checkpoint(
    args: argparse.Namespace, previous: AuditCheckpoint | None
) -> tuple[AuditCheckpointReply, KeyHistory | None, str]:
    """The newest checkpoint, a consistency proof from `previous`, the trusted key and the source.

    From audit-log over the bus; when the bus does not answer, the newest checkpoint of the
    local mirror with the proof computed from the local database (a proof is checked against
    both signed roots, so it does not matter who computed it).
    """
    from services.audit_log.checkpoint import CheckpointMirror
    from services.audit_log.settings import mirror_path
    from shared.client import RequestFailed
    from shared.errors import InputError
    from shared.events import AuditCheckpointReply

    settings = _settings(args)
    try:
        reply, trusted = asyncio.run(_checkpoint_on_bus(settings, None))
        if previous is not None and previous.tree_size < reply.checkpoint.tree_size:
            reply, trusted = asyncio.run(_checkpoint_on_bus(settings, previous.tree_size))
        return reply, trusted, f"audit-log at {settings.nats_url_redacted}"
    except RequestFailed:
        raise
    except Exception as exc:  # noqa: BLE001 - refused, timed out, no responders: use the mirror
        reason = type(exc).__name__
    path = mirror_path(settings.data_dir)
    latest = CheckpointMirror(path).latest()
    if latest is None:
        raise InputError(f"no checkpoint: the bus is unavailable ({reason}) and {path} holds none")
    proof: list[str] = []
    if previous is not None and 0 < previous.tree_size < latest.tree_size:
        store = _open_store(args)
        if store is None:
            raise InputError("no audit database to prove the new checkpoint consistent with the kept one")
        with store:
            proof = [h.hex() for h in store.consistency_proof(previous.tree_size, latest.tree_size)]
    source = f"local mirror {path} (bus unavailable: {reason})"
    return AuditCheckpointReply(checkpoint=latest, consistency_path=proof), None, source


def cmd_audit_checkpoint(args: argparse.Namespace) -> int:
    """Keep audit-log's latest signed checkpoint in a file of yours (a witness copy).

    An existing FILE is replaced only by a checkpoint proven to extend it (RFC 9162 consistency
    proof), so the file always holds the largest history you have seen; pass it to
    `audit verify --trusted-checkpoint FILE` later.
    """
    from services.audit_log import merkle
    from services.audit_log.checkpoint import CheckpointError, verify_checkpoint
    from services.audit_log.merkle import ProofError

    out_path = Path(args.out)
    previous = read_checkpoint_file(out_path) if out_path.exists() else None
    reply, trusted_key, source = _latest_checkpoint(args, previous)
    public = _witness_key(_settings(args), args.key, trusted_key)
    latest = reply.checkpoint
    try:
        verify_checkpoint(latest, public)
    except CheckpointError as exc:
        out.print(f"[red]INVALID[/] checkpoint from {printable(source)}: {printable(exc.reason)}")
        return EXIT_FAIL
    if previous is not None:
        try:
            verify_checkpoint(previous, public)
        except CheckpointError as exc:
            err.print(
                f"[red]error:[/] the kept checkpoint {printable(out_path)} does not verify: {printable(exc.reason)}"
            )
            return EXIT_ERROR
        problem = ""
        if latest.tree_size < previous.tree_size:
            problem = f"the log now holds {latest.tree_size} entries but you kept a checkpoint for {previous.tree_size}"
        elif latest.tree_size == previous.tree_size and latest.root_hash != previous.root_hash:
            problem = f"two different roots for {latest.tree_size} entries: a forked log"
        elif latest.tree_size > previous.tree_size:
            try:
                merkle.verify_consistency(
                    previous.tree_size,
                    latest.tree_size,
                    bytes.fromhex(previous.root_hash),
                    bytes.fromhex(latest.root_hash),
                    [bytes.fromhex(h) for h in reply.consistency_path],
                )
            except ProofError as exc:
                problem = f"the new checkpoint does not extend the kept one: {exc}"
        if problem:
            out.print(f"[red]INCONSISTENT[/]: {problem}; {printable(out_path)} is kept unchanged (it is your evidence)")
            return EXIT_FAIL
    out_path.parent.mkdir(parents=True, exist_ok=True)
    partial = out_path.with_name(out_path.name + ".partial")
    partial.write_text(latest.model_dump_json(indent=2) + "\n")
    partial.replace(out_path)
    grown = "" if previous is None else f" (was {previous.tree_size}, proven consistent)"
    out.print(
        f"checkpoint for {latest.tree_size} entries{grown} from {printable(source)} saved to {printable(out_path)}"
    )
    return EXIT_OK


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
        err.print(
            f"proof of {printable(proof.event_id)} (leaf {proof.leaf_index} of {proof.tree_size}) written to {args.out}"
        )
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
        err.print(f"[red]not a proof:[/] {printable(str(exc)[:500])}")
        return EXIT_ERROR
    public = load_audit_key(_settings(args), args.key)
    if public is None:
        err.print("no public key: pass --key PUBLIC.pem")
        return EXIT_ERROR
    try:
        checked = check_inclusion_proof(proof, public)
    except (ProofError, CheckpointError) as exc:
        out.print(f"[red]INVALID[/]: {printable(exc)}")
        return EXIT_FAIL
    out.print(
        f"[green]valid[/]: event {printable(checked.event_id)} ({printable(checked.event.get('type'))}) "
        f"is entry {checked.leaf_index} "
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
        fields = (e.type, e.service, e.subject, e.actor, e.decision)
        table.add_row(str(e.leaf_index), stamp, *(printable(f) for f in fields))
    out.print(table)
    if not entries:
        err.print(f"nothing recorded for {args.kind} {printable(args.name)}")
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
    p.add_argument("--service", help="only entries recorded from this service (e.g. data-guard)")
    p.add_argument("--type", help="only entries of this event type (e.g. mlw.verdict.dataset)")
    p.add_argument("--subject", help="e.g. model:churn:3 or dataset:iris:1 (model:churn:* for every version)")
    p.add_argument("--model", dest="subject_model", help="shorthand for --subject model:NAME:* (every version)")
    p.add_argument("--actor", help="only entries whose verified signer is this actor")
    p.add_argument("--client", help="serving client id")
    p.add_argument("--decision", help="only verdicts with this decision (pass, warn, fail, ...)")
    p.add_argument("--limit", type=int, default=50, help="entries per page")
    p.add_argument("--cursor", type=int, help="continue after this sequence number (the previous page's next_cursor)")
    p.add_argument("--format", choices=["table", "json"], default="table", help="output format")

    p = add("verify", cmd_audit_verify, audit)
    common(p)
    p.add_argument("--db", help="SQLAlchemy URL of the audit database")
    p.add_argument("--key", help="audit-log's public key (PEM or base64); default: trust store or data dir")
    p.add_argument("--format", choices=["text", "json"], default="text", help="output format")
    p.add_argument(
        "--trusted-checkpoint",
        metavar="FILE",
        help="a checkpoint you kept (`audit checkpoint --out`): the trail must still hold and match it",
    )
    p.add_argument(
        "--allow-unanchored",
        action="store_true",
        help="exit 0 on an intact chain even with no signed checkpoint to check it against (weaker)",
    )

    p = add("checkpoint", cmd_audit_checkpoint, audit)
    common(p)
    p.add_argument("--out", required=True, metavar="FILE", help="where you keep the checkpoint (updated if it grew)")
    p.add_argument("--db", help="SQLAlchemy URL of the audit database (consistency proof when the bus is away)")
    p.add_argument("--key", help="audit-log's public key (PEM or base64); default: the trust store")

    p = add("prove", cmd_audit_prove, audit)
    common(p)
    p.add_argument("event_id", help="the id of the event whose inclusion to prove")
    p.add_argument("--db", help="SQLAlchemy URL of the audit database (local fallback)")
    p.add_argument("--out", help="write the proof JSON here instead of stdout")

    p = add("check-proof", cmd_audit_check_proof, audit)
    common(p, nats=False)
    p.add_argument("file", help="a proof from `mlwarden audit prove`")
    p.add_argument("--key", help="audit-log's public key (PEM or base64); default: the data dir's key")

    p = add("export", cmd_audit_export, audit)
    common(p, nats=False)
    p.add_argument("--db", help="SQLAlchemy URL of the audit database")
    p.add_argument("--format", choices=["jsonl", "csv"], default="jsonl", help="output format")
    p.add_argument("--since", type=parse_time, help="from this time: 7d, 12h, unix seconds or ISO 8601")
    p.add_argument("--until", type=parse_time, help="up to this time: 7d, 12h, unix seconds or ISO 8601")
    p.add_argument("--out", help="file to write (default stdout)")

    p = add("trail", cmd_audit_trail, audit)
    common(p, nats=False)
    p.add_argument("kind", choices=["model", "dataset"], help="what the story is about")
    p.add_argument("name", help="NAME:VERSION (churn:3) or NAME for every version")
    p.add_argument("--db", help="SQLAlchemy URL of the audit database")
    p.add_argument("--format", choices=["table", "json"], default="table", help="output format")
