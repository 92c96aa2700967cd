"""Offline commands for CI pipelines without a bus: the same domain code the services run.

Exit codes: 0 pass (or warn), 1 fail, 2 usage or input error; `--format json` prints one JSON
object on stdout.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rich.console import Console

from mlwarden.cliutil import EXIT_ERROR, EXIT_FAIL, EXIT_OK
from shared.errors import InputError
from shared.events import Decision

FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".npz": "npz"}
#: The offline check reads files up to this size (the service's default limit).
MAX_OFFLINE_BYTES = 2 * 1024**3


def _read_table(path: Path, label: str | None) -> Any:
    from services.data_guard.loader import load_table

    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"cannot tell the format of {path} (expected .csv, .parquet or .npz)")
    if not path.is_file():
        raise InputError(f"{path} is not a file")
    return load_table(path.read_bytes(), fmt, label, max_bytes=MAX_OFFLINE_BYTES, max_rows=50_000_000)  # type: ignore[arg-type]


def check_dataset(args: argparse.Namespace, out: Console, print_json: Callable[[Any], None]) -> int:
    """`mlwarden check dataset DATA --label COL [--reference REF]`."""
    from services.data_guard.detect import analyze
    from services.data_guard.loader import DatasetError

    try:
        table = _read_table(args.data, args.label)
        reference = _read_table(args.reference, args.label) if args.reference else None
    except DatasetError as exc:
        if args.format == "json":
            print_json({"decision": "error", "error": exc.code, "message": str(exc)})
        else:
            out.print(f"[red]error[/] ({exc.code}): {exc}")
        return EXIT_ERROR
    report = analyze(table, reference)
    if args.format == "json":
        print_json(report.cli_summary())
    else:
        colour = {"pass": "green", "warn": "yellow", "fail": "red"}.get(report.decision.value, "white")
        out.print(
            f"[{colour}]{report.decision.value.upper()}[/]: {report.rows} rows, {len(report.flagged_rows)} flagged"
        )
        for finding in report.findings:
            out.print(f"  {finding.severity.value:5} {finding.check:32} {finding.message}", markup=False)
    return EXIT_FAIL if report.decision == Decision.FAIL else EXIT_OK


def sign(args: argparse.Namespace, out: Console) -> int:
    """`mlwarden sign PATH --key PRIVATE.pem --signature OUT`."""
    from services.artifact_signer.manifest import sign_path
    from shared.signing import SigningKey

    key = SigningKey.from_pem(args.key.stem, args.key.read_bytes())
    document = sign_path(args.path, key, model=args.path.name or "artifact")
    args.signature.write_bytes(document)
    out.print(f"signed {args.path} -> {args.signature}")
    return EXIT_OK


def verify(args: argparse.Namespace, out: Console, print_json: Callable[[Any], None]) -> int:
    """`mlwarden verify PATH --signature FILE --key PUBLIC.pem`."""
    from services.artifact_signer.manifest import verify_path

    result = verify_path(args.path, args.signature.read_bytes(), args.key.read_bytes())
    if args.format == "json":
        print_json(result.model_dump(mode="json"))
    elif result.ok:
        out.print(f"[green]verified[/]: {result.files} files, root {result.root_digest}, signer {result.signer}")
    else:
        out.print("[red]VERIFICATION FAILED[/]")
        for problem in result.problems:
            out.print(f"  {problem}", markup=False)
    return EXIT_OK if result.ok else EXIT_FAIL


def scan_model(args: argparse.Namespace, out: Console, print_json: Callable[[Any], None]) -> int:
    """`mlwarden scan model PATH`."""
    from services.artifact_signer.scanner import scan_path

    if not args.path.exists():
        raise InputError(f"{args.path} does not exist")
    report = scan_path(args.path)
    if args.format == "json":
        print_json(report.model_dump(mode="json"))
    else:
        verdict = "[green]SAFE[/]" if report.safe else "[red]UNSAFE[/]"
        out.print(f"{verdict}: {report.path} ({len(report.files)} files)")
        for scan in report.files:
            for finding in scan.findings:
                out.print(f"  {scan.path}: {finding.severity.value} {finding.check}: {finding.message}", markup=False)
    return EXIT_OK if report.safe else EXIT_FAIL
