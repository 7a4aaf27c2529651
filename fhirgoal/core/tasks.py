"""Stopping a background task for certain (asyncio, Python 3.11).

A background loop (the outbox worker, the EHR pulls, the export runner, the audit flusher) is
stopped by cancelling its task and waiting for it. One cancellation is not always enough: Python
3.11's `asyncio.wait_for` returns the result instead of raising when a cancellation arrives just as
the awaited thing completes (gh-86296), and PyMongo's async driver writes every command through
`wait_for`. A loop cancelled in that moment carries on as if nothing happened, and a `stop()` that
awaits it waits forever (seen: a test server whose shutdown hung for 25 minutes while its EHR pull
loop went on pulling). `stop_task` therefore cancels again until the task has ended.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

# How long a cancelled task gets to end before it is cancelled again: long enough for the clean-up
# a loop does on its way out, short enough that a lost cancellation costs little.
RECANCEL_SECONDS = 0.5


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel `task` and wait until it has ended, cancelling it again every RECANCEL_SECONDS
    while it has not. What it raised on the way out (its cancellation included) is dropped: the
    caller is stopping it, not asking for its result."""
    if task is None:
        return
    while not task.done():
        task.cancel()
        await asyncio.wait({task}, timeout=RECANCEL_SECONDS)
    with contextlib.suppress(asyncio.CancelledError, Exception):
        task.result()
