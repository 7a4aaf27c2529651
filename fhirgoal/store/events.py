"""Event numbers of outbox destinations (topic-based Subscriptions), and when each last heard
from the server.

The Subscriptions Backport IG (http://hl7.org/fhir/uv/subscriptions-backport/STU1.1/,
notifications.html and errors.html) gives every event of a Subscription a number,
`eventsSinceSubscriptionStart`, so that a receiver can tell a missed notification (a gap) from a
repeated one (the same number twice). One document per destination in `fhirgoal_events`:

  _id     the destination ("Subscription/123")
  events  how many events were numbered so far (the last number given)
  sent    when a notification last reached the receiver (its heartbeat is measured from there)

**Why numbers are given at delivery, not when the write records its item.** Numbering at
recording time would cost every matching write a round trip (the counter) and would give numbers
to items whose write then failed or lost its race (fhir/outbox.py: such items are voided at
delivery): a receiver would see gaps where nothing was missed. So the number is given by the
delivery worker to an item whose version it has just found stored, before the first attempt,
and kept on the item: every attempt of that item, after a crash too, carries the same number.

**Why without gaps or duplicates across restarts.** The counter's increment and the item's
number are written in one multi-document transaction (store/units.py `run_unit`, which also
makes the commit journaled before it returns): either both are stored or neither is. A worker
killed before the commit leaves neither, and whichever worker takes the item again numbers it
then; one killed after the commit left the item numbered, and the number is reused. Two items of
one destination numbered at once conflict on the counter: one transaction runs again and gets
the next number. The numbers given are therefore exactly 1..events, each to one item. A
receiver sees a gap only for an item given up on (dead after the outbox's horizon, or dropped
when its Subscription was turned off), which is the gap it should see.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from fhirgoal.store.outbox import OUTBOX, OutboxItem, outbox_item
from fhirgoal.store.units import current_session, run_unit

EVENTS = "fhirgoal_events"
# Runs of the numbering transaction when concurrent deliveries to one destination conflict.
NUMBERING_ATTEMPTS = 12


class EventCounters:
    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self.db = db
        self.counters = db[EVENTS]
        self.items = db[OUTBOX]

    async def number(self, dest: str, item_key: str) -> int:
        """The event number of outbox item `item_key` of `dest`: the one it has, or the next
        one, given to it and counted in one journaled transaction."""

        async def give() -> int:
            session = current_session()
            item = await self.items.find_one({"_id": item_key}, {"event": 1}, session=session)
            if item is not None and "event" in item:
                return int(item["event"])
            counter = await self.counters.find_one_and_update(
                {"_id": dest},
                {"$inc": {"events": 1}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
                session=session,
            )
            assert counter is not None  # upserted
            number = int(counter["events"])
            await self.items.update_one(
                {"_id": item_key}, {"$set": {"event": number}}, session=session
            )
            return number

        return await run_unit(self.db.client, self.db, give, NUMBERING_ATTEMPTS)

    async def state(self, dests: list[str]) -> dict[str, dict[str, Any]]:
        """The counter documents of `dests` that exist, by destination."""
        if not dests:
            return {}
        cursor = self.counters.find({"_id": {"$in": dests}})
        return {doc["_id"]: doc async for doc in cursor}

    async def events(self, dest: str) -> int:
        doc = await self.counters.find_one({"_id": dest}, {"events": 1})
        return int(doc.get("events", 0)) if doc else 0

    async def sent(self, dest: str, at: datetime) -> None:
        """A notification reached the receiver at `at` (the heartbeat clock starts again)."""
        await self.counters.update_one({"_id": dest}, {"$max": {"sent": at}}, upsert=True)

    async def start_clock(self, dest: str, at: datetime) -> datetime:
        """When `dest` last heard from the server; `at` (now) if it never did: its heartbeat is
        then measured from the first time anyone looked (`$min` keeps an earlier time)."""
        doc = await self.counters.find_one_and_update(
            {"_id": dest},
            {"$min": {"sent": at}},
            upsert=True,
            return_document=ReturnDocument.AFTER,
        )
        assert doc is not None  # upserted
        sent: datetime = doc["sent"]
        return sent

    async def numbered(self, dest: str, first: int, last: int, limit: int) -> list[OutboxItem]:
        """The outbox items of `dest` numbered `first`..`last`, by number (as long as the outbox
        keeps them: `outbox_retention_seconds` after delivery)."""
        cursor = (
            self.items.find({"dest": dest, "event": {"$gte": first, "$lte": last}})
            .sort("event", ASCENDING)
            .limit(limit)
        )
        return [outbox_item(doc) async for doc in cursor]

    async def forget(self, dest: str) -> None:
        await self.counters.delete_one({"_id": dest})
