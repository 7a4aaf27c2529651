"""The authorization server's signing keys, kept in MongoDB so every replica signs and verifies
with the same set, and rotated without downtime.

JWK / JWKS: RFC 7517 (https://www.rfc-editor.org/rfc/rfc7517); SMART App Launch 2.2 asks servers
to sign with RS384 or ES384 (https://hl7.org/fhir/smart-app-launch/backend-services.html).

Rotation: a new key becomes the signing key at once; the previous one stops signing but stays in
the published key set (and keeps verifying) until every token it signed has expired
(`verify_until` = rotation time + longest token lifetime + the replicas' refresh interval). A
replica rereads the set every `REFRESH_SECONDS` and when it meets an unknown `kid`, so a rotation
done on one replica (or with `fhirgoal key rotate`) reaches the others without a restart.

RS384 is the default: verifying it costs ~70 us against ~670 us for ES384 on the reference
machine, and verification is on every request's path.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from joserfc.jwk import ECKey, KeySet, RSAKey
from pymongo.asynchronous.database import AsyncDatabase

COLLECTION = "auth_keys"
REFRESH_SECONDS = 60.0
MIN_RELOAD_SECONDS = 5.0  # an unknown kid rereads the set at most this often


def generate_key(alg: str = "RS384") -> RSAKey | ECKey:
    parameters: Any = {"alg": alg, "use": "sig"}
    if alg.startswith("RS"):
        return RSAKey.generate_key(2048, parameters=parameters, private=True, auto_kid=True)
    if alg == "ES384":
        return ECKey.generate_key("P-384", parameters=parameters, private=True, auto_kid=True)
    if alg == "ES256":
        return ECKey.generate_key("P-256", parameters=parameters, private=True, auto_kid=True)
    raise ValueError(f"unsupported signing algorithm {alg}")


def import_key(jwk: dict[str, Any]) -> RSAKey | ECKey:
    if jwk.get("kty") == "RSA":
        return RSAKey.import_key(jwk)
    if jwk.get("kty") == "EC":
        return ECKey.import_key(jwk)
    raise ValueError(f"unsupported key type {jwk.get('kty')!r}")


@dataclass
class _Loaded:
    signing: RSAKey | ECKey
    verifying: KeySet
    public: dict[str, Any]


class KeyRing:
    """Signing key and verification key set, shared through the `auth_keys` collection."""

    def __init__(self, db: AsyncDatabase[dict[str, Any]], alg: str = "RS384") -> None:
        self.collection = db[COLLECTION]
        self.alg = alg
        self._loaded: _Loaded | None = None
        self._loaded_at = 0.0

    async def ensure(self) -> None:
        """Make sure a signing key exists (the first replica to start creates it)."""
        if await self.collection.count_documents({"retired_at": None}, limit=1) == 0:
            await self.add_key()
        await self.reload()

    async def add_key(self) -> str:
        key = generate_key(self.alg)
        await self.collection.insert_one(
            {
                "_id": key.kid,
                "alg": self.alg,
                "jwk": key.as_dict(private=True),
                "created": datetime.now(UTC),
                "retired_at": None,
                "verify_until": None,
            }
        )
        assert key.kid is not None
        return key.kid

    async def rotate(self, keep_verifying: timedelta) -> str:
        """A new signing key; the others stop signing and verify for `keep_verifying` more."""
        moment = datetime.now(UTC)
        kid = await self.add_key()
        await self.collection.update_many(
            {"_id": {"$ne": kid}, "retired_at": None},
            {"$set": {"retired_at": moment, "verify_until": moment + keep_verifying}},
        )
        await self.collection.delete_many({"verify_until": {"$lt": moment}})
        await self.reload()
        return kid

    async def reload(self) -> None:
        moment = datetime.now(UTC)
        docs = [doc async for doc in self.collection.find({}, sort=[("created", -1)])]
        live = [
            doc
            for doc in docs
            if doc.get("verify_until") is None or _aware(doc["verify_until"]) > moment
        ]
        signing_docs = [doc for doc in live if doc.get("retired_at") is None]
        if not signing_docs:
            raise RuntimeError("no signing key: run the server once or `fhirgoal key rotate`")
        keys = [import_key(doc["jwk"]) for doc in live]
        self._loaded = _Loaded(
            signing=import_key(signing_docs[0]["jwk"]),
            verifying=KeySet(keys),  # type: ignore[arg-type]
            public={"keys": [key.as_dict(private=False) for key in keys]},
        )
        self._loaded_at = time.monotonic()

    async def _fresh(self, unknown_kid: str | None = None) -> _Loaded:
        age = time.monotonic() - self._loaded_at
        if (
            self._loaded is None
            or age > REFRESH_SECONDS
            or (unknown_kid is not None and age > MIN_RELOAD_SECONDS)
        ):
            await self.reload()
        assert self._loaded is not None
        return self._loaded

    async def signing_key(self) -> RSAKey | ECKey:
        return (await self._fresh()).signing

    async def verifying_keys(self, kid: str | None = None) -> KeySet:
        loaded = await self._fresh()
        if kid is not None and not _has_kid(loaded.verifying, kid):
            loaded = await self._fresh(unknown_kid=kid)
        return loaded.verifying

    async def public_jwks(self) -> dict[str, Any]:
        return (await self._fresh()).public


def _has_kid(keys: KeySet, kid: str) -> bool:
    return any(key.kid == kid for key in keys.keys)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
