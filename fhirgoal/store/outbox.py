"""The outbox: durable work that leaves the server (Subscription notifications, EHR sync pushes).

One collection, `fhirgoal_outbox`, one document per item of work:

  _id        the item's key, deterministic for what caused it (destination + resource version +
             a digest of that version's text): recording it again is a no-op, and the receiver
             gets it as the delivery's idempotency key
  kind       what delivers it (exchange/: `rest-hook`, `handshake`, ...)
  dest       the destination ("Subscription/123")
  ref, vid   the resource version that caused it ("Observation/9", 3), and `digest` of its text
  created    when it was recorded; `attempts`, `next` (the next attempt is due), `error` (the last);
             `revived` when a human put a dead item back (its dead-letter horizon starts again)
  state      pending -> delivering (leased: `lease` until, `owner`) -> delivered | dead | void
  event      the event number a topic-based Subscription's notification carries, given before
             its first attempt (store/events.py)

Items are recorded before the version that causes them is stored, with the same write concern
(fhir/outbox.py says why that order): a 2xx therefore means the item exists. An item whose
version was never stored (the write failed or lost a race) is found out at delivery and made
`void`.

Leases (the pattern of store/exports.py): a worker takes a batch of due items with one
conditional update that sets `delivering`, its owner and a lease expiry (items another worker
took meanwhile no longer match); it settles an item only while its lease stands (the owner and
the lease expiry in the filter), and starts no request that could outlast the lease. A worker killed mid-delivery
leaves an expired lease, and any worker takes the item again: at-least-once, with the same key.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, WriteConcern
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError

from fhirgoal.store.batching import BatchedCollectionOps, Companion
from fhirgoal.store.units import current_session

OUTBOX = "fhirgoal_outbox"
PENDING, DELIVERING, DELIVERED, DEAD, VOID = "pending", "delivering", "delivered", "dead", "void"
STATES = (PENDING, DELIVERING, DELIVERED, DEAD, VOID)


@dataclass(frozen=True)
class OutboxItem:
    key: str
    kind: str
    dest: str
    ref: str  # "Type/id" of the resource version that caused it
    vid: int
    digest: str
    created: datetime
    attempts: int = 0
    lease: datetime | None = None  # the lease this worker holds, when taken
    event: int | None = None  # its event number, once given (store/events.py)
    revived: datetime | None = None  # when a human last put it back after it died

    @property
    def since(self) -> datetime:
        """Where its dead-letter horizon counts from: recorded, or put back by a human."""
        return self.revived or self.created

    def document(self) -> dict[str, Any]:
        return {
            "_id": self.key,
            "kind": self.kind,
            "dest": self.dest,
            "ref": self.ref,
            "vid": self.vid,
            "digest": self.digest,
            "created": self.created,
            "attempts": 0,
            "next": self.created,
            "state": PENDING,
        }


def outbox_item(doc: dict[str, Any]) -> OutboxItem:
    return OutboxItem(
        doc["_id"],
        doc["kind"],
        doc["dest"],
        doc["ref"],
        doc["vid"],
        doc["digest"],
        doc["created"],
        doc.get("attempts", 0),
        doc.get("lease"),
        doc.get("event"),
        doc.get("revived"),
    )


class OutboxStore:
    def __init__(
        self, db: AsyncDatabase[dict[str, Any]], batched: BatchedCollectionOps | None = None
    ) -> None:
        self.items = db[OUTBOX]
        # Items recorded outside a unit of work are written unjournaled: the version written
        # next, with `j: true`, is acknowledged only once the journal holds it, and the journal
        # is one sequence, so it then holds the item too (the argument of store/units.py's
        # `_durable`). One journal sync per write instead of two.
        self.unjournaled = self.items.with_options(write_concern=WriteConcern(w=1, j=False))
        # the repository's batching: concurrent writes' items go to the database in one call
        self.batched = batched or BatchedCollectionOps()

    async def ensure_indexes(self) -> None:
        # the worker's query: due pending items, and delivering ones whose lease expired
        await self.items.create_index([("state", ASCENDING), ("next", ASCENDING)], name="due")
        await self.items.create_index([("dest", ASCENDING)], name="dest")

    async def record(self, items: list[OutboxItem]) -> None:
        """Store new items, in the running unit of work if there is one. An item stored already
        (the same write recorded again, or a retried request) stays as it is."""
        session = current_session()
        if session is None and len(items) == 1:
            with contextlib.suppress(DuplicateKeyError):
                await self.batched.insert(self.unjournaled, items[0].document())
            return
        target = self.items if session is not None else self.unjournaled
        try:
            await target.insert_many(
                [item.document() for item in items], ordered=False, session=session
            )
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if exc.details.get("writeConcernErrors") or any(e.get("code") != 11000 for e in errors):
                raise

    def companions(self, items: Sequence[OutboxItem]) -> list[Companion]:
        """`items` as documents to insert with the first version that causes them, in the
        repository's batch (store/batching.py), unjournaled like `record`'s."""
        return [(self.unjournaled, item.document()) for item in items]

    async def take(
        self, owner: str, lease_seconds: float, now: datetime, limit: int, dest: str | None = None
    ) -> list[OutboxItem]:
        """Lease up to `limit` due items (pending and due, or delivering with an expired lease),
        of destination `dest` only when given: one query for their keys, one conditional update
        that leases those still due (a concurrent worker's update matches none of the same items:
        `next` moves past now), one read of what this worker got."""
        due_filter: dict[str, Any] = {
            "state": {"$in": [PENDING, DELIVERING]},
            "next": {"$lte": now},
        }
        if dest is not None:
            due_filter["dest"] = dest
        cursor = self.items.find(due_filter, {"_id": 1}).sort("next", ASCENDING).limit(limit)
        keys = [doc["_id"] async for doc in cursor]
        if not keys:
            return []
        lease = now + timedelta(seconds=lease_seconds)
        token = uuid.uuid4().hex
        await self.items.update_many(
            {"_id": {"$in": keys}, **due_filter},
            # `next` doubles as the lease's expiry while delivering: one index serves both
            {"$set": {"state": DELIVERING, "owner": owner, "lease": lease, "next": lease,
                      "take": token}},
        )  # fmt: skip
        taken = self.items.find({"_id": {"$in": keys}, "take": token})
        return [outbox_item(doc) async for doc in taken]

    async def _settle(self, item: OutboxItem, owner: str, update: dict[str, Any]) -> bool:
        """Apply `update` if this worker's lease still stands (else another worker has it)."""
        result = await self.items.update_one(
            {"_id": item.key, "state": DELIVERING, "owner": owner, "lease": item.lease},
            update,
        )
        return result.modified_count == 1

    async def delivered(self, item: OutboxItem, owner: str, at: datetime) -> bool:
        return await self._settle(
            item,
            owner,
            {
                "$set": {"state": DELIVERED, "delivered": at, "next": at},
                "$inc": {"attempts": 1},
                "$unset": {"owner": "", "lease": ""},
            },
        )

    async def retry(
        self, item: OutboxItem, owner: str, at: datetime, error: str, counts: bool = True
    ) -> bool:
        """Pending again, due at `at`; `counts`: whether this was a delivery attempt."""
        update: dict[str, Any] = {
            "$set": {"state": PENDING, "next": at, "error": error},
            "$unset": {"owner": "", "lease": ""},
        }
        if counts:
            update["$inc"] = {"attempts": 1}
        return await self._settle(item, owner, update)

    async def finish(self, item: OutboxItem, owner: str, state: str, error: str) -> bool:
        """Dead (given up after the horizon) or void (nothing to deliver any more)."""
        return await self._settle(
            item,
            owner,
            {
                "$set": {"state": state, "error": error, "next": datetime.now(UTC)},
                "$inc": {"attempts": 1 if state == DEAD else 0},
                "$unset": {"owner": "", "lease": ""},
            },
        )

    async def next_due(self) -> datetime | None:
        """When the earliest pending or leased item falls due (None: nothing waits)."""
        doc = await self.items.find_one(
            {"state": {"$in": [PENDING, DELIVERING]}}, {"next": 1}, sort=[("next", ASCENDING)]
        )
        return doc["next"] if doc else None

    async def status(self, errors: int = 10) -> dict[str, Any]:
        """Counts by destination and state, and the latest errors (the CLI's `outbox status`)."""
        counts: dict[str, dict[str, int]] = {}
        pipeline = [{"$group": {"_id": {"dest": "$dest", "state": "$state"}, "n": {"$sum": 1}}}]
        async for row in await self.items.aggregate(pipeline):
            counts.setdefault(row["_id"]["dest"], {})[row["_id"]["state"]] = row["n"]
        cursor = self.items.find(
            {"error": {"$exists": True}, "state": {"$in": [PENDING, DEAD]}},
            {"dest": 1, "ref": 1, "vid": 1, "state": 1, "error": 1, "attempts": 1, "next": 1},
        ).sort("next", -1)
        last = [doc async for doc in cursor.limit(errors)]
        return {"destinations": counts, "errors": last}

    async def summary(self, dest: str) -> dict[str, Any]:
        """One destination's items as `destination_report` gives them, with only the text of the
        latest error (`$status` of a Subscription)."""
        report = await self.destination_report(dest)
        last = report.pop("last_error")
        return {**report, "error": last["error"] if last else None}

    async def purge(self, before: datetime) -> int:
        """Forget delivered and void items settled before `before` (dead ones stay: a human
        looks at them)."""
        result = await self.items.delete_many(
            {"state": {"$in": [DELIVERED, VOID]}, "next": {"$lt": before}}
        )
        return result.deleted_count

    async def destination_report(self, dest: str) -> dict[str, Any]:
        """One destination's items by state, how many pending ones failed at least once
        (`failing`), and its latest error."""
        counts = {state: 0 for state in STATES}
        pipeline: list[dict[str, Any]] = [
            {"$match": {"dest": dest}},
            {"$group": {"_id": "$state", "n": {"$sum": 1}}},
        ]
        async for row in await self.items.aggregate(pipeline):
            counts[row["_id"]] = row["n"]
        failing = await self.items.count_documents(
            {"dest": dest, "state": PENDING, "attempts": {"$gt": 0}}
        )
        last = await self.items.find_one(
            {"dest": dest, "error": {"$exists": True}, "state": {"$in": [PENDING, DEAD]}},
            {"error": 1, "ref": 1, "vid": 1, "next": 1},
            sort=[("next", -1)],
        )
        return {**counts, "failing": failing, "last_error": last}

    async def items_for(self, dest: str) -> list[dict[str, Any]]:
        return [doc async for doc in self.items.find({"dest": dest}).sort("created", ASCENDING)]

    async def dead_items(self, dest: str | None = None, limit: int = 0) -> list[dict[str, Any]]:
        """Dead items (of `dest` only, when given), the latest first."""
        query: dict[str, Any] = {"state": DEAD}
        if dest is not None:
            query["dest"] = dest
        cursor = self.items.find(query).sort("next", -1)
        if limit:
            cursor = cursor.limit(limit)
        return [doc async for doc in cursor]

    async def revive(self, dest: str | None = None, key: str | None = None) -> int:
        """Put dead items back (all of `dest`, or the one `key`): pending, due now, attempts from
        zero, the dead-letter horizon counted from now (`revived`); the last error stays until
        the next attempt replaces it. How many were put back."""
        query: dict[str, Any] = {"state": DEAD}
        if dest is not None:
            query["dest"] = dest
        if key is not None:
            query["_id"] = key
        at = datetime.now(UTC)
        result = await self.items.update_many(
            query, {"$set": {"state": PENDING, "next": at, "revived": at, "attempts": 0}}
        )
        return result.modified_count

    async def void_for(self, dest: str, reason: str) -> int:
        """Drop the undelivered items of a destination that is gone (a Subscription turned off)."""
        result = await self.items.update_many(
            {"dest": dest, "state": PENDING},
            {"$set": {"state": VOID, "error": reason}},
        )
        return result.modified_count
