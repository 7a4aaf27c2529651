"""One database command in flight ahead of the reader of a walk (store/windows.py's bounded
commands, Bulk Data export, https://hl7.org/fhir/uv/bulkdata/export.html).

A walk over a type is a series of commands, each sized from the answer of the one before. Run one
after the other with the reader's work in between, the database idles while the reader writes
what it got, and the reader idles while the database computes the next answer: measured on the
embedded database, an export spent about as long waiting as working. `read_ahead` sends the next
command as soon as the current answer has sized it, and only then hands the current answer to the
reader, so the two overlap. Each command stays what it was (its cost bounded by its window); the
walk holds at most two answers in memory, the one being read and the one coming.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

Plan = TypeVar("Plan")
Answer = TypeVar("Answer")


async def read_ahead(
    plans: AsyncIterator[Plan],
    fetch: Callable[[Plan], Awaitable[Answer]],
    arrived: Callable[[Answer], None],
) -> AsyncGenerator[Answer, None]:
    """`fetch(plan)` for each of `plans`, in order, the next one sent before the current answer is
    yielded. `arrived(answer)` is called as each answer arrives, before the next plan is drawn: it
    is how an answer sizes the next command (`LastUpdatedWindows.found`). A reader that stops
    early (an exception, `aclose()`) cancels the command in flight."""
    pending = await _sent(plans, fetch)
    try:
        while pending is not None:
            answer = await pending
            pending = None
            arrived(answer)
            pending = await _sent(plans, fetch)
            yield answer
    finally:
        if pending is not None:
            pending.cancel()
            # what the abandoned command raised concerns no one now (and is not to be logged as
            # "never retrieved")
            pending.add_done_callback(_forget)
        close = getattr(plans, "aclose", None)
        if close is not None:
            await close()


async def _sent(
    plans: AsyncIterator[Plan], fetch: Callable[[Plan], Awaitable[Answer]]
) -> asyncio.Future[Answer] | None:
    """The next plan's command, sent (None: no plan left)."""
    try:
        plan = await anext(plans)
    except StopAsyncIteration:
        return None
    command = asyncio.ensure_future(fetch(plan))
    # Let it run up to its first wait, the answer: the command is then on its way. Otherwise it
    # would start only when the reader next waits, which writing a batch may not do at all.
    await asyncio.sleep(0)
    return command


def _forget(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()
