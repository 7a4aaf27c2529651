"""Bulk Data export kick-off (SMART Bulk Data Access 2.0.0,
https://hl7.org/fhir/uv/bulkdata/export.html#bulk-data-kick-off-request).

Kick-off at three levels, GET or POST, with `Prefer: respond-async`:
- `[base]/$export`: every type the requester may search;
- `[base]/Patient/$export`: the types of the patient compartment, resources in some patient's
  compartment (the vendored compartment definition decides, as for `$everything`);
- `[base]/Group/[id]/$export`: the same for the Group's members (`member.entity` Patients that are
  not `inactive`).
Parameters: `_outputFormat` (application/fhir+ndjson and its short forms), `_since`, `_type`,
`_typeFilter` (`Type?search`, ORed per type), `_elements` (top-level elements, `Type.element` or
`element`), `includeAssociatedData` (`LatestProvenanceResources`, `RelevantProvenanceResources`)
and, at the patient levels, `patient` (narrowing to those patients).

Anything else is refused with 400 (the spec's default for a parameter a server does not support:
"SHOULD return an error ... so the client can re-submit a request omitting" it), among them
Bulk Data 3.0's `_until`, `organizeOutputBy` and `allowPartialManifests`, which 2.0.0 does not
define. With `Prefer: handling=lenient` the unsupported parameters, `includeAssociatedData`
values and `_elements` names are ignored instead, each reported by an OperationOutcome in the
manifest's `error` files. Invalid values of supported parameters (a `_since` that is not an
instant, a `_type` or `_typeFilter` the server cannot honour) stay errors: ignoring them would
widen the export.

The kick-off answers 202 with `Content-Location`: the job's status URL (fhir/rest_export.py). Jobs
live in MongoDB (store/exports.py) and run in the background (fhir/export_jobs.py). The
requester's access confines the export exactly like a search (the repository applies it).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl

from fhirgoal.core.access import AccessContext
from fhirgoal.core.errors import FhirError
from fhirgoal.fhir.export_jobs import (
    LATEST_PROVENANCE,
    NDJSON,
    RELEVANT_PROVENANCE,
    ExportRunner,
)
from fhirgoal.fhir.groups import resolve_members
from fhirgoal.fhir.operations import (
    Invocation,
    Level,
    Operation,
    OperationRegistry,
    ParameterValue,
)
from fhirgoal.fhir.outcome import Outcome
from fhirgoal.fhir.search.dates import parse_range
from fhirgoal.fhir.service import FhirService

OUTPUT_FORMATS = {NDJSON, "application/ndjson", "ndjson"}
KICK_OFF_PARAMETERS = {
    "_outputFormat", "_since", "_type", "_typeFilter", "_elements", "includeAssociatedData",
    "patient",
}  # fmt: skip
# Bulk Data 3.0.0 kick-off parameters: named in the refusal, since a client may expect them
_LATER_VERSIONS = {"_until", "organizeOutputBy", "allowPartialManifests"}
# includeAssociatedData values, least restrictive first (the spec: conflicting values -> the one
# that returns the largest data set)
ASSOCIATED_DATA = [RELEVANT_PROVENANCE, LATEST_PROVENANCE]
# Search controls that make no sense in a _typeFilter (what is exported is every match).
_NOT_FILTERS = {
    "_count", "_sort", "_include", "_revinclude", "_summary", "_elements", "_total", "_cursor",
    "_contained", "_containedType",
}  # fmt: skip
# fhirgoal's own definitions (profiles/operations), each `base`d on the Bulk Data IG's
DEFINITIONS = {
    "system": "https://fhirgoal.org/fhir/OperationDefinition/export",
    "type": "https://fhirgoal.org/fhir/OperationDefinition/patient-export",
    "instance": "https://fhirgoal.org/fhir/OperationDefinition/group-export",
}


def register(operations: OperationRegistry, runner: ExportRunner) -> None:
    """The three kick-off operations, queuing their jobs on `runner`."""

    async def handler(svc: FhirService, inv: Invocation) -> Outcome:
        return await kick_off(svc, runner, inv)

    levels: list[tuple[Level, str | None]] = [
        ("system", None),
        ("type", "Patient"),
        ("instance", "Group"),
    ]
    for level, rt in levels:
        operations.register(Operation("export", level, rt, handler, definition=DEFINITIONS[level]))


# ---- kick-off ----------------------------------------------------------------------------------
def owner_of(access: AccessContext) -> dict[str, Any]:
    """What is kept of the requester: who may poll and download, and what rebuilds its access."""
    return {
        "subject": access.subject,
        "client_id": access.client_id,
        "unrestricted": access.unrestricted,
        "patient": access.patient,
        "fhir_user": access.fhir_user,
        "scope": access.scope,
    }


def is_owner(job: dict[str, Any], access: AccessContext) -> bool:
    owner = job.get("owner") or {}
    return owner.get("subject") == access.subject and owner.get("client_id") == access.client_id


async def kick_off(svc: FhirService, runner: ExportRunner, inv: Invocation) -> Outcome:
    if not inv.prefers("respond-async"):
        raise FhirError("bad-request", "$export needs the header 'Prefer: respond-async'")
    lenient = inv.preference("handling") == "lenient"
    # the manifest's `error` files: what lenient handling ignored (text), Group members that
    # cannot be resolved (OperationOutcomes)
    warnings: list[str | dict[str, Any]] = []
    params = inv.parameters
    _unsupported(inv, lenient, warnings)
    output_format = params.one("_outputFormat")
    if output_format is not None and output_format.text() not in OUTPUT_FORMATS:
        raise FhirError(
            "bad-request",
            f"_outputFormat {output_format.text()!r} is not supported; use {NDJSON}",
            output_format.expression,
        )
    since = params.one("_since")
    since_text = since.text() if since else None
    if since_text is not None:
        _instant(since_text, since.expression if since else "_since")
    level = "system" if inv.resource_type is None else inv.resource_type
    patients: list[str] | None = None
    if level == "Group":
        assert inv.id is not None
        group = (await svc.read(inv.access, "Group", inv.id)).version
        assert group is not None and group.resource is not None
        # Members by reference, and by identifier when it names exactly one Patient; the others
        # are reported in the manifest's `error` files, never guessed (fhir/groups.py).
        members = await resolve_members(svc, inv.access, group.resource)
        patients = members.patients
        warnings.extend(member.outcome() for member in members.unresolved)
    requested = _patients(params.all("patient"))
    if requested is not None:
        patients = requested if patients is None else [p for p in patients if p in requested]
    types = _types(svc, inv, level)
    associated = _associated_data(inv, lenient, warnings)
    if associated is not None:
        # the associated Provenance resources are the Provenance output ("other Provenance
        # resources will not be returned")
        types = [t for t in types if t != "Provenance"]
    filters = _type_filters(svc, params.all("_typeFilter"), types)
    for rt, queries in filters.items():  # refuse a bad filter now, not in the background
        for query in queries:
            await svc.engine.compile(inv.access, rt, query, inv.base_url)
    output_types = [*types, "Provenance"] if associated else types
    elements = _elements(svc, params.all("_elements"), output_types, lenient, warnings)
    request = {
        "request": _request_url(inv),
        "level": level,
        "group": inv.id if level == "Group" else None,
        "types": types,
        "since": since_text,
        "type_filters": filters,
        "patients": patients,
        "elements": elements,
        "associated": associated,
        "warnings": warnings,
        "base": inv.base_url,
        "owner": owner_of(inv.access),
    }
    job_id = await runner.submit(request, inv.access)
    status_url = f"{inv.base_url}/_export/{job_id}"
    return Outcome(
        202,
        message=f"export job {job_id} accepted; poll {status_url}",
        headers={"Content-Location": status_url},
    )


def _unsupported(inv: Invocation, lenient: bool, warnings: list[str | dict[str, Any]]) -> None:
    """Refuse (or, lenient, report) the parameters this server does not support."""
    known = KICK_OFF_PARAMETERS if inv.resource_type else KICK_OFF_PARAMETERS - {"patient"}
    for value in inv.parameters.values:
        if value.name in known:
            continue
        if value.name == "patient":
            text = "patient applies to Patient and Group exports only"
        elif value.name in _LATER_VERSIONS:
            text = (
                f"{value.name} (Bulk Data Access 3.0) is not supported: this server implements "
                "Bulk Data Access 2.0.0"
            )
        else:
            text = f"unknown parameter {value.name!r}; expected one of {', '.join(sorted(known))}"
        if not lenient:
            raise FhirError("bad-request", text, value.expression)
        warnings.append(f"ignored: {text}")


def _associated_data(
    inv: Invocation, lenient: bool, warnings: list[str | dict[str, Any]]
) -> str | None:
    """The includeAssociatedData value that applies: the least restrictive of those asked."""
    asked: set[str] = set()
    for value in inv.parameters.all("includeAssociatedData"):
        for code in (c.strip() for c in value.text().split(",")):
            if code in ASSOCIATED_DATA:
                asked.add(code)
                continue
            text = (
                f"includeAssociatedData {code!r} is not supported; "
                f"supported: {', '.join(ASSOCIATED_DATA)}"
            )
            if not lenient:
                raise FhirError("bad-request", text, value.expression)
            warnings.append(f"ignored: {text}")
    if not asked:
        return None
    if not inv.access.allows("Provenance", "s"):
        raise FhirError("forbidden", "includeAssociatedData: no access to Provenance")
    return next(code for code in ASSOCIATED_DATA if code in asked)


def _elements(
    svc: FhirService,
    values: list[ParameterValue],
    types: list[str],
    lenient: bool,
    warnings: list[str | dict[str, Any]],
) -> dict[str, list[str]] | None:
    """`_elements` as type -> top-level element names ("*": for every type that has it), or
    None when not asked. The spec: `[type].[element]` or `[element]`, root elements only."""
    if not values:
        return None
    subsetter = svc.engine.subsetter
    elements: dict[str, set[str]] = {}
    for value in values:
        for item in (i.strip() for i in value.text().split(",")):
            rt, _, name = item.rpartition(".")
            wanted = [rt] if rt else types
            found = {t: subsetter.element(t, name) for t in wanted if t in types}
            kept = {t: e for t, e in found.items() if e is not None}
            if not name or "." in rt or not kept:
                text = f"_elements {item!r} names no top-level element of an exported type"
                if not lenient:
                    raise FhirError("bad-request", text, value.expression)
                warnings.append(f"ignored: {text}")
                continue
            if rt:
                elements.setdefault(rt, set()).update(kept.values())
            else:
                elements.setdefault("*", set()).update(kept.values())
    return {key: sorted(names) for key, names in elements.items()}


def _instant(text: str, expression: str) -> datetime:
    try:
        return parse_range(text)[0]
    except FhirError:
        raise FhirError("bad-request", f"_since {text!r} is not an instant", expression) from None


def _request_url(inv: Invocation) -> str:
    path = "/".join(p for p in (inv.resource_type, inv.id) if p)
    return f"{inv.base_url}/{path + '/' if path else ''}$export"


def _patients(values: list[ParameterValue]) -> list[str] | None:
    if not values:
        return None
    found = []
    for value in values:
        reference = value.text()
        if not reference.startswith("Patient/") or "/" in reference[len("Patient/") :]:
            raise FhirError(
                "bad-request", "patient must be a reference 'Patient/id'", value.expression
            )
        found.append(reference)
    return sorted(set(found))


def _types(svc: FhirService, inv: Invocation, level: str) -> list[str]:
    stored = svc.conformance.stored_types
    if level == "system":
        candidates = sorted(stored)
    else:
        compartment = svc.conformance.patient_compartment
        candidates = sorted(
            t for t in stored if t == "Patient" or svc.registry.for_type(t).compartment_params
        )
        candidates = [t for t in candidates if t == "Patient" or t in compartment]
    requested = inv.parameters.all("_type")
    if not requested:
        return [t for t in candidates if inv.access.allows(t, "s")]
    wanted = {t.strip() for v in requested for t in v.text().split(",") if t.strip()}
    unknown = sorted(wanted - set(candidates))
    if unknown:
        raise FhirError(
            "bad-request",
            f"_type: {', '.join(unknown)} cannot be exported at this level",
            requested[0].expression,
        )
    denied = sorted(t for t in wanted if not inv.access.allows(t, "s"))
    if denied:
        raise FhirError("forbidden", f"_type: no access to {', '.join(denied)}")
    return sorted(wanted)


def _type_filters(
    svc: FhirService, values: list[ParameterValue], types: list[str]
) -> dict[str, list[list[tuple[str, str]]]]:
    filters: dict[str, list[list[tuple[str, str]]]] = {}
    for value in values:
        for text in value.text().split(","):
            rt, _, query = text.strip().partition("?")
            if rt not in types:
                raise FhirError(
                    "bad-request",
                    f"_typeFilter {text!r} names a type that is not exported",
                    value.expression,
                )
            pairs = parse_qsl(query, keep_blank_values=True)
            if not pairs or any(name.split(":")[0] in _NOT_FILTERS for name, _ in pairs):
                raise FhirError(
                    "bad-request",
                    f"_typeFilter {text!r} must be search criteria (no result controls)",
                    value.expression,
                )
            filters.setdefault(rt, []).append(pairs)
    return filters
