"""Canonical resources the server holds, found by canonical url: Questionnaires, and the
ValueSets and CodeSystems whose weights a QuestionnaireResponse's answers need.

R4 canonical references (https://hl7.org/fhir/R4/references.html#canonical): `url` or
`url|version`; the `url` and `version` search parameters find them. When several match (no
version given, or several copies), an `active` one is preferred, then the newest. Reads go through
the FhirService with the caller's access, like every other read.

SDC weights (clinical/weights.py) may live in a ValueSet named by an item's `answerValueSet` or in
the CodeSystem of the answer's system; `held_terminology` looks up only what a response's coded
answers still lack a weight for, and only when the Questionnaire's expressions use weights, so a
form scored from its answerOptions costs no lookup at all.
"""

from __future__ import annotations

from typing import Any

from fhirgoal.clinical.sdc import CompiledQuestionnaire
from fhirgoal.clinical.weights import Terminology
from fhirgoal.core.access import AccessContext
from fhirgoal.core.fields import NEWEST_FIRST
from fhirgoal.fhir.service import FhirService

MATCHES = 20


async def find_canonical(
    svc: FhirService, access: AccessContext, resource_type: str, canonical: str
) -> dict[str, Any] | None:
    """The resource of this type the canonical names, or None when the server holds none."""
    url, _, wanted = canonical.partition("|")
    params = [("url", url)] + ([("version", wanted)] if wanted else [])
    found = await svc.find_resources(access, resource_type, params, MATCHES, NEWEST_FIRST)
    resources = [v.resource for v in found if v.resource is not None]
    active = [r for r in resources if r.get("status") == "active"]
    chosen = active or resources
    return chosen[0] if chosen else None


async def held_terminology(
    svc: FhirService,
    access: AccessContext,
    cq: CompiledQuestionnaire,
    response: dict[str, Any],
) -> Terminology:
    """The ValueSets, then the CodeSystems, the server holds that `response` needs weights from."""
    held = Terminology()
    # Two rounds: a CodeSystem is wanted only once the answer's ValueSet gave no weight.
    for _ in range(2):
        value_sets, systems = cq.unresolved(response, held)
        if not value_sets and not systems:
            break
        for canonical in sorted(value_sets):
            found = await find_canonical(svc, access, "ValueSet", canonical)
            if found is None:
                held.not_held.add(canonical)
            else:
                held.value_sets[canonical] = found
        for system in sorted(systems):
            found = await find_canonical(svc, access, "CodeSystem", system)
            if found is None:
                held.not_held.add(system)
            else:
                held.code_systems[system] = found
    return held
