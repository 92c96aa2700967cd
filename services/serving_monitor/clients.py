"""Per-client state with a bounded size, shared by every serving-monitor detector."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

import numpy as np
import numpy.typing as npt

from services.serving_monitor.errors import ConfigError

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class ClientTable(Generic[K, V]):
    """At most `max_clients` entries; the least recently seen is evicted first, because its
    decayed counters (or oldest queries) have forgotten the most."""

    def __init__(self, max_clients: int) -> None:
        if max_clients < 1:
            raise ConfigError("max_clients", max_clients, ">= 1")
        self.max_clients = max_clients
        self._items: OrderedDict[K, V] = OrderedDict()

    def touch(self, key: K, make: Callable[[], V], *, replace: Callable[[V], bool] | None = None) -> V:
        """The state of `key`, created with `make()` when absent (or when `replace(state)` says
        the old one no longer fits), and marked as most recently seen."""
        state = self._items.get(key)
        if state is None or (replace is not None and replace(state)):
            if state is None and len(self._items) >= self.max_clients:
                self._items.popitem(last=False)
            state = self._items[key] = make()
        self._items.move_to_end(key)
        return state

    def forget(self, matches: Callable[[K], bool]) -> None:
        """Drop every entry whose key `matches`."""
        for key in [k for k in self._items if matches(k)]:
            del self._items[key]

    def __getitem__(self, key: K) -> V:
        return self._items[key]

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)


#: A vectorised counter within this factor of a threshold is re-run step by step (rounding).
NEAR = 1.0 - 1e-9


def monotone(now: npt.NDArray[np.float64], since: float) -> bool:
    """Clocks that never step back from `since` (the vectorised counters assume it)."""
    return bool(now[0] >= since and (len(now) < 2 or (np.diff(now) >= 0).all()))


#: exp() overflows past 709: decayed sums are computed in chunks spanning at most this many windows.
_MAX_EXPONENT = 600.0


def decayed_sums(
    times: npt.NDArray[np.float64], amounts: npt.NDArray[np.float64], start: float, since: float, window: float
) -> npt.NDArray[np.float64]:
    """`start` (a counter last updated at `since`) decayed by exp(-dt / window) and increased by
    `amounts[i]` at `times[i]` (non-decreasing, none before `since`): the counter after each step,
    on whole arrays. Equal to the step-by-step recurrence up to rounding; callers that compare it
    with a threshold re-run the recurrence near one."""
    out = np.empty(len(times))
    carry, origin = start, since
    begin = 0
    while begin < len(times):
        end = int(np.searchsorted(times, times[begin] + _MAX_EXPONENT * window, side="right"))
        t = times[begin:end]
        base = t[0]
        grown = np.cumsum(amounts[begin:end] * np.exp((t - base) / window))
        out[begin:end] = grown * np.exp(-(t - base) / window) + carry * np.exp(-(t - origin) / window)
        carry, origin = float(out[end - 1]), float(t[-1])
        begin = end
    return out
