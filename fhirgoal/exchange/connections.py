"""EHR connections: where an EHR is, how fhirgoal authenticates to it, what goes each way.

One document per connection in the `ehr_connections` collection, named by the connection's name.
fhirgoal is a SMART Backend Services client of the EHR
(https://hl7.org/fhir/smart-app-launch/backend-services.html, exchange/backend_auth.py): the
connection keeps its client id, its `system/` scopes and its signing key. The private key is
sealed at rest exactly as the authorization server's keys are (auth/keys.py: AES-256-GCM under
FHIRGOAL_KEY_ENCRYPTION_KEY or the data directory's key file, the record's name as associated
data); only the public JWK is kept in the clear, and it is what `fhirgoal ehr add` hands the
EHR's administrator. Nothing prints the private key.

What goes out (`send`) is a set of kinds (OUTBOUND_KINDS), what comes in (`pull`) a list of
resource types, both per connection; the defaults follow issue 15's ownership: the EHR owns
demographics, encounters, conditions and the care plan, fhirgoal owns GAS scales, ratings and
measures, both edit goals. A connection marked `subscribe` also has the EHR notify fhirgoal of
changes (push in: exchange/ehr_subscribe.py, ehr_push.py), which needs SUBSCRIPTION_SCOPE.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from joserfc.errors import JoseError
from joserfc.jwk import ECKey, RSAKey
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from fhirgoal.auth.keys import generate_key, import_key, seal, unseal
from fhirgoal.core.errors import FhirgoalError

COLLECTION = "ehr_connections"

# What fhirgoal sends, by kind: the resource type and, for Observations, the codes that make one
# of that kind ((system, code) pairs, any of them). Flags raised by the sync itself (conflicts,
# exchange/conflicts.py) concern the connection, not the client's course: they stay here.
LOINC = "http://loinc.org"
MEASURES = "https://fhirgoal.org/fhir/CodeSystem/fhirgoal-measures"
OUTBOUND_KINDS: dict[str, tuple[str, frozenset[tuple[str, str]]]] = {
    "goal": ("Goal", frozenset()),
    # PCO GAS ratings: baseline (published STU1 and IG-source codes) and follow-ups
    "gas-rating": (
        "Observation",
        frozenset((LOINC, c) for c in ("112296-9", "107332-9", "107333-7", "107334-5", "107331-1")),
    ),
    "gas-tscore": ("Observation", frozenset({(MEASURES, "gas-tscore")})),
    "ors": ("Observation", frozenset({(MEASURES, "ors-total"), (MEASURES, "cors-total")})),
    "srs": ("Observation", frozenset({(MEASURES, "srs-total"), (MEASURES, "csrs-total")})),
    "phq9": ("Observation", frozenset({(LOINC, "44261-6")})),
    "gad7": ("Observation", frozenset({(LOINC, "70274-6")})),
    "flag": ("Flag", frozenset()),
}
DEFAULT_SEND = tuple(OUTBOUND_KINDS)
# Pulled in this order, so that what a resource references is usually linked before it.
PULL_TYPES = ("Patient", "Encounter", "Condition", "Goal", "CarePlan")
# `d` on what fhirgoal sends: its deletions reach the EHR's copies (exchange/ehr_deletions.py)
DEFAULT_SCOPES = (
    "system/Patient.rs system/Encounter.rs system/Condition.rs system/CarePlan.rs "
    "system/Goal.cruds system/Observation.cruds system/Flag.cruds"
)
# What a connection that subscribes (exchange/ehr_subscribe.py) needs besides: it writes its
# Subscriptions at the EHR.
SUBSCRIPTION_SCOPE = "system/Subscription.cruds"
ALGORITHMS = ("ES384", "RS384")


class EhrConnectionError(FhirgoalError, ValueError):
    """A connection that cannot be added or used; the message says why."""


@dataclass(frozen=True)
class EhrConnection:
    name: str
    base: str  # the EHR's FHIR base URL
    client_id: str
    scopes: str
    alg: str
    public_jwk: dict[str, Any]
    send: tuple[str, ...] = DEFAULT_SEND
    pull: tuple[str, ...] = PULL_TYPES
    mapping: str | None = None  # a mapping directory (exchange/dialect.py), None: identity
    # Patients are matched by identifiers of this system only (the EHR's MRN, say); None: any
    patient_system: str | None = None
    # The EHR notifies fhirgoal of changes (a Subscription there, exchange/ehr_subscribe.py)
    subscribe: bool = False
    created: datetime | None = None
    sealed: dict[str, str] = field(default_factory=dict, repr=False)

    @property
    def dest(self) -> str:
        """The outbox destination of this connection's items."""
        return f"EhrConnection/{self.name}"

    def public_jwks(self) -> dict[str, Any]:
        return {"keys": [self.public_jwk]}

    def private_key(self, kek: bytes) -> RSAKey | ECKey:
        return import_key(unseal(self.sealed, _aad(self.name), kek))

    def sends(self) -> dict[str, frozenset[tuple[str, str]]]:
        """Per resource type, the codes that go (an empty set: every resource of the type)."""
        out: dict[str, set[tuple[str, str]]] = {}
        for kind in self.send:
            rt, codes = OUTBOUND_KINDS[kind]
            out.setdefault(rt, set()).update(codes)
        return {rt: frozenset(codes) for rt, codes in out.items()}


