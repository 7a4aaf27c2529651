"""Audit you can trust (issue 12): AuditEvent is written by the server only, and read only with a
scope that names it, granted only to a client whose registration names it (a `*` never does),
over real HTTP with real tokens (https://hl7.org/fhir/R4/auditevent.html, SMART App Launch 2.2
scopes)."""

from __future__ import annotations

from typing import Any

from fhirgoal.auth.clients import Client
from tests.auth import jose
from tests.auth.conftest import AUDIT_CLIENT, SmartServer
from tests.auth.flows import REDIRECT, Browser, grant, hidden, pkce, token_request
from tests.helpers import patch

FORGED: dict[str, Any] = {
    "resourceType": "AuditEvent",
    "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type", "code": "rest"},
    "action": "C",
    "recorded": "2020-01-01T00:00:00Z",
    "outcome": "0",
    "agent": [{"requestor": True, "who": {"reference": "Practitioner/someone-else"}}],
    "source": {"observer": {"display": "fhirgoal"}},
}


async def test_no_client_can_write_an_audit_event_even_registered_for_it(
    smart: SmartServer,
) -> None:
    full = "system/*.cruds system/AuditEvent.cruds"
    await smart.app.state.smart.clients.register(Client(client_id="all-powerful", scopes=full))
    token = await smart.mint(full, client_id="all-powerful")
    async with smart.client(token) as client:
        created = await client.post("/AuditEvent", json=FORGED)
        assert created.status_code == 405, created.text
        assert created.json()["resourceType"] == "OperationOutcome"
        conditional = await client.post(
            "/AuditEvent", json=FORGED, headers={"If-None-Exist": "action=C"}
        )
        assert conditional.status_code == 405
        put_create = await client.put("/AuditEvent/planted", json={**FORGED, "id": "planted"})
        assert put_create.status_code == 405
        patched = await patch(client, "/AuditEvent/planted", [{"op": "remove", "path": "/agent"}])
        assert patched.status_code in (404, 405)
        assert (await client.delete("/AuditEvent?action=C")).status_code == 405
        # nothing planted: no event recorded in 2020 exists
        found = (await client.get("/AuditEvent?date=lt2021")).json()
        assert found.get("entry", []) == []


async def test_a_wildcard_registration_is_not_granted_the_audit_trail(smart: SmartServer) -> None:
    key = jose.rsa_key()
    await smart.app.state.smart.clients.register(
        Client(client_id="etl", scopes="system/*.rs", jwks=jose.public_jwks(key))
    )
    asked = "system/Patient.rs system/AuditEvent.rs"
    response = await token_request(smart, grant(key, smart, "etl", asked))
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "system/Patient.rs"
    only_audit = await token_request(smart, grant(key, smart, "etl", "system/AuditEvent.rs"))
    assert only_audit.status_code == 400 and only_audit.json()["error"] == "invalid_scope"
    # a registration that names the trail is granted it
    named = jose.rsa_key()
    await smart.app.state.smart.clients.register(
        Client(
            client_id="auditor",
            scopes="system/*.rs system/AuditEvent.rs",
            jwks=jose.public_jwks(named),
        )
    )
    response = await token_request(smart, grant(named, smart, "auditor", "system/AuditEvent.rs"))
    assert response.status_code == 200 and response.json()["scope"] == "system/AuditEvent.rs"
    async with smart.client(response.json()["access_token"]) as admin:
        assert (await admin.get("/AuditEvent")).status_code == 200


async def test_a_public_app_is_not_granted_the_audit_trail(browser: Browser) -> None:
    # the app is registered for user/*.rs, the user for everything: neither names AuditEvent
    await browser.smart.app.state.smart.users.add(
        "root", "s3cret-pass", "Practitioner/doc", "openid fhirUser user/*.cruds"
    )
    verifier, challenge = pkce()
    params = browser.authorize_params("openid fhirUser user/Patient.rs user/AuditEvent.rs", challenge)  # fmt: skip
    page = await browser.http.get("/auth/authorize", params=params)
    consent = await browser.http.post("/auth/login", data={
        "request": hidden(page.text, "request"), "username": "root", "password": "s3cret-pass",
        "csrf": hidden(page.text, "csrf"),
    })  # fmt: skip
    assert consent.status_code == 200, consent.text
    assert "AuditEvent" not in consent.text  # the consent page lists only what is granted
    redirect = await browser.http.post("/auth/consent", data={
        "request": hidden(consent.text, "request"), "nonce": hidden(consent.text, "nonce"),
        "csrf": hidden(consent.text, "csrf"), "decision": "approve",
    })  # fmt: skip
    code = redirect.headers["location"].split("code=")[1].split("&")[0]
    response = await browser.token(grant_type="authorization_code", code=code, redirect_uri=REDIRECT, code_verifier=verifier)  # fmt: skip
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == "openid fhirUser user/Patient.rs"
    async with browser.smart.client(response.json()["access_token"]) as app:
        assert (await app.get("/AuditEvent")).status_code == 403


async def test_a_token_naming_the_audit_trail_for_an_unregistered_client_is_refused(
    smart: SmartServer,
) -> None:
    # signed with the server's own key, as a bug or a stolen signing path could: still refused
    token = await smart.mint("system/AuditEvent.rs")  # test-app is registered for system/*.cruds
    async with smart.client(token) as client:
        response = await client.get("/AuditEvent")
    assert response.status_code == 401
    admin = await smart.mint("system/AuditEvent.rs", client_id=AUDIT_CLIENT)
    async with smart.client(admin) as client:
        assert (await client.get("/AuditEvent")).status_code == 200
