"""A resource server in external mode behind another authorization server (SMART App Launch 2.2,
conformance.html): it publishes that server's endpoints in its own
`.well-known/smart-configuration` and CapabilityStatement, and accepts the tokens that server
issues for it. The authorization server here is a real fhirgoal in smart mode, which issues a
token for another resource server only when that server is one of its FHIRGOAL_TOKEN_AUDIENCES."""

from __future__ import annotations

from collections.abc import AsyncIterator
from urllib.parse import parse_qs, urlsplit

import pytest
from joserfc import jwt

from tests.auth.conftest import SmartServer, run_smart
from tests.auth.flows import REDIRECT, Browser, pkce
from tests.auth.test_external import ISSUER

OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"


@pytest.fixture
async def resource_server(mongo_uri: str, browser: Browser) -> AsyncIterator[SmartServer]:
    """Server B: external mode, trusting the `browser` fixture's server A as its issuer; A
    issues tokens for B (its settings are read per request, so B's address can be added once B
    listens). B is given only A's issuer: the endpoints it publishes and the JWKS its token checks
    use are both discovered (tests/auth/test_external.py covers a JWKS URL given by settings)."""
    a = browser.smart
    overrides = {"auth": "external", "external_issuer": a.base, "app_enabled": False}
    async with run_smart(mongo_uri, **overrides) as b:
        doc = [{"reference": "Practitioner/doc"}]
        await b.seed({"resourceType": "Patient", "id": "pa", "generalPractitioner": doc})
        await b.seed({"resourceType": "Patient", "id": "pb"})
        a.settings.token_audiences = b.base
        yield b


def oauth_uris(statement: dict[str, object]) -> dict[str, str]:
    security = statement["rest"][0]["security"]  # type: ignore[index]
    [extension] = [e for e in security["extension"] if e["url"] == OAUTH_URIS]
    return {e["url"]: e["valueUri"] for e in extension["extension"]}


async def test_external_mode_publishes_its_issuers_endpoints(
    browser: Browser, resource_server: SmartServer
) -> None:
    a, b = browser.smart, resource_server
    published = await b.http.get("/.well-known/smart-configuration")
    assert published.status_code == 200, published.text
    document = published.json()
    assert document["authorization_endpoint"] == f"{a.origin}/auth/authorize"
    assert document["token_endpoint"] == f"{a.origin}/auth/token"
    assert document["jwks_uri"] == f"{a.origin}/auth/jwks"
    assert document["issuer"] == a.base
    assert "S256" in document["code_challenge_methods_supported"]
    assert "launch-ehr" in document["capabilities"]
    metadata = (await b.http.get("/metadata")).json()
    assert oauth_uris(metadata) == {
        "authorize": f"{a.origin}/auth/authorize",
        "token": f"{a.origin}/auth/token",
        "introspect": f"{a.origin}/auth/introspect",
    }
    # fetched once, then kept (FHIRGOAL_EXTERNAL_DISCOVERY_SECONDS)
    await b.http.get("/.well-known/smart-configuration")
    assert b.app.state.external_authorization.fetches == 1


async def test_a_token_issued_for_the_resource_server_works_there_only(
    browser: Browser, resource_server: SmartServer
) -> None:
    a, b = browser.smart, resource_server
    verifier, challenge = pkce()
    scope = "launch/patient openid fhirUser offline_access patient/*.rs"
    redirect = await browser.sign_in(scope, challenge, patient="pa", aud=b.base)
    issued = await browser.token(grant_type="authorization_code", code=redirect["code"][0], redirect_uri=REDIRECT, code_verifier=verifier)  # fmt: skip
    assert issued.status_code == 200, issued.text
    body = issued.json()
    claims = jwt.decode(body["access_token"], _keys(await a.http.get(f"{a.origin}/auth/jwks")),
                        algorithms=["RS384", "ES384"]).claims  # fmt: skip
    assert claims["aud"] == b.base and claims["iss"] == a.base
    async with b.client(body["access_token"]) as at_b:
        assert (await at_b.get("/Patient/pa")).status_code == 200
        assert (await at_b.get("/Patient/pb")).status_code == 404
    async with a.client(body["access_token"]) as at_a:  # not its audience
        assert (await at_a.get("/Patient/pa")).status_code == 401
    # refreshed tokens keep the audience
    refreshed = await browser.token(grant_type="refresh_token", refresh_token=body["refresh_token"])
    assert refreshed.status_code == 200, refreshed.text
    async with b.client(refreshed.json()["access_token"]) as at_b:
        assert (await at_b.get("/Patient/pa")).status_code == 200


async def test_the_issuer_refuses_an_audience_it_does_not_serve(browser: Browser) -> None:
    _, challenge = pkce()
    params = browser.authorize_params(
        "patient/*.rs", challenge, aud="https://elsewhere.example/fhir"
    )
    response = await browser.http.get("/auth/authorize", params=params)
    assert response.status_code == 303
    query = parse_qs(urlsplit(response.headers["location"]).query)
    assert query["error"] == ["invalid_request"]


async def test_endpoints_from_settings_and_an_unreachable_issuer(mongo_uri: str) -> None:
    configured = {
        "auth": "external", "external_issuer": ISSUER, "external_jwks_url": f"{ISSUER}/jwks",
        "external_authorize_url": f"{ISSUER}/authorize", "external_token_url": f"{ISSUER}/token",
        "external_capabilities": "launch-ehr client-confidential-symmetric",
    }  # fmt: skip
    async with run_smart(mongo_uri, **configured) as server:
        document = (await server.http.get("/.well-known/smart-configuration")).json()
        assert document["authorization_endpoint"] == f"{ISSUER}/authorize"
        assert document["token_endpoint"] == f"{ISSUER}/token"
        assert document["capabilities"] == ["launch-ehr", "client-confidential-symmetric"]
        assert server.app.state.external_authorization.fetches == 0  # nothing to discover
    # an issuer that cannot be reached: 503 with an OperationOutcome; metadata is still served
    unreachable = {
        "auth": "external", "external_issuer": "http://127.0.0.1:9/fhir",
        "external_jwks_url": "http://127.0.0.1:9/jwks",
    }  # fmt: skip
    async with run_smart(mongo_uri, **unreachable) as server:
        response = await server.http.get("/.well-known/smart-configuration")
        assert response.status_code == 503
        assert response.json()["resourceType"] == "OperationOutcome"
        metadata = await server.http.get("/metadata")
        assert metadata.status_code == 200
        assert "extension" not in metadata.json()["rest"][0]["security"]


def _keys(response: object) -> object:
    from joserfc.jwk import KeySet

    return KeySet.import_key_set(response.json())  # type: ignore[attr-defined]
