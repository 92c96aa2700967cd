"""`mlwarden keys api-key`: issue, list and revoke serving-monitor's API keys.

Kept apart from the rest of `keys` (the trust store's commands) so each can change alone.

    mlwarden keys api-key CLIENT [--models churn,fraud]   # issue; the key is printed once
    mlwarden keys api-key list [--json]
    mlwarden keys api-key revoke KEY_ID [--purge]
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from mlwarden.cliutil import EXIT_ERROR, EXIT_OK, _print_json, _settings, err, out
from shared.client import Client
from shared.settings import Settings

#: Words `keys api-key` reads as a command, not as a client to issue a key for.
COMMANDS = ("list", "revoke")


async def _list(settings: Settings) -> tuple[list[dict[str, Any]], list[str]]:
    from services.serving_monitor.keystore import list_keys_on_bus

    async with Client.connect(settings, source="mlwarden/keys") as client:
        records, unreadable = await list_keys_on_bus(client.js)
    rows = [r.model_dump(mode="json", include={"key_id", "client", "scopes", "created", "revoked"}) for r in records]
    return rows, unreadable


async def _revoke(settings: Settings, key_id: str, *, purge: bool) -> None:
    from services.serving_monitor.keystore import delete_key_on_bus

    async with Client.connect(settings, source="mlwarden/keys") as client:
        await delete_key_on_bus(client.js, key_id, purge=purge)


def cmd_api_key(args: argparse.Namespace) -> int:
    """Issue an API key for CLIENT (only its hash is stored), or `list` the keys, or `revoke
    KEY_ID` (its record is deleted; a running serving-monitor refuses the key at once)."""
    settings = _settings(args)
    if args.target == "list":
        rows, unreadable = asyncio.run(_list(settings))
        if args.json:
            _print_json(rows)
        else:
            for row in rows:
                created = datetime.fromtimestamp(row["created"], UTC).isoformat(timespec="seconds")
                state = "revoked" if row["revoked"] else "active"
                out.print(f"{row['key_id']}  {row['client']:20} {state:8} {created}  {','.join(row['scopes'])}")
        for key_id in unreadable:
            err.print(f"[yellow]warning:[/] {key_id} is not an API key record")
        return EXIT_OK
    if args.target == "revoke":
        if args.key_id is None:
            err.print("[red]error:[/] keys api-key revoke needs a KEY_ID (see `keys api-key list`)")
            return EXIT_ERROR
        asyncio.run(_revoke(settings, args.key_id, purge=args.purge))
        out.print(f"revoked {args.key_id}")
        return EXIT_OK
    if args.key_id is not None:
        err.print(f"[red]error:[/] unexpected argument {args.key_id!r}")
        return EXIT_ERROR
    from mlwarden.ops import issue_api_key

    plaintext = asyncio.run(issue_api_key(settings, args.target, args.models.split(",")))
    out.print(plaintext)
    return EXIT_OK


def add_api_key_commands(
    keys: Any,
    add: Callable[..., argparse.ArgumentParser],
    common: Callable[[argparse.ArgumentParser], None],
) -> None:
    """Register `keys api-key` under the `keys` sub-command group."""
    p = add("api-key", cmd_api_key, keys, usage="%(prog)s {CLIENT [--models M] | list [--json] | revoke KEY_ID}")
    common(p)
    p.add_argument("target", metavar="CLIENT|list|revoke", help="a client to issue a key for, or a command")
    p.add_argument("key_id", nargs="?", metavar="KEY_ID", help="with revoke: the key id (`list` shows them)")
    p.add_argument("--models", default="*", help="comma-separated model names the key may call")
    p.add_argument("--json", action="store_true", help="with list: print JSON")
    p.add_argument("--purge", action="store_true", help="with revoke: also drop the record's history")