def _aad(name: str) -> str:
    return f"ehr-connection/{name}"


def new_key(alg: str) -> RSAKey | ECKey:
    if alg not in ALGORITHMS:
        raise EhrConnectionError(f"the key algorithm must be one of {', '.join(ALGORITHMS)}")
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
        raise EhrConnectionError("the key file is not an RSA or EC private key in PEM")
    alg = "RS384"
    if isinstance(key, ECKey):
        if key.as_dict(private=False).get("crv") != "P-384":
            raise EhrConnectionError("an EC key must be on P-384 (ES384)")
        alg = "ES384"
    if not key.is_private:
        raise EhrConnectionError("the key file holds a public key: give the private key")
    jwk = {**key.as_dict(private=True), "alg": alg, "use": "sig", "kid": key.thumbprint()}
    return import_key(jwk)


def connection_document(
    connection: EhrConnection, key: RSAKey | ECKey, kek: bytes
) -> dict[str, Any]:
    private = key.as_dict(private=True)
    private.setdefault("kid", key.kid or key.thumbprint())
    public = import_key(private).as_dict(private=False)
    public.update({"alg": connection.alg, "use": "sig", "kid": private["kid"]})
    return {
        "_id": connection.name,
        "base": connection.base.rstrip("/"),
        "client_id": connection.client_id,
        "scopes": connection.scopes,
        "alg": connection.alg,
        "public": public,
        "sealed": seal(private, _aad(connection.name), kek),
        "send": list(connection.send),
        "pull": list(connection.pull),
        "mapping": connection.mapping,
        "patient_system": connection.patient_system,
        "subscribe": connection.subscribe,
        "created": datetime.now(UTC),
    }


def _connection(doc: dict[str, Any]) -> EhrConnection:
    return EhrConnection(
        name=doc["_id"],
        base=doc["base"],
        client_id=doc["client_id"],
        scopes=doc["scopes"],
        alg=doc["alg"],
        public_jwk=doc["public"],
        send=tuple(doc.get("send") or DEFAULT_SEND),
        pull=tuple(doc.get("pull") or PULL_TYPES),
        mapping=doc.get("mapping"),
        patient_system=doc.get("patient_system"),
        subscribe=bool(doc.get("subscribe")),
        created=doc.get("created"),
        sealed=doc["sealed"],
    )


def check_choices(send: list[str], pull: list[str]) -> None:
    unknown = [k for k in send if k not in OUTBOUND_KINDS]
    if unknown:
        raise EhrConnectionError(
            f"unknown kind(s) to send: {', '.join(unknown)} (known: {', '.join(OUTBOUND_KINDS)})"
        )
    unknown = [t for t in pull if t not in PULL_TYPES]
    if unknown:
        raise EhrConnectionError(
            f"unknown type(s) to pull: {', '.join(unknown)} (known: {', '.join(PULL_TYPES)})"
        )


class ConnectionStore:
    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self.collection = db[COLLECTION]

    async def add(self, connection: EhrConnection, key: RSAKey | ECKey, kek: bytes) -> None:
        try:
            await self.collection.insert_one(connection_document(connection, key, kek))
        except DuplicateKeyError:
            raise EhrConnectionError(f"a connection named {connection.name!r} exists") from None

    async def list(self) -> list[EhrConnection]:
        return [_connection(doc) async for doc in self.collection.find({}).sort("_id", 1)]

    async def get(self, name: str) -> EhrConnection | None:
        doc = await self.collection.find_one({"_id": name})
        return _connection(doc) if doc else None

    async def set_subscribe(self, name: str, subscribe: bool, scopes: str) -> bool:
        """Mark the connection as subscribing (or not) with `scopes`; False: no such one."""
        result = await self.collection.update_one(
            {"_id": name}, {"$set": {"subscribe": subscribe, "scopes": scopes}}
        )
        return result.matched_count == 1

    async def remove(self, name: str) -> bool:
        result = await self.collection.delete_one({"_id": name})
        return result.deleted_count == 1

    # ---- pull progress ---------------------------------------------------------------------
    async def cursors(self, name: str) -> dict[str, str]:
        """Per pulled type, the EHR's `meta.lastUpdated` the last pull reached."""
        doc = await self.collection.find_one({"_id": name}, {"pulled": 1})
        return dict((doc or {}).get("pulled") or {})

    async def pulled(
        self, name: str, cursors: dict[str, str], error: str | None, at: datetime
    ) -> None:
        update: dict[str, Any] = {f"pulled.{rt}": value for rt, value in cursors.items()}
        update["last_pull"] = at
        update["pull_error"] = error
        await self.collection.update_one({"_id": name}, {"$set": update})

    async def pull_report(self, name: str) -> dict[str, Any]:
        doc = await self.collection.find_one(
            {"_id": name}, {"pulled": 1, "last_pull": 1, "pull_error": 1}
        )
        return dict(doc or {})
