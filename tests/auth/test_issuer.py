"""The issuer is fixed by configuration, never by a request header (issue 12): tokens' iss/aud,
the discovery document, the CapabilityStatement's OAuth URLs and Location headers come from
FHIRGOAL_BASE_URL or the serve address; a request sent with another Host gets the configured URLs
(RFC 8414 section 3.3: the issuer a client sees must be the one configured; SMART App Launch 2.2
conformance.html)."""

from __future__ import annotations

import pytest
from joserfc import jwt
from joserfc.jwk import KeySet

from fhirgoal.auth.clients import Client
from fhirgoal.config import Settings
from tests.auth import jose
from tests.auth.conftest import SmartServer
from tests.auth.flows import grant

EVIL = {"Host": "evil.example"}


async def test_another_host_gets_the_configured_urls(smart: SmartServer) -> None:
    config = (await smart.http.get("/.well-known/smart-configuration", headers=EVIL)).json()
    assert config["issuer"] == smart.base
    assert config["token_endpoint"] == f"{smart.origin}/auth/token"
    assert config["authorization_endpoint"] == f"{smart.origin}/auth/authorize"
    metadata = (await smart.http.get("/metadata", headers=EVIL)).json()
    uris = {e["url"]: e["valueUri"] for e in metadata["rest"][0]["security"]["extension"][0]["extension"]}  # fmt: skip
    assert uris["token"] == f"{smart.origin}/auth/token"
    assert "evil.example" not in str(metadata)
    async with await smart.as_scope("system/*.cruds") as client:
        created = await client.post("/Patient", json={"resourceType": "Patient"}, headers=EVIL)
        assert created.status_code == 201
        assert created.headers["location"].startswith(f"{smart.base}/Patient/")
        bundle = (await client.get("/Patient", headers=EVIL)).json()
        assert all(link["url"].startswith(smart.base) for link in bundle["link"])


async def test_tokens_issued_for_another_host_name_the_configured_issuer(
    smart: SmartServer,
) -> None:
    key = jose.rsa_key()
    await smart.app.state.smart.clients.register(
        Client(client_id="etl", scopes="system/*.rs", jwks=jose.public_jwks(key))
    )
    response = await smart.http.post(
        f"{smart.origin}/auth/token",
        data=grant(key, smart, "etl", "system/Patient.rs"),
        headers=EVIL,
    )
    assert response.status_code == 200, response.text
    jwks = KeySet.import_key_set((await smart.http.get(f"{smart.origin}/auth/jwks")).json())
    claims = jwt.decode(response.json()["access_token"], jwks, algorithms=["RS384"]).claims
    assert claims["iss"] == smart.base and claims["aud"] == smart.base


async def test_a_token_for_the_host_header_is_refused(smart: SmartServer) -> None:
    # signed by the server's own key for the base an attacker's Host header would have produced
    forged_base = "http://evil.example/fhir"
    token = await smart.mint("system/*.rs", iss=forged_base, aud=forged_base)
    async with smart.client(token) as client:
        assert (await client.get("/Patient", headers=EVIL)).status_code == 401
        assert (await client.get("/Patient")).status_code == 401


@pytest.mark.parametrize(
    ("values", "base"),
    [
        ({}, "http://127.0.0.1:8080/fhir"),
        ({"host": "fhir.local", "port": 9000}, "http://fhir.local:9000/fhir"),
        ({"host": "::1", "port": 9000}, "http://[::1]:9000/fhir"),
        ({"host": "0.0.0.0"}, "http://localhost:8080/fhir"),
        ({"base_url": "https://x.example/r4/fhir/", "port": 1}, "https://x.example/r4/fhir"),
    ],
)
def test_the_public_base_comes_from_the_settings(values: dict[str, object], base: str) -> None:
    assert Settings(**values).public_fhir_base() == base  # type: ignore[arg-type]
