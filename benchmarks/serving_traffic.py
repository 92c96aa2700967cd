"""serving-monitor on a labelled day of traffic (issue 9): who is alarmed, and how fast the replay is.

    uv run python benchmarks/serving_traffic.py [--seeds 1 2] [--dataset breast_cancer|mixed]

1. Per seed: benign clients alarmed (of 40) and, per attack kind, clients caught / total, with the
   service's default detectors replayed by `mlwarden check traffic`'s code.
2. `check traffic` records/s (parse + detectors, and detectors alone) beside parsing the file
   alone with orjson, on one core.
3. Memory per tracked client, measured with tracemalloc beside the extraction state's bound.
"""

from __future__ import annotations

import argparse
import sys
import time
import tracemalloc
from collections import Counter
from pathlib import Path

import orjson
from rich.console import Console
from rich.table import Table

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _table import Row, show

from services.serving_monitor.detectors import Detectors
from services.serving_monitor.replay import ReplayReport, fit_profile, read_traffic, replay
from services.serving_monitor.settings import ServingSettings
from services.serving_monitor.synthetic_traffic import ATTACK_KINDS, BENIGN, MODEL, Dataset, Traffic, generate


def judge(traffic: Traffic) -> tuple[ReplayReport, float, float, float]:
    """Replay a day; (report, parse-only s, parse s, detectors s)."""
    lines = list(traffic.jsonl())
    ref = traffic.reference
    profile = fit_profile(ref.features, ref.train, MODEL)
    start = time.perf_counter()
    for line in lines:
        orjson.loads(line)
    parse_only = time.perf_counter() - start
    start = time.perf_counter()
    log = read_traffic(lines, ref.features)
    parse = time.perf_counter() - start
    start = time.perf_counter()
    report = replay(log, profile)
    detect = time.perf_counter() - start
    return report, parse_only, parse, detect


def outcome_table(title: str, rows: list[tuple[str, str]]) -> None:
    table = Table("who", "alarmed / total", title=title)
    for who, figure in rows:
        table.add_row(who, figure)
    Console().print(table)


def outcomes(traffic: Traffic, report: ReplayReport) -> list[tuple[str, str]]:
    alarmed = set(report.alarmed)
    totals = Counter(traffic.labels.values())
    caught = Counter(traffic.labels[c] for c in alarmed)
    rows = [("benign clients alarmed", f"{caught[BENIGN]} / {totals[BENIGN]}")]
    for kind in ATTACK_KINDS:
        rows.append((f"{kind} caught", f"{caught[kind]} / {totals[kind]}"))
    kinds = Counter(a.kind for c in alarmed if traffic.labels[c] == BENIGN for a in report.clients[c].alerts)
    rows.append(("alerts on benign clients by detector", ", ".join(f"{k} {n}" for k, n in kinds.items()) or "none"))
    return rows


def memory_per_client(traffic: Traffic) -> tuple[float, float]:
    """Bytes per tracked client after the day, and the extraction state's stated bound."""
    ref = traffic.reference
    profile = fit_profile(ref.features, ref.train, MODEL)
    log = read_traffic(list(traffic.jsonl()), ref.features)
    dets = Detectors.from_settings(ServingSettings())
    tracemalloc.start()
    before = tracemalloc.get_traced_memory()[0]
    replay(log, profile, detectors=dets)
    used = tracemalloc.get_traced_memory()[0] - before
    tracemalloc.stop()
    axes = profile.reference.projection.shape[1]
    return used / len(set(log.clients)), float(dets.extraction.bytes_per_client(len(ref.features), axes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--dataset", choices=["breast_cancer", "mixed"], default="breast_cancer")
    args = parser.parse_args()
    dataset: Dataset = args.dataset
    speed: list[Row] = []
    for seed in args.seeds:
        traffic = generate(seed, dataset=dataset)
        report, parse_only, parse, detect = judge(traffic)
        outcome_table(
            f"{dataset}, seed {seed}: {report.records} records, {len(report.clients)} clients",
            outcomes(traffic, report),
        )
        n = report.records
        speed.append(
            Row(
                f"check traffic, seed {seed} (parse + detectors)",
                n / (parse + detect),
                "orjson parse only",
                n / parse_only,
                "rec/s",
            )
        )
        speed.append(Row(f"detectors alone, seed {seed}", n / detect, "orjson parse only", n / parse_only, "rec/s"))
    measured, bound = memory_per_client(generate(args.seeds[0], dataset=dataset))
    speed.append(
        Row(
            "memory per tracked client (all detectors)",
            measured,
            "extraction state bound",
            bound,
            "B",
            higher_is_better=False,
        )
    )
    show("serving-monitor replay", speed)


if __name__ == "__main__":
    main()
