"""The login and consent pages under attack (issue 12): `state` is required (RFC 6749 4.1.2.1,
SMART App Launch 2.2), login and consent are bound to the browser that opened them (OWASP CSRF
Prevention Cheat Sheet), and repeated failed logins are throttled per user name and per address
(OWASP Authentication Cheat Sheet). Real HTTP, forms followed by hand as a browser would."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import httpx

from fhirgoal.auth.clients import Client
from tests.auth.conftest import run_smart
from tests.auth.flows import REDIRECT, Browser, hidden, pkce


async def test_an_authorization_request_without_state_is_refused_by_redirect(
    browser: Browser,
) -> None:
    _, challenge = pkce()
    params = browser.authorize_params("patient/*.rs", challenge)
    del params["state"]
    response = await browser.http.get("/auth/authorize", params=params)
    assert response.status_code == 303
    location = response.headers["location"]
    assert location.startswith(REDIRECT)
    query = parse_qs(urlsplit(location).query)
    assert query["error"] == ["invalid_request"] and "state" in query["error_description"][0]


async def login_page(browser: Browser) -> str:
    _, challenge = pkce()
    params = browser.authorize_params("patient/*.rs launch/patient", challenge)
    page = await browser.http.get("/auth/authorize", params=params)
    assert page.status_code == 200
    cookie = page.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=strict" in cookie and "path=/auth" in cookie
    return page.text


async def test_a_login_posted_from_another_browser_is_refused(browser: Browser) -> None:
    page = await login_page(browser)
    form = {"request": hidden(page, "request"), "csrf": hidden(page, "csrf"),
            "username": "lee", "password": "s3cret-pass"}  # fmt: skip
    # the attacker knows the request id and even the field, but not the victim's cookie
    async with httpx.AsyncClient(base_url=browser.smart.origin, timeout=30) as other:
        refused = await other.post("/auth/login", data=form)
        assert refused.status_code == 403
        assert "Allow access" not in refused.text
    # the right cookie with a wrong field is refused too
    wrong_field = await browser.http.post("/auth/login", data={**form, "csrf": "x" * 43})
    assert wrong_field.status_code == 403
    # the browser that opened the page signs in
    consent = await browser.http.post("/auth/login", data=form)
    assert consent.status_code == 200 and "Allow access" in consent.text


async def test_a_consent_posted_from_another_browser_is_refused(browser: Browser) -> None:
    page = await login_page(browser)
    consent = await browser.http.post("/auth/login", data={
        "request": hidden(page, "request"), "csrf": hidden(page, "csrf"),
        "username": "lee", "password": "s3cret-pass",
    })  # fmt: skip
    decision = {"request": hidden(consent.text, "request"), "nonce": hidden(consent.text, "nonce"),
                "csrf": hidden(consent.text, "csrf"), "decision": "approve", "patient": "pa"}  # fmt: skip
    async with httpx.AsyncClient(base_url=browser.smart.origin, timeout=30) as other:
        assert (await other.post("/auth/consent", data=decision)).status_code == 403
    approved = await browser.http.post("/auth/consent", data=decision)
    assert approved.status_code == 303 and "code=" in approved.headers["location"]


async def test_failed_logins_for_one_user_are_throttled(browser: Browser) -> None:
    page = await login_page(browser)
    form = {"request": hidden(page, "request"), "csrf": hidden(page, "csrf"), "username": "lee"}
    limit = browser.smart.settings.login_max_failures_per_user
    for _ in range(limit):
        wrong = await browser.http.post("/auth/login", data={**form, "password": "wrong"})
        assert wrong.status_code == 401
    # now even the right password is refused, with a clear message and Retry-After
    throttled = await browser.http.post("/auth/login", data={**form, "password": "s3cret-pass"})
    assert throttled.status_code == 429
    assert "Too many failed sign-ins" in throttled.text and "Try again in 15 minutes" in throttled.text  # fmt: skip
    retry = int(throttled.headers["retry-after"])
    assert 0 < retry <= browser.smart.settings.login_failure_window_seconds
    assert 'name="password"' in throttled.text  # the page stays usable for later


async def test_failed_logins_from_one_address_are_throttled(mongo_uri: str) -> None:
    async with run_smart(mongo_uri, login_max_failures_per_address=3) as smart:
        await smart.app.state.smart.users.add("ann", "ann-pass-123", "Practitioner/a", "user/*.rs")
        async with httpx.AsyncClient(base_url=smart.origin, timeout=30) as http:
            await smart.app.state.smart.clients.register(
                Client(client_id="webapp", scopes="user/*.rs", redirect_uris=[REDIRECT])
            )
            _, challenge = pkce()
            page = await http.get("/auth/authorize", params={
                "response_type": "code", "client_id": "webapp", "redirect_uri": REDIRECT,
                "scope": "user/*.rs", "state": "s", "aud": smart.base,
                "code_challenge": challenge, "code_challenge_method": "S256",
            })  # fmt: skip
            form = {"request": hidden(page.text, "request"), "csrf": hidden(page.text, "csrf")}
            for name in ("u1", "u2", "u3"):  # a spray of user names from one address
                response = await http.post("/auth/login", data={**form, "username": name, "password": "x"})  # fmt: skip
                assert response.status_code == 401
            sprayed = await http.post("/auth/login", data={**form, "username": "ann", "password": "ann-pass-123"})  # fmt: skip
            assert sprayed.status_code == 429 and "retry-after" in sprayed.headers
