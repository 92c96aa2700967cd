"""`mlwarden serving`: the operator's side of serving-monitor's detectors (issue 9).

mlwarden serving clear CLIENT        # CLIENT, or OWNER.* for an owner's keys; admitted again
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from mlwarden.cliutil import EXIT_ERROR, EXIT_OK, _settings, bus_client, err, out, printable
from shared.settings import Settings


async def _clear(settings: Settings, client: str) -> Any:
    from services.serving_monitor.keystore import clear_flag_on_bus

    async with bus_client(settings, source="mlwarden/serving") as bus:
        return await clear_flag_on_bus(bus.js, client)


def cmd_serving_clear(args: argparse.Namespace) -> int:
    """Clear the flag serving-monitor's detectors raised on CLIENT (or OWNER.*): every running
    instance admits it again at once. Exit 2 when it was not flagged."""
    from services.serving_monitor.flags import flag_key

    flag_key(args.client)  # refuse what cannot be a client before connecting
    flag = asyncio.run(_clear(_settings(args), args.client))
    if flag is None:
        err.print(f"[red]error:[/] {printable(args.client)} is not flagged")
        return EXIT_ERROR
    since = datetime.fromtimestamp(flag.since, UTC).isoformat(timespec="seconds")
    out.print(
        f"cleared {printable(flag.client)}: {flag.reason.value} on {printable(flag.model)} since {since} "
        f"({printable(flag.kind)})",
        soft_wrap=True,
    )
    return EXIT_OK


def add_serving_commands(
    sub: Any, add: Callable[..., argparse.ArgumentParser], common: Callable[[argparse.ArgumentParser], None]
) -> None:
    """Register the `serving` command group."""
    serving = sub.add_parser("serving", help="serving-monitor: clear flagged clients").add_subparsers(
        dest="serving_cmd", required=True
    )
    p = add("clear", cmd_serving_clear, serving)
    common(p)
    p.add_argument("client", metavar="CLIENT", help="a client id, or OWNER.* for an owner's keys")
