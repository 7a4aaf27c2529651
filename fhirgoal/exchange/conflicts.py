"""A goal edited in fhirgoal and in an EHR since they were last in step: neither version wins.

Issue 15: "a goal edited on both sides since the last sync keeps both versions in history and
raises a Flag/Task for the clinician instead of silently overwriting." Neither side is written:
fhirgoal's version stays current here (and in its history), the EHR's stays current there (and in
its history). A Flag (https://hl7.org/fhir/R4/flag.html, the form of every fhirgoal alert:
clinical/flags.py) names the goal and both versions, by versioned references in the core
`flag-detail` extension (fhirgoal's relative, the EHR's absolute), and says what each version
says. The next edit of the goal in fhirgoal settles it: that version goes to the EHR over the
version the Flag names (If-Match), and the Flag closes. Conflict Flags are never sent to an EHR
(exchange/connections.py).
"""

from __future__ import annotations

from typing import Any

from fhirgoal.clinical.flags import AlertFlag, clear_flag, flag_id, raise_flag
from fhirgoal.fhir.instants import instant_text, now
from fhirgoal.fhir.service import FhirService

CONFLICT = "sync-conflict"


def conflict_flag_id(connection: str, local: str) -> str:
    return flag_id(CONFLICT, connection, local)


def _says(goal: dict[str, Any] | None) -> str:
    text = ((goal or {}).get("description") or {}).get("text") or "(no description)"
    status = (goal or {}).get("lifecycleStatus")
    return f"'{text}'" + (f" ({status})" if status else "")


async def raise_conflict(
    service: FhirService,
    connection: str,
    patient: str,
    local: str,
    local_vid: int,
    local_goal: dict[str, Any] | None,
    ehr_url: str,
    ehr_goal: dict[str, Any] | None,
) -> str:
    """Raise (or refresh) the conflict Flag of `local` ("Goal/1"); its id. `ehr_url` is the
    EHR's version as an absolute URL (`.../Goal/e1/_history/5`)."""
    fid = conflict_flag_id(connection, local)
    ours = f"{local}/_history/{local_vid}"
    text = (
        f"{local} was edited in fhirgoal ({ours}) and in EHR '{connection}' ({ehr_url}) since "
        f"they were last in step; neither version was overwritten. fhirgoal's version says "
        f"{_says(local_goal)}; the EHR's says {_says(ehr_goal)}. Edit the goal in fhirgoal to "
        "settle it: that version then goes to the EHR."
    )
    await _raise(
        service, fid, patient, "Goal edited in fhirgoal and in an EHR", text, ours, ehr_url
    )
    return fid


async def raise_deleted_in_ehr(
    service: FhirService,
    connection: str,
    patient: str,
    local: str,
    local_vid: int,
    ehr_url: str,
    holds: str,
) -> str:
    """Raise the Flag of `local`, which the EHR deleted while it `holds` fhirgoal's content (a
    GAS scale, ratings): nothing was deleted; its id. The same Flag as a conflict of `local`
    (one open question per resource and connection)."""
    fid = conflict_flag_id(connection, local)
    ours = f"{local}/_history/{local_vid}"
    text = (
        f"EHR '{connection}' deleted its copy of {local} ({ehr_url}), but {local} holds "
        f"fhirgoal's {holds}; fhirgoal kept it, nothing was deleted, and it is no longer sent to "
        f"that EHR. Delete the goal in fhirgoal if it should go."
    )
    await _raise(
        service, fid, patient, "Goal deleted in an EHR, kept in fhirgoal", text, ours, ehr_url
    )
    return fid


async def _raise(
    service: FhirService, fid: str, patient: str, display: str, text: str, ours: str, ehr_url: str
) -> None:
    """The sync's Flag for a human about one resource of one connection (raised or refreshed)."""
    flag = AlertFlag(
        id=fid,
        patient=patient,
        kind=CONFLICT,
        display=display,
        text=text,
        details=(ours, ehr_url),
        since=instant_text(now()),
        category="admin",
    )
    await raise_flag(service, flag)


async def settle_deleted(service: FhirService, fid: str, local: str) -> None:
    await clear_flag(service, fid, instant_text(now()), f"{local} was deleted in fhirgoal too.")


async def settle_conflict(service: FhirService, fid: str, local: str, local_vid: int) -> None:
    await clear_flag(
        service, fid, instant_text(now()), f"{local}/_history/{local_vid} was sent to the EHR."
    )
