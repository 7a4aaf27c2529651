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

A delivery a clinician's request caused (exchange/user_tokens.py) names that user as an agent
(`who` their `fhirUser`, else their `sub` as an identifier of the token's issuer; `altId` the
`sub`): the requestor when it was sent with their token, and fhirgoal's Device then is not;
when fhirgoal's backend token was used instead (the user's had expired, the EHR refused it),
fhirgoal stays the requestor, the user is named beside it, and `outcomeDesc` says why.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
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


@dataclass(frozen=True)
class OnBehalf:
    """Whom a delivery was for (exchange/user_tokens.py), and how it went: `as_user` when the
    requests carried the user's token, else `why` fhirgoal's backend token was used."""

    subject: str
    fhir_user: str | None
    issuer: str | None
    as_user: bool
    why: str | None = None


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
    on_behalf: OnBehalf | None = None,
) -> dict[str, Any]:
    """`action` C, U, D or E (FHIR audit-event-action); `local` "Goal/1/_history/2"; `ehr_url`
    the other server's version (or endpoint) as an absolute URL; `patient` "Patient/1"; `final`:
    the error will not be retried. `channel` (the subtype's system), `agent` and `where` name the
    exchange: EHR sync by default, payer submissions (evidence/payers/) name their own;
    `on_behalf`: the user whose request caused it, and whether it went with their token."""
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
        "agent": _agents(agent, on_behalf),
        "source": _SOURCE,
        "entity": entities,
    }
    notes = []
    if on_behalf is not None and not on_behalf.as_user and on_behalf.why:
        notes.append(f"sent with fhirgoal's backend token: {on_behalf.why}")
    if error is not None:
        prefix = "not retried (fhirgoal sync retry puts it back): " if final else ""
        notes.append(prefix + error)
    if notes:
        event["outcomeDesc"] = "; ".join(notes)[:1000]
    return event


def _agents(display: str, on_behalf: OnBehalf | None) -> list[dict[str, Any]]:
    device = {"who": {"reference": "Device/fhirgoal", "display": display}, "requestor": True}
    if on_behalf is None:
        return [device]
    who: dict[str, Any]
    if on_behalf.fhir_user:
        who = {"reference": on_behalf.fhir_user}
    else:
        who = {"identifier": {"value": on_behalf.subject}}
        if on_behalf.issuer:
            who["identifier"]["system"] = on_behalf.issuer
    user = {"who": who, "altId": on_behalf.subject, "requestor": on_behalf.as_user}
    if on_behalf.as_user:
        return [user, {**device, "requestor": False}]
    return [device, user]


async def record(service: FhirService, events: list[dict[str, Any]]) -> None:
    if events and service.settings.audit:
        await service.audit_log.append(events)
