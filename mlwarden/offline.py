"""Offline commands for CI pipelines without a bus: the same domain code the services run.

Exit codes: 0 pass (or warn), 1 fail (also a dataset over a size limit), 2 usage or input error;
`--format json` prints one JSON object on stdout.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape

from mlwarden.cliutil import EXIT_ERROR, EXIT_FAIL, EXIT_OK
from shared.errors import InputError
from shared.events import Decision

FORMATS = {".csv": "csv", ".parquet": "parquet", ".pq": "parquet", ".npz": "npz"}
#: The offline check reads files up to this size (the service's default limit).
MAX_OFFLINE_BYTES = 2 * 1024**3
#: Rows the offline check reads; the cell limit (the loader's default, as in the service) binds first
#: for tables of more than one column.
MAX_OFFLINE_ROWS = 50_000_000


def _read_table(path: Path, label: str | None) -> Any:
    from services.data_guard.loader import DEFAULT_MAX_CELLS, DEFAULT_MAX_COLUMNS, load_table

    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise InputError(f"cannot tell the format of {path} (expected .csv, .parquet or .npz)")
    if not path.is_file():
        raise InputError(f"{path} is not a file")
    size = path.stat().st_size
    if size > MAX_OFFLINE_BYTES:  # refused before the bytes are read into memory
        from services.data_guard.loader import DatasetError

        raise DatasetError("too_large", f"too large: {path} is {size} bytes > the {MAX_OFFLINE_BYTES} limit")
    return load_table(
        path.read_bytes(),
        fmt,  # type: ignore[arg-type]
        label,
        max_bytes=MAX_OFFLINE_BYTES,
        max_rows=MAX_OFFLINE_ROWS,
        max_columns=DEFAULT_MAX_COLUMNS,
        max_cells=DEFAULT_MAX_CELLS,
    )


@contextmanager
def _progress(console: Console) -> Iterator[Callable[[str], None]]:
    """A step reporter: on a terminal, a spinner naming the running step and the time so far
    (on stderr, so `--format json` stays one object on stdout); elsewhere nothing."""
    if not console.is_terminal:
        yield lambda _step: None
        return
    started = time.monotonic()
    with console.status("starting") as status:

        def step(name: str) -> None:
            status.update(f"{escape(name)} [dim]({time.monotonic() - started:.0f} s)[/]")

        yield step


def check_dataset(
    args: argparse.Namespace, out: Console, print_json: Callable[[Any], None], progress: Console | None = None
) -> int:
    """`mlwarden check dataset DATA --label COL [--reference REF]`; `progress` (stderr) shows
    each step while it runs when it is a terminal."""
    from services.data_guard.detect import analyze
    from services.data_guard.loader import DatasetError

    with _progress(progress or Console(stderr=True)) as step:
        try:
            step(f"reading {args.data}")
            table = _read_table(args.data, args.label)
            if args.reference:
                step(f"reading {args.reference}")
            reference = _read_table(args.reference, args.label) if args.reference else None
        except DatasetError as exc:
            return _refused(exc, args, out, print_json)
        report = analyze(table, reference, progress=step)
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


def _refused(exc: Any, args: argparse.Namespace, out: Console, print_json: Callable[[Any], None]) -> int:
    """A dataset the loader refused: over a size limit it is a `fail` verdict, as the service
    gives (issue 12); bytes that are not a dataset at all are an input error."""
    decision = "fail" if exc.over_limit else "error"
    if args.format == "json":
        summary: dict[str, Any] = {"decision": decision, "error": exc.code, "message": str(exc)}
        if exc.over_limit:  # the shape of a report, as the bus verdict has
            refusal = {"check": f"input.{exc.code}", "severity": "fail", "message": str(exc), "rows": []}
            summary |= {"rows": 0, "used_reference": False, "flagged_rows": [], "findings": [refusal]}
        print_json(summary)
    else:
        out.print(f"[red]{decision}[/] ({exc.code}): {escape(str(exc))}")
    return EXIT_FAIL if exc.over_limit else EXIT_ERROR
