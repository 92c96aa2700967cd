"""Printing helpers every benchmark shares: one table, figure beside anchor, ratio."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from rich.console import Console
from rich.table import Table


@dataclass
class Row:
    """One measured figure beside its anchor."""

    what: str
    figure: float
    anchor_name: str
    anchor: float
    unit: str
    higher_is_better: bool = True

    @property
    def ratio(self) -> float:
        """figure / anchor when higher is better, anchor / figure otherwise."""
        if self.higher_is_better:
            return self.figure / self.anchor if self.anchor else float("inf")
        return self.anchor / self.figure if self.figure else float("inf")


T = TypeVar("T")


def best_of(repeat: int, fn: Callable[[], T], clock: Callable[[], float] = time.perf_counter) -> tuple[T, float]:
    """`fn`'s last result and its least time on `clock` over `repeat` runs (at least one):
    timeit's rule, the slower runs measured the neighbours on a shared machine too."""
    best = math.inf
    for _ in range(max(1, repeat)):
        start = clock()
        result = fn()
        best = min(best, clock() - start)
    return result, best


def rate(fn: Callable[[], object], n: int) -> float:
    """Calls per second of `fn` over `n` calls."""
    start = time.perf_counter()
    for _ in range(n):
        fn()
    return n / (time.perf_counter() - start)


def show(title: str, rows: list[Row]) -> None:
    """Print the table."""
    table = Table("measure", "mlwarden", "anchor", "anchor value", "ratio", title=title)
    for r in rows:
        table.add_row(
            r.what, f"{r.figure:,.1f} {r.unit}", r.anchor_name, f"{r.anchor:,.1f} {r.unit}", f"{r.ratio:.2f}x"
        )
    Console().print(table)
