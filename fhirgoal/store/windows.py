"""Reading a large set of resources in database commands of bounded cost (Bulk Data export,
https://hl7.org/fhir/uv/bulkdata/export.html, and anything else that walks a whole type).

One `find` over 50,000 resources is one command on the embedded database: SecantusDB computes a
command's whole result (every matching document fetched and decoded) before it answers with the
first batch, holding its store's lock while an index drives the fetch. Measured at 50,000
Observations: one such command took over 10 s (past the driver's socket timeout) and held other
requests up for as long. `limit` does not bound that work (it is applied after the whole result
is built), and a sort on an index with a `limit` walks the whole index.

What the embedded database does serve in proportion to the result: a range on one indexed field,
and an equality or `$in` on one. So a walk is cut into commands each of which an index bounds:

- `LastUpdatedWindows`: ranges of the last-updated instant (`lu`, indexed on every type), walked
  from the newest back to the oldest. Each window's span is sized from the density of the one
  before it, aiming at `target` documents per command; an empty window grows the next one
  (`MAX_GROWTH` times), so a sparse or empty stretch back to the floor (the `_since` instant, or
  the epoch) costs a few dozen empty index lookups (about 10 ms each, measured). What growth
  alone cannot know: a window grown over an empty stretch could land on a dense burst of writes
  and read all of it in one command (measured: a bulk load half an hour before the export, read
  in one 25 s command). The writer's marks of which minutes saw writes (store/write_marks.py)
  stop such a window at the end of the next marked minute, and the walk enters the minute with
  a small window; what is left is an overshoot within one minute of writes, and below the
  oldest mark (data older than the marks) the walk grows as before.
- `MemberBatches`: a long `$in` list on the patient compartment (a Group's members), cut into
  batches whose size follows the documents per member seen so far; a single member's resources
  are read in one command, however many they are.

On MongoDB the same commands are each served by the same indexes, so the walk works there too.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Documents a command aims at: the embedded database spends ~0.1 ms per document fetched and
# decoded under its lock, so this keeps another request's wait behind an export's command in the
# tens of milliseconds, while the per-command overhead (~1-2 ms) stays a few percent.
TARGET_DOCUMENTS = 500
GUESSING = 3  # empty windows in a row after which the span is a guess
MAX_GROWTH = 2.0  # how much larger one window (or batch) may be than the one before
FIRST_SPAN = timedelta(milliseconds=250)  # a bulk load writes ~2,000 a second
MIN_SPAN = timedelta(microseconds=1000)  # the instant's precision (BSON dates: milliseconds)
FIRST_MEMBERS = 8
MAX_MEMBERS = 500
MINUTE = timedelta(minutes=1)  # the write marks' grain (store/write_marks.py)
MARKS_CHUNK = timedelta(days=1)  # marks loaded per lookup: at most 1,440
_RANGE_OPERATORS = {"$gt", "$gte", "$lt", "$lte"}


MarksBetween = Callable[[datetime, datetime], Awaitable[list[datetime]]]


@dataclass
class LastUpdatedWindows:
    """The windows `(low, high]` of the last-updated instant that cover `(floor, until]`, newest
    first; `found(n)` after each window sizes the next one.

    With the type's write marks (store/write_marks.py: the minutes that saw writes, down to
    `oldest_mark`), a window grown over an empty stretch stops at the end of the next marked
    minute, and the walk enters that minute with a small window again."""

    until: datetime
    floor: datetime | None = None  # None: down to the oldest (the last window is open below)
    target: int = TARGET_DOCUMENTS
    span: timedelta = FIRST_SPAN
    marks_between: MarksBetween | None = None
    oldest_mark: datetime | None = None
    _found: int | None = field(default=None, init=False)
    _marks: list[datetime] = field(default_factory=list, init=False)  # loaded, newest first
    _marks_low: datetime | None = field(default=None, init=False)  # loaded down to here
    _dense_span: timedelta | None = field(default=None, init=False)  # what density asks for
    _empty_in_a_row: int = field(default=0, init=False)

    async def __aiter__(self) -> AsyncIterator[tuple[datetime | None, datetime]]:
        high = self.until
        bottom = self.floor or EPOCH
        probed: datetime | None = None  # the marked minute a guessed span last started small in
        while high > bottom:
            # A span grown over empty windows (GUESSING of them in a row, or before any document
            # was seen) is a guess. Reaching a marked minute, it stops at the minute's end;
            # inside the minute the walk starts again from a small span.
            if self._dense_span is None or self._empty_in_a_row >= GUESSING:
                mark = await self._next_mark(high, bottom)
                if mark is not None and mark == probed:  # inside it already: the next one down
                    mark = await self._next_mark(mark, bottom)
                if mark is not None and high - self.span < mark + MINUTE:
                    if high > mark + MINUTE:
                        self.span = high - (mark + MINUTE)
                    else:
                        self.span, probed = min(self.span, FIRST_SPAN), mark
            low: datetime | None = high - self.span
            assert low is not None
            if low <= bottom:
                low = self.floor  # the last window: down to the floor (or open below)
            self._found = None
            yield low, high
            if low is None:
                return
            self._grow(self._found)
            high = low

    def found(self, documents: int) -> None:
        """How many documents the window just yielded held."""
        self._found = documents

    def _grow(self, found: int | None) -> None:
        if found is None:  # the caller did not say: keep the span
            return
        self._empty_in_a_row = 0 if found else self._empty_in_a_row + 1
        factor = MAX_GROWTH if found == 0 else min(MAX_GROWTH, self.target / found)
        self.span = max(MIN_SPAN, self.span * factor)
        if found:
            self._dense_span = self.span  # what the last documents seen ask for

    async def _next_mark(self, before: datetime, bottom: datetime) -> datetime | None:
        """The newest marked minute that starts before `before` (None: none above the floor)."""
        if self.marks_between is None or self.oldest_mark is None:
            return None
        while True:
            while self._marks and self._marks[0] >= before:
                self._marks.pop(0)
            if self._marks:
                return self._marks[0]
            loaded_low = self._marks_low or self.until + MINUTE
            if loaded_low <= max(bottom, self.oldest_mark):
                return None
            chunk_low = max(loaded_low - MARKS_CHUNK, self.oldest_mark, bottom - MINUTE)
            self._marks = await self.marks_between(chunk_low, loaded_low)
            self._marks_low = chunk_low


@dataclass
class MemberBatches:
    """Batches of `members` sized to hold about `target` documents each, from the documents per
    member seen so far (`found(n)` after each batch)."""

    members: list[Any]
    target: int = TARGET_DOCUMENTS
    size: int = FIRST_MEMBERS
    _found: int | None = field(default=None, init=False)

    def __iter__(self) -> Iterator[list[Any]]:
        start = 0
        while start < len(self.members):
            batch = self.members[start : start + self.size]
            self._found = None
            yield batch
            start += len(batch)
            if self._found is not None:
                per_member = self._found / len(batch)
                wanted = self.target / per_member if per_member else self.size * MAX_GROWTH
                self.size = int(max(1, min(MAX_MEMBERS, self.size * MAX_GROWTH, wanted)))

    def found(self, documents: int) -> None:
        self._found = documents


def window_test(low: datetime | None, high: datetime, test: Any = None) -> dict[str, Any] | None:
    """The range test `(low, high]` on the last-updated instant, narrowed by the query's own test
    on it (`test`, e.g. from `_lastUpdated`); None when `test` is not a plain range (the caller
    then cannot drive the query from the window)."""
    bounds: dict[str, Any] = {"$lte": high}
    if low is not None:
        bounds["$gt"] = low
    if test is None:
        return bounds
    if not isinstance(test, dict) or not test or not set(test) <= _RANGE_OPERATORS:
        return None
    lower = _tighter(
        [(bounds.get("$gt"), False)] + [(test.get(op), op == "$gte") for op in ("$gt", "$gte")],
        pick=max,
    )
    upper = _tighter(
        [(high, True)] + [(test.get(op), op == "$lte") for op in ("$lt", "$lte")], pick=min
    )
    narrowed: dict[str, Any] = {}
    if lower is not None:
        narrowed["$gte" if lower[1] else "$gt"] = lower[0]
    assert upper is not None
    narrowed["$lte" if upper[1] else "$lt"] = upper[0]
    return narrowed


def _tighter(bounds: list[tuple[Any, bool]], pick: Any) -> tuple[Any, bool] | None:
    """The tightest of (value, inclusive) bounds: the largest lower or the smallest upper one; at
    equal values the exclusive bound is the tighter."""
    present = [(value, inclusive) for value, inclusive in bounds if value is not None]
    if not present:
        return None
    best = pick(value for value, _ in present)
    return best, all(inclusive for value, inclusive in present if value == best)
