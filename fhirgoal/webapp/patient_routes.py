"""The patient-facing app (issue 14: "a patient-facing standalone launch (`patient/` scopes) for
self-report"): a client, signed in as a patient user on their own record (SMART App Launch 2.2
standalone launch with `launch/patient`; fhirUser Patient/..), gets only the self-report screens
(screen 4: the ORS before a session, the SRS after it) and nothing of the clinician's view. Every
clinician screen answers a patient launch with a redirect here (context.closed).

- `GET /app/c/{key}/me`: the client's start: the two instruments, and what was saved;
- `GET|POST /app/c/{key}/me/{instrument}`: the form, saved as the clinician-handed self-report is
  (selfreport_routes.save_report: one transaction, `author` and `source` the client).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from fhirgoal.webapp.context import (
    closed,
    error,
    form_of,
    patient_screen_of,
    relaunch,
)
from fhirgoal.webapp.fhir_api import FhirCallError, NeedsRelaunch
from fhirgoal.webapp.selfreport_routes import render_report, save_report
from fhirgoal.webapp.session_entry import INSTRUMENTS, SessionForm

router = APIRouter(prefix="/app", include_in_schema=False)
CHOICES = (("ors", "How have you been doing?", "Before your session"),
           ("srs", "How was today's session?", "After your session"))  # fmt: skip


@router.get("/c/{key}/me")
async def patient_home(request: Request, key: str) -> Response:
    screen = patient_screen_of(request, key)
    if screen is None:
        return closed(request)
    done = screen.launch.self_reported
    return screen.render("patient_home.html", choices=CHOICES, done=done)


@router.get("/c/{key}/me/{instrument}")
async def patient_form(request: Request, key: str, instrument: str) -> Response:
    screen = patient_screen_of(request, key)
    if screen is None or instrument not in INSTRUMENTS:
        return closed(request)
    try:
        return await render_report(screen, instrument, SessionForm(), 200, request.url.path)
    except NeedsRelaunch as exc:
        return relaunch(request, screen.launch, str(exc))
    except FhirCallError:
        return error(request, "Something went wrong", "Please try again later.", 502)


@router.post("/c/{key}/me/{instrument}")
async def patient_save(request: Request, key: str, instrument: str) -> Response:
    screen = patient_screen_of(request, key)
    if screen is None or instrument not in INSTRUMENTS:
        return closed(request)
    posted = await form_of(request, screen.session)
    if posted is None:
        return error(request, "Form refused", "Please open the form again and retry.", 403)
    try:
        saved = await save_report(
            screen, instrument, SessionForm.from_post(posted), request.url.path
        )
    except NeedsRelaunch as exc:
        return relaunch(request, screen.launch, str(exc))
    except FhirCallError:
        return error(request, "Something went wrong", "Please try again later.", 502)
    if isinstance(saved, Response):
        return saved
    screen.launch.self_reported[instrument] = saved
    return Response(status_code=303, headers={"Location": screen.url("me")})
