"""Client self-report on a phone-sized screen: the clinician hands the device over from the
session screen, the client marks the ORS by touch with nothing of the record in view, and the
device comes back to the clinician only through the clinician's sign-in."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from fhirgoal.core.access import UNRESTRICTED
from tests.auth.conftest import SmartServer
from tests.webapp.conftest import approve, axe_violations, open_patient, screenshot, sign_in

PATIENT = "demo-alex"
ITEMS = ("ors-individually", "ors-interpersonally", "ors-socially", "ors-overall")


@pytest.fixture
async def phone(chromium: Any) -> AsyncIterator[Any]:
    """A 360 px wide touch screen."""
    context = await chromium.new_context(
        viewport={"width": 360, "height": 780}, has_touch=True, is_mobile=True
    )
    page = await context.new_page()
    page.set_default_timeout(20_000)
    yield page
    await context.close()


async def responses(server: SmartServer) -> list[dict[str, Any]]:
    found = await server.service.find_resources(
        UNRESTRICTED, "QuestionnaireResponse", [("patient", f"Patient/{PATIENT}")], 5000
    )
    return [v.resource for v in found if v.resource is not None]


async def test_the_client_self_reports_and_hands_back_through_the_clinicians_sign_in(
    ehr: SmartServer, phone: Any, axe_source: str
) -> None:
    page = phone
    overview = await open_patient(page, ehr, PATIENT)
    await page.goto(f"{overview}session")
    before = len(await responses(ehr))
    await page.get_by_role("button", name="Hand to the client: ORS, before the session").click()
    await page.wait_for_url("**/client/ors")

    # nothing of the record: no banner, no navigation, no name, no scores
    text = await page.locator("body").inner_text()
    assert "Alex" not in text and "Rivera" not in text and PATIENT not in text
    assert await page.locator(".patient-banner, nav, figure.chart").count() == 0
    # large touch targets: every line and the button at least 44 px tall
    lines = page.locator('[role="slider"]')
    assert await lines.count() == 4
    for index in range(4):
        await lines.nth(index).scroll_into_view_if_needed()
        box = await lines.nth(index).bounding_box()
        assert box["height"] >= 44 and box["x"] + box["width"] <= 360
        # a tap at 60 % of each line
        await page.touchscreen.tap(box["x"] + box["width"] * 0.6, box["y"] + box["height"] / 2)
    done = await page.get_by_role("button", name="Done").bounding_box()
    assert done["height"] >= 44
    for link_id in ITEMS:
        assert await page.locator(f"#mark-{link_id}").input_value() == "6.0"
    assert await axe_violations(page, axe_source) == []
    await screenshot(page, "self-report")

    await page.get_by_role("button", name="Done").click()
    await page.wait_for_url("**/app/")
    assert "hand this device back" in await page.locator("main").inner_text()
    stored = await responses(ehr)
    assert len(stored) == before + 1
    mine = next(r for r in stored if r["authored"] == max(s["authored"] for s in stored))
    assert mine["author"] == {"reference": f"Patient/{PATIENT}"}
    assert [i["answer"][0]["valueDecimal"] for i in mine["item"]] == [6.0] * 4
    assert await axe_violations(page, axe_source) == []
    await screenshot(page, "hand-back")

    # the record stays closed whatever the client tries: Back, the overview's URL, the start page
    for url in (overview, f"{overview}session", f"{overview}goals/new"):
        response = await page.goto(url)
        assert response is not None and response.status == 403
        assert "Alex" not in await page.locator("body").inner_text()

    # someone else's sign-in (or another client) does not reopen it
    await page.get_by_role("link", name="Clinician: sign in to continue").click()
    await sign_in(page)
    await approve(page, patient="demo-blair")
    assert "Not the same sign-in" in await page.locator("main").inner_text()
    response = await page.goto(overview)
    assert response is not None and response.status == 403

    # the clinician signs in again on the same client: back on the session screen, where the
    # ORS the client gave is not asked for again
    await page.goto(f"{ehr.origin}/app/")
    await page.get_by_role("link", name="Clinician: sign in to continue").click()
    await sign_in(page)
    await approve(page, patient=PATIENT)
    await page.wait_for_url("**/session")
    assert "completed by the client on this device" in await page.locator("main").inner_text()
    assert await page.locator("#mark-ors-individually").count() == 0
    assert await page.locator("#mark-srs-overall").count() == 1
