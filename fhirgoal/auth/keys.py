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

At rest the private keys are encrypted (issue 12: the embedded database runs without
authentication, and a database dump must not hand out the power to sign tokens): AES-256-GCM
(NIST SP 800-38D, the `cryptography` package) with a random 96-bit nonce per key and the key's
`kid` as associated data, so a sealed key cannot be moved to another record. Each record keeps
its public JWK in the clear (`public`) and its private JWK sealed (`sealed`). The key-encryption
key is FHIRGOAL_KEY_ENCRYPTION_KEY (32 bytes, base64) or, when unset, a key file generated with
mode 0600 in the data directory (`signing-keys.key`), as OWASP's Cryptographic Storage Cheat
Sheet asks: the key apart from the data it protects. Records written before encryption (a
plaintext `jwk`) are sealed at start-up. A key-encryption key that opens none of the keys stops
the start-up with KeyEncryptionError, rather than failing each request.
"""

from __future__ import annotations

import base64
import binascii
import os
import secrets
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from joserfc.jwk import ECKey, KeySet, RSAKey
from pymongo.asynchronous.database import AsyncDatabase

from fhirgoal.core.errors import FhirgoalError

COLLECTION = "auth_keys"
REFRESH_SECONDS = 60.0
MIN_RELOAD_SECONDS = 5.0  # an unknown kid rereads the set at most this often
KEY_FILE = "signing-keys.key"


class KeyEncryptionError(FhirgoalError, RuntimeError):
    """The key-encryption key is malformed or does not open the stored signing keys."""


def encryption_key(configured: str | None, data_dir: Path) -> bytes:
    """The 32-byte key-encryption key: `configured` (base64 or base64url) or the key file in
    `data_dir`, created (0600, never overwritten) when it does not exist yet."""
    if configured:
        return _decode_key(configured.strip(), "FHIRGOAL_KEY_ENCRYPTION_KEY")
    path = data_dir / KEY_FILE
    try:
        return _decode_key(path.read_text().strip(), str(path))
    except FileNotFoundError:
        pass
    data_dir.mkdir(parents=True, exist_ok=True)
    key = secrets.token_bytes(32)
    try:  # O_EXCL: two processes starting at once keep the first one's key
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return _decode_key(path.read_text().strip(), str(path))
    with os.fdopen(fd, "w") as out:
        out.write(base64.urlsafe_b64encode(key).decode() + "\n")
    return key


def _decode_key(text: str, where: str) -> bytes:
    try:
        key = base64.urlsafe_b64decode(
            text.replace("+", "-").replace("/", "_") + "=" * (-len(text) % 4)
        )
    except (binascii.Error, ValueError):
        raise KeyEncryptionError(f"{where} is not base64") from None
    if len(key) != 32:
        raise KeyEncryptionError(f"{where} must hold 32 bytes (base64), not {len(key)}")
    return key


def seal(private_jwk: dict[str, Any], kid: str, kek: bytes) -> dict[str, str]:
    nonce = os.urandom(12)
    sealed = AESGCM(kek).encrypt(nonce, orjson.dumps(private_jwk), kid.encode())
    return {
        "alg": "A256GCM",
        "nonce": base64.urlsafe_b64encode(nonce).decode(),
        "ciphertext": base64.urlsafe_b64encode(sealed).decode(),
    }


def unseal(sealed: dict[str, str], kid: str, kek: bytes) -> dict[str, Any]:
    try:
        nonce = base64.urlsafe_b64decode(sealed["nonce"])
        text = AESGCM(kek).decrypt(
            nonce, base64.urlsafe_b64decode(sealed["ciphertext"]), kid.encode()
        )
    except (InvalidTag, KeyError, ValueError):
        raise KeyEncryptionError(
            f"signing key {kid} cannot be decrypted: FHIRGOAL_KEY_ENCRYPTION_KEY (or the key file "
            f"{KEY_FILE} in the data directory) is not the key it was encrypted with"
        ) from None
    jwk: dict[str, Any] = orjson.loads(text)
    return jwk


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

    def __init__(
        self,
        db: AsyncDatabase[dict[str, Any]],
        kek: bytes,
        alg: str = "RS384",
        collection: str = COLLECTION,
    ) -> None:
        # `collection`: another purpose keeps its keys apart (evidence/keys.py, document signing)
        self.collection = db[collection]
        self.kek = kek
        self.alg = alg
        self._private: dict[str, RSAKey | ECKey] = {}  # kid -> unsealed signing key
        self._loaded: _Loaded | None = None
        self._loaded_at = 0.0

    async def ensure(self) -> None:
        """Seal keys stored in the clear, check that every key opens with this replica's
        key-encryption key, and make sure a signing key exists (the first replica creates it)."""
        await self.seal_plaintext()
        async for doc in self.collection.find({"sealed": {"$exists": True}}):
            unseal(doc["sealed"], doc["_id"], self.kek)  # KeyEncryptionError at start-up
        if await self.collection.count_documents({"retired_at": None}, limit=1) == 0:
            await self.add_key()
        await self.reload()

    async def add_key(self) -> str:
        key = generate_key(self.alg)
        await self.collection.insert_one(
            {
                "_id": key.kid,
                "alg": self.alg,
                "public": key.as_dict(private=False),
                "sealed": seal(key.as_dict(private=True), key.kid or "", self.kek),
                "created": datetime.now(UTC),
                "retired_at": None,
                "verify_until": None,
            }
        )
        assert key.kid is not None
        return key.kid

    async def seal_plaintext(self) -> int:
        """Encrypt the private keys stored before encryption at rest; how many."""
        count = 0
        async for doc in self.collection.find({"jwk": {"$exists": True}}):
            jwk = doc["jwk"]
            public = import_key(jwk).as_dict(private=False)
            result = await self.collection.update_one(
                {"_id": doc["_id"], "jwk": {"$exists": True}},
                {
                    "$set": {"public": public, "sealed": seal(jwk, doc["_id"], self.kek)},
                    "$unset": {"jwk": ""},
                },
            )
            count += result.modified_count
        return count

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
        keys = [import_key(doc["public"]) for doc in live]
        signing = signing_docs[0]
        private = self._private.get(signing["_id"])
        if private is None:
            private = import_key(unseal(signing["sealed"], signing["_id"], self.kek))
            self._private = {signing["_id"]: private}
        self._loaded = _Loaded(
            signing=private,
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
