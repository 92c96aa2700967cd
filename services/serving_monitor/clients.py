"""Per-client state with a bounded size, shared by every serving-monitor detector."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

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
