"""core/tasks.py: a background task is stopped even when it loses a cancellation."""

from __future__ import annotations

import asyncio

from fhirgoal.core.tasks import stop_task


async def test_a_loop_that_swallows_a_cancellation_is_cancelled_again_until_it_ends() -> None:
    swallowed = 0

    async def loop() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(0.01)
            except asyncio.CancelledError:
                if swallowed < 2:  # what Python 3.11's wait_for does in an unlucky moment
                    swallowed += 1
                    continue
                raise

    task = asyncio.create_task(loop())
    await asyncio.sleep(0.05)
    async with asyncio.timeout(10):
        await stop_task(task)
    assert task.cancelled() and swallowed == 2


async def test_a_task_that_failed_or_ended_is_stopped_quietly() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    failed = asyncio.create_task(fails())
    await asyncio.sleep(0)
    await stop_task(failed)
    await stop_task(None)
    assert failed.done()
