"""`Patient/[id]/$everything`: one patient's record in one paged searchset.

https://hl7.org/fhir/R4/patient-operation-everything.html . The answer holds the patient and every
resource in its compartment (https://hl7.org/fhir/R4/compartmentdefinition-patient.html, the
vendored definition: adding a type there adds it here), as `match` entries ordered by type then id
and paged with a keyset cursor like any search across types (search/engine.py `across_types`).
The resources they reference that belong to no patient compartment (Practitioner, Organization,
Location, Medication, Questionnaire ...) come on the same page as `include` entries: another
patient's data is never pulled in by a reference.

Parameters (GET query or POST Parameters):
- `start` / `end`: the care dates. A type with a `date` search parameter (the R4 "clinical date":
  Observation, Encounter, CarePlan, Flag ...) keeps the resources whose date overlaps
  [start, end]; a type without one (Patient, Goal, Questionnaire responses by `authored`...) is
  not filtered by care date, since R4 names no date for it.
- `_since`: only resources changed at or after this instant (`_lastUpdated=ge`).
- `_type`: only these types (comma-separated; unknown types are a 400).
- `_count`: the page size (the server's default and maximum apply); `_cursor` continues a page.

Everything goes through the repository with the caller's AccessContext: a patient-scoped token
gets its own patient's record, a user sees what the caseload policy lets them see.
"""

from __future__ import annotations

import re
from typing import Any

from fhirgoal.core import fields
from fhirgoal.core.errors import FhirError
from fhirgoal.fhir import bundles
from fhirgoal.fhir.operations import Invocation, Operation, OperationRegistry
from fhirgoal.fhir.outcome import Outcome
from fhirgoal.fhir.search.query import CompiledSearch, encode_cursor
from fhirgoal.fhir.service import FhirService
from fhirgoal.store.repository import Version

DEFINITION = "http://hl7.org/fhir/OperationDefinition/Patient-everything"
PARAMETERS = {"start", "end", "_since", "_type", "_count", "_cursor"}
CARE_DATE = "date"  # the R4 common "clinical date" search parameter
MAX_REFERENCED = 1000  # referenced resources added to one page at the most
# A relative literal reference (https://hl7.org/fhir/R4/references.html#literal), version or not.
_RELATIVE = re.compile(r"^([A-Z][A-Za-z]{1,63})/([A-Za-z0-9\-.]{1,64})(?:/_history/[^/]+)?$")


def register(operations: OperationRegistry) -> None:
    operations.register(
        Operation("everything", "instance", "Patient", everything, definition=DEFINITION)
    )


async def everything(svc: FhirService, inv: Invocation) -> Outcome:
    params = inv.parameters
    params.reject_unknown(PARAMETERS)
    assert inv.id is not None
    await svc.read(inv.access, "Patient", inv.id)  # 404 / 410 / out of reach, as a read says
    compartment = f"Patient/{inv.id}"
    paging = [(name, p.text()) for name in ("_count", "_cursor") if (p := params.one(name))]
    since = params.one("_since")
    start, end = params.one("start"), params.one("end")
    window = [("_lastUpdated", f"ge{since.text()}")] if since else []
    care = [(CARE_DATE, f"ge{start.text()}")] if start else []
    care += [(CARE_DATE, f"le{end.text()}")] if end else []

    searches: list[tuple[str, CompiledSearch]] = []
    for rt in _types(svc, inv):
        dated = care if CARE_DATE in svc.registry.for_type(rt).params else []
        compiled = await svc.engine.compile(
            inv.access, rt, [*window, *dated, *paging], inv.base_url
        )
        compiled.filter = {"$and": [compiled.filter, {fields.COMPARTMENT: compartment}]}
        searches.append((rt, compiled))
    first = searches[0][1]
    matches, next_cursor = await svc.engine.across_types(
        inv.access, searches, first.count, first.cursor
    )
    included = await _referenced(svc, inv, matches)

    kept = [
        (name, p.text()) for name in ("start", "end", "_since", "_type") if (p := params.one(name))
    ]
    kept.append(("_count", str(first.count)))
    here = [("_cursor", encode_cursor(first.cursor))] if first.cursor else []
    links = {"self": kept + here}
    if next_cursor is not None:
        links["next"] = [*kept, ("_cursor", encode_cursor(next_cursor))]
    # The total is given when this one page holds everything (counting every type costs a query
    # per type on each page; R4 makes Bundle.total optional for $everything).
    total = len(matches) if first.cursor is None and next_cursor is None else None
    url = f"{inv.base_url}/{compartment}/$everything"
    return Outcome(
        200, body=bundles.searchset(inv.base_url, url, matches, total, links, [], included)
    )


def _types(svc: FhirService, inv: Invocation) -> list[str]:
    """The compartment's stored types (Patient included) the caller may search, or those of
    `_type` (a named type the caller may not search is refused by the search, as always)."""
    members = [
        t
        for t in sorted(svc.conformance.patient_compartment)
        if svc.conformance.is_stored(t) and svc.registry.for_type(t).compartment_params
    ]
    if "Patient" not in members:
        members = sorted([*members, "Patient"])
    requested = inv.parameters.one("_type")
    if requested is None:
        allowed = [t for t in members if inv.access.allows(t, "s")]
        return allowed or ["Patient"]
    wanted = {t.strip() for t in requested.text().split(",") if t.strip()}
    unknown = sorted(wanted - set(members))
    if unknown:
        raise FhirError(
            "bad-request",
            f"_type: not a type of the patient compartment: {', '.join(unknown)}",
            requested.expression,
        )
    return [t for t in members if t in wanted]


async def _referenced(svc: FhirService, inv: Invocation, matches: list[Version]) -> list[Version]:
    """The resources the page's matches reference that belong to no patient's compartment."""
    on_page = {(v.resource_type, v.id) for v in matches}
    wanted: dict[str, set[str]] = {}
    absolute = f"{inv.base_url}/"
    for version in matches:
        for reference in _references(version.resource):
            if reference.startswith(absolute):
                reference = reference[len(absolute) :]
            found = _RELATIVE.match(reference)
            if found is None:
                continue
            rt, rid = found.group(1), found.group(2)
            if (
                (rt, rid) not in on_page
                and svc.conformance.is_stored(rt)
                and rt not in svc.conformance.patient_compartment
            ):
                wanted.setdefault(rt, set()).add(rid)
    included: list[Version] = []
    for rt, ids in sorted(wanted.items()):
        if len(included) >= MAX_REFERENCED or not inv.access.allows(rt, "r"):
            continue
        query = {"_id": {"$in": sorted(ids)}}
        included += await svc.find_where(
            inv.access, rt, query, [("_id", 1)], MAX_REFERENCED - len(included)
        )
    return included


def _references(node: Any) -> list[str]:
    """Every `reference` string in a resource, wherever it stands (contained ones included)."""
    found: list[str] = []
    pending = [node]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            reference = item.get("reference")
            if isinstance(reference, str):
                found.append(reference)
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return found
