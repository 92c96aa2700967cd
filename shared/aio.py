"""Cancelling background tasks without hanging and without swallowing the caller's cancellation.

The usual idiom, `task.cancel()` then `with suppress(CancelledError): await task`, has two
faults that made a stopping service hang (issue 13, "nothing hangs"): it waits for ever on a task
that does not end when cancelled (nats-py's `drain()` catches the cancellation and goes on
flushing), and it swallows a cancellation aimed at the *caller* (a stop deadline, Ctrl-C), so
the caller's own bound is lost too. `asyncio.wait` has neither fault: it never raises the waited
task's exception, and a cancellation of the waiter propagates.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import Any

log = logging.getLogger("mlwarden")

#: How long a stopping service waits for one of its background tasks to end once cancelled.
TASK_STOP_S = 2.0


async def cancel_and_wait(
    tasks: Iterable[asyncio.Future[Any]], *, timeout: float | None = None
) -> set[asyncio.Future[Any]]:
    """Cancel `tasks` and wait, at most `timeout` seconds, for them to end.

    Returns the tasks still running after the deadline (empty when all ended); their exceptions,
    if any, are retrieved so that asyncio does not report them. A cancellation of the caller
    propagates at once.
    """
    every = list(tasks)
    pending = {task for task in every if not task.done()}
    for task in pending:
        task.cancel()
    if pending:
        _, pending = await asyncio.wait(pending, timeout=timeout)
    for task in every:
        if task.done() and not task.cancelled():
            exc = task.exception()  # retrieved, so asyncio does not report it as lost
            if exc is not None:
                log.debug("%s ended with %r", task.get_name() if isinstance(task, asyncio.Task) else task, exc)
    return pending


async def finish_within(task: asyncio.Task[Any], timeout: float) -> bool:
    """Give `task` up to `timeout` seconds; past that cancel it (waiting up to `TASK_STOP_S`).

    Returns whether it finished by itself without failing (a failure is retrieved and logged at
    debug level). A cancellation of the caller cancels `task` too.
    """
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:
        task.cancel()
        raise
    if not done:
        await cancel_and_wait([task], timeout=TASK_STOP_S)
        return False
    if task.cancelled():
        return False
    exc = task.exception()
    if exc is not None:
        log.debug("%s failed: %r", task.get_name(), exc)
    return exc is None


def await_chain(task: asyncio.Task[Any]) -> str:
    """Where a suspended task is waiting: its coroutines' await chain, outermost first.

    `Task.print_stack` shows only the task's own frame; this follows `cr_await` down to the
    awaited future, which is what tells a hang apart.
    """
    lines: list[str] = []
    step: Any = task.get_coro()
    while step is not None:
        frame = getattr(step, "cr_frame", None) or getattr(step, "gi_frame", None) or getattr(step, "ag_frame", None)
        if frame is not None:
            code = frame.f_code
            lines.append(f"  {code.co_filename}:{frame.f_lineno} in {code.co_qualname}")
        awaited = (
            getattr(step, "cr_await", None) or getattr(step, "gi_yieldfrom", None) or getattr(step, "ag_await", None)
        )
        if awaited is None and frame is None:
            lines.append(f"  awaiting {step!r}"[:300])
        if frame is not None and type(awaited).__name__.startswith("async_generator_a"):
            # `async with` on an @asynccontextmanager: the asend object hides the generator;
            # the context manager (the awaiting frame's `self`) holds it.
            awaited = getattr(frame.f_locals.get("self"), "gen", awaited)
        step = awaited
    return "\n".join(lines)
