"""Lock-file parser fuzzing, the long run (issue 12, "Fuzzing").

    uv run python benchmarks/fuzz_lockfile.py                  # 20,000 examples
    uv run python benchmarks/fuzz_lockfile.py --examples 100000

The harness is the test suite's (`tests/unit/artifact_signer/as_lockfile_fuzz.py`: requirements.txt,
uv.lock and pylock.toml built from hostile fragments, plus raw bytes under each name), run for
longer and without stopping at the first crash. `check_lockfile` documents no exception: any
exception is a crash (goal: zero). Prints executions, crashes, distinct crashes and seconds, then
one line per distinct crash with the smallest input seen.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "unit" / "artifact_signer"))

from as_lockfile_fuzz import LOCK_FILES, run  # noqa: E402
from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from hypothesis import seed as hypothesis_seed  # noqa: E402


def main() -> None:
    """Run the harness, tally crashes by (type, place), print the table."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--examples", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=12)
    args = parser.parse_args()
    executions = 0
    crashes: dict[tuple[str, str], tuple[int, tuple[str, bytes], str]] = {}

    @hypothesis_seed(args.seed)
    @settings(
        max_examples=args.examples,
        deadline=None,
        database=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(LOCK_FILES)
    def harness(case: tuple[str, bytes]) -> None:
        nonlocal executions
        executions += 1
        try:
            run(case)
        except Exception as exc:  # noqa: BLE001 - every exception is a crash, tallied
            frame = traceback.extract_tb(exc.__traceback__)[-1]
            key = (type(exc).__name__, f"{Path(frame.filename).name}:{frame.lineno}")
            count, smallest, message = crashes.get(key, (0, case, str(exc)))
            if len(case[1]) < len(smallest[1]):
                smallest, message = case, str(exc)
            crashes[key] = (count + 1, smallest, message)

    start = time.perf_counter()
    harness()
    seconds = time.perf_counter() - start
    total = sum(count for count, _, _ in crashes.values())
    print(f"{'harness':14} {'executions':>10} {'crashes':>8} {'distinct':>8} {'seconds':>8} {'exec/s':>8}")
    rate = executions / seconds
    print(f"{'check_lockfile':14} {executions:10d} {total:8d} {len(crashes):8d} {seconds:8.1f} {rate:8.0f}")
    for (kind, where), (count, (name, content), message) in sorted(crashes.items()):
        print(f"  {kind} at {where} x{count}: {message[:100]!r} from {name} {content[:120]!r}")
    sys.exit(1 if crashes else 0)


if __name__ == "__main__":
    main()
