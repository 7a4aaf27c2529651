"""Per-request access context, applied by the repository so that no route can forget it.

SMART App Launch 2.2, scopes and launch context:
https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html

A context is built once per token from its scopes, its `patient` and its `fhirUser`. Deny by
default: an interaction on a type is allowed only when a scope names that type (or `*`) and that
letter (c r u d s). What the scope then allows is a *condition* on the stored document:

- `patient/` scopes: the patient's compartment, `{"comp": "Patient/<id>"}` (the compartment is
  computed at write time for every resource, a Patient included in its own);
- `user/` and `system/` scopes: no condition (the user's or client's own reach); a practitioner
  user's reach is what their registration's scopes allow;
- granular v2 parameters (`?category=survey`): their search filter, compiled by the search
  compiler, added to the scope's condition.

Several scopes for the same type and letter are ORed. `constrain` is the hot path: a dict lookup
and a dict merge. Reads outside the condition simply find nothing (404, never a hint that the
resource exists); a write whose new content falls outside is refused with 403 (`permits`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from fhirgoal.auth.scopes import ResourceScope, Scopes

# Interactions in SMART v2 letters: c(reate) r(ead) u(pdate) d(elete) s(earch).
INTERACTIONS = frozenset("cruds")
# Written by the server only: no create, update, delete or patch through the API for any caller,
# an unrestricted one included (the server stores its AuditEvents through the append log, never
# through a context). Issue 12: a client must not be able to plant backdated events.
SERVER_WRITTEN = frozenset({"AuditEvent"})

# Compiles the search parameters of a granular scope into a filter for one type; raises
# ValueError when it cannot (then the scope grants nothing).
ParamCompiler = Callable[[str, tuple[tuple[str, str], ...]], dict[str, Any]]


@dataclass(frozen=True, slots=True)
class Grant:
    """One scope, resolved: the types and letters it opens, and the condition it imposes."""

    resource_type: str  # a type, or "*"
    scope: ResourceScope
    condition: dict[str, Any]


def _forbidden(diagnostics: str) -> Exception:
    from fhirgoal.fhir.errors import FhirError

    # RFC 6750 section 3.1: a token that lacks the needed scope is answered 403 insufficient_scope
    challenge = 'Bearer realm="fhirgoal", error="insufficient_scope"'
    return FhirError("forbidden", diagnostics, headers={"WWW-Authenticate": challenge})


def merge(query: dict[str, Any], condition: dict[str, Any]) -> dict[str, Any]:
    """`query` AND `condition`: a plain dict merge unless both name the same key."""
    if not condition:
        return query
    if query.keys() & condition.keys():
        return {"$and": [query, condition]}
    return {**query, **condition}


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
                g.condition for g in self.grants if g.scope.applies_to(resource_type, interaction)
            ]
            if not conditions:
                found = None
            elif any(not c for c in conditions):
                found = {}
            elif len(conditions) == 1:
                found = conditions[0]
            else:
                found = {"$or": conditions}
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
            from fhirgoal.fhir.errors import FhirError

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
        condition = self.condition(resource_type, interaction)
        return condition is not None and matches(document, condition)


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


def build_context(
    scopes: Scopes,
    *,
    subject: str,
    client_id: str | None,
    patient: str | None,
    fhir_user: str | None,
    compile_params: ParamCompiler | None,
) -> AccessContext:
    """The context a token's scopes and launch context give. Unusable scopes grant nothing."""
    grants: list[Grant] = []
    for scope in scopes.resources:
        condition: dict[str, Any] = {}
        if scope.context == "patient":
            if not patient:
                continue  # a patient scope without a patient in context reaches nobody
            condition["comp"] = f"Patient/{patient}"
        if scope.params:
            if scope.resource_type == "*" or compile_params is None:
                continue
            try:
                condition = merge(condition, compile_params(scope.resource_type, scope.params))
            except ValueError:
                continue
        grants.append(Grant(scope.resource_type, scope, condition))
    return AccessContext(
        subject=subject,
        client_id=client_id,
        patient=patient,
        fhir_user=fhir_user,
        scope=scopes.text,
        grants=tuple(grants),
    )


UNRESTRICTED = AccessContext(subject="system", unrestricted=True)
