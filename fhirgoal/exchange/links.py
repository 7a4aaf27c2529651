"""What the sync remembers per connection: links between fhirgoal's resources and the EHR's, and
the records it could not place (for a human).

Links (`ehr_links`, one per connection and fhirgoal resource): the EHR's resource it is in step
with (`ehr` "Goal/e1"), the two versions that were last in step (`local_vid`, `ehr_vid` and the
EHR version's `ehr_at`), where it started (`origin`: fhirgoal or ehr) and, for a Goal edited on
both sides, the `conflict` the clinician has been told about (exchange/conflicts.py). A Patient's
link is how fhirgoal follows that patient in the EHR; `pulled` says its first full pull is done.
A deletion (exchange/ehr_deletions.py) is recorded on the link, not by dropping it: `deleted`
says which side deleted its record ("fhirgoal" or "ehr") and `deleted_at` when the sync saw it;
a later version on either side (a record made again) moves the link on and clears it. `moved`
lists the EHR Patients a Patient link followed before the EHR merged them into another
(exchange/ehr_patient_links.py).

Identity is by identifiers only (issue 15: "never by guesswork"): a link is made when an
identifier says two records are the same (a Patient's MRN, the identifier the sync gives every
copy it writes: system = origin base + "/" + type, value = origin id), never by similar
demographics. What cannot be placed that way queues in `ehr_unmatched` with the reason, listed by
`fhirgoal sync unmatched`.

The writers of one link in a process take its lock (`LinkLocks`): inbound pulls and outbound
deliveries of the same resource never interleave.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase

LINKS = "ehr_links"
UNMATCHED = "ehr_unmatched"


@dataclass(frozen=True)
class Conflict:
    local_vid: int  # fhirgoal's version the clinician was told about
    ehr_vid: str  # the EHR's version
    flag: str  # the Flag that tells


@dataclass(frozen=True)
class Link:
    conn: str
    local: str  # "Goal/g1"
    ehr: str  # "Goal/e1"
    local_vid: int
    ehr_vid: str
    ehr_at: datetime | None
    origin: str  # "fhirgoal" | "ehr"
    pulled: bool = False
    conflict: Conflict | None = None
    deleted: str | None = None  # the side that deleted its record: "fhirgoal" | "ehr"

    @property
    def local_id(self) -> str:
        return self.local.partition("/")[2]

    @property
    def ehr_id(self) -> str:
        return self.ehr.partition("/")[2]


def _link(doc: dict[str, Any]) -> Link:
    raw = doc.get("conflict")
    conflict = Conflict(raw["local_vid"], raw["ehr_vid"], raw["flag"]) if raw else None
    at = doc.get("ehr_at")
    if at is not None and at.tzinfo is None:
        at = at.replace(tzinfo=UTC)
    return Link(
        doc["conn"],
        doc["local"],
        doc["ehr"],
        doc.get("local_vid", 0),
        doc.get("ehr_vid", ""),
        at,
        doc.get("origin", "ehr"),
        bool(doc.get("pulled")),
        conflict,
        doc.get("deleted"),
    )


class LinkLocks:
    """One asyncio lock per (connection, fhirgoal resource), dropped when nobody holds it."""

    def __init__(self) -> None:
        self._locks: dict[str, asyncio.Lock] = defaultdict(asyncio.Lock)
        self._users: dict[str, int] = defaultdict(int)

    def hold(self, key: str) -> _Held:
        return _Held(self, key)


class _Held:
    def __init__(self, locks: LinkLocks, key: str) -> None:
        self.locks, self.key = locks, key

    async def __aenter__(self) -> None:
        self.locks._users[self.key] += 1
        await self.locks._locks[self.key].acquire()

    async def __aexit__(self, *exc: object) -> None:
        self.locks._locks[self.key].release()
        self.locks._users[self.key] -= 1
        if self.locks._users[self.key] == 0:
            del self.locks._users[self.key]
            del self.locks._locks[self.key]


class LinkStore:
    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self.links = db[LINKS]
        self.unmatched = db[UNMATCHED]

    async def ensure_indexes(self) -> None:
        await self.links.create_index(
            [("conn", ASCENDING), ("ehr", ASCENDING)], name="by_ehr", unique=True
        )
        await self.links.create_index([("conn", ASCENDING), ("type", ASCENDING)], name="by_type")
        await self.unmatched.create_index([("conn", ASCENDING), ("at", ASCENDING)], name="by_conn")
        await self.unmatched.create_index(
            [("conn", ASCENDING), ("record", ASCENDING)], name="by_record"
        )

    @staticmethod
    def key(conn: str, local: str) -> str:
        return f"{conn}|{local}"

    async def by_local(self, conn: str, local: str) -> Link | None:
        doc = await self.links.find_one({"_id": self.key(conn, local)})
        return _link(doc) if doc else None

    async def by_ehr(self, conn: str, ehr: str) -> Link | None:
        doc = await self.links.find_one({"conn": conn, "ehr": ehr})
        return _link(doc) if doc else None

    async def many_by_ehr(self, conn: str, ehr_refs: list[str]) -> dict[str, Link]:
        found: dict[str, Link] = {}
        if ehr_refs:
            async for doc in self.links.find({"conn": conn, "ehr": {"$in": ehr_refs}}):
                found[doc["ehr"]] = _link(doc)
        return found

    async def many_by_local(self, conn: str, local_refs: list[str]) -> dict[str, Link]:
        found: dict[str, Link] = {}
        if local_refs:
            keys = [self.key(conn, ref) for ref in local_refs]
            async for doc in self.links.find({"_id": {"$in": keys}}):
                found[doc["local"]] = _link(doc)
        return found

    async def patients(self, conn: str) -> list[Link]:
        return [_link(doc) async for doc in self.links.find({"conn": conn, "type": "Patient"})]

    async def save(
        self,
        conn: str,
        local: str,
        ehr: str,
        local_vid: int,
        ehr_vid: str,
        ehr_at: datetime | None,
        origin: str,
        clear_conflict: bool = True,
    ) -> None:
        """The two versions now in step (a link made or moved on)."""
        update: dict[str, Any] = {
            "$set": {
                "conn": conn,
                "local": local,
                "type": local.partition("/")[0],
                "ehr": ehr,
                "local_vid": local_vid,
                "ehr_vid": ehr_vid,
                "ehr_at": ehr_at,
                "updated": datetime.now(UTC),
            },
            "$setOnInsert": {"origin": origin},
        }
        update["$unset"] = {"deleted": "", "deleted_at": ""}
        if clear_conflict:
            update["$unset"]["conflict"] = ""
        await self.links.update_one({"_id": self.key(conn, local)}, update, upsert=True)

    async def mark_deleted(self, conn: str, local: str, side: str, ehr_vid: str = "") -> None:
        """`side` ("fhirgoal" or "ehr") deleted its record of the link (and, when the sync
        carried the deletion over, the other side's too); `ehr_vid` the EHR's deletion version,
        when known."""
        fields: dict[str, Any] = {"deleted": side, "deleted_at": datetime.now(UTC)}
        if ehr_vid:
            fields["ehr_vid"] = ehr_vid
        await self.links.update_one({"_id": self.key(conn, local)}, {"$set": fields})

    async def move(self, conn: str, local: str, ehr: str, replaced: str) -> None:
        """The EHR merged `replaced` into `ehr`: the link follows `ehr` from now on, fetched whole
        at the next pull (not yet `pulled`), and remembers `replaced` in `moved`."""
        await self.links.update_one(
            {"_id": self.key(conn, local)},
            {
                "$set": {"ehr": ehr, "ehr_vid": "", "ehr_at": None, "pulled": False,
                         "updated": datetime.now(UTC)},
                "$push": {"moved": {"ehr": replaced, "at": datetime.now(UTC)}},
            },
        )  # fmt: skip

    async def mark_pulled(self, conn: str, local: str) -> None:
        await self.links.update_one({"_id": self.key(conn, local)}, {"$set": {"pulled": True}})

    async def set_conflict(self, conn: str, local: str, conflict: Conflict) -> None:
        await self.links.update_one(
            {"_id": self.key(conn, local)},
            {
                "$set": {
                    "conflict": {
                        "local_vid": conflict.local_vid,
                        "ehr_vid": conflict.ehr_vid,
                        "flag": conflict.flag,
                    }
                }
            },
        )

    async def counts(self, conn: str) -> dict[str, int]:
        counts: dict[str, int] = {}
        pipeline: list[dict[str, Any]] = [
            {"$match": {"conn": conn}},
            {"$group": {"_id": "$type", "n": {"$sum": 1}}},
        ]
        async for row in await self.links.aggregate(pipeline):
            counts[row["_id"]] = row["n"]
        return counts

    async def conflicts(self, conn: str) -> int:
        return await self.links.count_documents({"conn": conn, "conflict": {"$exists": True}})

    async def forget(self, conn: str) -> None:
        await self.links.delete_many({"conn": conn})
        await self.unmatched.delete_many({"conn": conn})

    # ---- records for a human -----------------------------------------------------------------
    async def hold(self, conn: str, record: str, kind: str, reason: str) -> None:
        """Queue `record` (an EHR reference, or a fhirgoal one) with the reason it could not be
        placed; the same record and kind again only refreshes the reason and time."""
        await self.unmatched.update_one(
            {"_id": f"{conn}|{kind}|{record}"},
            {
                "$set": {
                    "conn": conn,
                    "record": record,
                    "kind": kind,
                    "reason": reason,
                    "at": datetime.now(UTC),
                }
            },
            upsert=True,
        )

    async def release(self, conn: str, record: str, kind: str) -> None:
        await self.unmatched.delete_one({"_id": f"{conn}|{kind}|{record}"})

    async def release_all(self, conn: str, record: str) -> None:
        await self.unmatched.delete_many({"conn": conn, "record": record})

    async def held_among(self, conn: str, records: list[str]) -> set[str]:
        """Which of `records` wait for a human (one query for a page of them)."""
        if not records:
            return set()
        cursor = self.unmatched.find({"conn": conn, "record": {"$in": records}}, {"record": 1})
        return {doc["record"] async for doc in cursor}

    async def held(self, conn: str | None = None) -> list[dict[str, Any]]:
        query = {"conn": conn} if conn else {}
        return [doc async for doc in self.unmatched.find(query).sort([("conn", 1), ("at", 1)])]
