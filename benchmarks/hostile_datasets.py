"""data-guard on the hostile files of issue 12: exit code, seconds and peak memory per file.

    uv run python benchmarks/hostile_datasets.py
    uv run python benchmarks/hostile_datasets.py --keep /tmp/hostile   # keep the files

Each file is judged by `mlwarden check dataset FILE --label label --format json` in its own
child process, so that its peak resident memory is its own: ru_maxrss of the child, read with
`resource.getrusage(RUSAGE_CHILDREN)` in a helper process that runs only that child. Printed
per file: size, exit code, decision, seconds, peak MB, what the issue measured before the fix,
and the failing (or skipping) check now.
"""

from __future__ import annotations

import argparse
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Hostile:
    """One hostile file: how to write it and what the issue measured before the fix."""

    name: str
    filename: str
    write: Callable[[Path], None]
    before: str


def _csv(X: np.ndarray, y: np.ndarray) -> Callable[[Path], None]:
    def write(path: Path) -> None:
        lines = [",".join([f"f{i}" for i in range(X.shape[1])] + ["label"])]
        lines += [",".join(repr(float(v)) for v in row) + f",{t}" for row, t in zip(X, y, strict=True)]
        path.write_text("\n".join(lines) + "\n")

    return write


def _header_only(path: Path) -> None:
    path.write_text("f0,f1,f2,label\n")


def _wide(path: Path) -> None:
    X = np.random.default_rng(0).integers(0, 10, size=(20, 3000))
    lines = [",".join([f"f{i}" for i in range(3000)] + ["label"])]
    lines += [",".join(str(int(v)) for v in row) + f",{i % 2}" for i, row in enumerate(X)]
    path.write_text("\n".join(lines) + "\n")


def _zeros_parquet(path: Path) -> None:
    # 5,000,000 x 20 zeros (19 features and the label), zstd, in row groups: 800 MB as float64.
    schema = pa.schema([(f"f{j}", pa.float64()) for j in range(19)] + [("label", pa.int64())])
    chunk = pa.table({**{f"f{j}": np.zeros(250_000) for j in range(19)}, "label": np.zeros(250_000, np.int64)})
    with pq.ParquetWriter(path, schema, compression="zstd") as writer:
        for _ in range(20):
            writer.write_table(chunk)


def cases() -> list[Hostile]:
    """The hostile files of issue 12, in its order."""
    rng = np.random.default_rng(0)
    two = np.arange(200) % 2
    X = rng.normal(size=(150, 4))
    return [
        Hostile("anchor: clean 150 x 4", "clean.csv", _csv(X, (X[:, 0] > 0).astype(int)), "(start-up + a small check)"),
        Hostile("all-NaN features", "all_nan.csv", _csv(np.full((200, 5), np.nan), two), "exception (exit 2)"),
        Hostile("all-inf features", "all_inf.csv", _csv(np.full((200, 5), np.inf), two), "warn (exit 0)"),
        Hostile("one row", "one_row.csv", _csv(rng.normal(size=(1, 5)), np.zeros(1, int)), "exception (exit 2)"),
        Hostile("header only", "header_only.csv", _header_only, "error (exit 2)"),
        Hostile("20 rows x 3,000 columns", "wide.csv", _wide, "> 8 min (bus)"),
        Hostile("5 M x 20 zeros Parquet (zstd)", "zeros.parquet", _zeros_parquet, "4.4 GB, no answer in 60 s"),
        Hostile(
            "500 identical rows, one class",
            "identical.csv",
            _csv(np.tile(rng.normal(size=(1, 5)), (500, 1)), np.ones(500, int)),
            "pass",
        ),
    ]


def judge(path: Path) -> tuple[int, float, float, dict[str, object]]:
    """Run the CLI on `path` in a child; exit code, seconds, peak RSS in MB, parsed JSON.

    Called in a fresh helper process per file (`--one`), so RUSAGE_CHILDREN's ru_maxrss (the
    largest of the children waited for) is this one child's peak.
    """
    command = [sys.executable, "-m", "mlwarden", "check", "dataset", str(path), "--label", "label", "--format", "json"]
    start = time.perf_counter()
    child = subprocess.run(command, cwd=ROOT, capture_output=True, check=False)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KB on Linux
    try:
        summary = orjson.loads(child.stdout)
    except orjson.JSONDecodeError:
        summary = {"decision": "no JSON", "message": child.stderr.decode(errors="replace").strip()[-200:]}
    return child.returncode, seconds, peak, summary


def _reason(summary: dict[str, object]) -> str:
    """The first failing check and every skipped one, in short."""
    findings = [f for f in summary.get("findings") or [] if isinstance(f, dict)]  # type: ignore[attr-defined]
    parts = [f"{f['check']}: {str(f['message'])[:90]}" for f in findings if f.get("severity") == "fail"][:1]
    parts += [f"{f['check']} skipped" for f in findings if str(f.get("message", "")).startswith("skipped")]
    return "; ".join(parts) or str(summary.get("message", summary.get("decision", "")))[:90]


def measure_one(path: Path) -> None:
    """Helper-process entry: judge one file, print one JSON line (exit, seconds, peak, summary)."""
    code, seconds, peak, summary = judge(path)
    print(orjson.dumps({"code": code, "seconds": seconds, "peak_mb": peak, "summary": summary}).decode())


def main() -> int:
    """Write every hostile file, judge each in a fresh process tree and print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--keep", type=Path, help="write the files here and keep them")
    parser.add_argument("--one", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        measure_one(args.one)
        return 0
    folder = args.keep or Path(tempfile.mkdtemp(prefix="mlw-hostile-"))
    folder.mkdir(parents=True, exist_ok=True)
    print(f"mlwarden check dataset FILE --label label --format json   (files in {folder})\n")
    header = (
        f"{'file':32} {'size':>9} {'exit':>4} {'decision':8} {'seconds':>7} {'x anchor':>8} {'peak MB':>7}"
        "  before the fix (issue 12) / now"
    )
    print(header)
    print("-" * len(header))
    worst, anchor = 0.0, 0.0
    for case in cases():
        path = folder / case.filename
        case.write(path)
        # A fresh helper per file: its RUSAGE_CHILDREN (and wait4) see exactly one child.
        line = subprocess.run(
            [sys.executable, __file__, "--one", str(path)], cwd=ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        result = orjson.loads(line)
        summary = result["summary"]
        size = path.stat().st_size
        anchor = anchor or result["seconds"]
        print(
            f"{case.name:32} {size / 1024:>7.0f}KB {result['code']:>4} {summary.get('decision', '?')!s:8} "
            f"{result['seconds']:>7.1f} {result['seconds'] / anchor:>8.2f} {result['peak_mb']:>7.0f}  {case.before}"
        )
        print(f"{'':32} {'':>9} {'':>4} {'':8} {'':>7} {'':>8} {'':>7}  now: {_reason(summary)}")
        worst = max(worst, result["seconds"])
    print(f"\nslowest file: {worst:.1f} s, each including the CLI's start-up (the anchor is mostly start-up)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
