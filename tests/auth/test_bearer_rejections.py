"""Access tokens the FHIR API must refuse: each gets 401 with an RFC 6750 challenge
(https://www.rfc-editor.org/rfc/rfc6750#section-3) and an OperationOutcome, never data."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.auth import jose
from tests.auth.conftest import TEST_CLIENT, SmartServer


def claims(smart: SmartServer, **overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    return {
        "iss": smart.base, "aud": smart.base, "sub": TEST_CLIENT, "client_id": TEST_CLIENT,
        "scope": "system/*.rs", "iat": now, "exp": now + 300, **overrides,
    }  # fmt: skip


async def server_public_key(smart: SmartServer) -> dict[str, Any]:
    jwks = (await smart.http.get(f"{smart.origin}/auth/jwks")).json()
    key: dict[str, Any] = jwks["keys"][0]
    return key


async def bad_tokens(smart: SmartServer) -> dict[str, str]:
    public = await server_public_key(smart)
    stranger = jose.rsa_key()
    return {
        "expired": await smart.mint("system/*.rs", lifetime=-120),
        "wrong aud": await smart.mint("system/*.rs", aud="http://elsewhere.invalid/fhir"),
        "wrong iss": await smart.mint("system/*.rs", iss="http://elsewhere.invalid/fhir"),
        "alg none": jose.unsigned(claims(smart)),
        "HS256 with the public key": jose.hs256_with_public_key(
            public, claims(smart), public["kid"]
        ),
        "unknown kid": jose.sign(stranger, claims(smart)),
        "foreign key, known kid": jose.sign(stranger, claims(smart), kid=public["kid"]),
        "not a JWT": "opaque-token-value",
        "tampered scope": _tamper(await smart.mint("patient/*.rs", patient="p")),
        "malformed scope": await smart.mint("patient/Observation.sr"),
    }


def _tamper(token: str) -> str:
    import base64
    import json

    header, payload, signature = token.split(".")
    body = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    body["scope"] = "system/*.cruds"
    forged = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    return f"{header}.{forged}.{signature}"


async def test_every_bad_token_gets_401_with_invalid_token(smart: SmartServer) -> None:
    await smart.seed({"resourceType": "Patient", "id": "p"})
    for why, token in (await bad_tokens(smart)).items():
        async with smart.client(token) as client:
            for path in ("/Patient/p", "/Patient"):
                response = await client.get(path)
                assert response.status_code == 401, (why, response.text)
                challenge = response.headers["www-authenticate"]
                assert challenge.startswith("Bearer ") and 'error="invalid_token"' in challenge, why
                assert response.json()["resourceType"] == "OperationOutcome"
                assert '"id":"p"' not in response.text


@pytest.mark.parametrize("header", ["Basic dXNlcjpwYXNz", "Bearer", "Token abc"])
async def test_a_malformed_authorization_header_is_401_invalid_request(
    smart: SmartServer, header: str
) -> None:
    response = await smart.http.get("/Patient", headers={"Authorization": header})
    assert response.status_code == 401
    assert 'error="invalid_request"' in response.headers["www-authenticate"]


async def test_a_missing_token_gets_a_bare_challenge(smart: SmartServer) -> None:
    response = await smart.http.get("/Patient")
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == 'Bearer realm="fhirgoal"'


async def test_discovery_and_metadata_need_no_token(smart: SmartServer) -> None:
    assert (await smart.http.get("/metadata")).status_code == 200
    assert (await smart.http.get("/.well-known/smart-configuration")).status_code == 200


async def test_insufficient_scope_is_403_not_401(smart: SmartServer) -> None:
    async with await smart.as_scope("system/Goal.rs") as client:
        response = await client.get("/Patient")
    assert response.status_code == 403
    assert response.json()["issue"][0]["code"] == "forbidden"
    assert 'error="insufficient_scope"' in response.headers["www-authenticate"]
