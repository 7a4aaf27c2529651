"""The AuditEvent of each thing the EHR sync moves (and each payer submission:
evidence/payers/), so that the exchange is visible as FHIR.

https://hl7.org/fhir/R4/auditevent.html with DICOM event types (listed in the R4
audit-event-type value set): 110106 Export for a delivery to an EHR, 110107 Import for a record
pulled from one. `entity` names fhirgoal's version, the EHR's (an absolute URL), and the patient
(role 1, so the event is in the patient's compartment); `outcome` 0 on success, 4 when the EHR
refused or failed and the delivery is retried, 8 (serious failure) when it is not: the item is
parked as dead for a human (exchange/delivery.py), with the reason in `outcomeDesc`. A
deletion carried over either way is action D. Stored through the audit log like every
other AuditEvent (auth/audit.py), searchable as `AuditEvent?type=...|110106`.
"""

from __future__ import annotations

import uuid
from typing import Any

from fhirgoal.fhir.instants import instant_text, now
from fhirgoal.fhir.service import FhirService

DCM = "http://dicom.nema.org/resources/ontology/DCM"
EXPORT = {"system": DCM, "code": "110106", "display": "Export"}
IMPORT = {"system": DCM, "code": "110107", "display": "Import"}
SUBTYPE_SYSTEM = "urn:fhirgoal:ehr-sync"
_PATIENT_ROLE = {
    "system": "http://terminology.hl7.org/CodeSystem/object-role",
    "code": "1",
    "display": "Patient",
}
_SOURCE = {
    "observer": {"display": "fhirgoal"},
    "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4"}],
}


def sync_event(
    event_type: dict[str, str],
    connection: str,
    action: str,
    local: str | None,
    ehr_url: str | None,
    patient: str | None,
    error: str | None = None,
    final: bool = False,
    *,
    channel: str = SUBTYPE_SYSTEM,
    agent: str = "fhirgoal EHR sync",
    where: str = "in EHR",
) -> dict[str, Any]:
    """`action` C, U, D or E (FHIR audit-event-action); `local` "Goal/1/_history/2"; `ehr_url`
    the other server's version (or endpoint) as an absolute URL; `patient` "Patient/1"; `final`:
    the error will not be retried. `channel` (the subtype's system), `agent` and `where` name the
    exchange: EHR sync by default, payer submissions (evidence/payers/) name their own."""
    entities: list[dict[str, Any]] = []
    if local:
        entities.append({"what": {"reference": local}})
    if ehr_url:
        entities.append({"what": {"reference": ehr_url}, "description": f"{where} {connection}"})
    if patient:
        entities.append({"what": {"reference": patient}, "role": _PATIENT_ROLE})
    event: dict[str, Any] = {
        "resourceType": "AuditEvent",
        "id": str(uuid.uuid4()),
        "type": event_type,
        "subtype": [{"system": channel, "code": connection}],
        "action": action,
        "recorded": instant_text(now()),
        "outcome": "0" if error is None else "8" if final else "4",
        "agent": [
            {
                "who": {"reference": "Device/fhirgoal", "display": agent},
                "requestor": True,
            }
        ],
        "source": _SOURCE,
        "entity": entities,
    }
    if error is not None:
        prefix = "not retried (fhirgoal sync retry puts it back): " if final else ""
        event["outcomeDesc"] = (prefix + error)[:1000]
    return event


async def record(service: FhirService, events: list[dict[str, Any]]) -> None:
    if events and service.settings.audit:
        await service.audit_log.append(events)
