"""External mode: tokens from an EHR's authorization server, checked against its JWKS (fetched
over real HTTP, cached, refetched on an unknown kid at a bounded rate) or, for opaque tokens, its
RFC 7662 introspection endpoint."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from joserfc.jwk import RSAKey

from tests.auth import jose
from tests.auth.conftest import IssuerHost, SmartServer, run_smart
from tests.helpers import wait_until

ISSUER = "https://ehr.example.org/oauth"


@pytest.fixture
async def external(
    mongo_uri: str, jwks_host: IssuerHost
) -> AsyncIterator[tuple[SmartServer, IssuerHost, RSAKey]]:
    key = jose.rsa_key()
    jwks_host.jwks = jose.public_jwks(key)
    overrides = {
        "auth": "external", "external_issuer": ISSUER, "external_jwks_url": jwks_host.url,
        "external_introspection_url": jwks_host.introspection_url,
        "external_client_id": "fhirgoal", "external_client_secret": "rs-secret",
        "external_jwks_min_refetch": 1.0,
    }  # fmt: skip
    async with run_smart(mongo_uri, **overrides) as running:
        # pa is in the EHR user's caseload (FHIRGOAL_USER_ACCESS=caseload, test_caseload.py)
        doc = [{"reference": "Practitioner/doc"}]
        await running.seed({"resourceType": "Patient", "id": "pa", "generalPractitioner": doc})
        await running.seed({"resourceType": "Patient", "id": "pb"})
        yield running, jwks_host, key


def ehr_token(server: SmartServer, key: RSAKey, **overrides: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": ISSUER, "aud": server.base, "sub": "dr-lee", "client_id": "ehr-app",
        "scope": "launch patient/*.rs openid fhirUser", "patient": "pa",
        "fhirUser": "Practitioner/doc", "iat": now, "exp": now + 300, **overrides,
    }  # fmt: skip
    return jose.sign(key, claims)


async def test_an_ehr_jwt_gives_its_patient_context(
    external: tuple[SmartServer, IssuerHost, RSAKey],
) -> None:
    server, _, key = external
    async with server.client(ehr_token(server, key)) as client:
        assert (await client.get("/Patient/pa")).status_code == 200
        assert (await client.get("/Patient/pb")).status_code == 404
        assert (await client.post("/Patient", json={"resourceType": "Patient"})).status_code == 403


async def test_ehr_tokens_with_wrong_claims_are_401(
    external: tuple[SmartServer, IssuerHost, RSAKey],
) -> None:
    server, _, key = external
    now = int(time.time())
    for why, token in {
        "wrong iss": ehr_token(server, key, iss="https://other.example.org"),
        "wrong aud": ehr_token(server, key, aud="https://other.example.org/fhir"),
        "expired": ehr_token(server, key, exp=now - 120),
        "alg none": jose.unsigned(
            {"iss": ISSUER, "aud": server.base, "exp": now + 60, "scope": "system/*.rs"}
        ),
    }.items():
        async with server.client(token) as client:
            response = await client.get("/Patient/pa")
        assert response.status_code == 401, why
        assert 'error="invalid_token"' in response.headers["www-authenticate"]


async def test_the_jwks_is_cached_and_refetched_once_for_a_new_kid(
    external: tuple[SmartServer, IssuerHost, RSAKey],
) -> None:
    server, host, key = external
    for _ in range(3):
        async with server.client(ehr_token(server, key)) as client:
            assert (await client.get("/Patient/pa")).status_code == 200
    assert host.jwks_hits == 1
    rotated = jose.rsa_key()
    host.jwks = jose.public_jwks(key, rotated)  # the EHR rotates its keys

    async def rotated_key_accepted() -> bool:
        async with server.client(ehr_token(server, rotated)) as client:
            return (await client.get("/Patient/pa")).status_code == 200

    # refused (401, no fetch) until the 1 s refetch interval has passed, then fetched once
    await wait_until(rotated_key_accepted, within=5, what="the rotated key fetched")
    assert host.jwks_hits == 2
    # a burst of made-up kids does not hammer the issuer: at most one fetch per interval begun
    # (on a loaded machine the burst itself can outlast the interval: CI once saw 4 in 5)
    started = time.monotonic()
    for _ in range(5):
        async with server.client(ehr_token(server, jose.rsa_key())) as client:
            assert (await client.get("/Patient/pa")).status_code == 401
    assert host.jwks_hits <= 3 + int(time.monotonic() - started)


async def test_opaque_tokens_are_introspected(
    external: tuple[SmartServer, IssuerHost, RSAKey],
) -> None:
    server, host, _ = external
    host.active_tokens["opaque-1"] = {
        "active": True, "iss": ISSUER, "scope": "patient/*.rs", "patient": "pb",
        "client_id": "ehr-app", "sub": "dr-lee", "exp": int(time.time()) + 300,
    }  # fmt: skip
    async with server.client("opaque-1") as client:
        assert (await client.get("/Patient/pb")).status_code == 200
        assert (await client.get("/Patient/pa")).status_code == 404
    assert host.introspection_auth[0] is not None and host.introspection_auth[0].startswith(
        "Basic "
    )
    async with server.client("opaque-unknown") as client:
        response = await client.get("/Patient/pb")
    assert response.status_code == 401
