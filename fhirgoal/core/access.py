"""The access context value: who is asking and what they may touch (the ground floor).

The repository applies it to every read and write, so that no route can forget it; it is built
from a token by auth/context.py (`build_context`), which says what each kind of scope allows.
This module holds only the value and the pure condition algebra it needs, so that store/ and
fhir/ can take a context without importing auth/.

A context maps a resource type and a SMART v2 letter (c r u d s) to a *condition* on the stored
document (None when denied). Several scopes for the same type and letter are ORed. `constrain`
is the hot path: a dict lookup and a dict merge. Reads outside the condition simply find nothing
(404, never a hint that the resource exists); a write whose new content falls outside is refused
with 403 (`permits`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from fhirgoal.core import fields
from fhirgoal.core.errors import FhirError

# Interactions in SMART v2 letters: c(reate) r(ead) u(pdate) d(elete) s(earch).
INTERACTIONS = frozenset("cruds")
# Not a deletion's tombstone (whose search index, `comp` included, is cleared).
LIVE = {"$ne": True}
# Written by the server only: no create, update, delete or patch through the API for any caller,
# an unrestricted one included (the server stores its AuditEvents through the append log, never
# through a context). Issue 12: a client must not be able to plant backdated events.
SERVER_WRITTEN = frozenset({"AuditEvent"})


class ScopeRule(Protocol):
    """What a grant needs of its scope (auth/scopes.py's ResourceScope)."""

    def applies_to(self, resource_type: str, interaction: str) -> bool: ...


@dataclass(frozen=True, eq=False)
class Caseload:
    """The patients ("Patient/id") one user reaches, and until when this answer is used."""

    patients: frozenset[str]
    expires: float  # time.monotonic()
    # the practitioner, their active PractitionerRoles and those roles' Organizations
    carers: frozenset[str] = frozenset()
    # the condition on a stored document of a compartment type: in one of the patients'
    # compartments, or in none (shared); tombstones, whose index is cleared, are left out
    condition: dict[str, Any] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        within: list[Any] = [*sorted(self.patients), []]
        object.__setattr__(
            self, "condition", {fields.COMPARTMENT: {"$in": within}, fields.DELETED: LIVE}
        )

    def holds(self, resource_type: str, document: dict[str, Any]) -> bool:
        """May a document (id + index fields) be written: every patient in its compartment is in
        the caseload, so that no second reference reaches into a patient outside it. A new
        Patient may be written when it names one of the carers as general practitioner (it
        joins the caseload when the caseload is next computed)."""
        outside = [p for p in document.get(fields.COMPARTMENT) or () if p not in self.patients]
        if not outside:
            return True
        if resource_type == "Patient" and outside == [f"Patient/{document.get('_id')}"]:
            refs = document.get(fields.REFERENCE) or ()
            return any(f"general-practitioner={carer}" in refs for carer in self.carers)
        return False

    @property
    def fresh(self) -> bool:
        return time.monotonic() < self.expires


@dataclass(frozen=True, slots=True)
class Grant:
    """One scope, resolved: the types and letters it opens, and the condition it imposes."""

    resource_type: str  # a type, or "*"
    scope: ScopeRule
    condition: dict[str, Any]
    # a `user/` scope under the caseload policy: its condition on the compartment types
    caseload: Caseload | None = None

    def condition_on(self, resource_type: str, patient_types: frozenset[str]) -> dict[str, Any]:
        if self.caseload is None or resource_type not in patient_types:
            return self.condition
        return merge(self.condition, self.caseload.condition)

    def permits(self, resource_type: str, document: dict[str, Any]) -> bool:
        if self.caseload is not None and not self.caseload.holds(resource_type, document):
            return False
        patient = self.condition.get(fields.COMPARTMENT)
        if isinstance(patient, str) and any(
            p != patient for p in document.get(fields.COMPARTMENT) or ()
        ):
            # A patient scope: what is written may be about that patient alone. A second
            # reference (an Observation of A whose performer is Patient/B) would put it in B's
            # record too, where B's own apps would find it.
            return False
        return matches(document, self.condition)


def _forbidden(diagnostics: str) -> Exception:
    # RFC 6750 section 3.1: a token that lacks the needed scope is answered 403 insufficient_scope
    challenge = 'Bearer realm="fhirgoal", error="insufficient_scope"'
    return FhirError("forbidden", diagnostics, headers={"WWW-Authenticate": challenge})


def merge(query: dict[str, Any], condition: dict[str, Any]) -> dict[str, Any]:
    """`query` AND `condition`: a plain dict merge unless both test the same key differently.

    Two compartment tests (a compartment search under a patient scope or a caseload) become
    their intersection, still one indexable test: an `$and` of both would make the database
    check one while it scans for the other (store/planner.py)."""
    if not condition:
        return query
    overlap = query.keys() & condition.keys()
    merged = {**query, **condition}
    for key in overlap:
        if query[key] == condition[key]:
            continue
        both = _both_within(query[key], condition[key]) if key == fields.COMPARTMENT else None
        if both is None:
            return {"$and": [query, condition]}
        merged[key] = both
    return merged


def _values(test: Any) -> list[Any] | None:
    if isinstance(test, str):
        return [test]
    if isinstance(test, dict) and set(test) == {"$in"}:
        return list(test["$in"])
    return None


def _both_within(first: Any, second: Any) -> Any:
    """The compartment test both tests pass (equality or `$in`), or None for other shapes."""
    a, b = _values(first), _values(second)
    if a is None or b is None:
        return None
    common = [value for value in a if value in b]
    return common[0] if len(common) == 1 and isinstance(common[0], str) else {"$in": common}


@dataclass(frozen=True, eq=False)
class AccessContext:
    """Who is asking and what they may touch."""

    subject: str = "anonymous"
    client_id: str | None = None
    unrestricted: bool = False
    patient: str | None = None  # the launch patient's id (no "Patient/")
    fhir_user: str | None = None  # "Practitioner/123"
    scope: str = ""
    grants: tuple[Grant, ...] = ()
    # types with a patient compartment, on which a caseload applies (the others are shared)
    patient_types: frozenset[str] = frozenset()
    # the caseload the `user/` grants were built on; the context is rebuilt once it is stale
    caseload: Caseload | None = None
    # (type, letter) -> the ORed conditions, or None when denied; filled on first use
    _conditions: dict[tuple[str, str], dict[str, Any] | None] = field(
        default_factory=dict, repr=False
    )

    def condition(self, resource_type: str, interaction: str) -> dict[str, Any] | None:
        """What a document must satisfy for this interaction; None when it is not allowed."""
        key = (resource_type, interaction)
        try:
            return self._conditions[key]
        except KeyError:
            pass
        found: dict[str, Any] | None
        if self.unrestricted:
            found = {}
        else:
            conditions = [
                g.condition_on(resource_type, self.patient_types)
                for g in self.grants
                if g.scope.applies_to(resource_type, interaction)
            ]
            if not conditions:
                found = None
            elif any(not c for c in conditions):
                found = {}
            else:
                found = any_of(conditions)
        self._conditions[key] = found
        return found

    def allows(self, resource_type: str, interaction: str) -> bool:
        if interaction in "cud" and resource_type in SERVER_WRITTEN:
            return False
        return self.condition(resource_type, interaction) is not None

    def sees_all(self, resource_type: str, interaction: str) -> bool:
        """True when the interaction is allowed on every resource of the type (no condition)."""
        return self.condition(resource_type, interaction) == {}

    def constrain(
        self, resource_type: str, interaction: str, query: dict[str, Any]
    ) -> dict[str, Any]:
        """Return `query` narrowed to what this context may see; raise FhirError when denied."""
        if interaction not in INTERACTIONS:
            raise ValueError(f"unknown interaction {interaction!r}")
        if interaction in "cud" and resource_type in SERVER_WRITTEN:
            raise FhirError(
                "method-not-allowed",
                f"{resource_type} is written by the server only: it cannot be created or changed",
            )
        condition = self.condition(resource_type, interaction)
        if condition is None:
            raise _forbidden(f"the token's scopes do not allow '{interaction}' on {resource_type}")
        return merge(query, condition) if condition else query

    def permits(self, resource_type: str, interaction: str, document: dict[str, Any]) -> bool:
        """Does a document about to be written (id + index fields) satisfy the condition?"""
        if self.unrestricted:
            return True
        return any(
            g.permits(resource_type, document)
            for g in self.grants
            if g.scope.applies_to(resource_type, interaction)
        )


def any_of(conditions: list[dict[str, Any]]) -> dict[str, Any]:
    """Conditions ORed. When each is only a compartment test (a patient scope's, a caseload's),
    the union is one `$in` on `comp`, which the database serves from its index; a top-level `$or`
    it would not (store/planner.py)."""
    if len(conditions) == 1:
        return conditions[0]
    within: set[str] = set()
    shared = live = False
    for condition in conditions:
        test = condition.get(fields.COMPARTMENT)
        if (
            set(condition) - {fields.COMPARTMENT, fields.DELETED}
            or condition.get(fields.DELETED, LIVE) != LIVE
        ):
            return {"$or": conditions}
        if isinstance(test, str):
            within.add(test)
        elif isinstance(test, dict) and set(test) == {"$in"}:
            within.update(v for v in test["$in"] if isinstance(v, str))
            shared = shared or [] in test["$in"]
        else:
            return {"$or": conditions}
        live = live or fields.DELETED in condition
    values: list[Any] = sorted(within)
    union: dict[str, Any] = {fields.COMPARTMENT: {"$in": [*values, []] if shared else values}}
    if live:
        union[fields.DELETED] = LIVE
    return union


def matches(document: dict[str, Any], condition: dict[str, Any]) -> bool:
    """Evaluate a scope condition against a document in memory (for writes).

    Only the shapes scope conditions take are understood: equality, `$in`, `$and`, `$or` and
    `$all` of `$elemMatch` equalities, on scalar or array fields. Anything else is refused (False):
    a granular scope whose filter cannot be checked here grants no writes.
    """
    for key, test in condition.items():
        if key == "$and":
            if not all(matches(document, part) for part in test):
                return False
        elif key == "$or":
            if not any(matches(document, part) for part in test):
                return False
        elif not _field_matches(document.get(key), test):
            return False
    return True


def _field_matches(value: Any, test: Any) -> bool:
    values = value if isinstance(value, list) else [value]
    if not isinstance(test, dict):
        return test in values
    for op, operand in test.items():
        if op == "$in":
            if not any(v in operand for v in values):
                return False
        elif op == "$eq":
            if operand not in values:
                return False
        elif op == "$all":
            if not all(_field_matches(value, part) for part in operand):
                return False
        elif op == "$elemMatch":
            if not any(_field_matches(v, operand) for v in values):
                return False
        else:
            return False
    return True


UNRESTRICTED = AccessContext(subject="system", unrestricted=True)
