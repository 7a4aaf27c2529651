"""Revoking access tokens before they expire, on every replica.

An access token is a signed JWT that the resource server verifies once and then keeps, as its
AccessContext, in memory until it expires (auth/bearer.py). Some events must end tokens already
issued:

- an authorization code presented a second time: RFC 6749 section 4.1.2 ("the authorization server
  ... SHOULD revoke (when possible) all tokens previously issued based on that authorization
  code"), access tokens included;
- a used refresh token presented again: its family is revoked (RFC 9700 section 4.14.2), and so are
  the access tokens of the same grant;
- `fhirgoal client revoke` and `fhirgoal user revoke`.

Each access token names its grant (`grant_id`, one per authorization code or client-credentials
request, kept across refreshes), its client and its subject. A revocation is a document in
`auth_revoked` whose `_id` is one of `grant:<id>`, `client:<id>`, `sub:<subject>`, kept until every
token it concerns has expired. A token is checked against them when it is verified (one query); a
token already verified is dropped from the cache at once on the replica that revokes, and on the
others when they next reread the recent revocations, at most `revocation_check_seconds` later
(default 5 s): the documented bound on how long a revoked token can still be used.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from pymongo import ASCENDING
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

log = structlog.get_logger(__name__)

COLLECTION = "auth_revoked"
# how long a client or user revocation is kept: longer than any access token lives
KEEP = timedelta(days=2)


def token_keys(claims: dict[str, Any]) -> tuple[str, ...]:
    """The revocation keys that concern a token with these claims."""
    keys = []
    if isinstance(claims.get("grant_id"), str):
        keys.append(f"grant:{claims['grant_id']}")
    if isinstance(claims.get("client_id"), str):
        keys.append(f"client:{claims['client_id']}")
    if isinstance(claims.get("sub"), str) and claims.get("sub") != claims.get("client_id"):
        keys.append(f"sub:{claims['sub']}")
    return tuple(keys)


async def ensure_indexes(db: AsyncDatabase[dict[str, Any]]) -> None:
    await db[COLLECTION].create_index([("at", ASCENDING)])
    await db[COLLECTION].create_index([("expires", ASCENDING)], expireAfterSeconds=0)


async def revoke(
    db: AsyncDatabase[dict[str, Any]], keys: Iterable[str], keep: timedelta = KEEP
) -> None:
    """Record revocations (idempotent); replicas drop the tokens they concern."""
    at = datetime.now(UTC)
    for key in keys:
        await db[COLLECTION].update_one(
            {"_id": key}, {"$set": {"at": at, "expires": at + keep}}, upsert=True
        )


class Revocations:
    """This replica's view of recent revocations, for the token cache (auth/bearer.py)."""

    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self.collection = db[COLLECTION]
        self._since = datetime.now(UTC) - timedelta(seconds=1)

    async def any_revoked(self, keys: tuple[str, ...]) -> bool:
        """Whether any of a token's keys is revoked (a token being verified)."""
        if not keys:
            return False
        return await self.collection.find_one({"_id": {"$in": list(keys)}}, {"_id": 1}) is not None

    async def recent(self) -> set[str]:
        """Keys revoked since the last call (by any replica or the CLI); empty when the database
        cannot be read now (the next check reads them)."""
        since = self._since
        try:
            found = [
                doc
                async for doc in self.collection.find({"at": {"$gte": since}}, {"_id": 1, "at": 1})
            ]
        except PyMongoError as error:
            log.warning("revocations could not be read; retrying", error=repr(error))
            return set()
        if found:
            latest = max(doc["at"] for doc in found)
            latest = latest if latest.tzinfo else latest.replace(tzinfo=UTC)
            # a little overlap: a revocation stored with an earlier clock reading is not missed
            self._since = max(since, latest - timedelta(seconds=1))
        return {doc["_id"] for doc in found}


async def revoke_and_audit(db: AsyncDatabase[dict[str, Any]], what: str, name: str) -> None:
    """`fhirgoal client revoke` / `user revoke`: end the tokens of a client or user on every
    replica and leave an AuditEvent (110137, stored straight into the audit log's segments,
    which the server indexes like its own)."""
    import time

    from fhirgoal.auth.audit_events import SecurityEvent, security_event
    from fhirgoal.fhir.instants import clock_text
    from fhirgoal.store.append_log import append_segment, log_collection

    key = f"client:{name}" if what == "client" else f"sub:{name}"
    await revoke(db, [key])
    event = SecurityEvent(
        f"{what}-revoked",
        "0",
        f"{what} {name} revoked from the command line; its tokens are refused",
        client_id=name if what == "client" else None,
        user=name if what == "user" else None,
    )
    await append_segment(
        db[log_collection("AuditEvent")], [security_event(event, clock_text(time.time_ns()))]
    )
