"""Failures leave a trail (issue 12): rejected bearer tokens, the token endpoint's answers, logins,
consent decisions and revocations become AuditEvents (DICOM 110114 User Authentication / 110113
Security Alert, https://hl7.org/fhir/R4/valueset-audit-event-type.html), never holding a password
or a token, and rate limited so that a flood cannot fill the disk."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
from typer.testing import CliRunner

from fhirgoal.auth.clients import Client
from fhirgoal.cli import app as cli
from fhirgoal.core.jsonio import dumps
from tests.auth import jose
from tests.auth.conftest import TEST_KEK, SmartServer, run_smart
from tests.auth.flows import (
    DCM,
    Browser,
    grant,
    hidden,
    pkce,
    refused,
    security_events,
    security_kind,
    token_request,
)
from tests.helpers import wait_until


async def test_rejected_bearer_tokens_are_audited_without_the_token(smart: SmartServer) -> None:
    good = await smart.mint("patient/*.rs", patient="pa")
    forged = good[:-4] + ("AAAA" if not good.endswith("AAAA") else "BBBB")
    unsigned = jose.unsigned({"iss": smart.base, "aud": smart.base, "scope": "system/*.rs",
                              "client_id": "test-app", "exp": int(time.time()) + 60})  # fmt: skip
    expired = await smart.mint("patient/*.rs", patient="pa", lifetime=-120)
    assert (await smart.http.get("/Patient")).status_code == 401
    for token in (forged, unsigned, expired):
        async with smart.client(token) as client:
            assert (await client.get("/Patient")).status_code == 401
    events = await security_events(smart)
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for event in events:
        by_kind.setdefault(security_kind(event), []).append(event)
    assert len(by_kind["bearer-missing"]) == 1 and len(by_kind["bearer-forged"]) == 2
    [missing] = by_kind["bearer-missing"]
    assert missing["type"]["code"] == "110114" and missing["outcome"] == "4"
    assert {"system": DCM, "code": "110122", "display": "Login"} in missing["subtype"]
    assert missing["agent"][0]["network"]["address"] == "127.0.0.1"
    assert all(e["type"]["code"] == "110113" and e["outcome"] == "8" for e in by_kind["bearer-forged"])  # fmt: skip
    assert any("'none'" in e["outcomeDesc"] for e in by_kind["bearer-forged"])
    [late] = by_kind["bearer-invalid"]
    assert late["outcome"] == "4" and "expired" in late["outcomeDesc"]
    text = dumps(events).decode()
    for token in (good, forged, unsigned, expired):
        signature = token.split(".")[2]
        assert token not in text and (not signature or signature[:20] not in text)
    for event in events:
        smart.service.validator.validate(event)


async def test_the_token_endpoint_audits_each_answer(smart: SmartServer) -> None:
    key = jose.rsa_key()
    await smart.app.state.smart.clients.register(
        Client(client_id="etl", scopes="system/*.rs", jwks=jose.public_jwks(key))
    )
    issued = await token_request(smart, grant(key, smart, "etl", "system/Patient.rs"))
    assert issued.status_code == 200
    refused = await token_request(smart, grant(key, smart, "etl", "system/Patient.c"))
    assert refused.status_code == 400
    bad_grant = await token_request(smart, {"grant_type": "password", "client_id": "etl"})
    unknown = await token_request(smart, {"grant_type": "client_credentials", "client_id": "nobody"})  # fmt: skip
    assert bad_grant.status_code == 400 and unknown.status_code == 401
    [ok] = await security_events(smart, "token-issued")
    assert ok["outcome"] == "0" and ok["agent"][0]["who"]["identifier"]["value"] == "etl"
    assert {"type": "grant_type", "valueString": "client_credentials"} in ok["entity"][0]["detail"]
    assert issued.json()["access_token"] not in dumps(ok).decode()
    refusals = await security_events(smart, "token-refused")
    descriptions = sorted(e["outcomeDesc"].split(":")[0] for e in refusals)
    assert descriptions == ["invalid_client", "invalid_scope", "unsupported_grant_type"]
    assert all(e["outcome"] == "4" for e in refusals)
    for event in await security_events(smart):
        smart.service.validator.validate(event)  # valid R4, entity details included


async def test_logins_and_consent_decisions_are_audited_without_passwords(
    browser: Browser,
) -> None:
    _, challenge = pkce()
    params = browser.authorize_params("patient/*.rs launch/patient", challenge)
    page = await browser.http.get("/auth/authorize", params=params)
    form = {"request": hidden(page.text, "request"), "csrf": hidden(page.text, "csrf")}
    wrong = await browser.http.post("/auth/login", data={**form, "username": "lee", "password": "hunter2-wrong"})  # fmt: skip
    assert wrong.status_code == 401
    consent = await browser.http.post("/auth/login", data={**form, "username": "lee", "password": "s3cret-pass"})  # fmt: skip
    assert consent.status_code == 200
    denied = await browser.http.post("/auth/consent", data={
        "request": hidden(consent.text, "request"), "nonce": hidden(consent.text, "nonce"),
        "csrf": hidden(consent.text, "csrf"), "decision": "deny",
    })  # fmt: skip
    assert "access_denied" in denied.headers["location"]
    smart = browser.smart
    [failed] = await security_events(smart, "login-failed")
    assert failed["outcome"] == "4"
    assert failed["agent"][0]["who"]["identifier"] == {
        "system": "urn:fhirgoal:user",
        "value": "lee",
    }
    [login] = await security_events(smart, "login")
    assert login["outcome"] == "0" and login["agent"][0]["who"]["reference"] == "Practitioner/doc"
    assert login["agent"][1]["who"]["identifier"]["value"] == "webapp"
    [decision] = await security_events(smart, "consent-denied")
    assert decision["subtype"][0]["code"] == "110123"  # Logout: the user ended the session
    events = await security_events(smart)
    text = dumps(events).decode()
    assert "hunter2-wrong" not in text and "s3cret-pass" not in text
    for event in events:
        smart.service.validator.validate(event)


async def test_a_flood_is_rate_limited_and_the_suppressed_count_recorded(mongo_uri: str) -> None:
    async with run_smart(mongo_uri, security_audit_burst=5, security_audit_per_minute=60) as smart:
        async with smart.client("not-a-jwt") as client:
            for _ in range(40):
                assert (await client.get("/Patient")).status_code == 401
        assert 5 <= len(await security_events(smart, "bearer-forged")) <= 7  # 1/s refills

        def suppressed(event: dict[str, Any]) -> int:
            details = [d for e in event.get("entity", []) for d in e.get("detail", [])]
            return sum(int(d["valueString"]) for d in details if d["type"] == "suppressed")

        # every attempt is accounted for: recorded, or counted by a later event or summary
        async def accounted() -> int:
            events = await security_events(smart)
            forged = sum(1 + suppressed(e) for e in events if security_kind(e) == "bearer-forged")
            return forged + sum(suppressed(e) for e in events if security_kind(e) == "suppressed")

        async def all_accounted() -> bool:
            return await accounted() == 40

        await wait_until(all_accounted, within=5, what="40 attempts accounted for")
        assert await accounted() == 40
        summaries = await security_events(smart, "suppressed")
        assert summaries and "'bearer-forged' events held back" in summaries[0]["outcomeDesc"]
        assert summaries[0]["agent"][0]["network"]["address"] == "127.0.0.1"


async def revoke_with_the_cli(smart: SmartServer, kind: str, name: str) -> None:
    """`fhirgoal <kind> revoke <name>` run as an operator would, on the server's database."""
    env = {"MONGODB_URI": smart.settings.mongodb_uri or "", "FHIRGOAL_DB": smart.settings.db,
           "FHIRGOAL_KEY_ENCRYPTION_KEY": TEST_KEK}  # fmt: skip
    result = await asyncio.to_thread(CliRunner().invoke, cli, [kind, "revoke", name], env=env)
    assert result.exit_code == 0, result.output


