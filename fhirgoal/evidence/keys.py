"""The server's document-signing key, and where its public half is published.

Signed evidence must be verifiable in every authorization mode, also where the server issues no
tokens of its own (FHIRGOAL_AUTH=off or external: no token key ring exists then). So documents are
signed with a key of their own, kept exactly like the token keys (auth/keys.py KeyRing: in MongoDB,
shared by every replica, the private half sealed with AES-256-GCM under the same key-encryption
key, FHIRGOAL_KEY_ENCRYPTION_KEY or the data directory's key file) but in its own collection, so
that a token key never signs a document nor a document key a token (one key, one purpose).

Algorithm RS256: R4's rules for JSON signatures say the signature SHOULD use SHA-256
(https://hl7.org/fhir/R4/datatypes.html#Signature), and Da Vinci CDex prefers RS256
(https://hl7.org/fhir/us/davinci-cdex/STU2/signatures.html). RSA PKCS#1 v1.5 signatures are
deterministic, so the same document signed twice with the same key is byte-for-byte the same.

The public keys are served as a JWK Set (RFC 7517 section 5) at `/evidence/jwks` (outside /fhir,
so no token is needed to verify), and every signature names that URL in its JWS header (`jku`,
RFC 7515 section 4.1.2) beside the key's `kid`. A retired document key stays published for good:
documents are kept for years, and each must stay verifiable.
"""

from __future__ import annotations

import asyncio
from typing import Any

from joserfc.jwk import ECKey, RSAKey
from pymongo.asynchronous.database import AsyncDatabase

from fhirgoal.auth.keys import KeyRing, encryption_key
from fhirgoal.config import Settings

COLLECTION = "evidence_keys"
ALGORITHM = "RS256"
JWKS_PATH = "/evidence/jwks"


def jwks_url(fhir_base: str) -> str:
    """Where the document keys are published, from the configured FHIR base (never a Host)."""
    root = fhir_base[: -len("/fhir")] if fhir_base.endswith("/fhir") else fhir_base
    return f"{root}{JWKS_PATH}"


class DocumentKeys:
    """The signing key, made on first use: a server that never signs a document needs no key
    (nor a key file in its data directory)."""

    def __init__(self, settings: Settings, database: AsyncDatabase[dict[str, Any]]) -> None:
        self.settings = settings
        self.database = database
        self._ring: KeyRing | None = None
        self._lock = asyncio.Lock()

    async def signing_key(self) -> RSAKey | ECKey:
        if self._ring is None:
            async with self._lock:
                if self._ring is None:
                    kek = encryption_key(self.settings.key_encryption_key, self.settings.data_dir)
                    ring = KeyRing(self.database, kek, ALGORITHM, COLLECTION)
                    await ring.ensure()
                    self._ring = ring
        return await self._ring.signing_key()


async def published_jwks(database: AsyncDatabase[dict[str, Any]]) -> dict[str, Any]:
    """Every document key's public JWK, oldest first (only public halves are read)."""
    cursor = database[COLLECTION].find({}, {"public": 1}, sort=[("created", 1)])
    return {"keys": [doc["public"] async for doc in cursor if "public" in doc]}
