"""Natural batching of concurrent submits into one runner call (fhirgoal.store.batching.Batcher)."""

from __future__ import annotations

import asyncio

import pytest

from fhirgoal.store.batching import MAX_BATCH, Batcher

TIMEOUT = 5.0


class GatedRunner:
    """Records each batch; the first `hold` calls wait until `release()` is called."""

    def __init__(self, hold: int = 1) -> None:
        self.calls: list[list[int]] = []
        self.hold = hold
        self.started = asyncio.Event()
        self.gate = asyncio.Event()
        self.fail_on_call: dict[int, BaseException] = {}

    async def __call__(self, items: list[int]) -> list[int | BaseException]:
        self.calls.append(list(items))
        call = len(self.calls)
        if call <= self.hold:
            self.started.set()
            await self.gate.wait()
        if call in self.fail_on_call:
            raise self.fail_on_call[call]
        return [item * 10 for item in items]

    def release(self) -> None:
        self.gate.set()


async def settle() -> None:
    """Let every ready task run until it blocks (sleep(0) yields to the event loop once: no time
    passes, and what is awaited is each task's own next step)."""
    for _ in range(5):
        await asyncio.sleep(0)


def submit_all(
    batcher: Batcher[int, int], runner: GatedRunner, items: range | list[int], key: str = "k"
) -> list[asyncio.Task[int]]:
    return [asyncio.create_task(batcher.submit(key, item, runner)) for item in items]


async def start_blocked_batch(batcher: Batcher[int, int], runner: GatedRunner) -> asyncio.Task[int]:
    first = asyncio.create_task(batcher.submit("k", 0, runner))
    await asyncio.wait_for(runner.started.wait(), TIMEOUT)
    return first


async def test_lone_submit_runs_at_once_as_a_batch_of_one() -> None:
    runner = GatedRunner(hold=0)
    result = await asyncio.wait_for(Batcher[int, int]().submit("k", 4, runner), TIMEOUT)
    assert result == 40
    assert runner.calls == [[4]]


async def test_sequential_submits_are_not_delayed_or_merged() -> None:
    batcher: Batcher[int, int] = Batcher()
    runner = GatedRunner(hold=0)
    for item in (1, 2, 3):
        assert await asyncio.wait_for(batcher.submit("k", item, runner), TIMEOUT) == item * 10
    assert runner.calls == [[1], [2], [3]]


async def test_submits_during_a_batch_in_flight_merge_into_one_next_call() -> None:
    batcher: Batcher[int, int] = Batcher()
    runner = GatedRunner()
    first = await start_blocked_batch(batcher, runner)
    later = submit_all(batcher, runner, [1, 2, 3])
    await settle()
    assert runner.calls == [[0]]  # nothing else reaches the runner while the first is in flight
    runner.release()
    results = await asyncio.wait_for(asyncio.gather(first, *later), TIMEOUT)
    assert results == [0, 10, 20, 30]
    assert runner.calls == [[0], [1, 2, 3]]


async def test_each_caller_gets_its_own_result_in_submission_order() -> None:
    batcher: Batcher[int, int] = Batcher()
    runner = GatedRunner()
    first = await start_blocked_batch(batcher, runner)
    items = [7, 3, 9, 1]
    later = submit_all(batcher, runner, items)
    await settle()
    runner.release()
    await asyncio.wait_for(asyncio.gather(first, *later), TIMEOUT)
    assert [task.result() for task in later] == [70, 30, 90, 10]
    assert runner.calls[1] == items


async def test_runner_exception_reaches_every_waiter_of_that_batch_only() -> None:
    batcher: Batcher[int, int] = Batcher()
    runner = GatedRunner()
    runner.fail_on_call[2] = RuntimeError("database down")
    first = await start_blocked_batch(batcher, runner)
    failing = submit_all(batcher, runner, [1, 2])
    await settle()
    runner.release()
    outcomes = await asyncio.wait_for(
        asyncio.gather(first, *failing, return_exceptions=True), TIMEOUT
    )
    assert outcomes[0] == 0
    assert all(isinstance(o, RuntimeError) and str(o) == "database down" for o in outcomes[1:])
    # the lane is usable again: a later submit runs in a fresh batch and succeeds
    assert await asyncio.wait_for(batcher.submit("k", 5, runner), TIMEOUT) == 50
    assert runner.calls == [[0], [1, 2], [5]]


