"""`mlwarden sign | verify | scan model | scan deps`: artifact-signer's offline commands for CI.

Exit codes: 0 ok / safe, 1 verification failed / unsafe / vulnerable, 2 usage or input error.
`sign` writes an OpenSSF Model Signing (OMS) v1.0 bundle; `verify` checks one (or a legacy
mlwarden signed manifest) against the files.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mlwarden.cliutil import EXIT_FAIL, EXIT_OK, RawDescriptionHelpFormatter, _print_json, err, out
from shared.errors import InputError

# Kept here, not imported from `services.artifact_signer.osv` (which holds the same URL as
# OSV_SOURCE, checked by a test): building the parser must not import the domain modules.
_OSV_URL = "https://osv-vulnerabilities.storage.googleapis.com/PyPI/all.zip"
OSV_HELP = f"""\
where the OSV database comes from:
  The OSV project (https://osv.dev) exports every ecosystem's advisories to its public
  GCS bucket gs://osv-vulnerabilities, one zip per ecosystem, documented at
  https://google.github.io/osv.dev/data/ ("Data dumps"). PyPI's is PyPI/all.zip:
    {_OSV_URL}
  Download it where there is network access and pass it with --osv as it is (or unzip it
  and pass the folder):
    curl -fsSLo osv-pypi.zip {_OSV_URL}
    mlwarden scan deps uv.lock --osv osv-pypi.zip
  Refresh it by downloading it again, daily (or `gsutil -m rsync gs://osv-vulnerabilities/PyPI
  DIR` for a folder): a stale copy misses new advisories, it never invents them. Without
  --osv the lock is still checked for pins and hashes, and reported as "not checked for
  known vulnerabilities".
"""

#: Below this many bytes hashing takes well under a second: no progress bar.
PROGRESS_MIN_BYTES = 256 * 1024 * 1024


@contextmanager
def _progress(path: Path, what: str) -> Iterator[Callable[[int], None] | None]:
    """A rich progress bar on stderr for long hashing on a terminal; None otherwise."""
    if not sys.stderr.isatty():
        yield None
        return
    total = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    if total < PROGRESS_MIN_BYTES:
        yield None
        return
    from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

    with Progress(
        f"[bold]{what}[/]", BarColumn(), DownloadColumn(), TransferSpeedColumn(), console=err, transient=True
    ) as bar:
        task = bar.add_task(what, total=total)
        yield lambda n: bar.advance(task, n)


def cmd_sign(args: argparse.Namespace) -> int:
    """`mlwarden sign PATH --key PRIVATE.pem --signature OUT`: write an OMS v1.0 bundle."""
    from services.artifact_signer.oms import load_private_key, sign_model

    if not args.path.exists():
        raise InputError(f"{args.path} does not exist")
    key = load_private_key(args.key.read_bytes())
    ignore = list(args.ignore)
    out_path = args.signature.resolve()
    if args.path.is_dir() and out_path.is_relative_to(args.path.resolve()):
        # A signature written inside the model would change the model it signs.
        ignore.append(out_path.relative_to(args.path.resolve()).as_posix())
    with _progress(args.path, "hashing") as progress:
        manifest, bundle = sign_model(
            args.path,
            key,
            ignore_paths=ignore,
            ignore_git_paths=not args.no_ignore_git,
            shard_size=args.shard_size,
            allow_symlinks=args.allow_symlinks,
            progress=progress,
        )
    args.signature.write_bytes(bundle)
    out.print(f"signed {args.path} ({len(manifest.files())} files, root {manifest.root_digest}) -> {args.signature}")
    return EXIT_OK


def cmd_verify(args: argparse.Namespace) -> int:
    """`mlwarden verify PATH --signature FILE --key PUBLIC.pem`: strict, stateless verification."""
    from services.artifact_signer.oms import is_bundle, load_public_key, verify_model

    document = args.signature.read_bytes()
    if not is_bundle(document):
        return _verify_legacy(args, document)
    if not args.path.exists():
        raise InputError(f"{args.path} does not exist")
    public = load_public_key(args.key.read_bytes())
    with _progress(args.path, "verifying") as progress:
        result = verify_model(args.path, document, public, progress=progress)
    if args.format == "json":
        _print_json(result.to_json())
    elif result.ok:
        out.print(f"[green]verified[/]: {result.files} files, root {result.root_digest} ({result.method})")
    else:
        out.print("[red]VERIFICATION FAILED[/]")
        for problem in result.problems:
            out.print(f"  {problem}", markup=False)
    return EXIT_OK if result.ok else EXIT_FAIL


def _verify_legacy(args: argparse.Namespace, document: bytes) -> int:
    # mlwarden signed manifests written before OMS bundles (issue 2) still verify.
    from services.artifact_signer.manifest import verify_path

    result = verify_path(args.path, document, args.key.read_bytes())
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
    """`mlwarden scan model PATH [--format text|json|sarif]`."""
    from services.artifact_signer.sarif import scan_sarif
    from services.artifact_signer.scanner import scan_path

    if not args.path.exists():
        raise InputError(f"{args.path} does not exist")
    report = scan_path(args.path)
    if args.format == "json":
        _print_json(report.model_dump(mode="json"))
    elif args.format == "sarif":
        _print_json(scan_sarif(report))
    else:
        verdict = "[green]SAFE[/]" if report.safe else "[red]UNSAFE[/]"
        out.print(f"{verdict}: {report.path} ({len(report.files)} files)")
        for scan in report.files:
            for finding in scan.findings:
                out.print(f"  {scan.path}: {finding.severity.value} {finding.check}: {finding.message}", markup=False)
    return EXIT_OK if report.safe else EXIT_FAIL


def cmd_scan_deps(args: argparse.Namespace) -> int:
    """`mlwarden scan deps LOCKFILE [--osv DIR|ZIP] [--format text|json|sarif]`."""
    from services.artifact_signer.dependencies import check_dependencies
    from services.artifact_signer.osv import OsvDatabase
    from services.artifact_signer.sarif import deps_sarif
    from shared.events import Decision

    if not args.lockfile.is_file():
        raise InputError(f"{args.lockfile} is not a file")
    database = OsvDatabase.load(args.osv) if args.osv else None
    report = check_dependencies(args.lockfile.read_bytes(), args.lockfile.name, database)
    if args.format == "json":
        _print_json(report.model_dump(mode="json"))
    elif args.format == "sarif":
        _print_json(deps_sarif(report, args.lockfile.as_posix()))
    else:
        colour = {"pass": "green", "warn": "yellow", "fail": "red"}[report.decision.value]
        out.print(
            f"[{colour}]{report.decision.value.upper()}[/]: {args.lockfile} ({report.lock.format.value}, "
            f"{len(report.lock.packages)} packages, {report.vulnerability_summary})"
        )
        for finding in report.findings:
            out.print(f"  {finding.severity.value:5} {finding.check:28} {finding.message}", markup=False)
    return EXIT_FAIL if report.decision == Decision.FAIL else EXIT_OK


def add_artifact_commands(sub: Any, add: Callable[..., argparse.ArgumentParser]) -> None:
    """Register `sign`, `verify`, `scan model` and `scan deps`."""
    p = add("sign", cmd_sign)
    p.add_argument("path", type=Path, help="the model file or folder to sign")
    p.add_argument("--key", type=Path, required=True, help="private key (PEM): ECDSA P-256/384/521 or Ed25519")
    p.add_argument("--signature", type=Path, required=True, help="where to write the OMS bundle")
    p.add_argument(
        "--ignore",
        action="append",
        default=[],
        metavar="PATH",
        help="path relative to the model to leave out (a folder covers its contents); recorded in the signature",
    )
    p.add_argument("--no-ignore-git", action="store_true", help="also sign .git, .gitignore, .gitattributes, .github")
    p.add_argument("--shard-size", type=int, default=None, help="sign shards of this many bytes (not interoperable)")
    p.add_argument("--allow-symlinks", action="store_true", help="follow symlinks to files inside the model")

    p = add("verify", cmd_verify)
    p.add_argument("path", type=Path, help="the model file or folder to check")
    p.add_argument("--signature", type=Path, required=True, help="the signature bundle `mlwarden sign` wrote")
    p.add_argument("--key", type=Path, required=True, help="public key (PEM)")
    p.add_argument("--format", choices=["text", "json"], default="text", help="output format")

    scan = sub.add_parser("scan", help="scan artifacts").add_subparsers(dest="scan_cmd", required=True)
    p = add("model", cmd_scan_model, scan)
    p.add_argument("path", type=Path, help="the model file or folder to scan")
    p.add_argument("--format", choices=["text", "json", "sarif"], default="text", help="output format")

    p = add("deps", cmd_scan_deps, scan, epilog=OSV_HELP, formatter_class=RawDescriptionHelpFormatter)
    p.add_argument("lockfile", type=Path, help="requirements.txt (with --hash), uv.lock or pylock.toml")
    p.add_argument(
        "--osv",
        type=Path,
        default=None,
        help="offline OSV database: PyPI/all.zip of the OSV project's export (see below), as a zip or a folder",
    )
    p.add_argument("--format", choices=["text", "json", "sarif"], default="text", help="output format")
