"""EHR connections: where an EHR is, how fhirgoal authenticates to it, what goes each way.

One document per connection in the `ehr_connections` collection, named by the connection's name.
fhirgoal is a SMART Backend Services client of the EHR
(https://hl7.org/fhir/smart-app-launch/backend-services.html, exchange/backend_auth.py): the
connection keeps its client id, its `system/` scopes and its signing key, as every connection
does (exchange/backend_connections.py: the key sealed at rest, only the public JWK in the clear,
which is what `fhirgoal ehr add` hands the EHR's administrator). The store keeps each
connection's pull progress in the same document.

What goes out (`send`) is a set of kinds (OUTBOUND_KINDS), what comes in (`pull`) a list of
resource types, both per connection; the defaults follow issue 15's ownership: the EHR owns
demographics, encounters, conditions and the care plan, fhirgoal owns GAS scales, ratings and
measures, both edit goals. A connection marked `subscribe` also has the EHR notify fhirgoal of
changes (push in: exchange/ehr_subscribe.py, ehr_push.py), which needs SUBSCRIPTION_SCOPE.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, ClassVar, Self

from pymongo.asynchronous.database import AsyncDatabase

from fhirgoal.exchange.backend_connections import (
    ALGORITHMS,
    BackendConnection,
    BackendConnectionError,
    BackendConnectionStore,
    key_from_pem,
    new_key,
)

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
# The errors of EHR connections are those of any connection (exchange/backend_connections.py).
EhrConnectionError = BackendConnectionError
# What a connection that subscribes (exchange/ehr_subscribe.py) needs besides: it writes its
# Subscriptions at the EHR.
SUBSCRIPTION_SCOPE = "system/Subscription.cruds"


@dataclass(frozen=True, kw_only=True)
class EhrConnection(BackendConnection):
    kind: ClassVar[str] = "EhrConnection"
    sealing: ClassVar[str] = "ehr-connection"

    send: tuple[str, ...] = DEFAULT_SEND
    pull: tuple[str, ...] = PULL_TYPES
    mapping: str | None = None  # a mapping directory (exchange/dialect.py), None: identity
    # Patients are matched by identifiers of this system only (the EHR's MRN, say); None: any
    patient_system: str | None = None
    # How many patients' records are pulled at once (exchange/ehr_bulk.py): None, searches only;
    # "patient", Patient/$export narrowed by `patient`; "Group/<id>", that Group's $export
    bulk_export: str | None = None
    # The EHR notifies fhirgoal of changes (a Subscription there, exchange/ehr_subscribe.py)
    subscribe: bool = False
    # What a clinician's request causes goes with their own token when the EHR accepts it
    # (exchange/user_tokens.py): its `aud` names this connection's base, or its `iss` is
    # `user_token_issuer` (an EHR that takes its issuer's tokens whatever their audience).
    user_tokens: bool = True
    user_token_issuer: str | None = None

    @classmethod
    def restore(cls, shared: dict[str, Any], stored: dict[str, Any]) -> Self:
        return cls(
            **shared,
            send=tuple(stored.get("send") or DEFAULT_SEND),
            pull=tuple(stored.get("pull") or PULL_TYPES),
            mapping=stored.get("mapping"),
            patient_system=stored.get("patient_system"),
            bulk_export=stored.get("bulk_export"),
            subscribe=bool(stored.get("subscribe")),
            user_tokens=bool(stored.get("user_tokens", True)),
            user_token_issuer=stored.get("user_token_issuer"),
        )

    def sends(self) -> dict[str, frozenset[tuple[str, str]]]:
        """Per resource type, the codes that go (an empty set: every resource of the type)."""
        out: dict[str, set[tuple[str, str]]] = {}
        for kind in self.send:
            rt, codes = OUTBOUND_KINDS[kind]
            out.setdefault(rt, set()).update(codes)
        return {rt: frozenset(codes) for rt, codes in out.items()}


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


def check_bulk_export(value: str | None) -> None:
    """A connection's bulk setting: None, "patient" or "Group/<id>"."""
    if value is None or value == "patient":
        return
    kind, _, gid = value.partition("/")
    if kind != "Group" or not gid or not all(c.isalnum() or c in "-." for c in gid):
        raise EhrConnectionError('--bulk must be "patient" or "Group/<id>"')


class ConnectionStore(BackendConnectionStore[EhrConnection]):
    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        super().__init__(db, COLLECTION, EhrConnection, "EHR")

    async def set_subscribe(self, name: str, subscribe: bool, scopes: str) -> bool:
        """Mark the connection as subscribing (or not) with `scopes`; False: no such one."""
        result = await self.collection.update_one(
            {"_id": name}, {"$set": {"subscribe": subscribe, "scopes": scopes}}
        )
        return result.matched_count == 1

    # ---- deliveries made with a user's token (exchange/user_tokens.py) ----------------------
    async def count_user_delivery(self, name: str, as_user: bool) -> None:
        """One more delivery sent with a user's token (`as_user`), or one that held a user's
        token but went with the backend token (expired, refused)."""
        field = "as_user.sent" if as_user else "as_user.fell_back"
        await self.collection.update_one({"_id": name}, {"$inc": {field: 1}})

    async def user_delivery_report(self, name: str) -> dict[str, int]:
        doc = await self.collection.find_one({"_id": name}, {"as_user": 1})
        counts = (doc or {}).get("as_user") or {}
        return {"sent": int(counts.get("sent", 0)), "fell_back": int(counts.get("fell_back", 0))}

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


__all__ = [
    "ALGORITHMS",
    "ConnectionStore",
    "EhrConnection",
    "EhrConnectionError",
    "check_bulk_export",
    "check_choices",
    "key_from_pem",
    "new_key",
]
