"""Wait for a condition, not for a duration (issue 13, "a deterministic suite").

A test that sleeps a fixed time and then looks is slow when the machine is idle and wrong when it
is loaded. These helpers ask again every `interval` until the condition holds, and fail with what
was awaited and the last value seen once a generous `timeout` has passed. Deadlines are generous
on purpose: they bound a hang, they do not measure speed (that is `benchmarks/`' job).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

#: Long enough for a loaded two-core CI machine; only a hang ever reaches it.
DEFAULT_TIMEOUT_S = 60.0


class PollTimeout(AssertionError):
    """The condition did not hold before the deadline."""


async def until(
    check: Callable[[], T | None] | Callable[[], Awaitable[T | None]],
    *,
    what: str,
    timeout: float = DEFAULT_TIMEOUT_S,
    interval: float = 0.05,
) -> T:
    """Call `check` (sync or async) until it returns something truthy; return that value.

    Raises `PollTimeout` naming `what` and the last value seen after `timeout` seconds.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        last = value
        if time.monotonic() >= deadline:
            raise PollTimeout(f"timed out after {timeout:g} s waiting for {what}; last value: {last!r}")
        await asyncio.sleep(interval)


def until_sync(
    check: Callable[[], T | None], *, what: str, timeout: float = DEFAULT_TIMEOUT_S, interval: float = 0.05
) -> T:
    """`until` for code without an event loop (fixtures that start processes)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise PollTimeout(f"timed out after {timeout:g} s waiting for {what}; last value: {value!r}")
        time.sleep(interval)
