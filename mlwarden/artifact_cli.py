"""`mlwarden sign | verify | scan model`: artifact-signer's offline commands for CI pipelines.

Exit codes: 0 ok / safe, 1 verification failed / unsafe, 2 usage or input error.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mlwarden.cliutil import EXIT_FAIL, EXIT_OK, _print_json, out
from shared.errors import InputError


def cmd_sign(args: argparse.Namespace) -> int:
    """`mlwarden sign PATH --key PRIVATE.pem --signature OUT`."""
    from services.artifact_signer.manifest import sign_path
    from shared.signing import SigningKey

    key = SigningKey.from_pem(args.key.stem, args.key.read_bytes())
    document = sign_path(args.path, key, model=args.path.name or "artifact")
    args.signature.write_bytes(document)
    out.print(f"signed {args.path} -> {args.signature}")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    """`mlwarden verify PATH --signature FILE --key PUBLIC.pem`."""
    from services.artifact_signer.manifest import verify_path

    result = verify_path(args.path, args.signature.read_bytes(), args.key.read_bytes())
    if args.format == "json":
        _print_json(result.model_dump(mode="json"))
    elif result.ok:
        out.print(f"[green]verified[/]: {result.files} files, root {result.root_digest}, signer {result.signer}")
    else:
        out.print("[red]VERIFICATION FAILED[/]")
        for problem in result.problems:
            out.print(f"  {problem}", markup=False)
    return EXIT_OK if result.ok else EXIT_FAIL


def cmd_scan_model(args: argparse.Namespace) -> int:
    """`mlwarden scan model PATH`."""
    from services.artifact_signer.scanner import scan_path

    if not args.path.exists():
        raise InputError(f"{args.path} does not exist")
    report = scan_path(args.path)
    if args.format == "json":
        _print_json(report.model_dump(mode="json"))
    else:
        verdict = "[green]SAFE[/]" if report.safe else "[red]UNSAFE[/]"
        out.print(f"{verdict}: {report.path} ({len(report.files)} files)")
        for scan in report.files:
            for finding in scan.findings:
                out.print(f"  {scan.path}: {finding.severity.value} {finding.check}: {finding.message}", markup=False)
    return EXIT_OK if report.safe else EXIT_FAIL


def add_artifact_commands(sub: Any, add: Callable[..., argparse.ArgumentParser]) -> None:
    """Register `sign`, `verify` and `scan model`."""
    p = add("sign", cmd_sign)
    p.add_argument("path", type=Path)
    p.add_argument("--key", type=Path, required=True, help="private key (PEM)")
    p.add_argument("--signature", type=Path, required=True, help="where to write the signature")

    p = add("verify", cmd_verify)
    p.add_argument("path", type=Path)
    p.add_argument("--signature", type=Path, required=True)
    p.add_argument("--key", type=Path, required=True, help="public key (PEM)")
    p.add_argument("--format", choices=["text", "json"], default="text")

    scan = sub.add_parser("scan", help="scan artifacts").add_subparsers(dest="scan_cmd", required=True)
    p = add("model", cmd_scan_model, scan)
    p.add_argument("path", type=Path)
    p.add_argument("--format", choices=["text", "json"], default="text")
