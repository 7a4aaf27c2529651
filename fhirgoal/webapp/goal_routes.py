"""The GAS goal builder (issue 14, screen 2): create, edit and retire a launched patient's GAS
goals, written to the FHIR server as PCO GAS Goals (gas_goal.py).

- create: `POST Goal`; when a CarePlan is chosen the goal is then added to its `goal` list
  (`PUT CarePlan` with If-Match: R4 links plan -> goal, https://hl7.org/fhir/R4/careplan.html);
- edit: `PUT Goal/{id}` with If-Match on the version the form was opened on (412 when someone
  else changed it: the form says so instead of overwriting, https://hl7.org/fhir/R4/http.html#concurrency);
- retire: the same update with `lifecycleStatus` completed, cancelled or entered-in-error
  (https://hl7.org/fhir/R4/valueset-goal-status.html); nothing is deleted.
"""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request, Response

from fhirgoal.webapp.context import (
    Screen,
    closed,
    error,
    first,
    patient_banner,
    posted_form,
    relaunch,
    screen_of,
)
from fhirgoal.webapp.fhir_api import FhirCallError, NeedsRelaunch
from fhirgoal.webapp.gas_goal import LEVELS, SCALE_0_3, VARIANTS, GoalForm, goal_resource

router = APIRouter(prefix="/app", include_in_schema=False)
RETIRE_STATUSES = [
    ("completed", "Completed: the goal was reached or the work on it ended"),
    ("cancelled", "Cancelled: no longer pursued"),
    ("entered-in-error", "Entered in error"),
]


async def _render_form(
    screen: Screen, form: GoalForm, goal: dict[str, Any] | None, status: int = 200
) -> Response:
    patient, conditions, plans = await asyncio.gather(
        screen.api.read(f"Patient/{screen.patient_id}"),
        screen.api.search("Condition", {"patient": f"Patient/{screen.patient_id}", "_count": "50"}),
        screen.api.search("CarePlan", {"patient": f"Patient/{screen.patient_id}", "status": "active", "_count": "50"}),
    )  # fmt: skip
    return screen.render(
        "goal_form.html",
        status,
        patient=patient_banner(patient),
        show_banner=screen.launch.tokens.need_patient_banner,
        form=form,
        goal=goal,
        levels=LEVELS,
        variants=VARIANTS,
        scale=SCALE_0_3,
        retire_statuses=RETIRE_STATUSES,
        conditions=[(f"Condition/{c['id']}", _label(c)) for c in conditions],
        plans=[(f"CarePlan/{p['id']}", p.get("title") or f"CarePlan/{p['id']}") for p in plans],
    )


def _label(condition: dict[str, Any]) -> str:
    code = condition.get("code") or {}
    coding = (code.get("coding") or [{}])[0]
    return str(code.get("text") or coding.get("display") or coding.get("code") or condition["id"])


async def _guarded(request: Request, screen: Screen, work: Any) -> Response:
    try:
        response: Response = await work
        return response
    except NeedsRelaunch as exc:
        return relaunch(request, screen.launch, str(exc))
    except FhirCallError as exc:
        return error(request, "The FHIR server refused", str(exc), 502)


@router.get("/c/{key}/goals/new")
async def new_goal(request: Request, key: str) -> Response:
    screen = screen_of(request, key)
    if screen is None:
        return closed(request)
    return await _guarded(request, screen, _render_form(screen, GoalForm(), None))


@router.post("/c/{key}/goals/new")
async def create_goal(request: Request, key: str) -> Response:
    opened = await posted_form(request, key)
    if isinstance(opened, Response):
        return opened
    screen, posted = opened
    form = GoalForm.from_post(posted)
    return await _guarded(request, screen, _create(screen, form))


async def _create(screen: Screen, form: GoalForm) -> Response:
    try:
        created = await screen.api.write("POST", "Goal", goal_resource(form, screen.patient_id))
    except FhirCallError as exc:
        if exc.status >= 500:
            raise
        form.place(exc.issues)
        return await _render_form(screen, form, None, 422)
    if form.care_plan.startswith("CarePlan/"):
        try:
            await _add_to_plan(screen, form.care_plan, f"Goal/{created['id']}")
        except FhirCallError as exc:
            saved = GoalForm.from_goal(created)
            saved.general.append(
                f"The goal was saved, but could not be added to {form.care_plan}: {exc}"
            )
            return await _render_form(screen, saved, created, 409)
    return Response(status_code=303, headers={"Location": screen.url()})


async def _add_to_plan(screen: Screen, plan_ref: str, goal_ref: str) -> None:
    plan = await screen.api.read(plan_ref)
    goals = list(plan.get("goal") or [])
    if any(g.get("reference") == goal_ref for g in goals):
        return
    version = (plan.pop("meta", None) or {}).get("versionId")
    plan["goal"] = [*goals, {"reference": goal_ref}]
    await screen.api.write("PUT", plan_ref, plan, if_match=version)


@router.get("/c/{key}/goals/{goal_id}")
async def edit_goal(request: Request, key: str, goal_id: str) -> Response:
    screen = screen_of(request, key)
    if screen is None:
        return closed(request)

    async def work() -> Response:
        goal = await screen.api.read(f"Goal/{goal_id}")
        return await _render_form(screen, GoalForm.from_goal(goal), goal)

    return await _guarded(request, screen, work())


@router.post("/c/{key}/goals/{goal_id}")
async def update_goal(request: Request, key: str, goal_id: str) -> Response:
    opened = await posted_form(request, key)
    if isinstance(opened, Response):
        return opened
    screen, posted = opened

    async def work() -> Response:
        goal = await screen.api.read(f"Goal/{goal_id}")
        version = first(posted, "version")
        retire = first(posted, "retire")
        if retire:
            form = GoalForm.from_goal(goal)
            resource = {**goal, "lifecycleStatus": retire}
            resource.pop("meta", None)
        else:
            form = GoalForm.from_post(posted)
            resource = goal_resource(form, screen.patient_id, goal)
        try:
            await screen.api.write("PUT", f"Goal/{goal_id}", resource, if_match=version)
        except FhirCallError as exc:
            if exc.status in (409, 412):
                form = GoalForm.from_goal(goal)  # what is stored now
                form.general.append(
                    "Someone changed this goal since you opened it, so nothing was saved. "
                    "The form now shows the stored goal: make your change again."
                )
            elif exc.status >= 500:
                raise
            else:
                form.place(exc.issues)
            return await _render_form(screen, form, goal, 409 if exc.status in (409, 412) else 422)
        return Response(status_code=303, headers={"Location": screen.url()})

    return await _guarded(request, screen, work())
