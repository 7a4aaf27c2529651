"""The authorization code flow driven through the login and consent pages over real HTTP, as a
browser would (forms followed by hand): standalone launch with the patient picker, EHR launch,
PKCE S256, single-use codes, openid/fhirUser id_token, refresh token rotation
(https://hl7.org/fhir/smart-app-launch/app-launch.html, RFC 7636, RFC 9700 section 4.14.2)."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from fhirgoal.auth.state import create_launch
from tests.auth.flows import REDIRECT, Browser, hidden, pkce


async def test_standalone_launch_with_patient_picker_and_pkce(browser: Browser) -> None:
    verifier, challenge = pkce()
    scope = "launch/patient openid fhirUser offline_access patient/*.rs"
    redirect = await browser.sign_in(scope, challenge, patient="pa")
    assert redirect["state"] == ["st-1"]
    response = await browser.token(grant_type="authorization_code", code=redirect["code"][0], redirect_uri=REDIRECT, code_verifier=verifier)  # fmt: skip
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["patient"] == "pa"
    assert body["scope"] == scope
    assert body["refresh_token"] and body["id_token"]
    jwks = (await browser.http.get("/auth/jwks")).json()
    from joserfc import jwt
    from joserfc.jwk import KeySet

    id_token = jwt.decode(
        body["id_token"], KeySet.import_key_set(jwks), algorithms=["RS384", "ES384"]
    )
    assert id_token.claims["fhirUser"] == "Practitioner/doc"
    assert id_token.claims["aud"] == "webapp"
    async with browser.smart.client(body["access_token"]) as fhir:
        assert (await fhir.get("/Patient/pa")).status_code == 200
        assert (await fhir.get("/Patient/pb")).status_code == 404


async def test_a_code_is_single_use_and_bound_to_its_verifier(browser: Browser) -> None:
    verifier, challenge = pkce()
    code = (await browser.sign_in("launch/patient patient/*.rs", challenge, patient="pa"))["code"][
        0
    ]
    wrong = await browser.token(grant_type="authorization_code", code=code, redirect_uri=REDIRECT, code_verifier=pkce()[0])  # fmt: skip
    assert wrong.status_code == 400 and wrong.json()["error"] == "invalid_grant"
    # the failed attempt consumed it: a code is presented once, whatever the outcome
    again = await browser.token(grant_type="authorization_code", code=code, redirect_uri=REDIRECT, code_verifier=verifier)  # fmt: skip
    assert again.status_code == 400 and again.json()["error"] == "invalid_grant"
    verifier, challenge = pkce()
    code = (await browser.sign_in("launch/patient patient/*.rs", challenge, patient="pa"))["code"][
        0
    ]
    first = await browser.token(grant_type="authorization_code", code=code, redirect_uri=REDIRECT, code_verifier=verifier)  # fmt: skip
    assert first.status_code == 200
    replay = await browser.token(grant_type="authorization_code", code=code, redirect_uri=REDIRECT, code_verifier=verifier)  # fmt: skip
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"


@pytest.mark.parametrize(
    "pkce_params",
    [
        {},
        {"code_challenge": "abc", "code_challenge_method": "plain"},
        {"code_challenge_method": "S256"},
    ],
    ids=["missing", "plain", "no-challenge"],
)
async def test_authorize_without_s256_pkce_is_refused(
    browser: Browser, pkce_params: dict[str, str]
) -> None:
    params = browser.authorize_params("patient/*.rs", None) | pkce_params
    response = await browser.http.get("/auth/authorize", params=params)
    assert response.status_code == 303
    query = parse_qs(urlsplit(response.headers["location"]).query)
    assert query["error"] == ["invalid_request"] and query["state"] == ["st-1"]


async def test_authorize_refuses_unregistered_redirects_and_wrong_audience(
    browser: Browser,
) -> None:
    _, challenge = pkce()
    params = browser.authorize_params(
        "patient/*.rs", challenge, redirect_uri="http://evil.invalid/cb"
    )
    response = await browser.http.get("/auth/authorize", params=params)
    assert response.status_code == 400 and "location" not in response.headers
    params = browser.authorize_params("patient/*.rs", challenge, aud="http://other.invalid/fhir")
    response = await browser.http.get("/auth/authorize", params=params)
    assert parse_qs(urlsplit(response.headers["location"]).query)["error"] == ["invalid_request"]


async def test_wrong_password_shows_the_login_page_again(browser: Browser) -> None:
    _, challenge = pkce()
    page = await browser.http.get(
        "/auth/authorize", params=browser.authorize_params("patient/*.rs", challenge)
    )
    response = await browser.http.post("/auth/login", data={
        "request": hidden(page.text, "request"), "username": "lee", "password": "nope",
        "csrf": hidden(page.text, "csrf"),
    })  # fmt: skip
    assert response.status_code == 401
    assert "Wrong user name or password" in response.text


async def test_ehr_launch_uses_the_launch_context(browser: Browser) -> None:
    launch = await create_launch(browser.smart.app.state.smart.db, patient="pb", encounter="enc-1")
    verifier, challenge = pkce()
    redirect = await browser.sign_in(
        "launch openid fhirUser patient/*.rs user/Observation.rs", challenge, launch=launch
    )
    body = (await browser.token(grant_type="authorization_code", code=redirect["code"][0], redirect_uri=REDIRECT, code_verifier=verifier)).json()  # fmt: skip
    assert body["patient"] == "pb" and body["encounter"] == "enc-1"
    unknown = await browser.http.get(
        "/auth/authorize",
        params=browser.authorize_params("launch patient/*.rs", challenge, launch="made-up"),
    )
    assert parse_qs(urlsplit(unknown.headers["location"]).query)["error"] == ["invalid_request"]


async def test_user_scopes_are_capped_by_the_user_registration(browser: Browser) -> None:
    verifier, challenge = pkce()
    redirect = await browser.sign_in("openid fhirUser user/*.rs", challenge)
    body = (await browser.token(grant_type="authorization_code", code=redirect["code"][0], redirect_uri=REDIRECT, code_verifier=verifier)).json()  # fmt: skip
    # lee may grant user/Observation.rs only; user/*.rs asked for more and is not covered
    assert "user/*.rs" not in body["scope"].split()


async def test_denying_consent_redirects_with_access_denied(browser: Browser) -> None:
    _, challenge = pkce()
    page = await browser.http.get(
        "/auth/authorize", params=browser.authorize_params("patient/*.rs", challenge)
    )
    consent = await browser.http.post("/auth/login", data={"request": hidden(page.text, "request"), "username": "lee", "password": "s3cret-pass", "csrf": hidden(page.text, "csrf")})  # fmt: skip
    denied = await browser.http.post("/auth/consent", data={"request": hidden(consent.text, "request"), "nonce": hidden(consent.text, "nonce"), "csrf": hidden(consent.text, "csrf"), "decision": "deny"})  # fmt: skip
    assert parse_qs(urlsplit(denied.headers["location"]).query)["error"] == ["access_denied"]


async def test_refresh_tokens_rotate_and_reuse_revokes_the_family(browser: Browser) -> None:
    verifier, challenge = pkce()
    redirect = await browser.sign_in(
        "launch/patient offline_access patient/*.rs", challenge, patient="pa"
    )
    first = (await browser.token(grant_type="authorization_code", code=redirect["code"][0], redirect_uri=REDIRECT, code_verifier=verifier)).json()  # fmt: skip
    second = (
        await browser.token(grant_type="refresh_token", refresh_token=first["refresh_token"])
    ).json()
    assert second["refresh_token"] != first["refresh_token"]
    assert second["patient"] == "pa" and second["access_token"]
    # the first refresh token again: a replay, so the whole family is revoked
    replay = await browser.token(grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert replay.status_code == 400 and replay.json()["error"] == "invalid_grant"
    after = await browser.token(grant_type="refresh_token", refresh_token=second["refresh_token"])
    assert after.status_code == 400 and after.json()["error"] == "invalid_grant"


async def test_a_revoked_user_can_no_longer_refresh(browser: Browser) -> None:
    verifier, challenge = pkce()
    redirect = await browser.sign_in(
        "openid fhirUser offline_access user/Observation.rs", challenge
    )
    first = (await browser.token(grant_type="authorization_code", code=redirect["code"][0], redirect_uri=REDIRECT, code_verifier=verifier)).json()  # fmt: skip
    await browser.smart.app.state.smart.users.revoke("lee")
    response = await browser.token(grant_type="refresh_token", refresh_token=first["refresh_token"])
    assert response.status_code == 400 and response.json()["error"] == "invalid_grant"
