"""The session screen (issue 14, screen 3): ORS and SRS as administered and a GAS rating per
goal, saved as one transaction (session_entry.py), then the new totals and alerts re-read from
`Patient/{id}/$progress`.

- `GET /app/c/{key}/session`: the form, built from the server's ORS/SRS Questionnaires (by
  canonical URL) and the patient's active GAS Goals;
- `POST` the same: one `transaction` Bundle to the FHIR base; a refused entry stores nothing and
  the form comes back with the server's issues on the items and goals they name, and every mark
  and rating as entered; on success 303 to the saved page (a reload never posts twice, and the
  form's token makes a second post of the same form record nothing new anyway);
- `GET /app/c/{key}/session/saved`: the totals, cutoffs, alliance alerts and goal levels as the
  server now computes them, with the ORS and SRS charts.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request, Response

from fhirgoal.webapp import overview
from fhirgoal.webapp.charts import render
from fhirgoal.webapp.context import (
    Screen,
    closed,
    error,
    patient_banner,
    posted_form,
    relaunch,
    screen_of,
)
from fhirgoal.webapp.fhir_api import FhirApi, FhirCallError, NeedsRelaunch
from fhirgoal.webapp.session_entry import (
    GAS_RATING_CODES,
    INSTRUMENTS,
    LOINC,
    GoalChoice,
    Instrument,
    SessionContext,
    SessionForm,
    goal_choice,
    instrument_from,
    records_something,
    session_bundle,
)
from fhirgoal.webapp.summary import level_label, parse_progress

router = APIRouter(prefix="/app", include_in_schema=False)
RATING_CODES = ",".join(f"{LOINC}|{code}" for code in GAS_RATING_CODES)


async def load_instruments(api: FhirApi, keys: tuple[str, ...]) -> list[Instrument]:
    """The instruments the server holds Questionnaires for, in the order asked."""
    found = await asyncio.gather(
        *(api.search("Questionnaire", {"url": INSTRUMENTS[key], "_count": "1"}) for key in keys)
    )
    instruments = []
    for key, questionnaires in zip(keys, found, strict=True):
        instrument = instrument_from(key, questionnaires[0]) if questionnaires else None
        if instrument is not None:
            instruments.append(instrument)
    return instruments


async def _rated(api: FhirApi, patient: str, goal_id: str) -> bool:
    bundle = await api.read(
        "Observation",
        {"patient": f"Patient/{patient}", "focus": f"Goal/{goal_id}", "code": RATING_CODES,
         "_summary": "count"},
    )  # fmt: skip
    return int(bundle.get("total") or 0) > 0


async def _goals(api: FhirApi, patient: str) -> list[GoalChoice]:
    """The patient's active GAS goals, each knowing whether it has been rated before."""
    goals = await api.search(
        "Goal", {"patient": f"Patient/{patient}", "lifecycle-status": "active", "_count": "100"}
    )
    gas = [g for g in goals if goal_choice(g, rated=True) is not None]
    rated = await asyncio.gather(*(_rated(api, patient, str(g["id"])) for g in gas))
    return [
        choice
        for goal, was_rated in zip(gas, rated, strict=True)
        if (choice := goal_choice(goal, was_rated)) is not None
    ]


async def _render(screen: Screen, form: SessionForm, status: int = 200) -> Response:
    patient, instruments, goals = await asyncio.gather(
        screen.api.read(f"Patient/{screen.patient_id}"),
        load_instruments(screen.api, ("ors", "srs")),
        _goals(screen.api, screen.patient_id),
    )
    done = screen.launch.self_reported
    return screen.render(
        "session.html",
        status,
        patient=patient_banner(patient),
        show_banner=screen.launch.tokens.need_patient_banner,
        form=form,
        # what the client completed on this device is not asked for again
        instruments=[i for i in instruments if i.key not in done],
        self_reported=[(i, done[i.key]) for i in instruments if i.key in done],
        goals=goals,
    )


async def _guarded(request: Request, screen: Screen, work: Any) -> Response:
    try:
        response: Response = await work
        return response
    except NeedsRelaunch as exc:
        return relaunch(request, screen.launch, str(exc))
    except FhirCallError as exc:
        return error(request, "The FHIR server refused", str(exc), 502)


@router.get("/c/{key}/session")
async def session_form(request: Request, key: str) -> Response:
    screen = screen_of(request, key)
    if screen is None:
        return closed(request)
    return await _guarded(request, screen, _render(screen, SessionForm()))


def now_instant() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@router.post("/c/{key}/session")
async def save_session(request: Request, key: str) -> Response:
    opened = await posted_form(request, key)
    if isinstance(opened, Response):
        return opened
    screen, posted = opened
    form = SessionForm.from_post(posted)

    async def work() -> Response:
        instruments, goals = await asyncio.gather(
            load_instruments(screen.api, ("ors", "srs")), _goals(screen.api, screen.patient_id)
        )
        tokens = screen.launch.tokens
        context = SessionContext(
            patient=screen.patient_id,
            performer=tokens.fhir_user,
            encounter=tokens.encounter,
            when=now_instant(),
        )
        asked = [i for i in instruments if i.key not in screen.launch.self_reported]
        bundle, roles = session_bundle(form, asked, goals, context)
        if not records_something(roles):
            form.general.append("Nothing to save: mark the ORS or SRS lines, or rate a goal.")
            return await _render(screen, form, 422)
        try:
            await screen.api.transaction(bundle)
        except FhirCallError as exc:
            if exc.status >= 500:
                raise
            form.place(exc.issues, roles)
            if not form.general and not form.errors:
                form.general.append(str(exc))
            return await _render(screen, form, 422)
        return Response(status_code=303, headers={"Location": screen.url("session/saved")})

    return await _guarded(request, screen, work())


@router.get("/c/{key}/session/saved")
async def session_saved(request: Request, key: str) -> Response:
    screen = screen_of(request, key)
    if screen is None:
        return closed(request)

    async def work() -> Response:
        has_progress = "Patient/progress" in screen.launch.operations
        patient = await screen.api.read(f"Patient/{screen.patient_id}")
        progress = None
        if has_progress:
            progress = parse_progress(
                await screen.api.read(f"Patient/{screen.patient_id}/$progress")
            )
        charts = []
        if progress is not None:
            charts = [render(overview.ors_chart(progress)), render(overview.srs_chart(progress))]
        return screen.render(
            "session_saved.html",
            patient=patient_banner(patient),
            show_banner=screen.launch.tokens.need_patient_banner,
            progress=progress,
            charts=charts,
            level_label=level_label,
        )

    return await _guarded(request, screen, work())
