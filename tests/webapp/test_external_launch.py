"""The same EHR launch against a second server in `external` mode (issue 14, "Done when"): server
B keeps the record and accepts tokens of server A, a real fhirgoal in smart mode acting as the
EHR's authorization server (FHIRGOAL_TOKEN_AUDIENCES names B there). The app served by B is
launched with iss=B, discovers A's endpoints from B's `.well-known/smart-configuration`, signs in
and consents at A, gets a token whose audience is B, and B accepts it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import pytest

from fhirgoal.auth.builtin_app import BUILTIN_APP_SCOPES
from fhirgoal.auth.clients import Client
from fhirgoal.demo import write_demo
from tests.auth.conftest import SmartServer, run_smart
from tests.webapp.conftest import approve, axe_violations, cli_launch, screenshot, sign_in

APP_ON_B = "clinic-b-app"


@pytest.fixture
async def resource_server(ehr: SmartServer, mongo_uri: str) -> AsyncIterator[SmartServer]:
    """Server B in external mode trusting the `ehr` fixture's server A, with the demo data, its
    app registered at A as an EHR administrator would (`fhirgoal client register`)."""
    overrides = {
        "auth": "external", "external_issuer": ehr.base,
        "external_jwks_url": f"{ehr.origin}/auth/jwks", "app_client_id": APP_ON_B,
    }  # fmt: skip
    async with run_smart(mongo_uri, **overrides) as b:
        await write_demo(b.service)
        ehr.settings.token_audiences = b.base  # read per request: B's address is known now
        await ehr.app.state.smart.clients.register(
            Client(APP_ON_B, BUILTIN_APP_SCOPES, redirect_uris=[f"{b.origin}/app/callback"])
        )
        yield b


async def test_ehr_launch_against_a_server_in_external_mode(
    ehr: SmartServer, resource_server: SmartServer, page: Any, axe_source: str
) -> None:
    b = resource_server
    launch = cli_launch(ehr, "demo-blair")  # the EHR (A) makes the launch context
    await page.goto(f"{b.origin}/app/launch?iss={quote(b.base)}&launch={quote(launch)}")
    assert page.url.startswith(f"{ehr.origin}/auth/authorize")  # A's, discovered through B
    await sign_in(page)
    await approve(page)
    await page.wait_for_url(f"{b.origin}/app/c/*/")
    assert "Blair" in await page.locator(".patient-banner").inner_text()
    assert await page.locator('figure[data-chart="ors"] .pt').count() == 12  # B's $progress
    assert await axe_violations(page, axe_source) == []
    await screenshot(page, "external-launch")

    # the grant is A's and names B as audience (B accepted its token for every read above;
    # A refuses such a token: tests/auth/test_external_discovery.py)
    grants = ehr.app.state.smart.db["auth_refresh"]
    assert await grants.count_documents({"client_id": APP_ON_B, "aud": b.base}) == 1
