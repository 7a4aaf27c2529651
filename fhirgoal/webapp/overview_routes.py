"""The overview screen of a launched patient (issue 14, screen 1): patient banner, goals with
their current GAS level and achievement status, ORS/SRS/T-score/PHQ-9/GAD-7 charts and the open
alerts, from `Patient/{id}/$progress` when the server's CapabilityStatement lists it (summary.py,
overview.py), else the stored Goals alone; and the payers' open requests about the patient when
the server answers them (payer_requests.py)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, Response

from fhirgoal.webapp import overview, payer_requests
from fhirgoal.webapp.charts import render
from fhirgoal.webapp.context import closed, error, patient_banner, relaunch, screen_of
from fhirgoal.webapp.fhir_api import FhirCallError, NeedsRelaunch
from fhirgoal.webapp.summary import goal_levels, level_key, level_label, parse_progress

router = APIRouter(prefix="/app", include_in_schema=False)
# Goal.lifecycleStatus values of a goal no longer worked on (R4 valueset-goal-status)
RETIRED = ("completed", "cancelled", "entered-in-error", "rejected")
PAYER_NOTICES = {  # after answering a payer request (payer_routes.py)
    "approved": "The request was approved: the server sent the payer its answer.",
    "rejected": "The request was refused; the payer sees your reason.",
    "reason": "Nothing was sent: a refusal needs its reason.",
    "refused": "Nothing was sent: the server did not fulfil the request.",
}
FLAG_NOTICES = {  # after resolving an alert (flag_routes.py)
    "resolved": "The alert was resolved.",
    "changed": "Nothing was changed: the alert changed since the page was shown (a new session "
    "may have updated it). It is shown below as it is now.",
}


@router.get("/c/{key}/")
async def patient_overview(request: Request, key: str) -> Response:
    screen = screen_of(request, key)
    if screen is None:
        return closed(request)
    api, patient_id = screen.api, screen.patient_id
    has_progress = "Patient/progress" in screen.launch.operations
    answers_payers = {"Task/approve", "Task/reject"} <= screen.launch.operations
    try:
        patient, goals, summary, flags, tasks = await asyncio.gather(
            api.read(f"Patient/{patient_id}"),
            api.search("Goal", {"patient": f"Patient/{patient_id}", "_count": "100"}),
            api.read(f"Patient/{patient_id}/$progress") if has_progress else _nothing(),
            # the open Flags' versions: resolving one is conditional on what the page showed
            api.search("Flag", {"patient": f"Patient/{patient_id}", "status": "active",
                                "_count": "200"}),
            api.search(f"Patient/{patient_id}/Task", {"status": payer_requests.OPEN,
                                                       "_count": "50"})
            if answers_payers else _none(),
        )  # fmt: skip
    except NeedsRelaunch as exc:
        return relaunch(request, screen.launch, str(exc))
    except FhirCallError as exc:
        return error(request, "The FHIR server refused", str(exc), 502)
    progress = parse_progress(summary) if summary else None
    levels = {str(g.get("id")): goal_levels(g) for g in goals}
    charts = []
    if progress is not None:
        charts = [overview.ors_chart(progress), overview.srs_chart(progress),
                  overview.tscore_chart(progress), *overview.comparator_charts(progress)]  # fmt: skip
    return screen.render(
        "overview.html",
        patient=patient_banner(patient),
        show_banner=screen.launch.tokens.need_patient_banner,
        progress=progress,
        goals=goals,
        retired=[g for g in goals if g.get("lifecycleStatus") in RETIRED],
        levels=levels,
        charts=[render(c) for c in charts],
        level_label=level_label,
        level_key=level_key,
        flag_versions={
            str(f.get("id")): str((f.get("meta") or {}).get("versionId", "")) for f in flags
        },
        flag_notice=FLAG_NOTICES.get(request.query_params.get("flag", "")),
        payer_requests=[payer_requests.read_request(t) for t in tasks],
        payer_notice=PAYER_NOTICES.get(request.query_params.get("payer", "")),
        payer_problem=request.query_params.get("why", "")[:400],
    )


async def _nothing() -> dict[str, Any]:
    return {}


async def _none() -> list[dict[str, Any]]:
    return []
