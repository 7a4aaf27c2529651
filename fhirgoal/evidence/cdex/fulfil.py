"""The clinician's answers to a Da Vinci CDex request: `POST Task/{id}/$approve` and
`POST Task/{id}/$reject` (OperationDefinitions profiles/operations/Task-approve.json and
Task-reject.json).

Why operations rather than a PATCH of `status`: what approving means (produce the evidence, sign
it, put it in the Task, complete it) is the server's rule, done in one place and one write; a
client that could set `completed` could also set outputs the server never made (rule.py refuses
both to anyone but this module).

- `$approve` (`start`, `end` optional dates, `sendToPayer` optional boolean): for an attachment
  request, runs
  `$medical-necessity` (evidence/operation.py) for the period (default: from the request's
  `service-date` input to the day it was authored; without a service date the clinician gives
  `start`) and puts the signed document Bundle and the PDF DocumentReference in the Task as
  contained resources, referenced by `Task.output` (`attachments-needed`); for a data request,
  runs its query in the member's compartment and contains the searchset Bundle (`data-value`).
  Contained, as CDex shows it (task-based-approach.html, "Contained Task Outputs"): the payer
  reads its Task and has the data, without any access to the patient's record; the document's
  signature leaves out the Bundle's `id` and `meta`, so the contained copy verifies like any.
  Status `completed`, `businessStatus` saying who approved it. With `sendToPayer` true (an
  attachment request from a payer with a connection, evidence/payers/) the same write records
  the Da Vinci CDex `$submit-attachment` to the payer's endpoint in the outbox (solicited
  attachments, https://hl7.org/fhir/us/davinci-cdex/attachments.html); a submission the payer
  could not take (no tracking id, no member id) is refused before anything is written.
- `$reject` (`reason`, required): status `rejected` with `statusReason.text` (tdr-2).

Both are the clinician's: the caller's token must name a Practitioner or PractitionerRole
(`fhirUser`), and everything is read and written with the caller's access (the evidence, the
query, the Task), so a clinician answers only for the patients they reach. An answered request
(completed, rejected, cancelled, failed) is not answered again (409). Each call is audited like
any operation (auth/audit.py: the AuditEvent names the Task), and the Task's new version gets
its Provenance.
"""

from __future__ import annotations

import copy
from datetime import date
from typing import Any

from fhirgoal.core.access import UNRESTRICTED, AccessContext
from fhirgoal.core.errors import FhirError
from fhirgoal.evidence.cdex import codes
from fhirgoal.evidence.cdex.request import CdexRequest, read_request
from fhirgoal.evidence.cdex.rule import fulfilling, is_cdex_request, resolved_patient
from fhirgoal.evidence.operation import MedicalNecessity
from fhirgoal.evidence.payers.connections import PayerConnection, PayerConnectionStore
from fhirgoal.evidence.payers.outbox import submitting
from fhirgoal.evidence.payers.submission import check, from_task
from fhirgoal.evidence.request import EvidenceRequest
from fhirgoal.fhir.instants import instant_text, now
from fhirgoal.fhir.operations import Invocation, ParameterValue
from fhirgoal.fhir.outcome import Outcome
from fhirgoal.fhir.service import FhirService
from fhirgoal.store.repository import Version

CLINICIANS = ("Practitioner/", "PractitionerRole/")
DOCUMENT_ID, PDF_ID, RESULTS_ID = "evidence-document", "evidence-pdf", "results"


