"""Practitioner logins for the authorization server's login page (`auth_users`).

Each user is linked to a FHIR Practitioner or, for a client using a patient-facing app, to their
own Patient record (`fhirUser`, SMART App Launch 2.2:
https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html#scopes-for-requesting-identity-data)
and has the scopes they may grant to an app acting for them. A patient user's launch context is
always their own record (auth/server.py: no patient picker, no other patient). Passwords are stored as argon2id
hashes (RFC 9106) and rehashed on login when the parameters change.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from fhirgoal.core.errors import FhirgoalError

COLLECTION = "auth_users"
DEFAULT_USER_SCOPES = "openid fhirUser launch launch/patient offline_access online_access user/*.cruds patient/*.cruds"
# A patient user may let an app read their record, record their own questionnaire answers (the
# server derives the scores), and read the Questionnaires (in no patient's compartment).
DEFAULT_PATIENT_SCOPES = (
    "openid fhirUser launch/patient online_access offline_access patient/*.rs "
    "patient/QuestionnaireResponse.c user/Questionnaire.rs"
)
_hasher = PasswordHasher()


class UserExists(FhirgoalError):
    pass


@dataclass
class User:
    username: str
    fhir_user: str
    scopes: str
    revoked: bool = False

    @property
    def patient(self) -> str | None:
        """The Patient id of a patient user (fhirUser Patient/<id>), else None."""
        return patient_of(self.fhir_user)


def patient_of(fhir_user: str | None) -> str | None:
    """The id of a `Patient/<id>` fhirUser; None for any other."""
    kind, _, rid = (fhir_user or "").partition("/")
    return rid if kind == "Patient" and rid and "/" not in rid else None


class UserDirectory:
    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self.collection = db[COLLECTION]

    async def add(self, username: str, password: str, fhir_user: str, scopes: str) -> None:
        digest = await asyncio.to_thread(_hasher.hash, password)
        try:
            await self.collection.insert_one(
                {
                    "_id": username,
                    "password": digest,
                    "fhir_user": fhir_user,
                    "scopes": scopes,
                    "revoked": False,
                    "created": datetime.now(UTC),
                }
            )
        except DuplicateKeyError:
            raise UserExists(username) from None

    async def authenticate(self, username: str, password: str) -> User | None:
        doc = await self.collection.find_one({"_id": username})
        if doc is None or doc.get("revoked"):
            # spend the same time as a real check so timing does not reveal who exists
            await asyncio.to_thread(_verify, _DUMMY, password)
            return None
        if not await asyncio.to_thread(_verify, doc["password"], password):
            return None
        if _hasher.check_needs_rehash(doc["password"]):
            digest = await asyncio.to_thread(_hasher.hash, password)
            await self.collection.update_one({"_id": username}, {"$set": {"password": digest}})
        return User(username, doc["fhir_user"], doc.get("scopes", DEFAULT_USER_SCOPES))

    async def active(self, username: str) -> bool:
        doc = await self.collection.find_one({"_id": username}, {"revoked": 1})
        return doc is not None and not doc.get("revoked")

    async def list(self) -> list[User]:
        cursor = self.collection.find({}, sort=[("_id", 1)])
        return [
            User(d["_id"], d["fhir_user"], d.get("scopes", ""), bool(d.get("revoked")))
            async for d in cursor
        ]

    async def revoke(self, username: str) -> bool:
        result = await self.collection.update_one({"_id": username}, {"$set": {"revoked": True}})
        return result.matched_count == 1


def _verify(digest: str, password: str) -> bool:
    try:
        return _hasher.verify(digest, password)
    except (VerificationError, InvalidHashError):
        return False


_DUMMY = _hasher.hash("not a password anyone has")
