"""The GAS goal builder: a goal written in the client's words with its five described levels,
weight and scale variant, linked to the diagnosis and the treatment plan; the server's
OperationOutcome issues shown on the fields they name; edit with If-Match; retire."""

from __future__ import annotations

import re
from typing import Any

from fhirgoal.core.access import UNRESTRICTED
from tests.auth.conftest import SmartServer
from tests.webapp.conftest import axe_violations, open_patient, screenshot

LEVELS = {
    "-2": "Avoids every phone call",
    "-1": "Answers calls from family only",
    "0": "Makes one call a week to a friend",
    "+1": "Makes two or three calls a week",
}


def level_box(page: Any, level: str) -> Any:
    return page.get_by_role("textbox", name=re.compile(f"^{re.escape(level)} "))


async def test_a_goal_is_built_checked_by_the_server_edited_and_retired(
    ehr: SmartServer, page: Any, axe_source: str
) -> None:
    overview = await open_patient(page, ehr, "demo-casey")
    await page.get_by_role("link", name="New goal").first.click()
    await page.wait_for_url("**/goals/new")

    # sent without the goal's text: the server's issue appears on the description field
    for level, text in LEVELS.items():
        await level_box(page, level).fill(text)
    await level_box(page, "+2").fill("Calls friends most days")
    await page.get_by_label("Importance to the client").select_option("3")
    await page.get_by_label("Difficulty").select_option("2")
    await page.get_by_label("Partial achievement", exact=False).check()
    await page.get_by_role("button", name="Create goal").click()
    await page.locator("#form-errors").wait_for()
    assert await page.locator("#description").get_attribute("aria-invalid") == "true"
    assert "must not be empty" in await page.locator("#description-error").inner_text()

    # then without the +2 level: the profile's invariant, reported on the Goal, lands on the
    # levels by its key (gas-2)
    await page.get_by_label("The goal, in the client's words").fill("Call a friend every week")
    await level_box(page, "+2").fill("")
    await page.get_by_role("button", name="Create goal").click()
    await page.locator("#levels-error").wait_for()
    assert "progressText" in await page.locator("#levels-error").inner_text()
    assert await page.locator("#description-error").count() == 0
    assert await axe_violations(page, axe_source) == []
    await screenshot(page, "goal-builder-issues")
    goals = await ehr.service.find_resources(UNRESTRICTED, "Goal", [("patient", "demo-casey")], 50)
    assert len(goals) == 2  # nothing stored

    assert await page.get_by_label("The goal, in the client's words").input_value() == (
        "Call a friend every week"
    )  # what was typed is kept
    await level_box(page, "+2").fill("Calls friends most days")
    await page.get_by_label("Post-traumatic stress disorder", exact=False).check()
    await page.get_by_label("Add to treatment plan").select_option(index=1)
    await page.get_by_role("button", name="Create goal").click()
    await page.wait_for_url(overview)
    row = page.locator("table.goals tbody tr", has_text="Call a friend every week")
    assert await row.count() == 1
    assert "not rated yet" in await row.inner_text()

    stored = [
        g.resource
        for g in await ehr.service.find_resources(
            UNRESTRICTED, "Goal", [("patient", "demo-casey")], 50
        )
        if g.resource and g.resource["description"]["text"] == "Call a friend every week"
    ]
    assert len(stored) == 1
    goal = stored[0]
    assert goal["expressedBy"] == {"reference": "Patient/demo-casey"}
    assert goal["addresses"] == [{"reference": "Condition/demo-casey-dx"}]
    plan = await ehr.service.current(UNRESTRICTED, "CarePlan", "demo-casey-plan")
    assert plan is not None and plan.resource is not None
    assert {"reference": f"Goal/{goal['id']}"} in plan.resource["goal"]

    # edit: a new +2 description, saved with If-Match
    await row.get_by_role("link").click()
    await page.wait_for_url(f"**/goals/{goal['id']}")
    assert await page.get_by_label("Importance to the client").input_value() == "3"
    await level_box(page, "+2").fill("Calls or meets friends most days")
    await page.get_by_role("button", name="Save changes").click()
    await page.wait_for_url(overview)
    edited = await ehr.service.current(UNRESTRICTED, "Goal", goal["id"])
    assert edited is not None and edited.resource is not None
    assert "Calls or meets friends most days" in str(edited.resource["extension"])
    assert edited.id == goal["id"]

    # a change made elsewhere meanwhile: the stale form is refused, not written over
    await page.goto(f"{overview}goals/{goal['id']}")
    changed = {**edited.resource, "description": {"text": "Call a friend every week (EHR)"}}
    changed.pop("meta", None)
    await ehr.service.update(UNRESTRICTED, "Goal", goal["id"], changed, None)
    await page.get_by_label("The goal, in the client's words").fill("My own wording")
    await page.get_by_role("button", name="Save changes").click()
    assert "Someone changed this goal" in await page.locator("#form-errors").inner_text()
    assert await page.get_by_label("The goal, in the client's words").input_value() == (
        "Call a friend every week (EHR)"
    )

    # retire: cancelled, kept, and shown so on the overview
    await page.get_by_label("Cancelled", exact=False).check()
    await page.get_by_role("button", name="Retire goal").click()
    await page.wait_for_url(overview)
    retired = await ehr.service.current(UNRESTRICTED, "Goal", goal["id"])
    assert retired is not None and retired.resource is not None
    assert retired.resource["lifecycleStatus"] == "cancelled"
    retired_list = await page.locator("ul.retired").inner_text()
    assert "Call a friend every week (EHR) (cancelled)" in retired_list
