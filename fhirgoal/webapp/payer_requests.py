"""Payer requests on the overview (issue 16): the Da Vinci CDex Tasks a payer sent about the
launched patient (https://hl7.org/fhir/us/davinci-cdex/task-based-approach.html), shown to the
clinician with approve and refuse-with-reason.

The app reads them as any SMART app would, by the patient's compartment
(`Patient/{id}/Task`, https://hl7.org/fhir/R4/compartmentdefinition.html#search), and answers
with the server's operations `Task/{id}/$approve` and `Task/{id}/$reject`: what approving does
(the evidence, its signature, the Task's outputs) is the server's rule, not the app's. The panel
is shown only when the server's CapabilityStatement lists those operations.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

OPEN = "requested,received,accepted,ready,in-progress,on-hold"
KINDS = {"attachment-request-code": "Attachments", "data-request-query": "Data"}
INPUT_TYPES = {"attachments-needed", "data-query", "service-date"}


@dataclass(frozen=True)
class PayerRequest:
    id: str
    version: str
    kind: str  # "Attachments" | "Data"
    payer: str
    claim: str
    asked: list[str] = field(default_factory=list)  # "Progress note (LOINC 11506-3)", a query
    authored: str = ""
    service_date: str = ""
    status: str = ""


def _text(reference: Any) -> str:
    if not isinstance(reference, dict):
        return ""
    identifier = reference.get("identifier") or {}
    return str(
        reference.get("display") or reference.get("reference") or identifier.get("value") or ""
    )


def read_request(task: dict[str, Any]) -> PayerRequest:
    codes = [c.get("code") for c in (task.get("code") or {}).get("coding") or []]
    kind = next((KINDS[c] for c in codes if c in KINDS), "Request")
    asked: list[str] = []
    service_date = ""
    for item in task.get("input") or []:
        types = {c.get("code") for c in (item.get("type") or {}).get("coding") or []}
        if "attachments-needed" in types:
            for coding in (item.get("valueCodeableConcept") or {}).get("coding") or []:
                asked.append(f"{coding.get('display') or 'document'} (LOINC {coding.get('code')})")
        elif "data-query" in types:
            asked.append(str(item.get("valueString", "")))
        elif "service-date" in types:
            service_date = str(item.get("valueDate", ""))
    return PayerRequest(
        id=str(task.get("id", "")),
        version=str((task.get("meta") or {}).get("versionId", "")),
        kind=kind,
        payer=_text(task.get("requester")),
        claim=_text(task.get("reasonReference")),
        asked=asked,
        authored=str(task.get("authoredOn", ""))[:10],
        service_date=service_date,
        status=str(task.get("status", "")),
    )
