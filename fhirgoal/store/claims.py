"""Claims on search criteria: what makes conditional create (and conditional update's create) atomic.

https://hl7.org/fhir/R4/http.html#ccreate : "If-None-Exist ... the server SHALL only create the
resource if no resource matches". A search followed by an insert is not atomic: twenty parallel
POSTs with the same `If-None-Exist` created 1, 20 and 8 Patients in three runs (issue 12). Before
creating, a request claims the criteria: one document per (type, normalized criteria) whose `_id`
is their hash, inserted or refused by the unique `_id` index, naming the id the claimant will
create. Whoever loses the claim searches again (the winner's resource is visible once it is
committed) instead of creating. The same idea as HAPI FHIR's unique search-URL table.

Inside a unit of work (store/units.py) the claim is part of the unit: it is read and then
written in the unit's snapshot, so two units claiming the same criteria conflict on the claim's
document (one runs again and then finds the other's resource), and a failed unit leaves no claim.

A claim only has to outlive the requests that searched before the claimant's resource was
committed, so a TTL index removes it after an hour; a claimant that fails releases its claim, and
one that died holding it is taken over after `STALE_SECONDS`.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import urlencode

from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from fhirgoal.store.units import current_session

CLAIMS = "fhirgoal_claims"
EXPIRE_SECONDS = 3600
# A claim this old whose resource does not exist belongs to a request that failed without
# releasing it (a crash): a create takes milliseconds.
STALE_SECONDS = 10.0


def claim_key(resource_type: str, params: list[tuple[str, str]]) -> str:
    """The same criteria in any order give the same key."""
    canonical = f"{resource_type}?{urlencode(sorted(params))}"
    return hashlib.sha256(canonical.encode()).hexdigest()


class Claim:
    """A claim held by another request: the id it creates and since when."""

    def __init__(self, doc: dict[str, Any]) -> None:
        self.target: str = doc["target"]
        self.at: datetime = doc["at"]

    @property
    def stale(self) -> bool:
        return datetime.now(UTC) - self.at > timedelta(seconds=STALE_SECONDS)


class ConditionClaims:
    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self.collection = db[CLAIMS]

    async def ensure_indexes(self) -> None:
        await self.collection.create_index("at", expireAfterSeconds=EXPIRE_SECONDS, name="expire")

    async def claim(self, key: str, target: str) -> Claim | None:
        """Claim `key` for the resource id `target`: None when this request now holds it, else
        the holder's claim."""
        session = current_session()
        if session is not None:
            # In a unit a duplicate key would abort it: look first. A concurrent unit's claim
            # conflicts with this insert, and the unit runs again.
            held = await self.collection.find_one({"_id": key}, session=session)
            if held is not None:
                return Claim(held)
            await self.collection.insert_one(
                {"_id": key, "target": target, "at": datetime.now(UTC)}, session=session
            )
            return None
        for _ in range(3):  # the holder may release between our insert and our read
            try:
                await self.collection.insert_one(
                    {"_id": key, "target": target, "at": datetime.now(UTC)}
                )
                return None
            except DuplicateKeyError:
                held = await self.collection.find_one({"_id": key})
                if held is not None:
                    return Claim(held)
        return Claim({"target": "", "at": datetime.now(UTC)})  # churning: the caller retries

    async def take_over(self, key: str, holder: str, target: str) -> bool:
        """Replace `holder`'s claim by ours; False when it is no longer `holder`'s."""
        result = await self.collection.update_one(
            {"_id": key, "target": holder},
            {"$set": {"target": target, "at": datetime.now(UTC)}},
            session=current_session(),
        )
        return result.matched_count == 1

    async def release(self, key: str, target: str) -> None:
        await self.collection.delete_one({"_id": key, "target": target}, session=current_session())
