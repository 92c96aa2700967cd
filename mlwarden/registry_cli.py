"""`mlwarden registry status`: where each model stands in registry-gate (issue 11).

Asks registry-gate over `mlw.registry.status` and prints the current version per stage and the
requests still pending (`--format json` for the whole `RegistryStatus`). Exit codes: 0 answered,
2 usage or bus error (as every bus command).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from mlwarden.cliutil import EXIT_OK, _print_json, _settings, out, printable

if TYPE_CHECKING:
    from shared.events import RegistryStatus
    from shared.settings import Settings


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


def _when(t: float | None) -> str:
    return "-" if t is None else time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


def cmd_registry_status(args: argparse.Namespace) -> int:
    """Show the current version per stage and the pending requests (registry-gate)."""
    status = asyncio.run(registry_status(_settings(args), args.model))
    if args.format == "json":
        _print_json(status.model_dump(mode="json"))
        return EXIT_OK
    from rich.table import Table

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
