"""data-guard fuzzing, the long run: the dataset loaders (CSV, Parquet, NPZ) and `analyze`.

    uv run python benchmarks/fuzz_data_guard.py                  # 2,000 examples per harness
    uv run python benchmarks/fuzz_data_guard.py --examples 20000

The harnesses are the test suite's (`tests/unit/data_guard/dg_fuzz.py`), run for longer and
without stopping at the first crash: every exception other than `DatasetError` from `load_table`,
or any exception from `analyze`, is a crash (issue 12; goal: zero). Printed per harness:
executions, distinct crashes, crashes, seconds; then one line per distinct crash (type, place,
message) with the smallest input that produced it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

os.environ.setdefault("OMP_NUM_THREADS", "1")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "unit" / "data_guard"))

from dg_fuzz import LOADER_TARGETS, Case, hostile_tables, judge, load  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import seed as hypothesis_seed  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from services.data_guard.loader import Table  # noqa: E402


@dataclass
class Tally:
    """Executions and crashes of one harness; crashes keyed by exception type and place."""

    executions: int = 0
    crashes: int = 0
    distinct: dict[str, tuple[str, int]] = field(default_factory=dict)
    """key -> (message, size of the smallest input seen)."""


def _where(exc: BaseException) -> str:
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if "/services/" in f.filename] or frames
    last = own[-1] if own else None
    return f"{Path(last.filename).name}:{last.lineno}" if last else "?"


def _run(strategy: st.SearchStrategy[Any], check: Callable[[Any], object], examples: int, seed: int) -> Tally:
    tally = Tally()

    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
        phases=[Phase.generate],  # no shrinking: nothing is raised; the smallest input is kept
    )
    @hypothesis_seed(seed)
    @given(strategy)
    def harness(case: Any) -> None:
        tally.executions += 1
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # as in the test suite: a warning is a crash too
                check(case)
        except Exception as exc:  # noqa: BLE001 -- every escape is a crash: count it and go on
            tally.crashes += 1
            key = f"{type(exc).__name__} at {_where(exc)}"
            size = len(case.data) if isinstance(case, Case) else int(case.X.size)
            message = str(exc).splitlines()[0][:120] if str(exc) else ""
            if key not in tally.distinct or size < tally.distinct[key][1]:
                tally.distinct[key] = (f"{message} | input: {case!r}"[:400], size)

    harness()
    return tally


def main() -> int:
    """Run every harness and print the table; exit 1 when any crash was found."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=2000, help="examples per loader harness")
    parser.add_argument("--analyze-examples", type=int, default=200, help="examples for the analyze harness")
    parser.add_argument("--seed", type=int, default=12)
    args = parser.parse_args()

    targets: list[tuple[str, st.SearchStrategy[Any], Callable[[Any], object], int]] = [
        (name, make(), load, args.examples) for name, make in LOADER_TARGETS.items()
    ]
    targets.append(("analyze on hostile tables", hostile_tables(), _judge, args.analyze_examples))
    print(f"{'harness':28} {'executions':>10} {'distinct':>8} {'crashes':>8} {'seconds':>8}")
    print("-" * 68)
    total = Tally()
    found: list[tuple[str, str]] = []
    for name, strategy, check, examples in targets:
        start = time.perf_counter()
        tally = _run(strategy, check, examples, args.seed)
        seconds = time.perf_counter() - start
        print(
            f"{name:28} {tally.executions:>10} {len(tally.distinct):>8} {tally.crashes:>8} {seconds:>8.1f}", flush=True
        )
        total.executions += tally.executions
        total.crashes += tally.crashes
        found += [(f"{name}: {key}", text) for key, (text, _) in tally.distinct.items()]
    print("-" * 68)
    print(f"{'total':28} {total.executions:>10} {len(found):>8} {total.crashes:>8}   goal: 0 crashes")
    for key, text in found:
        print(f"\n{key}\n  {text}")
    return 1 if total.crashes else 0


def _judge(table: Table) -> object:
    return judge(table)


if __name__ == "__main__":
    sys.exit(main())
