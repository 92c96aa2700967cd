"""`cancel_and_wait` neither hangs on a task that ignores its cancellation nor swallows the
caller's own cancellation (issue 13, "nothing hangs"): the `suppress(CancelledError)` idiom
it replaced did both."""

from __future__ import annotations

import asyncio

from shared.aio import await_chain, cancel_and_wait


class Stubborn:
    """A task body that ignores cancellation until released (as nats-py's drain does)."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.cancels = 0

    async def run(self) -> None:
        while not self.release.is_set():
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancels += 1


async def test_a_task_that_ignores_cancellation_is_given_up_on_after_the_timeout() -> None:
    stubborn = Stubborn()
    task = asyncio.create_task(stubborn.run())
    await asyncio.sleep(0)
    pending = await cancel_and_wait([task], timeout=0.05)
    assert pending == {task}
    assert stubborn.cancels == 1
    assert "Stubborn.run" in await_chain(task)
    stubborn.release.set()
    await task


async def test_the_callers_cancellation_is_not_swallowed() -> None:
    stubborn = Stubborn()
    task = asyncio.create_task(stubborn.run())
    await asyncio.sleep(0)
    caller = asyncio.create_task(cancel_and_wait([task]))  # no timeout: it would wait for ever
    await asyncio.sleep(0.01)
    caller.cancel()
    done, _ = await asyncio.wait({caller}, timeout=5)
    assert caller in done and caller.cancelled()
    stubborn.release.set()
    await task


async def test_tasks_that_end_are_awaited_and_their_failures_retrieved() -> None:
    async def fails() -> None:
        try:
            await asyncio.sleep(10)
        finally:
            raise RuntimeError("while stopping")

    task = asyncio.create_task(fails())
    await asyncio.sleep(0)
    assert await cancel_and_wait([task], timeout=5) == set()
    assert task.done()
    # An already finished task and an empty list are fine.
    assert await cancel_and_wait([task]) == set()
    assert await cancel_and_wait([]) == set()