class CdexAnswers:
    def __init__(self, evidence: MedicalNecessity) -> None:
        self.evidence = evidence

    async def approve(self, svc: FhirService, call: Invocation) -> Outcome:
        call.parameters.reject_unknown({"start", "end", "sendToPayer"})
        send = call.parameters.one("sendToPayer")
        current, task = await _open_request(svc, call)
        request = read_request(svc, task, new=False)
        patient = resolved_patient(task)
        assert patient is not None  # rule.py recorded it when the request was accepted
        payer = await _payer_connection(svc, request) if send and send.boolean() else None
        if request.kind == "attachment":
            contained, outputs = await self._attachments(svc, call, request, patient)
        else:
            contained, outputs = await _data(svc, call, request, patient)
        approved = f"Approved by {_who(call.access)}"
        if payer is not None:
            approved += f"; sent to the payer by $submit-attachment ({payer.name})"
        answered = {
            **task,
            "status": "completed",
            "businessStatus": {"text": approved},
            "lastModified": instant_text(now()),
            "contained": [*_kept_contained(task), *contained],
            "output": outputs,
        }
        if payer is None:
            return await _write(svc, call, current, answered)
        member = await svc.current(UNRESTRICTED, "Patient", patient.removeprefix("Patient/"))
        # refused now, with nothing stored, if the payer could not take it
        check(from_task(answered, payer, member.resource if member else None))
        with submitting(payer.name):
            return await _write(svc, call, current, answered)

    async def reject(self, svc: FhirService, call: Invocation) -> Outcome:
        call.parameters.reject_unknown({"reason"})
        given = call.parameters.one("reason")
        if given is None:
            raise FhirError("processing", "a refusal gives its reason ('reason')", "reason")
        reason = given.text().strip()
        current, task = await _open_request(svc, call)
        answered = {
            **task,
            "status": "rejected",
            "statusReason": {"text": reason},
            "businessStatus": {"text": f"Refused by {_who(call.access)}"},
            "lastModified": instant_text(now()),
        }
        return await _write(svc, call, current, answered)

    async def _attachments(
        self, svc: FhirService, call: Invocation, request: CdexRequest, patient: str
    ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        start = _date(call.parameters.one("start")) or request.service_date
        end = _date(call.parameters.one("end")) or request.authored
        if start is None:
            raise FhirError(
                "processing",
                "the request gives no service date: give the period's start ('start')",
                "start",
            )
        if start > end:
            raise FhirError("processing", f"start ({start}) is after end ({end})", "start")
        # the payer is named on the evidence when the clinician's access reaches its
        # Organization (an app holding patient scopes only does not: the cover then omits it)
        payer = request.payer.removeprefix("Organization/")
        readable = await svc.current(call.access, "Organization", payer) is not None
        ask = EvidenceRequest(
            patient.removeprefix("Patient/"), start, end, None,
            request.payer if readable else None, ("document", "pdf"),
        )  # fmt: skip
        found = await self.evidence.evidence(svc, call.access, ask, call.base_url)
        document = {**copy.deepcopy(found["document"]), "id": DOCUMENT_ID}
        pdf = {k: v for k, v in copy.deepcopy(found["pdf"]).items() if k != "relatesTo"}
        pdf["id"] = PDF_ID
        pdf["context"]["related"] = [{"reference": f"#{DOCUMENT_ID}"}]
        kind = {"coding": [{"system": request.code_system, "code": codes.ATTACHMENTS_NEEDED}]}
        title = pdf["content"][0]["attachment"]["title"]
        outputs: list[dict[str, Any]] = [
            {"type": kind, "valueReference": {"reference": f"#{PDF_ID}", "display": title}},
            {"type": kind, "valueReference": {
                "reference": f"#{DOCUMENT_ID}",
                "display": f"{document['identifier']['value']} (FHIR document, signed)"}},
        ]  # fmt: skip
        return [document, pdf], outputs


async def _payer_connection(svc: FhirService, request: CdexRequest) -> PayerConnection:
    """The connection of the payer that asked, for `sendToPayer`."""
    if request.kind != "attachment":
        raise FhirError(
            "processing",
            "a data request is answered in its Task only: sendToPayer is for attachment requests",
            "sendToPayer",
        )
    connection = await PayerConnectionStore(svc.database).for_organization(request.payer)
    if connection is None:
        raise FhirError(
            "processing",
            f"no payer connection for {request.payer}: an administrator adds one "
            f"(fhirgoal payer add --organization {request.payer.removeprefix('Organization/')})",
            "sendToPayer",
        )
    return connection


async def _open_request(svc: FhirService, call: Invocation) -> tuple[Version, dict[str, Any]]:
    access = call.access
    if not access.unrestricted and not (access.fhir_user or "").startswith(CLINICIANS):
        raise FhirError(
            "forbidden", "a CDex request is answered by a clinician (fhirUser a Practitioner)"
        )
    assert call.id is not None
    current = await svc.current(access, "Task", call.id)
    if current is None or current.deleted or current.resource is None:
        raise FhirError("not-found", f"Task/{call.id} is not known")
    task = current.resource
    if not is_cdex_request(task) or resolved_patient(task) is None:
        raise FhirError("processing", f"Task/{call.id} is not a Da Vinci CDex request")
    if task.get("status") not in codes.OPEN:
        raise FhirError("conflict", f"Task/{call.id} is {task.get('status')} already")
    return current, task


async def _data(
    svc: FhirService, call: Invocation, request: CdexRequest, patient: str
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The query's results in the member's compartment, as a contained searchset."""
    query = request.query
    assert query is not None
    limit = svc.settings.max_page_size
    page = await svc.search(
        call.access, query.resource_type, [*query.params, ("_count", str(limit))],
        call.base_url, compartment=patient,
    )  # fmt: skip
    if page.next_cursor is not None:
        raise FhirError(
            "processing",
            f"the request's query matches more than {limit} resources of the patient: too many "
            "to return in one Task; refuse it and ask the payer to narrow it",
            "Task.input",
        )
    results = {
        "resourceType": "Bundle",
        "id": RESULTS_ID,
        "type": "searchset",
        "total": len(page.matches),
        "link": [{"relation": "self", "url": f"{call.base_url}/{patient}/{query.text}"}],
        "entry": [
            {"fullUrl": f"{call.base_url}/{v.resource_type}/{v.id}", "resource": v.resource,
             "search": {"mode": "match"}}
            for v in page.matches
        ],
    }  # fmt: skip
    if not results["entry"]:
        del results["entry"]
    kind = {"coding": [{"system": codes.HREX_TEMP, "code": codes.DATA_VALUE}]}
    return [results], [{"type": kind, "valueReference": {"reference": f"#{RESULTS_ID}"}}]


async def _write(
    svc: FhirService, call: Invocation, current: Version, answered: dict[str, Any]
) -> Outcome:
    with fulfilling(current.id):
        outcome = await svc.update(
            call.access, "Task", current.id, answered, f'W/"{current.version}"'
        )
    return Outcome(200, outcome.version)


def _kept_contained(task: dict[str, Any]) -> list[dict[str, Any]]:
    ours = {DOCUMENT_ID, PDF_ID, RESULTS_ID}
    return [r for r in task.get("contained") or [] if r.get("id") not in ours]


def _who(access: AccessContext) -> str:
    return access.fhir_user or access.subject


def _date(value: ParameterValue | None) -> date | None:
    if value is None:
        return None
    text = value.text()
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise FhirError(
            "invalid", f"'{value.name}' must be a date (YYYY-MM-DD)", value.expression
        ) from None
