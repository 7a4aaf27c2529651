"""Client self-report (issue 14, screen 4): the clinician hands the device to the client, who
marks the ORS before the session or the SRS after it, on a phone-sized screen with large touch
targets and nothing of the record in view; then hands the device back.

The hand-back needs the clinician's sign-in again. Chosen over a PIN-less "hand back" button
because the device is in the client's hands: any button that leads back to the record would
lead the client there too. While handed over, the browser session is in client mode on the
server (sessions.Handover): every clinician page of this browser, the start page included,
answers with the hand-back page, so Back, a bookmark or an edited URL show nothing; the way
out is a new authorization request with `prompt=login` (launch_routes.hand_back) that must
come back with the same clinician (`fhirUser`) on the same patient. The tokens stay on the
server throughout and are used only to save the client's response. Why no PIN: a PIN would be
one more secret to manage and reset, where the clinician's sign-in already exists and is the
authorization server's to protect (throttling, audit).

The response is saved like the session screen saves it (session_entry.py): one transaction,
the server's Questionnaire, `author` and `source` the client, the EHR's Encounter if the
launch has one (self-report creates none: the clinician's session screen does).
"""

from __future__ import annotations

from dataclasses import replace

from fastapi import APIRouter, Request, Response

from fhirgoal.webapp.context import (
    FORM_REFUSED,
    Screen,
    client_screen_of,
    closed,
    error,
    first,
    form_of,
    posted_form,
    relaunch,
)
from fhirgoal.webapp.fhir_api import FhirCallError, NeedsRelaunch
from fhirgoal.webapp.session_entry import (
    INSTRUMENTS,
    SessionContext,
    SessionForm,
    records_something,
    session_bundle,
)
from fhirgoal.webapp.session_routes import load_instruments, now_instant
from fhirgoal.webapp.sessions import Handover

router = APIRouter(prefix="/app", include_in_schema=False)
WHEN = {"ors": "before the session", "srs": "after the session"}


@router.post("/c/{key}/handover")
async def hand_over(request: Request, key: str) -> Response:
    opened = await posted_form(request, key)
    if isinstance(opened, Response):
        return opened
    screen, posted = opened
    instrument = first(posted, "instrument")
    if instrument not in INSTRUMENTS:
        return error(request, "Form refused", FORM_REFUSED, 403)
    screen.session.handover = Handover(key, instrument)
    return Response(status_code=303, headers={"Location": screen.url(f"client/{instrument}")})


def _client_screen(request: Request, key: str, instrument: str) -> Screen | None:
    screen = client_screen_of(request, key)
    handover = screen.session.handover if screen else None
    if handover is None or handover.instrument != instrument or handover.done:
        return None
    return screen


async def render_report(
    screen: Screen, instrument: str, form: SessionForm, status: int, action: str
) -> Response:
    """The client's form of one instrument (`action`: where it posts)."""
    instruments = await load_instruments(screen.api, (instrument,))
    return screen.render(
        "client_report.html",
        status,
        instruments=instruments,
        form=form,
        when=WHEN[instrument],
        instrument=instrument,
        action=action,
    )


async def _render(screen: Screen, instrument: str, form: SessionForm, status: int) -> Response:
    return await render_report(screen, instrument, form, status, screen.url(f"client/{instrument}"))


async def save_report(
    screen: Screen, instrument: str, form: SessionForm, action: str
) -> Response | str:
    """Save the client's answers as one transaction: the instant saved, or the form again (422)
    with what to correct. NeedsRelaunch and a server failure (FhirCallError) propagate."""
    instruments = await load_instruments(screen.api, (instrument,))
    when = now_instant()
    context = SessionContext(
        patient=screen.patient_id,
        performer=None,  # the client answers and records: author and source
        encounter=screen.launch.tokens.encounter,
        when=when,
        new_encounter=False,
    )
    bundle, roles = session_bundle(form, instruments, [], context)
    if not records_something(roles):
        form.general.append("Please put a mark on each line.")
        return await render_report(screen, instrument, form, 422, action)
    try:
        await screen.api.transaction(bundle)
    except FhirCallError as exc:
        if exc.status >= 500:
            raise
        form.place(exc.issues, roles)
        return await render_report(screen, instrument, form, 422, action)
    return when


@router.get("/c/{key}/client/{instrument}")
async def client_form(request: Request, key: str, instrument: str) -> Response:
    screen = _client_screen(request, key, instrument)
    if screen is None:
        return closed(request)
    try:
        return await _render(screen, instrument, SessionForm(), 200)
    except NeedsRelaunch as exc:
        return relaunch(request, screen.launch, str(exc))
    except FhirCallError:
        return error(request, "Something went wrong", "Please hand the device back.", 502)


@router.post("/c/{key}/client/{instrument}")
async def client_save(request: Request, key: str, instrument: str) -> Response:
    screen = _client_screen(request, key, instrument)
    if screen is None:
        return closed(request)
    posted = await form_of(request, screen.session)
    if posted is None:
        return error(request, "Form refused", "Please hand the device back.", 403)
    form = SessionForm.from_post(posted)
    try:
        saved = await save_report(screen, instrument, form, screen.url(f"client/{instrument}"))
        if isinstance(saved, Response):
            return saved
        when = saved
    except NeedsRelaunch as exc:
        return relaunch(request, screen.launch, str(exc))
    except FhirCallError:
        return error(request, "Something went wrong", "Please hand the device back.", 502)
    screen.launch.self_reported[instrument] = when
    handover = screen.session.handover
    assert handover is not None
    screen.session.handover = replace(handover, done=True)
    return Response(status_code=303, headers={"Location": "/app/"})
