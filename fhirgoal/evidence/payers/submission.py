"""The Parameters of a Da Vinci CDex `$submit-attachment`, built from what fhirgoal recorded.

CDex STU2 (2.1.0), https://hl7.org/fhir/us/davinci-cdex/OperationDefinition-submit-attachment.html
(vendored beside this module as OperationDefinition-submit-attachment.json, from the IG's source
at its 2.1.0 release) and attachments.html. One `Attachment` parameter per item, with its
`LineItem`s, its `Code` and its `Content` (a resource); around them `TrackingId`, `AttachTo`
(claim | preauthorization), `PayerId`, `OrganizationId` / `ProviderId` (at least one),
`MemberId`, `ServiceDate` (to the day, required for a claim) and `Final` (omitted: true).

Two sources, one shape (`Submission`):

- **solicited** (`from_task`): a CDex attachment request (evidence/cdex/) the clinician approved
  with `sendToPayer`. The payer's request says everything: the tracking id
  (`Task.identifier` of type `tracking-id`), claim or prior authorization (`reasonCode`), the
  member (the contained Patient's identifiers, or `for.identifier`), the provider (the
  contained PractitionerRole the Task is `owner`ed by), the service date, the attachment codes
  and their line numbers (`attachments-needed` inputs, PAS `extension-paLineNumber`); the
  content is what the approval contained in the Task (the signed document Bundle and the PDF's
  DocumentReference), lifted out of it.
- **unsolicited** (`from_communication`): a Communication fhirgoal records when the clinician
  sends evidence unasked (evidence/payers/unsolicited.py): `identifier` the tracking id,
  `reasonCode` claim | preauthorization, `subject.identifier` the member id, `recipient` the
  payer (with its `PayerId`), `sender` the practice, `payload` the stored evidence; the service
  date is the start of the evidence's period and each item's code its type.

What the connection knows (evidence/payers/connections.py) fills what the source leaves out.
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass, field
from functools import cache
from importlib import resources
from typing import Any

from fhirgoal.core.errors import FhirError, Issue
from fhirgoal.evidence.cdex import codes
from fhirgoal.evidence.payers.connections import PayerConnection
from fhirgoal.fhir.operation_parameters import check_parameters

CLAIM_USES = ("claim", "preauthorization")
TRACKING_ID = "tracking-id"  # cdex-temp: the Task.identifier that is the tracking number
MEMBER_NUMBER = ("http://terminology.hl7.org/CodeSystem/v2-0203", "MB")
LINE_NUMBER = "http://hl7.org/fhir/us/davinci-pas/StructureDefinition/extension-paLineNumber"


@cache
def operation_definition() -> dict[str, Any]:
    text = resources.files(__package__).joinpath("OperationDefinition-submit-attachment.json")
    definition: dict[str, Any] = json.loads(text.read_text(encoding="utf-8"))
    return definition


@dataclass(frozen=True)
class AttachmentItem:
    content: dict[str, Any]  # the resource
    code: dict[str, Any] | None = None  # CodeableConcept (LOINC attachment code)
    line_items: tuple[str, ...] = ()


@dataclass
class Submission:
    tracking_id: dict[str, Any] | None
    attach_to: str | None
    member_id: dict[str, Any] | None
    attachments: list[AttachmentItem] = field(default_factory=list)
    payer_id: dict[str, Any] | None = None
    organization_id: dict[str, Any] | None = None
    provider_id: dict[str, Any] | None = None
    service_date: str | None = None

    def parameters(self) -> dict[str, Any]:
        params: list[dict[str, Any]] = []

        def add(name: str, key: str, value: Any) -> None:
            if value is not None:
                params.append({"name": name, key: value})

        add("TrackingId", "valueIdentifier", self.tracking_id)
        add("AttachTo", "valueCode", self.attach_to)
        add("PayerId", "valueIdentifier", self.payer_id)
        add("OrganizationId", "valueIdentifier", self.organization_id)
        add("ProviderId", "valueIdentifier", self.provider_id)
        add("MemberId", "valueIdentifier", self.member_id)
        add("ServiceDate", "valueDateTime", self.service_date)
        for item in self.attachments:
            parts: list[dict[str, Any]] = [
                {"name": "LineItem", "valueString": line} for line in item.line_items
            ]
            if item.code is not None:
                parts.append({"name": "Code", "valueCodeableConcept": item.code})
            parts.append({"name": "Content", "resource": item.content})
            params.append({"name": "Attachment", "part": parts})
        return {"resourceType": "Parameters", "parameter": params}

    def problems(self) -> list[Issue]:
        """What keeps this from being a valid `$submit-attachment`: the OperationDefinition's
        parameters, and the rules its comment states."""
        issues: list[Issue] = []

        def missing(text: str) -> None:
            issues.append(Issue(text, code="business-rule"))

        if self.tracking_id is None:
            missing("there is no tracking id to tie the attachments to the claim")
        if self.attach_to not in CLAIM_USES:
            missing("it is not said whether this is for a claim or a preauthorization")
        if self.member_id is None:
            missing("the payer's member id of the client is not known")
        if self.organization_id is None and self.provider_id is None:
            missing(
                "neither the practice's nor the provider's identifier is known to the payer "
                "(fhirgoal payer add --organization-id / --provider-id)"
            )
        if self.attach_to == "claim" and (self.service_date is None or len(self.service_date) < 10):
            missing("a claim attachment needs the service date, to the day")
        if not self.attachments:
            missing("there is nothing to attach")
        if issues:
            return issues
        return check_parameters(self.parameters(), operation_definition())


def check(submission: Submission) -> None:
    """FhirError (422) listing every problem, when the submission could not be made."""
    issues = submission.problems()
    if issues:
        raise FhirError(
            "processing", "cannot submit to the payer: " + issues[0].diagnostics, issues=issues
        )


# ---- solicited: from the approved CDex request -------------------------------------------------
def _codings(concept: Any) -> list[tuple[str | None, str | None]]:
    if not isinstance(concept, dict):
        return []
    return [(c.get("system"), c.get("code")) for c in concept.get("coding") or []
            if isinstance(c, dict)]  # fmt: skip


def _contained(task: dict[str, Any], reference: Any) -> dict[str, Any] | None:
    if not isinstance(reference, str) or not reference.startswith("#"):
        return None
    for resource in task.get("contained") or []:
        if isinstance(resource, dict) and resource.get("id") == reference[1:]:
            return resource
    return None


def member_identifier(
    identifiers: list[dict[str, Any]], system: str | None
) -> dict[str, Any] | None:
    """The payer's member id among `identifiers`: of the connection's member system, else of
    type MB (member number)."""
    usable = [i for i in identifiers if isinstance(i, dict) and i.get("value")]
    if system is not None:
        return next((_plain(i) for i in usable if i.get("system") == system), None)
    for identifier in usable:
        if MEMBER_NUMBER in _codings(identifier.get("type")):
            return _plain(identifier)
    return None


def _plain(identifier: dict[str, Any]) -> dict[str, Any]:
    return {k: identifier[k] for k in ("system", "value") if identifier.get(k)}


def from_task(
    task: dict[str, Any], connection: PayerConnection, patient: dict[str, Any] | None
) -> Submission:
    """The submission answering an approved attachment request; `patient` the member's Patient
    on this server (for a request naming it by reference)."""
    tracking = next(
        (_plain(i) for i in task.get("identifier") or []
         if isinstance(i, dict) and any(c == TRACKING_ID for _, c in _codings(i.get("type")))),
        None,
    )  # fmt: skip
    uses = [c for _, c in _codings(task.get("reasonCode")) if c in CLAIM_USES]
    member: dict[str, Any] | None = None
    subject = task.get("for") or {}
    named = _contained(task, subject.get("reference"))
    if named is not None:
        identifiers = list(named.get("identifier") or [])
        member = member_identifier(identifiers, connection.member_system) or (
            _plain(identifiers[0]) if identifiers and identifiers[0].get("value") else None
        )
    elif isinstance(subject.get("identifier"), dict):
        member = _plain(subject["identifier"])
    elif patient is not None:
        member = member_identifier(patient.get("identifier") or [], connection.member_system)
    owner = task.get("owner") or {}
    role = _contained(task, owner.get("reference")) or {}
    provider = (role.get("practitioner") or {}).get("identifier") or owner.get("identifier")
    practice = (role.get("organization") or {}).get("identifier")
    service_date = None
    codes_asked: list[dict[str, Any]] = []
    lines: list[str] = []
    for item in task.get("input") or []:
        kinds = {c for _, c in _codings(item.get("type"))}
        if codes.SERVICE_DATE in kinds:
            service_date = item.get("valueDate")
        if codes.ATTACHMENTS_NEEDED in kinds:
            codes_asked.append(item.get("valueCodeableConcept"))
            lines += [str(e.get("valueInteger", e.get("valuePositiveInt", "")))
                      for e in item.get("extension") or []
                      if isinstance(e, dict) and e.get("url") == LINE_NUMBER]  # fmt: skip
    # every output answers every code asked (the evidence is one document): each item carries
    # the first code asked and every line item
    attachments = [
        AttachmentItem(_lifted(task, output), codes_asked[0] if codes_asked else None,
                       tuple(dict.fromkeys(line for line in lines if line)))
        for output in task.get("output") or []
        if codes.ATTACHMENTS_NEEDED in {c for _, c in _codings(output.get("type"))}
    ]  # fmt: skip
    return Submission(
        tracking_id=tracking,
        attach_to=uses[0] if uses else None,
        member_id=member,
        attachments=attachments,
        payer_id=_plain((task.get("requester") or {}).get("identifier") or {}) or connection.payer_id,
        organization_id=_plain(practice) if isinstance(practice, dict) else connection.organization_id,
        provider_id=_plain(provider) if isinstance(provider, dict) else connection.provider_id,
        service_date=service_date,
    )  # fmt: skip


def _lifted(task: dict[str, Any], output: dict[str, Any]) -> dict[str, Any]:
    """A resource the Task contains, as a resource of its own: references to the Task's other
    contained resources (`#id`) cannot be resolved outside it, so a reference to the contained
    document becomes a reference by the document's identifier."""
    resource = _contained(task, (output.get("valueReference") or {}).get("reference"))
    if resource is None:
        raise FhirError("processing", "a Task output names no resource the Task contains")
    lifted = copy.deepcopy(resource)
    related = (lifted.get("context") or {}).get("related") or []
    for reference in related:
        inner = _contained(task, reference.get("reference"))
        if inner is not None:
            reference.pop("reference")
            if isinstance(inner.get("identifier"), dict):
                reference["identifier"] = inner["identifier"]
            reference.setdefault("display", f"{inner.get('resourceType')} sent alongside")
    return lifted


