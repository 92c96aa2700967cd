"""`mlwarden audit ...`: auditors query, verify, prove and export the trail."""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from typing import Any

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


def cmd_audit_verify(args: argparse.Namespace) -> int:
    """Recompute the audit trail's hash chain from the database."""
    from services.audit_log.store import AuditStore
    from services.audit_log.verify import verify_chain

    settings = _settings(args)
    if not args.db and not (settings.data_dir / "audit.db").exists():
        err.print(f"no audit database at {settings.data_dir / 'audit.db'}")
        return EXIT_ERROR
    report = verify_chain(AuditStore(settings.audit_url))
    if args.format == "json":
        _print_json(
            {"ok": report.ok, "entries": report.entries, "first_bad_seq": report.first_bad_seq, "reason": report.reason}
        )
    elif report.ok:
        out.print(f"[green]intact[/]: {report.entries} entries, hash chain verified")
    else:
        out.print(f"[red]TAMPERED[/] at entry {report.first_bad_seq}: {report.reason}")
    return EXIT_OK if report.ok else EXIT_FAIL


def add_audit_commands(sub: Any, add: Callable[..., argparse.ArgumentParser], common: Callable[..., None]) -> None:
    """Register the `audit` command group."""
    audit = sub.add_parser("audit", help="query and verify the audit trail").add_subparsers(
        dest="audit_cmd", required=True
    )
    p = add("query", cmd_audit_query, audit)
    common(p)
    p.add_argument("--since", type=parse_time)
    p.add_argument("--until", type=parse_time)
    p.add_argument("--service")
    p.add_argument("--type")
    p.add_argument("--subject", help="e.g. model:churn:3 or dataset:iris:1")
    p.add_argument("--model", dest="subject_model", help="shorthand for --subject model:NAME:* (every version)")
    p.add_argument("--actor")
    p.add_argument("--decision")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--cursor", type=int)
    p.add_argument("--format", choices=["table", "json"], default="table")
    p = add("verify", cmd_audit_verify, audit)
    common(p, nats=False)
    p.add_argument("--db", help="SQLAlchemy URL of the audit database")
    p.add_argument("--format", choices=["text", "json"], default="text")