async def test_per_item_exception_reaches_only_that_caller() -> None:
    calls: list[list[int]] = []

    async def runner(items: list[int]) -> list[int | BaseException]:
        calls.append(list(items))
        await asyncio.sleep(0)  # one turn of the loop: 2 and 3 are submitted meanwhile
        return [KeyError(item) if item == 2 else item * 10 for item in items]

    batcher: Batcher[int, int] = Batcher()
    tasks = [asyncio.create_task(batcher.submit("k", item, runner)) for item in (1, 2, 3)]
    outcomes = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), TIMEOUT)
    assert outcomes[0] == 10
    assert isinstance(outcomes[1], KeyError)
    assert outcomes[2] == 30
    assert calls == [[1], [2, 3]]  # 2 and 3 shared a batch yet only 2 failed


async def test_more_than_max_batch_waiting_items_are_split_across_calls() -> None:
    batcher: Batcher[int, int] = Batcher()
    runner = GatedRunner()
    first = await start_blocked_batch(batcher, runner)
    items = list(range(1, MAX_BATCH + 6))
    later = submit_all(batcher, runner, items)
    await settle()
    runner.release()
    results = await asyncio.wait_for(asyncio.gather(first, *later), TIMEOUT)
    assert results == [0, *(i * 10 for i in items)]
    assert runner.calls == [[0], items[:MAX_BATCH], items[MAX_BATCH:]]
    assert all(len(call) <= MAX_BATCH for call in runner.calls)


async def test_different_keys_do_not_wait_for_each_other() -> None:
    batcher: Batcher[int, int] = Batcher()
    blocked = GatedRunner()
    first = await start_blocked_batch(batcher, blocked)
    other = GatedRunner(hold=0)
    assert await asyncio.wait_for(batcher.submit("other", 8, other), TIMEOUT) == 80
    assert not first.done()
    blocked.release()
    assert await asyncio.wait_for(first, TIMEOUT) == 0


async def test_in_flight_limit_allows_that_many_concurrent_batches() -> None:
    batcher: Batcher[int, int] = Batcher(in_flight=2)
    runner = GatedRunner(hold=2)
    tasks = submit_all(batcher, runner, [1])
    await settle()
    tasks += submit_all(batcher, runner, [2])
    await settle()
    assert runner.calls == [[1], [2]]  # second batch started while the first is still held
    tasks += submit_all(batcher, runner, [3, 4])
    await settle()
    assert runner.calls == [[1], [2]]  # both slots busy: 3 and 4 wait together
    runner.release()
    assert await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT) == [10, 20, 30, 40]
    assert runner.calls == [[1], [2], [3, 4]]


async def test_cancelled_waiter_does_not_break_its_batch() -> None:
    batcher: Batcher[int, int] = Batcher()
    runner = GatedRunner()
    first = await start_blocked_batch(batcher, runner)
    later = submit_all(batcher, runner, [1, 2, 3])
    await settle()
    later[1].cancel()
    runner.release()
    outcomes = await asyncio.wait_for(
        asyncio.gather(first, *later, return_exceptions=True), TIMEOUT
    )
    assert outcomes[0] == 0 and outcomes[1] == 10 and outcomes[3] == 30
    assert isinstance(outcomes[2], asyncio.CancelledError)


@pytest.mark.parametrize("count", [1, 2, MAX_BATCH])
async def test_all_callers_complete_for_various_burst_sizes(count: int) -> None:
    batcher: Batcher[int, int] = Batcher()
    runner = GatedRunner(hold=0)
    tasks = submit_all(batcher, runner, range(count))
    results = await asyncio.wait_for(asyncio.gather(*tasks), TIMEOUT)
    assert results == [i * 10 for i in range(count)]
    assert sorted(i for call in runner.calls for i in call) == list(range(count))


async def test_cancelled_lone_submit_frees_its_lane_for_those_queued_behind_it() -> None:
    batcher: Batcher[int, int] = Batcher()
    runner = GatedRunner()
    first = await start_blocked_batch(batcher, runner)  # runs in its caller's task
    later = submit_all(batcher, runner, [1, 2])
    await settle()
    first.cancel()
    assert await asyncio.wait_for(asyncio.gather(*later), TIMEOUT) == [10, 20]
    assert runner.calls == [[0], [1, 2]]
    assert await asyncio.wait_for(batcher.submit("k", 3, runner), TIMEOUT) == 30
