"""What every outbound connection shares: a FHIR server fhirgoal calls as a SMART Backend Services
client (https://hl7.org/fhir/smart-app-launch/backend-services.html, exchange/backend_auth.py).

A connection has a role: an EHR fhirgoal syncs with (exchange/connections.py) or a payer it
submits attachments to (evidence/payers/connections.py). Each role keeps its connections in its
own collection, one document per connection named by the connection's name, and adds its own
fields; what they share is here:

- the server's base URL, the client id the server registered fhirgoal under, the `system/` scopes
  to ask for and, optionally, the token endpoint (else discovered from
  `<base>/.well-known/smart-configuration`);
- a signing key, RS384 or ES384 (the pair SMART requires servers to accept), made here or given
  as PEM. The private key is sealed at rest exactly as the authorization server's keys are
  (auth/keys.py: AES-256-GCM under FHIRGOAL_KEY_ENCRYPTION_KEY or the data directory's key
  file), with the role and the connection's name as associated data, so that a sealed key moved
  to another connection (or role) does not open. Only the public JWK is kept in the clear: it is
  what the server's administrator registers. Nothing prints the private key.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, ClassVar, Generic, Self, TypeVar

from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from fhirgoal.auth.keys import generate_key, import_key, seal, unseal
from fhirgoal.core.errors import FhirgoalError

ALGORITHMS = ("ES384", "RS384")


class BackendConnectionError(FhirgoalError, ValueError):
    """A connection that cannot be added or used; the message says why."""


@dataclass(frozen=True, kw_only=True)
class BackendConnection:
    # The role, as the outbox destinations and the sealed keys name it ("EhrConnection",
    # "ehr-connection/<name>").
    kind: ClassVar[str] = "Connection"
    sealing: ClassVar[str] = "connection"

    name: str
    base: str  # the server's FHIR base URL
    client_id: str
    scopes: str
    alg: str
    public_jwk: dict[str, Any]
    token_url: str | None = None  # None: discovered from the base's smart-configuration
    created: datetime | None = None
    sealed: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def dest(self) -> str:
        """The outbox destination of this connection's items."""
        return f"{self.kind}/{self.name}"

    @property
    def aad(self) -> str:
        return f"{self.sealing}/{self.name}"

    def public_jwks(self) -> dict[str, Any]:
        return {"keys": [self.public_jwk]}

    def private_key(self, kek: bytes) -> RSAKey | ECKey:
        return import_key(unseal(self.sealed, self.aad, kek))

    @classmethod
    def own_fields(cls) -> list[str]:
        """The names of the role's own fields (stored beside the shared ones)."""
        shared = {f.name for f in dataclasses.fields(BackendConnection)}
        return [f.name for f in dataclasses.fields(cls) if f.name not in shared]

    @classmethod
    def restore(cls, shared: dict[str, Any], stored: dict[str, Any]) -> Self:
        """A connection from its stored document: the shared fields, and the role's own as
        stored (a field added since the document was written takes its default)."""
        return cls(**shared, **{name: stored[name] for name in cls.own_fields() if name in stored})


def new_key(alg: str) -> RSAKey | ECKey:
    if alg not in ALGORITHMS:
        raise BackendConnectionError(f"the key algorithm must be one of {', '.join(ALGORITHMS)}")
    return generate_key(alg)


def key_from_pem(pem: bytes) -> RSAKey | ECKey:
    """A private key given as PEM: RSA (RS384) or EC P-384 (ES384), its kid the RFC 7638
    thumbprint."""
    key: RSAKey | ECKey | None = None
    for kind in (RSAKey, ECKey):
        try:
            key = kind.import_key(pem)
            break
        except (JoseError, ValueError, TypeError):
            continue
    if key is None:
        raise BackendConnectionError("the key file is not an RSA or EC private key in PEM")
    alg = "RS384"
    if isinstance(key, ECKey):
        if key.as_dict(private=False).get("crv") != "P-384":
            raise BackendConnectionError("an EC key must be on P-384 (ES384)")
        alg = "ES384"
    if not key.is_private:
        raise BackendConnectionError("the key file holds a public key: give the private key")
    jwk = {**key.as_dict(private=True), "alg": alg, "use": "sig", "kid": key.thumbprint()}
    return import_key(jwk)


def key_algorithm(key: RSAKey | ECKey) -> str:
    """The key's own `alg`, else RS384 for RSA and ES384 for EC."""
    return str(key.alg or ("RS384" if key.as_dict(private=False)["kty"] == "RSA" else "ES384"))


C = TypeVar("C", bound=BackendConnection)


class BackendConnectionStore(Generic[C]):
    """The connections of one role (`kind`, a BackendConnection class), in their collection.
    Other fields a role keeps in the same documents (an EHR's pull progress) are left alone."""

    def __init__(
        self, db: AsyncDatabase[dict[str, Any]], collection: str, kind: type[C], role: str
    ) -> None:
        self.collection = db[collection]
        self.kind = kind
        self.role = role  # for messages: "EHR", "payer"

    def document(self, connection: C, key: RSAKey | ECKey, kek: bytes) -> dict[str, Any]:
        private = key.as_dict(private=True)
        private.setdefault("kid", key.kid or key.thumbprint())
        public = import_key(private).as_dict(private=False)
        public.update({"alg": connection.alg, "use": "sig", "kid": private["kid"]})
        own = {}
        for name in connection.own_fields():
            value = getattr(connection, name)
            own[name] = list(value) if isinstance(value, tuple) else value
        return {
            **own,
            "_id": connection.name,
            "base": connection.base.rstrip("/"),
            "client_id": connection.client_id,
            "scopes": connection.scopes,
            "alg": connection.alg,
            "token_url": connection.token_url,
            "public": public,
            "sealed": seal(private, connection.aad, kek),
            "created": datetime.now(UTC),
        }

    def connection(self, doc: dict[str, Any]) -> C:
        shared = {
            "name": doc["_id"],
            "base": doc["base"],
            "client_id": doc["client_id"],
            "scopes": doc["scopes"],
            "alg": doc["alg"],
            "public_jwk": doc["public"],
            "token_url": doc.get("token_url"),
            "created": doc.get("created"),
            "sealed": doc["sealed"],
        }
        return self.kind.restore(shared, doc)

    async def add(self, connection: C, key: RSAKey | ECKey, kek: bytes) -> None:
        try:
            await self.collection.insert_one(self.document(connection, key, kek))
        except DuplicateKeyError:
            raise BackendConnectionError(
                f"a {self.role} connection named {connection.name!r} exists"
            ) from None

    async def list(self) -> list[C]:
        return [self.connection(doc) async for doc in self.collection.find({}).sort("_id", 1)]

    async def get(self, name: str) -> C | None:
        doc = await self.collection.find_one({"_id": name})
        return self.connection(doc) if doc else None

    async def remove(self, name: str) -> bool:
        result = await self.collection.delete_one({"_id": name})
        return result.deleted_count == 1
