"""Unsolicited attachments: the clinician sends a payer the evidence of medical necessity unasked,
as Da Vinci CDex describes (https://hl7.org/fhir/us/davinci-cdex/attachments.html, "Unsolicited
Attachments": sent with or ahead of the claim or prior authorization, tied to it by a tracking
number the provider assigns).

`POST Patient/{id}/$submit-to-payer` (OperationDefinition
profiles/operations/Patient-submit-to-payer.json) and `fhirgoal payer submit` run one path:

1. the payer connection is looked up by name (evidence/payers/connections.py);
2. the evidence for the period is produced with the caller's access, as `$medical-necessity`
   produces it (the signed document and the PDF; gaps are the same 422);
3. the submission is checked as the payer would check it (submission.py: member id, provider or
   practice id, the OperationDefinition's parameters): a submission that could never be made is
   refused now, and nothing is stored;
4. one unit of work stores the evidence (as `$medical-necessity` POST does) and a Communication
   recording the submission: `identifier` the tracking number (`claim` given: that claim's
   number, else the prior authorization's, made here when none is given), `reasonCode` claim |
   preauthorization (http://hl7.org/fhir/claim-use), `subject` the Patient with the payer's
   member id, `recipient` the payer's Organization, `sender` the practice as the payer knows it,
   `payload` the stored PDF DocumentReference and document Bundle (versioned references). Its
   write records the outbox item (outbox.py), so the 2xx means the submission will be made.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import date
from typing import Any

from fhirgoal.core.access import AccessContext
from fhirgoal.core.errors import FhirError
from fhirgoal.evidence.cdex import codes
from fhirgoal.evidence.operation import MedicalNecessity, store_outputs
from fhirgoal.evidence.payers.connections import PayerConnection, PayerConnectionStore
from fhirgoal.evidence.payers.outbox import SUBMISSIONS, submitting
from fhirgoal.evidence.payers.submission import check, from_communication, member_identifier
from fhirgoal.evidence.request import EvidenceRequest, date_parameter
from fhirgoal.fhir.operations import Invocation, ParameterValue
from fhirgoal.fhir.outcome import Outcome
from fhirgoal.fhir.service import FhirService

KNOWN = {"payer", "start", "end", "claim", "preauthorization"}
SENT = ("pdf", "document")  # what goes, in this order: the PDF's DocumentReference, the document


@dataclass(frozen=True)
class UnsolicitedRequest:
    patient: str  # the Patient's id
    payer: str  # the payer connection's name
    start: date
    end: date
    claim: str | None = None  # the claim's number, the attachments' tracking number
    preauthorization: str | None = None  # the prior authorization's, when not a claim


async def submit_unsolicited(
    svc: FhirService,
    evidence: MedicalNecessity,
    access: AccessContext,
    base_url: str,
    ask: UnsolicitedRequest,
) -> dict[str, Any]:
    """Produce, check and record the submission; the stored Communication."""
    if ask.claim and ask.preauthorization:
        raise FhirError("invalid", "give a claim or a prior authorization, not both", "claim")
    if ask.start > ask.end:
        raise FhirError("invalid", f"start ({ask.start}) is after end ({ask.end})", "start")
    connection = await PayerConnectionStore(svc.database).get(ask.payer)
    if connection is None:
        raise FhirError("processing", f"no payer connection named {ask.payer!r}", "payer")
    patient = await svc.current(access, "Patient", ask.patient)
    if patient is None or patient.deleted or patient.resource is None:
        raise FhirError("not-found", f"Patient/{ask.patient} is not known")
    payer = connection.organization
    readable = await svc.current(access, "Organization", payer.removeprefix("Organization/"))
    request = EvidenceRequest(
        ask.patient, ask.start, ask.end, None, payer if readable else None, ("document", "pdf")
    )
    outputs = await evidence.evidence(svc, access, request, base_url)
    member = member_identifier(patient.resource.get("identifier") or [], connection.member_system)
    communication = _communication(ask, connection, base_url, member)
    # checked on what will be sent, before anything is stored
    check(from_communication(communication, [outputs[name] for name in SENT], connection))

    async def write() -> dict[str, Any]:
        stored = await store_outputs(svc, access, base_url, outputs)
        communication["payload"] = [
            {"contentReference": {"reference": _versioned(stored[name]),
                                  "display": _title(stored[name])}}
            for name in SENT
        ]  # fmt: skip
        with submitting(connection.name):
            outcome = await svc.create(access, "Communication", communication, None, base_url)
        assert outcome.version is not None and outcome.version.resource is not None
        return outcome.version.resource

    return await svc.in_transaction(write)


def _communication(
    ask: UnsolicitedRequest,
    connection: PayerConnection,
    base_url: str,
    member: dict[str, Any] | None,
) -> dict[str, Any]:
    attach_to = "claim" if ask.claim else "preauthorization"
    number = ask.claim or ask.preauthorization or uuid.uuid4().hex[:16].upper()
    tracking = {"system": f"{base_url}/{attach_to}", "value": number}
    recipient: dict[str, Any] = {"reference": connection.organization}
    if connection.payer_id:
        recipient["identifier"] = connection.payer_id
    subject: dict[str, Any] = {"reference": f"Patient/{ask.patient}"}
    if member:
        subject["identifier"] = member
    communication: dict[str, Any] = {
        "resourceType": "Communication",
        "identifier": [tracking],
        "status": "in-progress",
        "category": [{"coding": [{
            "system": SUBMISSIONS, "code": "unsolicited-attachment",
            "display": "Unsolicited attachment (Da Vinci CDex $submit-attachment)"}]}],
        "subject": subject,
        "recipient": [recipient],
        "reasonCode": [{"coding": [{"system": codes.CLAIM_USE, "code": attach_to}]}],
        "payload": [],
    }  # fmt: skip
    if connection.organization_id:
        communication["sender"] = {"identifier": connection.organization_id}
    return communication


def _versioned(resource: dict[str, Any]) -> str:
    return f"{resource['resourceType']}/{resource['id']}/_history/{resource['meta']['versionId']}"


def _title(resource: dict[str, Any]) -> str:
    if resource["resourceType"] == "Bundle":
        return f"{resource['identifier']['value']} (FHIR document, signed)"
    return str(resource["content"][0]["attachment"].get("title", "evidence (PDF)"))


class SubmitToPayer:
    """`POST Patient/{id}/$submit-to-payer`."""

    def __init__(self, evidence: MedicalNecessity) -> None:
        self.evidence = evidence

    async def __call__(self, svc: FhirService, call: Invocation) -> Outcome:
        assert call.id is not None
        params = call.parameters
        params.reject_unknown(KNOWN)
        payer = params.one("payer")
        if payer is None:
            raise FhirError("invalid", "'payer' (the payer connection's name) is required", "payer")
        ask = UnsolicitedRequest(
            call.id,
            payer.text(),
            date_parameter(params.one("start"), "start"),
            date_parameter(params.one("end"), "end"),
            _text(params.one("claim")),
            _text(params.one("preauthorization")),
        )
        stored = await submit_unsolicited(svc, self.evidence, call.access, call.base_url, ask)
        return Outcome(200, body=stored)


def _text(value: ParameterValue | None) -> str | None:
    return value.text().strip() or None if value is not None else None
