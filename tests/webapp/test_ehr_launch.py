"""EHR launch of the clinician app (SMART App Launch 2.2, app-launch.html#launch-app-ehr-launch):
`fhirgoal launch --patient` makes the launch context, the browser opens
`/app/launch?iss=..&launch=..`, signs in and consents at the built-in authorization server, and
lands on the overview of that patient with charts drawn from `$progress`."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from tests.auth.conftest import SmartServer
from tests.webapp.conftest import approve, axe_violations, cli_launch, screenshot, sign_in


async def test_ehr_launch_through_login_and_consent_to_the_overview(
    ehr: SmartServer, page: Any, axe_source: str
) -> None:
    launch = cli_launch(ehr, "demo-blair")
    await page.goto(f"{ehr.origin}/app/launch?iss={quote(ehr.base)}&launch={quote(launch)}")
    assert "/auth/authorize" in page.url  # redirected to the discovered authorization endpoint
    before = {c["name"]: c["value"] for c in await page.context.cookies()}["fhirgoal_app"]
    await sign_in(page)
    await approve(page)  # an EHR launch carries its patient: no picker
    await page.wait_for_url("**/app/c/*/")

    banner = page.locator(".patient-banner")
    assert "Blair" in await banner.inner_text()
    goals = page.locator("table.goals tbody tr")
    assert await goals.count() == 2  # Blair's demo goals
    first_goal = await goals.first.inner_text()
    assert "expected" in first_goal  # the current level, named
    # real charts: ORS with its cutoff and reliable-change band, SRS with the alliance dip
    ors = page.locator('figure[data-chart="ors"]')
    assert await ors.locator(".pt").count() == 12
    assert await ors.locator("polyline.threshold").count() == 1
    assert await ors.locator("rect.band").count() == 1
    srs = page.locator('figure[data-chart="srs"]')
    assert await srs.locator(".pt.alert").count() >= 1
    assert await page.locator('figure[data-chart="tscore"] .pt').count() >= 2
    # the alliance dip opened (and later closed) an alert; whatever is open is listed
    status = await page.locator(".status").inner_text()
    assert status.startswith("Progress:")

    # a point read by keyboard: focus the first, arrow to the next, the readout follows
    first_point = ors.locator(".pt").first
    await first_point.focus()
    await page.keyboard.press("ArrowRight")
    readout = await ors.locator(".readout").inner_text()
    assert "ORS" in readout and "session 2" in readout

    # the tokens stay on the server: the browser holds only the HttpOnly session cookie
    cookies = await page.context.cookies()
    app_cookie = next(c for c in cookies if c["name"] == "fhirgoal_app")
    assert app_cookie["httpOnly"] and app_cookie["sameSite"] == "Lax"
    assert app_cookie["value"] != before  # a new session id once signed in
    assert "eyJ" not in (await page.content())
    response = await page.request.get(page.url)
    csp = response.headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    assert "frame-ancestors 'self'" in csp

    assert await axe_violations(page, axe_source) == []
    await screenshot(page, "overview")


async def test_a_launch_from_an_unknown_fhir_server_is_refused(ehr: SmartServer, page: Any) -> None:
    response = await page.goto(f"{ehr.origin}/app/launch?iss=http://attacker.example/fhir&launch=x")
    assert response is not None and response.status == 403
    assert "not set up for the FHIR server" in await page.locator("main").inner_text()


async def test_a_callback_with_a_foreign_state_is_refused(ehr: SmartServer, page: Any) -> None:
    response = await page.goto(f"{ehr.origin}/app/callback?code=abc&state=forged")
    assert response is not None and response.status == 400
    assert "not started in this browser" in await page.locator("main").inner_text()
