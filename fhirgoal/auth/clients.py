"""Registered OAuth clients, in MongoDB (`auth_clients`), administered with `fhirgoal client`.

SMART App Launch 2.2 client types (https://hl7.org/fhir/smart-app-launch/client-authentication.html):
a *confidential asymmetric* client authenticates with a JWT signed by its private key (its public
keys registered as a JWKS or a `jwks_url`); a *confidential symmetric* client with a secret sent
as HTTP Basic credentials (client_secret_basic, RFC 6749 section 2.3.1; only the secret's SHA-256
is stored: secrets are generated, 256 random bits, so a fast hash suffices and no stored value can
be presented); a *public* client (a browser app) has redirect URIs and proves possession of its
authorization code with PKCE only. A client is registered with the scopes
it may ever be granted; a request for more is cut down to those (RFC 6749 section 3.3).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from joserfc.jwk import KeySet
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from fhirgoal.auth.jwks import JwksCache, key_set
from fhirgoal.auth.scopes import Scopes, parse_scopes
from fhirgoal.core.errors import FhirgoalError

COLLECTION = "auth_clients"


class ClientExists(FhirgoalError):
    pass


@dataclass
class Client:
    client_id: str
    scopes: str
    jwks: dict[str, Any] | None = None
    jwks_url: str | None = None
    redirect_uris: list[str] = field(default_factory=list)
    revoked: bool = False
    created: datetime | None = None
    secret_hash: str | None = None  # hex SHA-256 of a client_secret_basic secret

    @property
    def allowed(self) -> Scopes:
        return parse_scopes(self.scopes)

    @property
    def asymmetric(self) -> bool:
        return self.jwks is not None or self.jwks_url is not None

    @property
    def confidential(self) -> bool:
        return self.asymmetric or self.secret_hash is not None

    def secret_matches(self, secret: str) -> bool:
        return self.secret_hash is not None and hmac.compare_digest(
            secret_digest(secret), self.secret_hash
        )

    def to_doc(self) -> dict[str, Any]:
        return {
            "_id": self.client_id,
            "scopes": self.scopes,
            "jwks": self.jwks,
            "jwks_url": self.jwks_url,
            "redirect_uris": self.redirect_uris,
            "revoked": self.revoked,
            "created": self.created or datetime.now(UTC),
            "secret_hash": self.secret_hash,
        }

    @classmethod
    def from_doc(cls, doc: dict[str, Any]) -> Client:
        return cls(
            client_id=doc["_id"],
            scopes=doc.get("scopes", ""),
            jwks=doc.get("jwks"),
            jwks_url=doc.get("jwks_url"),
            redirect_uris=list(doc.get("redirect_uris") or []),
            revoked=bool(doc.get("revoked")),
            created=doc.get("created"),
            secret_hash=doc.get("secret_hash"),
        )


def secret_digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_client_secret() -> str:
    """A client secret to hand to the client's administrator once (256 random bits)."""
    return secrets.token_urlsafe(32)


class ClientRegistry:
    def __init__(self, db: AsyncDatabase[dict[str, Any]], jwks_cache: JwksCache | None = None):
        self.collection = db[COLLECTION]
        self.jwks_cache = jwks_cache or JwksCache()

    async def register(self, client: Client) -> None:
        parse_scopes(client.scopes)  # refuse malformed scopes at registration, not at use
        if client.jwks is not None:
            key_set(client.jwks)
        try:
            await self.collection.insert_one(client.to_doc())
        except DuplicateKeyError:
            raise ClientExists(client.client_id) from None

    async def get(self, client_id: str) -> Client | None:
        """An active client; None when unknown or revoked."""
        doc = await self.collection.find_one({"_id": client_id})
        if doc is None or doc.get("revoked"):
            return None
        return Client.from_doc(doc)

    async def list(self) -> list[Client]:
        return [Client.from_doc(d) async for d in self.collection.find({}, sort=[("_id", 1)])]

    async def revoke(self, client_id: str) -> bool:
        result = await self.collection.update_one({"_id": client_id}, {"$set": {"revoked": True}})
        return result.matched_count == 1

    async def keys(self, client: Client, kid: str | None) -> KeySet:
        if client.jwks is not None:
            return key_set(client.jwks)
        assert client.jwks_url is not None
        return await self.jwks_cache.get(client.jwks_url, kid)
