"""SMART Backend Services over real HTTP: discovery, client_credentials with private_key_jwt
(RS384 and ES384), the access token on the FHIR API, introspection, key rotation, and each
rejection (https://hl7.org/fhir/smart-app-launch/backend-services.html, RFC 7523, RFC 7662)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from joserfc.jwk import ECKey, RSAKey

from fhirgoal.auth.clients import Client
from tests.auth import jose
from tests.auth.conftest import SmartServer
from tests.auth.flows import grant, token_request


async def register(smart: SmartServer, key: RSAKey | ECKey, client_id: str = "backend") -> str:
    await smart.app.state.smart.clients.register(
        Client(
            client_id=client_id, scopes="system/*.rs system/Goal.cruds", jwks=jose.public_jwks(key)
        )
    )
    return client_id


async def test_discovery_names_the_endpoints(smart: SmartServer) -> None:
    config = (await smart.http.get("/.well-known/smart-configuration")).json()
    assert config["token_endpoint"] == f"{smart.origin}/auth/token"
    assert "client-confidential-asymmetric" in config["capabilities"]
    assert config["code_challenge_methods_supported"] == ["S256"]
    assert set(config["token_endpoint_auth_signing_alg_values_supported"]) == {"RS384", "ES384"}
    metadata = (await smart.http.get("/metadata")).json()
    security = metadata["rest"][0]["security"]
    assert security["service"][0]["coding"][0]["code"] == "SMART-on-FHIR"
    uris = {e["url"]: e["valueUri"] for e in security["extension"][0]["extension"]}
    assert uris["token"] == config["token_endpoint"]
    jwks = (await smart.http.get(f"{smart.origin}/auth/jwks")).json()
    assert jwks["keys"] and all("d" not in k for k in jwks["keys"])


@pytest.mark.parametrize("make_key", [jose.rsa_key, jose.ec_key], ids=["RS384", "ES384"])
async def test_client_credentials_flow_gives_a_working_token(
    smart: SmartServer, make_key: Any
) -> None:
    key = make_key()
    client_id = await register(smart, key)
    response = await token_request(
        smart, grant(key, smart, client_id, "system/Goal.cruds system/Patient.rs")
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["token_type"] == "Bearer" and 0 < body["expires_in"] <= 300
    assert body["scope"] == "system/Goal.cruds system/Patient.rs"
    assert response.headers["cache-control"] == "no-store"
    async with smart.client(body["access_token"]) as fhir:
        created = await fhir.post("/Goal", json={"resourceType": "Goal", "lifecycleStatus": "active", "description": {"text": "x"}, "subject": {"reference": "Patient/p"}})  # fmt: skip
        assert created.status_code == 201, created.text
        assert (await fhir.get("/Patient")).status_code == 200
        assert (await fhir.post("/Patient", json={"resourceType": "Patient"})).status_code == 403


async def test_scopes_beyond_the_registration_are_not_granted(smart: SmartServer) -> None:
    key = jose.rsa_key()
    client_id = await register(smart, key)
    response = await token_request(smart, grant(key, smart, client_id, "system/Observation.cruds system/Observation.rs"))  # fmt: skip
    assert response.json()["scope"] == "system/Observation.rs"
    refused = await token_request(smart, grant(key, smart, client_id, "system/Patient.c"))
    assert refused.status_code == 400 and refused.json()["error"] == "invalid_scope"


async def test_client_keys_can_come_from_a_jwks_url(smart: SmartServer, jwks_host: Any) -> None:
    key = jose.ec_key()
    jwks_host.jwks = jose.public_jwks(key)
    await smart.app.state.smart.clients.register(
        Client(client_id="by-url", scopes="system/*.rs", jwks_url=jwks_host.url)
    )
    response = await token_request(smart, grant(key, smart, "by-url", "system/*.rs"))
    assert response.status_code == 200, response.text


def _claims(smart: SmartServer, client_id: str, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": client_id, "sub": client_id, "aud": f"{smart.origin}/auth/token",
        "exp": now + 240, "iat": now, "jti": f"jti-{now}-{len(overrides)}", **overrides,
    }  # fmt: skip


async def test_assertion_rejections_are_oauth_errors(smart: SmartServer) -> None:
    key = jose.rsa_key()
    other = jose.rsa_key()
    client_id = await register(smart, key)
    url = f"{smart.origin}/auth/token"
    now = int(time.time())
    bad = {
        "expired": jose.sign(key, _claims(smart, client_id, exp=now - 120, jti="a")),
        "wrong aud": jose.sign(key, _claims(smart, client_id, aud=f"{smart.base}", jti="b")),
        "wrong iss": jose.sign(key, _claims(smart, client_id, iss="someone-else", jti="c")),
        "too long-lived": jose.sign(key, _claims(smart, client_id, exp=now + 3600, jti="d")),
        "no jti": jose.sign(
            key, {k: v for k, v in _claims(smart, client_id).items() if k != "jti"}
        ),
        "alg none": jose.unsigned(_claims(smart, client_id, jti="e")),
        "HS256 with the public key": jose.hs256_with_public_key(
            key.as_dict(private=False), _claims(smart, client_id, jti="f"), key.kid or ""
        ),
        "unknown kid": jose.sign(other, _claims(smart, client_id, jti="g")),
        "unknown client": jose.sign(key, _claims(smart, "nobody", jti="i")),
    }
    for why, assertion in bad.items():
        response = await token_request(smart, {
            "grant_type": "client_credentials", "scope": "system/*.rs",
            "client_assertion_type": jose.ASSERTION_TYPE, "client_assertion": assertion,
        })  # fmt: skip
        assert response.status_code == 401, (why, response.text)
        assert response.json()["error"] == "invalid_client", why
    del url


async def test_a_replayed_jti_is_rejected(smart: SmartServer) -> None:
    key = jose.rsa_key()
    client_id = await register(smart, key)
    form = grant(key, smart, client_id, "system/*.rs")
    assert (await token_request(smart, form)).status_code == 200
    replay = await token_request(smart, form)
    assert replay.status_code == 401
    assert "jti" in replay.json()["error_description"]


async def test_a_revoked_client_gets_no_token_and_its_tokens_stop_working(
    smart: SmartServer,
) -> None:
    key = jose.rsa_key()
    client_id = await register(smart, key)
    token = (await token_request(smart, grant(key, smart, client_id, "system/*.rs"))).json()[
        "access_token"
    ]
    await smart.app.state.smart.clients.revoke(client_id)
    assert (
        await token_request(smart, grant(key, smart, client_id, "system/*.rs"))
    ).status_code == 401
    async with smart.client(token) as fhir:
        response = await fhir.get("/Patient")
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["www-authenticate"]


async def test_introspection_reports_active_and_inactive_tokens(smart: SmartServer) -> None:
    key = jose.rsa_key()
    client_id = await register(smart, key)
    token = (await token_request(smart, grant(key, smart, client_id, "system/*.rs"))).json()[
        "access_token"
    ]
    url = f"{smart.origin}/auth/introspect"
    answer = (await smart.http.post(url, data=jose.form_assertion(key, client_id, f"{smart.origin}/auth/token", token=token))).json()  # fmt: skip
    assert answer["active"] is True and answer["client_id"] == client_id
    assert answer["scope"] == "system/*.rs"
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    answer = (await smart.http.post(url, data=jose.form_assertion(key, client_id, f"{smart.origin}/auth/token", token=forged))).json()  # fmt: skip
    assert answer == {"active": False}
    unauthenticated = await smart.http.post(url, data={"token": token})
    assert unauthenticated.status_code == 401


async def test_key_rotation_keeps_old_tokens_valid_and_signs_with_the_new_key(
    smart: SmartServer,
) -> None:
    from datetime import timedelta

    old_token = await smart.mint("system/*.rs")
    keys = smart.app.state.smart.keys
    new_kid = await keys.rotate(timedelta(minutes=10))
    published = {
        k["kid"] for k in (await smart.http.get(f"{smart.origin}/auth/jwks")).json()["keys"]
    }
    assert new_kid in published and len(published) == 2
    new_token = await smart.mint("system/*.rs")
    assert jose_kid(new_token) == new_kid != jose_kid(old_token)
    for token in (old_token, new_token):
        async with smart.client(token) as fhir:
            assert (await fhir.get("/Patient")).status_code == 200
    # once the old key's verification window is over, its tokens stop working
    from datetime import UTC, datetime

    past = datetime.now(UTC) - timedelta(seconds=1)
    await keys.collection.update_many({"_id": {"$ne": new_kid}}, {"$set": {"verify_until": past}})
    await keys.reload()
    smart.app.state.auth_runtime.authenticator.forget()
    async with smart.client(old_token) as fhir:
        assert (await fhir.get("/Patient")).status_code == 401


def jose_kid(token: str) -> str:
    from fhirgoal.auth.tokens import unverified_header

    return str(unverified_header(token)["kid"])
