"""The authorization server's short-lived state, in MongoDB so any replica can serve any step.

Collections, each with a TTL index on `expires` (MongoDB removes expired documents within about a
minute; every read also checks `expires`, so a slow or absent reaper is never a hole):

  auth_requests  pending authorization requests between /authorize, login and consent (10 min)
  auth_codes     authorization codes (RFC 6749 section 4.1.2: single use, 60 s here; a used code
                 is kept as long as its tokens live, to revoke them if it comes back)
  auth_refresh   refresh tokens by SHA-256, grouped in families for rotation (RFC 9700 4.14.2)
  auth_jti       client-assertion `jti`s seen, until the assertion expires (RFC 7523 section 3)
  auth_throttle  failed logins per user name and per address, until their window ends
  auth_launch    EHR launch contexts handed over by the EHR integration (SMART App Launch 2.2,
                 https://hl7.org/fhir/smart-app-launch/app-launch.html#launch-app-ehr-launch)
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError, OperationFailure

COLLECTIONS = (
    "auth_requests",
    "auth_codes",
    "auth_refresh",
    "auth_jti",
    "auth_launch",
    "auth_throttle",
)


def utcnow() -> datetime:
    return datetime.now(UTC)


def expired(doc: dict[str, Any]) -> bool:
    moment = doc.get("expires")
    if moment is None:
        return False
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return bool(moment <= utcnow())


def secret_hash(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def new_secret() -> str:
    return secrets.token_urlsafe(32)


async def ensure_indexes(db: AsyncDatabase[dict[str, Any]]) -> None:
    for name in COLLECTIONS:
        try:
            await db[name].create_index([("expires", ASCENDING)], expireAfterSeconds=0)
        except OperationFailure:  # a server without TTL support: the explicit checks remain
            await db[name].create_index([("expires", ASCENDING)])
    await db["auth_refresh"].create_index([("family", ASCENDING)])


async def remember_jti(db: AsyncDatabase[dict[str, Any]], key: str, until: datetime) -> bool:
    """Record a `jti`; False when it was seen before (a replay)."""
    collection = db["auth_jti"]
    try:
        await collection.insert_one({"_id": key, "expires": until})
        return True
    except DuplicateKeyError:
        # an expired leftover the reaper has not removed yet does not count as a replay
        result = await collection.update_one(
            {"_id": key, "expires": {"$lte": utcnow()}}, {"$set": {"expires": until}}
        )
        return result.modified_count == 1


async def create_launch(
    db: AsyncDatabase[dict[str, Any]],
    patient: str | None,
    encounter: str | None = None,
    fhir_user: str | None = None,
    ttl: timedelta = timedelta(hours=1),
) -> str:
    """Record an EHR launch context and return the opaque `launch` value to hand to the app."""
    launch = new_secret()
    await db["auth_launch"].insert_one(
        {
            "_id": launch,
            "patient": patient,
            "encounter": encounter,
            "fhir_user": fhir_user,
            "expires": utcnow() + ttl,
        }
    )
    return launch


async def resolve_launch(db: AsyncDatabase[dict[str, Any]], launch: str) -> dict[str, Any] | None:
    doc = await db["auth_launch"].find_one({"_id": launch})
    return None if doc is None or expired(doc) else doc