# ---- unsolicited: from the Communication fhirgoal recorded ------------------------------------
def from_communication(
    communication: dict[str, Any], contents: list[dict[str, Any]], connection: PayerConnection
) -> Submission:
    """The submission a Communication records; `contents` its payload's resources, in order."""
    identifiers = communication.get("identifier") or []
    uses = [c for coding in communication.get("reasonCode") or []
            for _, c in _codings(coding) if c in CLAIM_USES]  # fmt: skip
    subject = communication.get("subject") or {}
    recipients = communication.get("recipient") or [{}]
    sender = communication.get("sender") or {}
    service_date = None
    attachments = []
    for resource in contents:
        period = (resource.get("context") or {}).get("period") or {}
        service_date = service_date or period.get("start")
        code = resource.get("type")
        if resource.get("resourceType") == "Bundle":  # a document: its Composition's type
            entries = resource.get("entry") or [{}]
            code = (entries[0].get("resource") or {}).get("type")
        attachments.append(AttachmentItem(resource, code if isinstance(code, dict) else None))
    return Submission(
        tracking_id=_plain(identifiers[0]) if identifiers else None,
        attach_to=uses[0] if uses else None,
        member_id=_plain(subject.get("identifier") or {}) or None,
        attachments=attachments,
        payer_id=_plain(recipients[0].get("identifier") or {}) or connection.payer_id,
        organization_id=_plain(sender.get("identifier") or {}) or connection.organization_id,
        provider_id=connection.provider_id,
        service_date=service_date,
    )
