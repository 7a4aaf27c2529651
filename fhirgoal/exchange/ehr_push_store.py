"""What push in keeps per EHR connection: the notification secret's hash, the Subscriptions made
at the EHR, the event numbers heard, and whether a pull is due.

Issue 15 (push in: an EHR notifies fhirgoal through a Subscription; exchange/ehr_subscribe.py
makes it, exchange/ehr_push.py hears it). Two collections, written journaled like everything
else (store/mongo.py), so that what a notification's 2xx acknowledged survives a crash:

`ehr_push`, one document per connection:

  _id            the connection's name
  secrets        [{hash, until}]: SHA-256 (hex) of the secret the EHR sends in the channel's
                 `Authorization: Bearer` header; the current one without `until`, the one it
                 replaced until a grace time (notifications already in flight carry it). The
                 secret itself is never stored: it is random (256 bits), so its hash cannot be
                 reversed and needs no salt or stretching.
  subscriptions  [{topic, id, types, filters}]: the EHR's Subscription per topic, what it covers
  pull_due       when a pull of the connection was asked for (a gap in the event numbers, an
                 error status); cleared by a pull that started after it
  last_notified  when the last authenticated notification arrived

`ehr_push_events`, one document per EHR Subscription (`_id` "<connection>|<its id>"): `seen`,
the highest event number heard (raised with `$max`, so concurrent notifications cannot lower it).
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pymongo.asynchronous.database import AsyncDatabase

from fhirgoal.fhir.instants import now

PUSH = "ehr_push"
PUSH_EVENTS = "ehr_push_events"
# How long the secret a new one replaced is still accepted (notifications in flight or being
# retried by the EHR when the Subscriptions were rewritten).
PREVIOUS_SECRET_SECONDS = 600.0


def secret_hash(secret: str) -> str:
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class EhrSubscription:
    topic: str
    id: str  # the Subscription's id at the EHR
    types: tuple[str, ...]  # the pulled types it covers
    filters: tuple[str, ...]  # its backport-filter-criteria values

    def as_document(self) -> dict[str, Any]:
        return {
            "topic": self.topic,
            "id": self.id,
            "types": list(self.types),
            "filters": list(self.filters),
        }


@dataclass
class PushState:
    connection: str
    hashes: list[tuple[str, datetime | None]] = field(default_factory=list)
    subscriptions: list[EhrSubscription] = field(default_factory=list)
    pull_due: datetime | None = None
    last_notified: datetime | None = None

    def accepts(self, secret: str) -> bool:
        """Whether `secret` is a valid one, compared in constant time against every hash kept
        (the comparison of each costs the same whatever the secret)."""
        presented = secret_hash(secret)
        moment = now()
        accepted = False
        for stored, until in self.hashes:
            matched = hmac.compare_digest(presented, stored)
            accepted |= matched and (until is None or until > moment)
        return accepted


def _state(doc: dict[str, Any] | None, name: str) -> PushState:
    if doc is None:
        return PushState(name)
    return PushState(
        name,
        [(s["hash"], s.get("until")) for s in doc.get("secrets") or []],
        [
            EhrSubscription(s["topic"], s["id"], tuple(s["types"]), tuple(s["filters"]))
            for s in doc.get("subscriptions") or []
        ],
        doc.get("pull_due"),
        doc.get("last_notified"),
    )


class PushStore:
    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self.push = db[PUSH]
        self.events = db[PUSH_EVENTS]

    async def state(self, name: str) -> PushState:
        return _state(await self.push.find_one({"_id": name}), name)

    async def new_secret(self, name: str, secret: str) -> None:
        """`secret` becomes the connection's; the one it replaces is accepted a while longer."""
        state = await self.state(name)
        moment = now()
        grace = moment + timedelta(seconds=PREVIOUS_SECRET_SECONDS)
        kept = [
            {"hash": h, "until": grace if until is None else until}
            for h, until in state.hashes
            if until is None or until > moment
        ]
        secrets = [{"hash": secret_hash(secret), "until": None}, *kept]
        await self.push.update_one({"_id": name}, {"$set": {"secrets": secrets}}, upsert=True)

    async def save_subscriptions(self, name: str, subscriptions: list[EhrSubscription]) -> None:
        await self.push.update_one(
            {"_id": name},
            {"$set": {"subscriptions": [s.as_document() for s in subscriptions]}},
            upsert=True,
        )

    async def notified(self, name: str) -> None:
        await self.push.update_one({"_id": name}, {"$set": {"last_notified": now()}})

    # ---- pulls asked for --------------------------------------------------------------------
    async def ask_pull(self, name: str) -> None:
        """A pull of the connection is due (kept until a pull that started later clears it)."""
        await self.push.update_one({"_id": name}, {"$set": {"pull_due": now()}}, upsert=True)

    async def due(self) -> list[str]:
        """The connections a pull is due for."""
        found = self.push.find({"pull_due": {"$ne": None}}, {"_id": 1})
        return [str(doc["_id"]) async for doc in found]

    async def pulled(self, name: str, started: datetime) -> None:
        """A pull that started at `started` succeeded: what was asked for before it is done."""
        await self.push.update_one(
            {"_id": name, "pull_due": {"$lte": started}}, {"$set": {"pull_due": None}}
        )

    # ---- event numbers ----------------------------------------------------------------------
    async def seen(self, name: str, subscription: str) -> int:
        doc = await self.events.find_one({"_id": f"{name}|{subscription}"})
        return int(doc["seen"]) if doc else 0

    async def saw(self, name: str, subscription: str, number: int) -> None:
        await self.events.update_one(
            {"_id": f"{name}|{subscription}"},
            {"$max": {"seen": number}, "$set": {"conn": name}},
            upsert=True,
        )

    async def forget(self, name: str) -> None:
        """Everything kept for the connection (`fhirgoal ehr remove`)."""
        await self.push.delete_one({"_id": name})
        await self.events.delete_many({"conn": name})
