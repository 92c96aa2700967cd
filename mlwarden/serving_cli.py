"""`mlwarden serving`: the operator's side of serving-monitor's detectors (issue 9).

mlwarden serving clear CLIENT        # CLIENT, or OWNER.* for an owner's keys; admitted again
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from mlwarden.cliutil import EXIT_ERROR, EXIT_OK, _settings, bus_client, err, out, printable
from shared.settings import Settings

#: The reference CSV read by `fit-profile`, at most.
MAX_REFERENCE_BYTES = 1024**3


def profile_version(data: bytes, now: float) -> str:
    """A profile's default version: when it was fitted and which reference it was fitted on."""
    stamp = datetime.fromtimestamp(now, UTC).strftime("%Y%m%dT%H%M%SZ")
    return f"{stamp}-sha256:{hashlib.sha256(data).hexdigest()[:16]}"


async def _publish_profile(settings: Settings, profile: Any) -> None:
    from services.serving_monitor.keystore import register_profile_on_bus

    async with bus_client(settings, source="mlwarden/serving") as bus:
        await register_profile_on_bus(bus.js, profile)


def cmd_serving_fit_profile(args: argparse.Namespace) -> int:
    """Fit a model's OOD/extraction reference profile from its training data (CSV), version it,
    and publish it for serving-monitor to follow (`--out` also writes it to a file)."""
    import orjson

    from services.serving_monitor.ood import fit_reference
    from services.serving_monitor.replay import read_reference

    path: Path = args.reference
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not a file")
    if path.stat().st_size > MAX_REFERENCE_BYTES:
        raise ValueError(f"{path} is larger than {MAX_REFERENCE_BYTES} bytes")
    data = path.read_bytes()
    names, x = read_reference(data, args.label, source=str(path))
    version = args.version or profile_version(data, time.time())
    profile = fit_reference(x, names, args.model, version=version)
    if args.out is not None:
        args.out.write_bytes(orjson.dumps(profile.to_dict(), option=orjson.OPT_INDENT_2))
    asyncio.run(_publish_profile(_settings(args), profile))
    out.print(
        f"published profile {printable(profile.model)} version {printable(profile.version)}: "
        f"{len(profile.features)} features, {profile.n_fit} fit + {profile.n_calibration} calibration rows, "
        f"threshold {profile.threshold:.3g} (held-out flag rate {profile.calibrated_rate:.2%})",
        soft_wrap=True,
    )
    rates = ", ".join(f"{k} {v:.2%}" for k, v in profile.per_client_rates().items())
    out.print(f"calibrated per-client false-alarm rate: {rates}", soft_wrap=True)
    return EXIT_OK


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
    serving = sub.add_parser("serving", help="serving-monitor: reference profiles, flagged clients").add_subparsers(
        dest="serving_cmd", required=True
    )
    p = add("fit-profile", cmd_serving_fit_profile, serving)
    common(p)
    p.add_argument("reference", type=Path, help="the model's training data (CSV), the trusted reference")
    p.add_argument("--model", required=True, help="the model the profile is for")
    p.add_argument("--label", help="a column of the reference to drop")
    p.add_argument("--version", help="the profile's version (default: fit time and the CSV's sha256)")
    p.add_argument("--out", type=Path, help="also write the profile (JSON) to this file")
    p = add("clear", cmd_serving_clear, serving)
    common(p)
    p.add_argument("client", metavar="CLIENT", help="a client id, or OWNER.* for an owner's keys")
