"""The session screen: ORS and SRS marked on 10 cm visual-analogue lines (keyboard and pointer),
a GAS rating per goal with the level descriptions in view, saved as ONE transaction: a refused
entry leaves nothing stored; a saved session shows the server's new totals and alerts."""

from __future__ import annotations

from typing import Any

from fhirgoal.core.access import UNRESTRICTED
from tests.auth.conftest import SmartServer
from tests.webapp.conftest import axe_violations, open_patient, screenshot

PATIENT = "demo-blair"
ORS_ITEMS = ("ors-individually", "ors-interpersonally", "ors-socially", "ors-overall")
SRS_ITEMS = ("srs-relationship", "srs-goals-and-topics", "srs-approach-or-method", "srs-overall")


async def stored_counts(server: SmartServer) -> dict[str, int]:
    counts = {}
    for rt in ("QuestionnaireResponse", "Observation", "Encounter"):
        found = await server.service.find_resources(
            UNRESTRICTED, rt, [("patient", f"Patient/{PATIENT}")], 5000
        )
        counts[rt] = len(found)
    return counts


def slider(page: Any, link_id: str) -> Any:
    return page.locator(f'.vas-field:has(#mark-{link_id}) [role="slider"]')


async def test_a_session_is_recorded_in_one_transaction_and_fed_back(
    ehr: SmartServer, page: Any, axe_source: str
) -> None:
    overview = await open_patient(page, ehr, PATIENT)
    srs_alerts_before = await page.locator('figure[data-chart="srs"] .pt.alert').count()
    await page.get_by_role("link", name="Session", exact=True).click()
    await page.wait_for_url("**/session")
    before = await stored_counts(ehr)

    # the line is a real slider, keyboard operable, one decimal
    first = slider(page, "ors-individually")
    assert await first.get_attribute("aria-valuetext") == "not marked yet"
    await first.focus()
    await page.keyboard.press("End")
    assert await first.get_attribute("aria-valuenow") == "10.0"
    await page.keyboard.press("Home")
    assert await first.get_attribute("aria-valuenow") == "0.0"
    for key in ("PageUp", "PageUp", "PageUp", "ArrowRight", "ArrowRight", "PageDown", "ArrowUp"):
        await page.keyboard.press(key)
    assert await first.get_attribute("aria-valuenow") == "2.3"
    assert await first.get_attribute("aria-valuetext") == "2.3 out of 10"
    assert await page.locator("#mark-ors-individually").input_value() == "2.3"
    # a mark by pointer three quarters along the line reads 7.5
    box = await slider(page, "ors-interpersonally").bounding_box()
    await page.mouse.click(box["x"] + box["width"] * 0.75, box["y"] + box["height"] / 2)
    assert await page.locator("#mark-ors-interpersonally").input_value() == "7.5"
    # the level descriptions are on screen beside the ratings
    assert "Uses it once or twice a week" in await page.locator("fieldset.ratings").inner_text()

    # one mark typed with two decimals: the server refuses that entry, so nothing is stored
    await page.locator("#mark-ors-socially").fill("6.25")
    await page.locator("#mark-ors-overall").fill("6.0")
    for link_id in SRS_ITEMS:
        await page.locator(f"#mark-{link_id}").fill("7.0")  # total 28: below 36
    await page.get_by_label("+1 Better than expected", exact=False).first.check()
    await page.get_by_label("-1 Less than expected", exact=False).nth(1).check()
    await page.get_by_role("button", name="Save session").click()
    await page.locator("#form-errors").wait_for()
    assert "Nothing was saved" in await page.locator("#form-errors").inner_text()
    assert await page.locator("#mark-ors-socially").get_attribute("aria-invalid") == "true"
    assert await page.locator("#ors-socially-error").count() == 1
    assert await stored_counts(ehr) == before  # the SRS and ratings were not kept either
    assert await page.locator("#mark-ors-interpersonally").input_value() == "7.5"  # kept
    assert await page.locator("#mark-srs-overall").input_value() == "7.0"
    assert await axe_violations(page, axe_source) == []
    await screenshot(page, "session-refused")

    await page.locator("#mark-ors-socially").fill("6.2")
    await page.get_by_role("button", name="Save session").click()
    await page.wait_for_url("**/session/saved")
    # the totals as the server scored them, and the alliance alert the SRS raised
    assert await page.locator("#ors-total").inner_text() == "22.0"  # 2.3 + 7.5 + 6.2 + 6.0
    assert await page.locator("#srs-total").inner_text() == "28.0"
    saved = await page.locator("main").inner_text()
    assert "Alliance alert" in saved and "below 36" in saved
    assert "Alliance concern" in await page.locator(".alerts").inner_text()
    assert await axe_violations(page, axe_source) == []
    await screenshot(page, "session-saved")

    after = await stored_counts(ehr)
    assert after["QuestionnaireResponse"] == before["QuestionnaireResponse"] + 2
    assert after["Encounter"] == before["Encounter"] + 1
    # the two ratings, and the two Observations the server extracted from the responses
    assert after["Observation"] == before["Observation"] + 4
    encounters = await ehr.service.find_resources(
        UNRESTRICTED, "Encounter", [("patient", f"Patient/{PATIENT}")], 5000
    )
    session = max(encounters, key=lambda v: v.resource["period"]["start"] if v.resource else "")
    ratings = await ehr.service.find_resources(
        UNRESTRICTED, "Observation", [("encounter", f"Encounter/{session.id}")], 50
    )
    codes = sorted(
        r.resource["code"]["coding"][0]["code"] for r in ratings if r.resource is not None
    )
    # the placeholder became the Encounter's id in every entry that referenced it
    assert codes.count("107333-7") == 2 and len(codes) == 4

    # the overview follows: a thirteenth ORS point, one more SRS alliance point
    await page.goto(overview)
    assert await page.locator('figure[data-chart="ors"] .pt').count() == 13
    srs_alerts = await page.locator('figure[data-chart="srs"] .pt.alert').count()
    assert srs_alerts == srs_alerts_before + 1
