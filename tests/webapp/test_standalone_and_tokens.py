"""Standalone launch from the app's start page (the authorization server's patient picker), and
the session's tokens over time: refreshed before they expire, and a re-launch prompt once the
authorization is gone (SMART App Launch 2.2, app-launch.html#launch-app-standalone-launch and
#step-7-refresh)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from tests.auth.conftest import SmartServer, run_smart
from tests.webapp.conftest import CLINICIAN, approve, open_patient, screenshot, sign_in, with_demo


async def test_standalone_launch_with_the_patient_picker(ehr: SmartServer, page: Any) -> None:
    await page.goto(f"{ehr.origin}/app/")
    await page.get_by_role("link", name="Sign in and choose a client").click()
    await sign_in(page)
    await approve(page, patient="demo-alex")
    await page.wait_for_url("**/app/c/*/")
    assert "Alex" in await page.locator(".patient-banner").inner_text()
    assert await page.locator('figure[data-chart="cmp0"] .pt').count() == 3  # Alex's PHQ-9

    # the start page now lists the open patient; a second standalone launch opens another one
    # beside it, each with its own tokens
    await page.goto(f"{ehr.origin}/app/")
    assert await page.locator("ul.launches li").count() == 1
    await page.get_by_role("link", name="Sign in and choose a client").click()
    await sign_in(page)
    await approve(page, patient="demo-blair")
    await page.wait_for_url("**/app/c/*/")
    assert "Blair" in await page.locator(".patient-banner").inner_text()
    await page.goto(f"{ehr.origin}/app/")
    assert await page.locator("ul.launches li").count() == 2


@pytest.fixture
async def short_tokens(mongo_uri: str) -> AsyncIterator[SmartServer]:
    """Access tokens that live 2 seconds: every page after that needs a refresh."""
    async with run_smart(mongo_uri, access_token_seconds=2) as server:
        yield await with_demo(server)


async def test_tokens_are_refreshed_and_a_revoked_sign_in_asks_to_launch_again(
    short_tokens: SmartServer, page: Any
) -> None:
    overview = await open_patient(page, short_tokens, "demo-blair")
    refreshed = []
    page.on("response", lambda r: refreshed.append(r.url) if r.url.endswith("/token") else None)
    await asyncio.sleep(2.5)  # the access token has expired
    response = await page.goto(overview)
    assert response is not None and response.status == 200, await page.locator("main").inner_text()
    assert "Blair" in await page.locator(".patient-banner").inner_text()
    grants = short_tokens.app.state.smart.db["auth_refresh"]
    assert await grants.count_documents({"used": True}) >= 1  # the app used its refresh token

    # the clinician's login is revoked mid-session: no refresh, the page says to sign in again
    await short_tokens.app.state.smart.users.revoke(CLINICIAN)
    await asyncio.sleep(2.5)
    response = await page.goto(overview)
    assert response is not None and response.status == 401
    main = await page.locator("main").inner_text()
    assert "Please sign in again" in main and "EHR" in main
    assert await page.get_by_role("link", name="Sign in again").count() == 1
    await screenshot(page, "relaunch")
