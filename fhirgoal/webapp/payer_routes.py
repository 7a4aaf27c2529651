"""The clinician's answers to a payer request (payer_requests.py): approve, or refuse with a
reason, through the server's `Task/{id}/$approve` and `Task/{id}/$reject`. The server's
OperationOutcome (evidence gaps an auditor would cite, a request answered meanwhile) is shown on
the overview as it comes."""

from __future__ import annotations

from urllib.parse import quote

from fastapi import APIRouter, Request, Response

from fhirgoal.webapp.context import error, first, posted_form, relaunch
from fhirgoal.webapp.fhir_api import FhirCallError, NeedsRelaunch

router = APIRouter(prefix="/app", include_in_schema=False)
REASON_LIMIT = 500


@router.post("/c/{key}/payer-requests/{task_id}")
async def answer_request(request: Request, key: str, task_id: str) -> Response:
    opened = await posted_form(request, key)
    if isinstance(opened, Response):
        return opened
    screen, posted = opened
    answer, reason = first(posted, "answer"), first(posted, "reason").strip()[:REASON_LIMIT]
    if answer not in ("approve", "reject"):
        return error(request, "Form refused", "Approve or refuse the request.", 400)
    if answer == "reject" and not reason:
        return Response(status_code=303, headers={"Location": screen.url("?payer=reason")})
    parameters: dict[str, object] = {"resourceType": "Parameters"}
    if answer == "reject":
        parameters["parameter"] = [{"name": "reason", "valueString": reason}]
    try:
        await screen.api.request(
            "POST", f"Task/{task_id}/${answer}", json=parameters,
            headers={"Content-Type": "application/fhir+json"},
        )  # fmt: skip
    except NeedsRelaunch as exc:
        return relaunch(request, screen.launch, str(exc))
    except FhirCallError as exc:
        if exc.status >= 500:
            return error(request, "The FHIR server failed", str(exc), 502)
        problem = quote(str(exc)[:400], safe="")
        return Response(
            status_code=303, headers={"Location": screen.url(f"?payer=refused&why={problem}")}
        )
    done = "approved" if answer == "approve" else "rejected"
    return Response(status_code=303, headers={"Location": screen.url(f"?payer={done}")})
