"""Patient-facing standalone launch (SMART App Launch 2.2, `launch/patient` with patient/ scopes):
a client signs in as a patient user (fhirUser Patient/..) and gets only the self-report screens on
their own record, whichever way they came in; never a clinician screen, never another record."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fhirgoal.auth.users import DEFAULT_PATIENT_SCOPES
from tests.auth.conftest import SmartServer
from tests.webapp.conftest import approve, axe_violations, cli_launch, screenshot, sign_in
from tests.webapp.test_self_report import PATIENT, phone, responses  # noqa: F401  (fixture)

CLIENT_LOGIN, CLIENT_PASSWORD = "alex", "alex-pass-1234"


async def test_a_client_signs_in_to_their_own_self_report_only(
    ehr: SmartServer,
    phone: Any,  # noqa: F811
    axe_source: str,
) -> None:
    page = phone
    users = ehr.app.state.smart.users
    await users.add(CLIENT_LOGIN, CLIENT_PASSWORD, f"Patient/{PATIENT}", DEFAULT_PATIENT_SCOPES)
    await page.goto(f"{ehr.origin}/app/")
    await page.get_by_role("link", name="sign in to fill in your questionnaires").click()
    await sign_in(page, CLIENT_LOGIN, CLIENT_PASSWORD)
    assert await page.locator("select").count() == 0  # their own record: no patient picker
    await approve(page)
    await page.wait_for_url("**/me")
    home = page.url
    key = home.split("/c/")[1].split("/")[0]
    assert await page.locator(".patient-banner, nav, figure.chart").count() == 0

    before = len(await responses(ehr))
    await page.get_by_role("link", name="How have you been doing?").click()
    await page.wait_for_url("**/me/ors")
    lines = page.locator('[role="slider"]')
    assert await lines.count() == 4
    for index in range(4):
        await lines.nth(index).scroll_into_view_if_needed()
        box = await lines.nth(index).bounding_box()
        await page.touchscreen.tap(box["x"] + box["width"] * 0.3, box["y"] + box["height"] / 2)
    assert await axe_violations(page, axe_source) == []
    await screenshot(page, "patient-self-report")
    await page.get_by_role("button", name="Done").click()
    await page.wait_for_url("**/me")
    assert "Saved at" in await page.locator("main").inner_text()
    assert await axe_violations(page, axe_source) == []
    stored = await responses(ehr)
    assert len(stored) == before + 1
    mine = max(stored, key=lambda r: r["authored"])
    assert mine["author"] == {"reference": f"Patient/{PATIENT}"}
    assert [i["answer"][0]["valueDecimal"] for i in mine["item"]] == [3.0] * 4

    # what was granted: patient/ read and the client's own answers, nothing of a clinician's
    grant = await ehr.app.state.smart.db["auth_refresh"].find_one(
        {"fhir_user": f"Patient/{PATIENT}"}
    )
    assert "patient/QuestionnaireResponse.c" in grant["scope"].split()
    assert "cruds" not in grant["scope"] and "user/*" not in grant["scope"]

    # every clinician screen of this launch leads back to the client's own screens
    for tail in ("", "session", "goals/new"):
        await page.goto(f"{ehr.origin}/app/c/{key}/{tail}")
        assert page.url == home
        assert "Alex" not in await page.locator("body").inner_text()

    # through the clinician's door, the client still gets only their own screens
    await page.goto(f"{ehr.origin}/app/")
    await page.get_by_role("link", name="Sign in and choose a client").click()
    await sign_in(page, CLIENT_LOGIN, CLIENT_PASSWORD)
    assert await page.locator("select").count() == 0
    await approve(page)
    await page.wait_for_url("**/me")

    # an EHR launch on another patient is refused to a patient user
    launch = cli_launch(ehr, "demo-blair")
    await page.goto(f"{ehr.origin}/app/launch?iss={quote(ehr.base)}&launch={quote(launch)}")
    await sign_in(page, CLIENT_LOGIN, CLIENT_PASSWORD)
    await approve(page)
    assert "Sign-in did not complete" in await page.locator("main").inner_text()
