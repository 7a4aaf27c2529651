"""store/read_ahead.py: the next command is sent before the current answer is handed over, each
answer sizes the plan after it, and a reader that stops early leaves nothing in flight."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import aclosing

from fhirgoal.store.read_ahead import read_ahead


class Walk:
    """Plans 1, 2, 3 ... up to `last`, each drawn only after the answer before it arrived; a
    fetch answers its plan times ten, after a pause."""

    def __init__(self, last: int) -> None:
        self.last = last
        self.events: list[str] = []
        self.arrived: list[int] = []
        self.cancelled: list[int] = []

    async def plans(self) -> AsyncIterator[int]:
        for plan in range(1, self.last + 1):
            assert len(self.arrived) == plan - 1, "a plan drawn before the answer it follows"
            self.events.append(f"plan {plan}")
            yield plan

    async def fetch(self, plan: int) -> int:
        self.events.append(f"sent {plan}")
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            self.cancelled.append(plan)
            raise
        return plan * 10

    def arrive(self, answer: int) -> None:
        self.arrived.append(answer)


async def test_the_next_command_is_sent_before_the_answer_is_handed_over() -> None:
    walk = Walk(3)
    received = []
    async for answer in read_ahead(walk.plans(), walk.fetch, walk.arrive):
        received.append(answer)
        walk.events.append(f"read {answer}")
    assert received == walk.arrived == [10, 20, 30]
    assert walk.events == [
        "plan 1", "sent 1",
        "plan 2", "sent 2", "read 10",
        "plan 3", "sent 3", "read 20",
        "read 30",
    ]  # fmt: skip


async def test_a_reader_that_stops_leaves_nothing_in_flight() -> None:
    walk = Walk(5)
    answers = read_ahead(walk.plans(), walk.fetch, walk.arrive)
    async with aclosing(answers):
        async for answer in answers:
            assert answer == 10
            break
    await asyncio.sleep(0)  # the cancellation reaches the command
    assert walk.cancelled == [2]
    assert walk.arrived == [10]


async def test_no_plan_no_command() -> None:
    walk = Walk(0)
    assert [a async for a in read_ahead(walk.plans(), walk.fetch, walk.arrive)] == []
    assert walk.events == []
