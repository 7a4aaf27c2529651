"""Which minutes saw writes of each resource type: the map that keeps a walk over the
last-updated index (store/windows.py) from landing on a dense burst of writes with a window
grown over an empty stretch.

The embedded database has no cheap way to ask "how many documents in this range?" (a count, an
explain, a `limit` all fetch and decode the whole range), so the writer leaves the hint: the first
write of a type in a minute (per server process) upserts one tiny document `{t: type, m: minute}`
into `fhirgoal_write_minutes`, and `{_id: type, first: minute}` keeps the oldest such minute. That is
one upsert per type per minute, not per write. A walk stops a grown window at the end of the next
marked minute and starts small inside it; below the oldest mark (data written before the marks
existed) it grows as before.

The marks are hints, never a filter: a missing mark (data written before marks existed, or
by another tool) only costs a walk a larger window; the mark is written before the write, so a
crash between the two leaves a harmless extra mark. Marks are never removed: one small document
per active minute of a type (about half a million a year of writes every minute) weighs little
beside the resources themselves.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

MARKS = "fhirgoal_write_minutes"
MINUTE = timedelta(minutes=1)
_RECENT = 4  # minutes remembered per type (writes arrive in about the order of their instants)


def minute_of(instant: datetime) -> datetime:
    return instant.replace(second=0, microsecond=0)


class WriteMarks:
    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self.collection = db[MARKS]
        self._recent: dict[str, list[datetime]] = {}

    async def ensure_indexes(self) -> None:
        await self.collection.create_index([("t", ASCENDING), ("m", ASCENDING)], name="type_minute")

    async def note(self, rt: str, instants: Iterable[datetime]) -> None:
        """Mark the minutes of `instants` as holding writes of `rt` (before the write)."""
        recent = self._recent.setdefault(rt, [])
        for minute in sorted({minute_of(i) for i in instants} - set(recent)):
            try:
                await self.collection.update_one(
                    {"t": rt, "m": minute}, {"$setOnInsert": {"t": rt, "m": minute}}, upsert=True
                )
                await self.collection.update_one(
                    {"_id": rt}, {"$min": {"first": minute}}, upsert=True
                )
            except DuplicateKeyError:  # another process upserted the same document at once
                pass
            recent.append(minute)
        del recent[:-_RECENT]

    async def oldest(self, rt: str) -> datetime | None:
        found = await self.collection.find_one({"_id": rt})
        return found.get("first") if found else None

    async def between(self, rt: str, low: datetime, high: datetime) -> list[datetime]:
        """The marked minutes of `rt` starting in `[low, high)`, newest first."""
        cursor = self.collection.find({"t": rt, "m": {"$gte": low, "$lt": high}}, {"m": 1})
        return sorted({doc["m"] async for doc in cursor}, reverse=True)
