"""A Da Vinci CDex Task read as a request: its essentials checked (the profiles' mandatory
elements and invariants that this server relies on), its patient and its payer resolved.

Profiles (https://hl7.org/fhir/us/davinci-cdex/StructureDefinition-cdex-task-attachment-request.html,
https://hl7.org/fhir/us/davinci-cdex/StructureDefinition-cdex-task-data-request.html):

- `status` `requested` when created (the data source moves it on), `intent` `order`, `authoredOn`;
- `code`: what is asked (codes.py);
- `for`: the member, by literal reference (`Patient/{id}`), by business identifier
  (`for.identifier`, the data-request examples) or by a contained Patient carrying identifiers
  (`#patient`, the attachment-request profile's fixed form); an identifier is resolved by an
  `identifier` search on Patient, and must match exactly one;
- `requester`: the payer, a reference to an Organization this server holds (an identifier alone
  is not enough: the payer's access is bound to its Organization's id, see rule.py);
- `owner`: who is asked (any reference);
- why: the claim or prior authorization, `reasonReference.identifier`, and for attachments
  `reasonCode` `claim` | `preauthorization` (cdex-1: a claim needs a `service-date` input);
- inputs: for attachments one or more `attachments-needed` LOINC codes this server can answer
  (cdex-4), for data exactly one `data-query` (cdex-9, cdex-12), a FHIR query `Type?params` on a
  type of the patient compartment. The query runs confined to the member's compartment: its
  `patient` and `subject` parameters are dropped (the payer names its own id for the member,
  which means nothing here).

Every problem found is reported at once, each with its `expression`, and nothing is stored.
Whether the member is attributed to the payer is checked apart (rule.py): its refusal must not
tell a payer whether an identifier it sent names someone here.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Literal
from urllib.parse import parse_qsl

from fhirgoal.core.access import UNRESTRICTED
from fhirgoal.core.errors import FhirError, Issue
from fhirgoal.evidence.cdex import codes
from fhirgoal.fhir.groups import patients_by_identifier
from fhirgoal.fhir.service import FhirService

Kind = Literal["attachment", "data"]
DROPPED_QUERY_PARAMS = ("patient", "subject")


@dataclass(frozen=True)
class DataQuery:
    resource_type: str
    params: list[tuple[str, str]]  # without patient/subject
    text: str  # as the payer wrote it


@dataclass
class CdexRequest:
    kind: Kind
    payer: str  # "Organization/{id}"
    authored: date
    attachment_codes: list[str] = field(default_factory=list)  # LOINC
    query: DataQuery | None = None
    service_date: date | None = None
    code_system: str = codes.PAS_TEMP  # where Task.code came from (2.1.0: PAS, 2.0.0: CDex)


def _codings(concept: Any) -> list[tuple[str | None, str | None]]:
    if not isinstance(concept, dict):
        return []
    return [
        (c.get("system"), c.get("code")) for c in concept.get("coding") or [] if isinstance(c, dict)
    ]


def _input_type(item: dict[str, Any]) -> str | None:
    for _, code in _codings(item.get("type")):
        if code in (codes.ATTACHMENTS_NEEDED, codes.DATA_QUERY, codes.SERVICE_DATE):
            return code
    return None


def read_request(svc: FhirService, task: dict[str, Any], new: bool = True) -> CdexRequest:
    """The request a Task makes; FhirError (422) listing every problem. `new`: the Task is
    being created (then it must be `requested`, without output)."""
    issues: list[Issue] = []

    def problem(text: str, expression: str, code: str = "required") -> None:
        issues.append(Issue(text, expression, code=code))

    kind: Kind | None = None
    code_system = codes.PAS_TEMP
    for system, code in _codings(task.get("code")):
        if code in codes.REQUEST_CODES and system in codes.REQUEST_CODES[code]:
            kind = "attachment" if code == codes.ATTACHMENT_REQUEST else "data"
            code_system = str(system)
    if kind is None:
        problem(
            "Task.code must be a Da Vinci CDex request this server answers: "
            f"{codes.ATTACHMENT_REQUEST} ({codes.PAS_TEMP} or {codes.CDEX_TEMP}) or "
            f"{codes.DATA_REQUEST} ({codes.CDEX_TEMP})",
            "Task.code",
            "not-supported",
        )
    if new and task.get("status") != "requested":
        problem("a new CDex request has status 'requested'", "Task.status", "business-rule")
    if task.get("intent") != "order":
        problem("a CDex request has intent 'order'", "Task.intent", "value")
    if new and task.get("output"):
        problem(
            "a new request has no output: the data source adds it", "Task.output", "business-rule"
        )
    authored = _date(task.get("authoredOn"))
    if authored is None:
        problem("authoredOn (when the payer asked) is required", "Task.authoredOn")
    if not isinstance(task.get("owner"), dict):
        problem("owner (who is asked) is required", "Task.owner")
    requester = (task.get("requester") or {}).get("reference")
    if not isinstance(requester, str) or not requester.startswith("Organization/"):
        problem(
            "requester must reference the payer's Organization on this server "
            "(requester.reference 'Organization/{id}')",
            "Task.requester.reference",
        )
    reason = task.get("reasonReference") or {}
    if not isinstance(reason, dict) or not isinstance(
        (reason.get("identifier") or {}).get("value"), str
    ):
        problem(
            "reasonReference.identifier (the claim or prior authorization) is required",
            "Task.reasonReference.identifier",
        )
    request = CdexRequest(
        kind or "attachment", str(requester), authored or date.min, code_system=code_system
    )
    uses = [code for _, code in _codings(task.get("reasonCode"))]  # 0..1 in R4
    if kind == "attachment" and not {"claim", "preauthorization"} & set(uses):
        problem(
            "reasonCode (claim-use 'claim' or 'preauthorization') is required",
            "Task.reasonCode",
        )
    queries = 0
    for index, item in enumerate(task.get("input") or []):
        where = f"Task.input[{index}]"
        which = _input_type(item) if isinstance(item, dict) else None
        if which == codes.ATTACHMENTS_NEEDED:
            loinc = [code for system, code in _codings(item.get("valueCodeableConcept"))
                     if system == codes.LOINC and code]  # fmt: skip
            answerable = [code for code in loinc if code in codes.ANSWERABLE]
            if not answerable:
                problem(
                    "this server answers the LOINC attachment codes "
                    + ", ".join(f"{c} ({name})" for c, name in codes.ANSWERABLE.items()),
                    f"{where}.valueCodeableConcept",
                    "not-supported",
                )
            request.attachment_codes += [str(c) for c in answerable]
        elif which == codes.DATA_QUERY:
            queries += 1
            request.query = _query(svc, item.get("valueString"), f"{where}.valueString", problem)
        elif which == codes.SERVICE_DATE:
            request.service_date = _date(item.get("valueDate"))
            if request.service_date is None or len(str(item.get("valueDate"))) != 10:
                problem("service-date must be a full date (cdex-2)", f"{where}.valueDate", "value")
    if kind == "attachment":
        if not any(_input_type(i) == codes.ATTACHMENTS_NEEDED for i in task.get("input") or []):
            problem("an attachment request names attachments-needed inputs (cdex-4)", "Task.input")
        if "claim" in uses and request.service_date is None:
            problem(
                "an attachment request for a claim has a service-date input (cdex-1)", "Task.input"
            )
    if kind == "data" and queries != 1:
        problem("a data request has exactly one data-query input (cdex-9)", "Task.input")
    if issues:
        raise FhirError("processing", issues[0].diagnostics, issues=issues)
    return request


def _date(value: Any) -> date | None:
    if not isinstance(value, str) or len(value) < 10:
        return None
    try:
        return date.fromisoformat(value[:10])
    except ValueError:
        return None


def _query(
    svc: FhirService, text: Any, where: str, problem: Callable[..., None]
) -> DataQuery | None:
    if not isinstance(text, str) or not text:
        problem("a data-query input is a query string 'Type?params'", where)
        return None
    rt, _, query = text.lstrip("/").partition("?")
    if not svc.conformance.is_stored(rt) or (
        rt != "Patient" and rt not in svc.conformance.patient_compartment
    ):
        problem(f"the query must search a type of the patient's record, not {rt!r}", where, "value")
        return None
    params = [(k, v) for k, v in parse_qsl(query, keep_blank_values=True)
              if k.split(":")[0] not in DROPPED_QUERY_PARAMS]  # fmt: skip
    return DataQuery(rt, params, text)


async def resolve_patient(svc: FhirService, task: dict[str, Any]) -> str | None:
    """The Patient Task.for names ("Patient/{id}"), or None when it names none or several."""
    subject = task.get("for") or {}
    reference = subject.get("reference")
    if isinstance(reference, str) and reference.startswith("Patient/"):
        stored = await svc.current(UNRESTRICTED, "Patient", reference.removeprefix("Patient/"))
        return reference if stored is not None and not stored.deleted else None
    identifiers: list[Any] = []
    if isinstance(reference, str) and reference.startswith("#"):
        contained = [r for r in task.get("contained") or []
                     if isinstance(r, dict) and r.get("id") == reference[1:]]  # fmt: skip
        if len(contained) == 1 and contained[0].get("resourceType") == "Patient":
            identifiers = list(contained[0].get("identifier") or [])
    elif subject.get("identifier") is not None:
        identifiers = [subject["identifier"]]
    matched: set[str] = set()
    for identifier in identifiers:
        found = await patients_by_identifier(svc, UNRESTRICTED, identifier)
        if len(found) > 1:
            return None
        matched.update(found)
    return matched.pop() if len(matched) == 1 else None


async def payer_exists(svc: FhirService, payer: str) -> bool:
    found = await svc.current(UNRESTRICTED, "Organization", payer.removeprefix("Organization/"))
    return found is not None and not found.deleted
