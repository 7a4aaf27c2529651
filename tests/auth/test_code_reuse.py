"""An authorization code presented twice revokes every token issued from it, access tokens included
(RFC 6749 section 4.1.2), on this replica at once and on the others within
revocation_check_seconds; a replayed refresh token does the same for its grant (RFC 9700 4.14.2).
Real HTTP, real servers sharing one database."""

from __future__ import annotations

from typing import Any

import httpx

from fhirgoal.config import Settings
from fhirgoal.core.access import UNRESTRICTED
from tests.auth.conftest import SmartServer
from tests.auth.flows import REDIRECT, Browser, pkce, refused
from tests.conftest import start_server
from tests.helpers import wait_until

SCOPE = "launch/patient openid fhirUser offline_access patient/*.rs"


async def exchange(browser: Browser) -> tuple[dict[str, str], dict[str, Any]]:
    verifier, challenge = pkce()
    redirect = await browser.sign_in(SCOPE, challenge, patient="pa")
    form = {"grant_type": "authorization_code", "code": redirect["code"][0],
            "redirect_uri": REDIRECT, "code_verifier": verifier}  # fmt: skip
    response = await browser.token(**form)
    assert response.status_code == 200, response.text
    return form, response.json()


async def test_reusing_a_code_revokes_its_access_and_refresh_tokens(browser: Browser) -> None:
    form, first = await exchange(browser)
    _, other = await exchange(browser)  # another grant of the same user and app: untouched
    async with browser.smart.client(first["access_token"]) as fhir:
        assert (await fhir.get("/Patient/pa")).status_code == 200  # verified and cached
        again = await browser.token(**form)
        assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
        # the cached verification is dropped at once on this replica
        assert (await fhir.get("/Patient/pa")).status_code == 401
    introspection = await browser.http.post(
        "/auth/introspect", data={"client_id": "webapp", "token": first["access_token"]}
    )
    assert introspection.json() == {"active": False}
    refreshed = await browser.token(grant_type="refresh_token", refresh_token=first["refresh_token"])  # fmt: skip
    assert refreshed.status_code == 400
    async with browser.smart.client(other["access_token"]) as fhir:
        assert (await fhir.get("/Patient/pa")).status_code == 200
    smart = browser.smart
    await smart.app.state.auth_runtime.auditor.flush()
    found = await smart.service.repo.find(UNRESTRICTED, "AuditEvent", {}, [("_id", 1)], 500)
    alerts = [
        v.resource for v in found
        if v.resource and any(s["code"] == "code-reused" for s in v.resource.get("subtype", []))
    ]  # fmt: skip
    assert len(alerts) == 1 and alerts[0]["outcome"] == "8"
    assert alerts[0]["type"]["code"] == "110113"


async def test_a_replayed_refresh_token_revokes_the_grant_s_access_tokens(
    browser: Browser,
) -> None:
    _, first = await exchange(browser)
    rotated = await browser.token(grant_type="refresh_token", refresh_token=first["refresh_token"])  # fmt: skip
    assert rotated.status_code == 200
    newer = rotated.json()["access_token"]
    async with browser.smart.client(newer) as fhir:
        assert (await fhir.get("/Patient/pa")).status_code == 200
        replay = await browser.token(grant_type="refresh_token", refresh_token=first["refresh_token"])  # fmt: skip
        assert replay.status_code == 400
        assert (await fhir.get("/Patient/pa")).status_code == 401
    async with browser.smart.client(first["access_token"]) as fhir:
        assert (await fhir.get("/Patient/pa")).status_code == 401


async def test_another_replica_drops_a_revoked_token_within_the_check_interval(
    browser: Browser,
) -> None:
    smart: SmartServer = browser.smart
    # a second replica on the same database, behind the same public base URL
    values = {
        **smart.settings.model_dump(),
        "revocation_check_seconds": 0.3,
        "base_url": smart.base,
    }
    server, task, port = await start_server(Settings(**values))
    try:
        form, first = await exchange(browser)
        headers = {"Authorization": f"Bearer {first['access_token']}"}
        base = f"http://127.0.0.1:{port}/fhir"
        async with httpx.AsyncClient(base_url=base, timeout=30, headers=headers) as replica:
            assert (await replica.get("/Patient/pa")).status_code == 200  # cached there now
            assert (await browser.token(**form)).status_code == 400  # reuse, on the first
            # the replica rereads revocations every 0.3 s
            await wait_until(refused(replica), within=10, what="the replica saw the revocation")
    finally:
        server.should_exit = True
        await task