async def test_cli_revocations_are_audited_and_end_cached_tokens(mongo_uri: str) -> None:
    async with run_smart(mongo_uri, revocation_check_seconds=0.2) as smart:
        await smart.seed({"resourceType": "Patient", "id": "pa"})
        token = await smart.mint("patient/*.rs", patient="pa")
        async with smart.client(token) as client:
            assert (await client.get("/Patient/pa")).status_code == 200  # verified and cached
            await revoke_with_the_cli(smart, "client", "test-app")
            await wait_until(refused(client), within=10, what="the revocation reached the cache")
        [event] = await security_events(smart, "client-revoked")
        assert event["type"]["code"] == "110137" and event["outcome"] == "0"
        assert event["agent"][0]["who"]["identifier"]["value"] == "test-app"


async def test_revoking_a_user_ends_their_cached_tokens(mongo_uri: str) -> None:
    async with run_smart(mongo_uri, revocation_check_seconds=0.2) as smart:
        # in kim's caseload (FHIRGOAL_USER_ACCESS=caseload, the default): kim is pa's GP
        gp = {"reference": "Practitioner/kim"}
        await smart.seed({"resourceType": "Patient", "id": "pa", "generalPractitioner": [gp]})
        await smart.app.state.smart.users.add("kim", "pw-kim-123", "Practitioner/kim", "user/*.rs")
        token = await smart.mint("user/*.rs", fhir_user="Practitioner/kim", sub="kim")
        async with smart.client(token) as client:
            assert (await client.get("/Patient/pa")).status_code == 200
            await revoke_with_the_cli(smart, "user", "kim")
            await wait_until(refused(client), within=10, what="the revocation reached the cache")
        [event] = await security_events(smart, "user-revoked")
        assert event["agent"][0]["who"]["identifier"]["value"] == "kim"


async def test_the_audit_of_failures_does_not_need_a_token(smart: SmartServer) -> None:
    # a flood of requests with no Authorization at all from one address: refused cheaply
    async with httpx.AsyncClient(base_url=smart.base, timeout=30) as anonymous:
        responses = await asyncio.gather(*(anonymous.get("/Patient") for _ in range(30)))
    assert {r.status_code for r in responses} == {401}
    stored = await security_events(smart, "bearer-missing")
    assert 1 <= len(stored) <= smart.settings.security_audit_burst
