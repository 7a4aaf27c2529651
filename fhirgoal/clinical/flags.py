"""Clinical alerts as FHIR Flags, and the Provenance of what the server derives.

Why Flag rather than DetectedIssue: R4 defines DetectedIssue as an issue "with or between one or
more active or proposed clinical actions" (drug interactions, duplicate therapy); a measurement-
based-care alert (alliance concern, deterioration, a goal status to review) concerns the client's
course, not an action, which is what Flag is for (https://hl7.org/fhir/R4/flag.html: "a warning
... about a patient ... to be displayed"). Each alert is one Flag with a fixed id per patient and
kind (or per goal), so it opens (status active, period.start), closes when its condition clears
(status inactive, period.end) and reopens in place; EHRs search `Flag?patient=..&status=active`.
The evidence is linked with the core `flag-detail` extension, the author is Device/fhirgoal.

Provenance (https://hl7.org/fhir/R4/provenance.html): every change the server derives on its
own (a goal's achievement status) records agent Device/fhirgoal as assembler, the source ratings
as entities and the reason in words.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any

from fhirgoal.clinical.codes import (
    ALERTS,
    FLAG_CATEGORY,
    FLAG_DETAIL,
    PROVENANCE_ACTIVITY,
    PROVENANCE_AGENT_TYPE,
)
from fhirgoal.core.access import UNRESTRICTED
from fhirgoal.fhir.instants import instant_text, now
from fhirgoal.fhir.service import FhirService
from fhirgoal.store.repository import Version

SERVER_DEVICE = "Device/fhirgoal"


def flag_id(*key: str) -> str:
    """A stable, valid FHIR id for the alert of `key` (ids are at most 64 characters)."""
    return f"alert-{hashlib.sha256('|'.join(key).encode()).hexdigest()[:32]}"


@dataclass(frozen=True)
class AlertFlag:
    id: str
    patient: str  # Patient id
    kind: str  # a code of the fhirgoal-alerts CodeSystem
    display: str
    text: str  # why, in words a clinician reads
    details: tuple[str, ...]  # references to the evidence (Observations, Goals)
    since: str  # dateTime the condition started (the session that raised it)
    category: str = "clinical"


async def raise_flag(svc: FhirService, alert: AlertFlag) -> None:
    """Make the alert's Flag active (created, reopened or its text refreshed)."""
    current = await svc.current(UNRESTRICTED, "Flag", alert.id)
    existing = current.resource if current is not None else None
    start = alert.since
    if existing and existing.get("status") == "active":
        start = (existing.get("period") or {}).get("start", start)
    flag = {
        "resourceType": "Flag",
        "id": alert.id,
        "extension": [{"url": FLAG_DETAIL, "valueReference": {"reference": r}} for r in alert.details],
        "status": "active",
        "category": [{"coding": [{"system": FLAG_CATEGORY, "code": alert.category}]}],
        "code": {"coding": [{"system": ALERTS, "code": alert.kind, "display": alert.display}],
                 "text": alert.text},
        "subject": {"reference": f"Patient/{alert.patient}"},
        "period": {"start": start},
        "author": {"reference": SERVER_DEVICE},
    }  # fmt: skip
    if existing is not None and _same(existing, flag):
        return
    await svc.update(UNRESTRICTED, "Flag", alert.id, flag, None)


async def clear_flag(svc: FhirService, fid: str, when: str, why: str) -> None:
    """Close the Flag `fid` if it is active (period.end = `when`, the reason in the text)."""
    current = await svc.current(UNRESTRICTED, "Flag", fid)
    flag = current.resource if current is not None else None
    if flag is None or flag.get("status") != "active":
        return
    closed = {**flag, "status": "inactive", "period": {**flag.get("period", {}), "end": when}}
    closed["code"] = {**flag["code"], "text": f"{flag['code'].get('text', '')} Cleared: {why}"}
    await svc.update(UNRESTRICTED, "Flag", fid, closed, f'W/"{current.version}"')  # type: ignore[union-attr]


def _same(existing: dict[str, Any], wanted: dict[str, Any]) -> bool:
    return all(existing.get(k) == v for k, v in wanted.items())


async def record_provenance(
    svc: FhirService, target: Version, reason: str, sources: list[str]
) -> None:
    provenance: dict[str, Any] = {
        "resourceType": "Provenance",
        "target": [{"reference": f"{target.resource_type}/{target.id}/_history/{target.version}"}],
        "recorded": instant_text(now()),
        "reason": [{"text": reason}],
        "activity": {"coding": [{"system": PROVENANCE_ACTIVITY, "code": "UPDATE"}]},
        "agent": [
            {
                "type": {"coding": [{"system": PROVENANCE_AGENT_TYPE, "code": "assembler"}]},
                "who": {"reference": SERVER_DEVICE},
            }
        ],
    }
    if sources:
        provenance["entity"] = [{"role": "source", "what": {"reference": s}} for s in sources]
    await svc.create(UNRESTRICTED, "Provenance", provenance, None, "")
