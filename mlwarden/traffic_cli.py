"""`mlwarden check traffic`: replay logged predictions through serving-monitor's own detectors.

    mlwarden check traffic TRAFFIC.jsonl --reference REF.csv [--label COL] [--model NAME] [--format text|json]

Exit codes: 0 no client alarmed, 1 at least one alarmed, 2 input error (one line on stderr).
"""

from __future__ import annotations

import argparse
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlwarden.cliutil import EXIT_FAIL, EXIT_OK, _print_json, out, printable

#: The replay reads files up to this size.
MAX_TRAFFIC_BYTES = 4 * 1024**3


def cmd_check_traffic(args: argparse.Namespace) -> int:
    """Replay logged predictions (JSON lines, or `audit export --format jsonl` output) in time order
    through serving-monitor's detectors, against a profile fitted on the reference CSV; exit 1 when
    any client is alarmed."""
    from services.serving_monitor.replay import fit_profile, read_reference, read_traffic, replay

    traffic_path: Path = args.traffic
    reference_path: Path = args.reference
    for path in (traffic_path, reference_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path} is not a file")
        if path.stat().st_size > MAX_TRAFFIC_BYTES:
            raise ValueError(f"{path} is larger than {MAX_TRAFFIC_BYTES} bytes")
    names, x = read_reference(reference_path.read_bytes(), args.label, source=str(reference_path))
    with traffic_path.open("rb") as lines:
        log = read_traffic(lines, names, source=str(traffic_path))
    model = args.model or Counter(log.models).most_common(1)[0][0]
    profile = fit_profile(names, x, model, source=str(reference_path))
    report = replay(log, profile)
    if args.format == "json":
        _print_json(report.to_json())
    else:
        alarmed = report.alarmed
        colour = "red" if alarmed else "green"
        verdict = "FAIL" if alarmed else "PASS"
        out.print(
            f"[{colour}]{verdict}[/]: {report.records} records from {len(report.clients)} clients, "
            f"{len(alarmed)} alarmed (model {printable(model)}, {len(names)} features)"
        )
        rates = ", ".join(f"{k} {v:.2%}" for k, v in report.profile.per_client_rates().items())
        simulated = report.profile.queries.prada_w.simulated_clients
        out.print(
            f"  calibrated per-client false-alarm rate: {rates} (on {simulated} benign clients simulated from "
            "the reference)",
            soft_wrap=True,
        )
        for client in alarmed:
            # One line per client: its alerts by kind, and the first alert's message.
            alerts = report.clients[client].alerts
            kinds = ", ".join(f"{kind} x{n}" for kind, n in Counter(a.kind for a in alerts).items())
            out.print(f"  {printable(client)}: {kinds}; {printable(alerts[0].message)}", soft_wrap=True)
    return EXIT_FAIL if report.alarmed else EXIT_OK


def add_traffic_commands(check: Any, add: Callable[..., argparse.ArgumentParser]) -> None:
    """Register `check traffic` under the `check` sub-commands."""
    p = add("traffic", cmd_check_traffic, check)
    p.add_argument("traffic", type=Path, help="JSON lines: records, or mlw.prediction.logged events")
    p.add_argument("--reference", type=Path, required=True, help="the model's training data (CSV)")
    p.add_argument("--label", help="a column of the reference to drop")
    p.add_argument("--model", help="the model the reference is of (default: the most logged model)")
    p.add_argument("--format", choices=["text", "json"], default="text", help="output format")
