"""The bounded walks of store/windows.py: last-updated windows and member batches."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

from fhirgoal.store.windows import (
    EPOCH,
    FIRST_SPAN,
    MAX_MEMBERS,
    LastUpdatedWindows,
    MemberBatches,
    window_test,
)

UNTIL = datetime(2026, 12, 1, tzinfo=UTC)


async def _walk(
    instants: list[datetime], windows: LastUpdatedWindows
) -> tuple[list[datetime], list[int]]:
    """Read `instants` through `windows` as the repository does; (what was read, per window)."""
    read: list[datetime] = []
    sizes: list[int] = []
    async for low, high in windows:
        held = [t for t in instants if t <= high and (low is None or t > low)]
        windows.found(len(held))
        read += held
        sizes.append(len(held))
    return read, sizes


async def test_windows_read_every_instant_up_to_until_exactly_once() -> None:
    rng = random.Random(7)
    # a dense burst (a bulk load), a quiet month, a steady trickle, and some after `until`
    instants = [UNTIL - timedelta(days=40, seconds=rng.random() * 120) for _ in range(5000)]
    instants += [UNTIL - timedelta(seconds=rng.random() * 86_400 * 7) for _ in range(2000)]
    instants += [UNTIL + timedelta(seconds=1 + rng.random() * 60) for _ in range(50)]
    instants.append(UNTIL)  # `until` itself is in
    read, _ = await _walk(instants, LastUpdatedWindows(UNTIL, target=500))
    assert sorted(read) == sorted(t for t in instants if t <= UNTIL)


async def test_windows_keep_to_about_the_target_on_steady_data() -> None:
    instants = [UNTIL - timedelta(milliseconds=4 * i) for i in range(50_000)]  # 250 a second
    _, sizes = await _walk(instants, LastUpdatedWindows(UNTIL, target=500))
    assert sum(sizes) == 50_000
    assert max(sizes) <= 4 * 500  # the first windows grow from one second
    busy = [s for s in sizes if s]
    assert sum(1 for s in busy if 250 <= s <= 1000) >= 0.9 * len(busy)


async def test_windows_stop_at_the_floor_and_exclude_it() -> None:
    since = UNTIL - timedelta(hours=1)
    instants = [since, since + timedelta(milliseconds=1), UNTIL - timedelta(minutes=5)]
    read, _ = await _walk(instants, LastUpdatedWindows(UNTIL, since))
    assert sorted(read) == instants[1:]


async def test_an_empty_history_back_to_the_epoch_costs_few_windows() -> None:
    walk = LastUpdatedWindows(UNTIL)
    windows = []
    async for window in walk:  # nothing found: each window grows
        walk.found(0)
        windows.append(window)
        assert len(windows) < 40  # log2 of 56 years in seconds: 31
    assert len(windows) < 40
    assert windows[-1][0] is None  # the last one is open below: nothing older is left out
    assert windows[-2][0] is not None and windows[-2][0] > EPOCH


def test_window_test_narrows_by_the_query_range() -> None:
    low, high = UNTIL - timedelta(hours=1), UNTIL
    assert window_test(low, high) == {"$gt": low, "$lte": high}
    assert window_test(None, high) == {"$lte": high}
    inside = UNTIL - timedelta(minutes=30)
    assert window_test(low, high, {"$gte": inside}) == {"$gte": inside, "$lte": high}
    assert window_test(low, high, {"$lt": inside}) == {"$gt": low, "$lt": inside}
    assert window_test(low, high, {"$lte": high}) == {"$gt": low, "$lte": high}
    assert window_test(low, high, {"$lt": high}) == {"$gt": low, "$lt": high}
    assert window_test(low, high, {"$gte": low}) == {"$gt": low, "$lte": high}
    assert window_test(low, high, {"$ne": inside}) is None


def test_member_batches_cover_every_member_once_and_follow_the_density() -> None:
    members = [f"Patient/{i}" for i in range(3000)]
    per_member = {m: 100 if i < 1000 else 1 for i, m in enumerate(members)}
    batches = MemberBatches(members, target=500)
    seen: list[str] = []
    sizes: list[tuple[int, int]] = []
    for batch in batches:
        documents = sum(per_member[m] for m in batch)
        batches.found(documents)
        seen += batch
        sizes.append((len(batch), documents))
    assert seen == members
    dense = [documents for count, documents in sizes if documents >= 100 * count]
    assert max(dense) <= 1000  # 5 members of 100 resources a batch, after the first
    assert max(count for count, _ in sizes) <= MAX_MEMBERS


def _marks_of(instants: list[datetime]) -> tuple[Any, datetime]:
    minutes = sorted({t.replace(second=0, microsecond=0) for t in instants}, reverse=True)

    async def between(low: datetime, high: datetime) -> list[datetime]:
        return [m for m in minutes if low <= m < high]

    return between, minutes[-1]


async def test_write_marks_keep_a_grown_window_off_a_dense_burst() -> None:
    # a bulk load of 50,000 (500 a second), then nothing for half an hour before the export
    burst_end = UNTIL - timedelta(minutes=30)
    instants = [burst_end - timedelta(milliseconds=2 * i) for i in range(50_000)]
    read, blind = await _walk(instants, LastUpdatedWindows(UNTIL, target=500))
    assert len(read) == 50_000
    assert max(blind) > 10_000  # without marks the window grown over the gap swallows the burst
    between, oldest = _marks_of(instants)
    windows = LastUpdatedWindows(UNTIL, target=500, marks_between=between, oldest_mark=oldest)
    read, sizes = await _walk(instants, windows)
    assert sorted(read) == sorted(instants)
    assert max(sizes) <= 4 * 500
    # older, unmarked data below the oldest mark is still read (the walk grows as before)
    older = [burst_end - timedelta(days=3, seconds=i) for i in range(100)]
    windows = LastUpdatedWindows(UNTIL, target=500, marks_between=between, oldest_mark=oldest)
    read, _ = await _walk(instants + older, windows)
    assert len(read) == 50_100


async def test_marked_walk_reads_everything_once_across_gaps() -> None:
    rng = random.Random(3)
    instants = []
    for day in range(5):  # bursts on some days, a trickle between
        start = UNTIL - timedelta(days=day * 2, hours=rng.random() * 10)
        instants += [start - timedelta(milliseconds=rng.random() * 30_000) for _ in range(800)]
        instants += [start - timedelta(hours=rng.random() * 30) for _ in range(50)]
    between, oldest = _marks_of(instants)
    since = min(instants) + timedelta(hours=1)
    windows = LastUpdatedWindows(
        UNTIL, since, target=300, span=FIRST_SPAN, marks_between=between, oldest_mark=oldest
    )
    read, sizes = await _walk(instants, windows)
    assert sorted(read) == sorted(t for t in instants if t > since)
    assert max(sizes) <= 4 * 300


async def test_a_sparse_steady_stream_is_not_read_a_minute_at_a_time() -> None:
    # one write a minute for 30 days, every minute marked: windows follow the density
    instants = [UNTIL - timedelta(minutes=i, seconds=17) for i in range(43_200)]
    between, oldest = _marks_of(instants)
    windows = LastUpdatedWindows(UNTIL, target=500, marks_between=between, oldest_mark=oldest)
    read, sizes = await _walk(instants, windows)
    assert len(read) == 43_200
    assert len(sizes) < 300  # about 43,200 / 500, plus the walk to the epoch
    assert max(sizes) <= 2 * 500
