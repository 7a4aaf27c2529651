"""The per-request access context built from a token (the value itself: core/access.py).

SMART App Launch 2.2, scopes and launch context:
https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html

A context is built once per token from its scopes, its `patient` and its `fhirUser`. Deny by
default: an interaction on a type is allowed only when a scope names that type (or `*`) and that
letter (c r u d s). What the scope then allows is a *condition* on the stored document:

- `patient/` scopes: the patient's compartment, `{fields.COMPARTMENT: "Patient/<id>"}` (the compartment is
  computed at write time for every resource, a Patient included in its own);
- `user/` scopes: under FHIRGOAL_USER_ACCESS=caseload, on the types that have a patient
  compartment, the user's caseload (auth/caseload.py): `{fields.COMPARTMENT: {"$in": [...patients, []]}}`,
  i.e. in one of those patients' compartments or in none; under `all`, no condition;
- `system/` scopes: no condition (the client's own reach);
- granular v2 parameters (`?category=survey`): their search filter, compiled by the search
  compiler, added to the scope's condition.

A practitioner's token under `caseload` whose launch patient is outside the caseload gets nothing
from its `patient/` scopes either (an EHR launch or a picker choice cannot widen the caseload).

Several scopes for the same type and letter are ORed. `constrain` is the hot path: a dict lookup
and a dict merge. Reads outside the condition simply find nothing (404, never a hint that the
resource exists); a write whose new content falls outside is refused with 403 (`permits`).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fhirgoal.auth.scopes import Scopes
from fhirgoal.core import fields
from fhirgoal.core.access import AccessContext, Caseload, Grant, merge

# Compiles the search parameters of a granular scope into a filter for one type; raises
# ValueError when it cannot (then the scope grants nothing).
ParamCompiler = Callable[[str, tuple[tuple[str, str], ...]], dict[str, Any]]


def build_context(
    scopes: Scopes,
    *,
    subject: str,
    client_id: str | None,
    patient: str | None,
    fhir_user: str | None,
    compile_params: ParamCompiler | None,
    caseload: Caseload | None = None,
    patient_types: frozenset[str] = frozenset(),
) -> AccessContext:
    """The context a token's scopes and launch context give. Unusable scopes grant nothing.

    `caseload`: the user's, when the caseload policy applies to this token (`needs_caseload`)."""
    grants: list[Grant] = []
    for scope in scopes.resources:
        condition: dict[str, Any] = {}
        if scope.context == "patient":
            if not patient:
                continue  # a patient scope without a patient in context reaches nobody
            condition[fields.COMPARTMENT] = f"Patient/{patient}"
            if (
                caseload is not None
                and _practitioner(fhir_user)
                and condition[fields.COMPARTMENT] not in caseload.patients
            ):
                # a practitioner's launch outside their caseload finds nothing (as if the
                # patient's data did not exist, like any out-of-reach resource)
                condition[fields.COMPARTMENT] = {"$in": []}
        if scope.params:
            if scope.resource_type == "*" or compile_params is None:
                continue
            try:
                condition = merge(condition, compile_params(scope.resource_type, scope.params))
            except ValueError:
                continue
        confined = caseload if scope.context == "user" else None
        grants.append(Grant(scope.resource_type, scope, condition, confined))
    return AccessContext(
        subject=subject,
        client_id=client_id,
        patient=patient,
        fhir_user=fhir_user,
        scope=scopes.text,
        grants=tuple(grants),
        patient_types=patient_types,
        caseload=caseload,
    )


def local_user(fhir_user: str | None) -> str | None:
    """'Practitioner/123' from a relative or absolute `fhirUser` URL."""
    if not fhir_user:
        return None
    parts = fhir_user.rstrip("/").split("/")
    if len(parts) < 2 or not parts[-2][:1].isupper() or not parts[-1]:
        return None
    return f"{parts[-2]}/{parts[-1]}"


def _practitioner(fhir_user: str | None) -> bool:
    user = local_user(fhir_user)
    return user is not None and user.startswith("Practitioner/")


def needs_caseload(scopes: Scopes, fhir_user: str | None) -> bool:
    """Does the caseload policy bear on this token: it has `user/` scopes, or it is a
    practitioner's token with `patient/` scopes (whose launch patient must be in the caseload)."""
    contexts = {scope.context for scope in scopes.resources}
    if "user" in contexts:
        return True
    return "patient" in contexts and _practitioner(fhir_user)
