"""Confidential symmetric clients (SMART App Launch 2.2, client-confidential-symmetric.html):
`fhirgoal client register --secret` generates a secret, shown once, whose SHA-256 alone is
stored; the token endpoint takes it as `client_secret_basic` (RFC 6749 section 2.3.1), and such a
client cannot fall back to the public way (client_id alone)."""

from __future__ import annotations

import base64
import re
from urllib.parse import quote

import httpx
from pymongo import MongoClient

from fhirgoal.auth.clients import Client, secret_digest
from tests.auth.flows import REDIRECT, Browser, pkce
from tests.auth.test_cli import run

SECRET = "s3cret:with spaces/and+signs"


def basic(client_id: str, secret: str) -> dict[str, str]:
    pair = f"{quote(client_id, safe='')}:{quote(secret, safe='')}"
    return {"Authorization": "Basic " + base64.b64encode(pair.encode()).decode()}


async def test_a_secret_client_authenticates_with_basic_credentials(browser: Browser) -> None:
    await browser.smart.app.state.smart.clients.register(
        Client("webapp-s", "launch/patient patient/*.rs offline_access",
               redirect_uris=[REDIRECT], secret_hash=secret_digest(SECRET))
    )  # fmt: skip

    async def code() -> tuple[str, str]:
        verifier, challenge = pkce()
        redirect = await browser.sign_in(
            "launch/patient patient/*.rs", challenge, patient="pa", client_id="webapp-s"
        )
        return redirect["code"][0], verifier

    async def exchange(headers: dict[str, str], **extra: str) -> httpx.Response:
        got, verifier = await code()
        form = {"grant_type": "authorization_code", "code": got, "redirect_uri": REDIRECT,
                "code_verifier": verifier, **extra}  # fmt: skip
        return await browser.http.post("/auth/token", data=form, headers=headers)

    assert (await exchange({}, client_id="webapp-s")).status_code == 401  # no public way in
    wrong = await exchange(basic("webapp-s", "not-the-secret"))
    assert wrong.status_code == 401 and wrong.json()["error"] == "invalid_client"
    issued = await exchange(basic("webapp-s", SECRET))
    assert issued.status_code == 200, issued.text
    async with browser.smart.client(issued.json()["access_token"]) as fhir:
        assert (await fhir.get("/Patient/pa")).status_code == 200
    discovery = (await browser.http.get("/fhir/.well-known/smart-configuration")).json()
    assert "client_secret_basic" in discovery["token_endpoint_auth_methods_supported"]
    assert "client-confidential-symmetric" in discovery["capabilities"]


def test_client_register_generates_a_secret_shown_once(db_env: dict[str, str]) -> None:
    output = run(db_env, "client", "register", "--client-id", "ehr-app", "--secret",
                 "--redirect-uri", "https://app.example/cb", "--scopes", "launch patient/*.rs")  # fmt: skip
    match = re.search(r"client secret \(shown once.*\): (\S+)", output)
    assert match, output
    with MongoClient(db_env["MONGODB_URI"]) as client:
        doc = client[db_env["FHIRGOAL_DB"]]["auth_clients"].find_one({"_id": "ehr-app"})
    assert doc is not None and doc["secret_hash"] == secret_digest(match.group(1))
    assert match.group(1) not in str(doc)
    assert "ehr-app\tconfidential\tactive" in run(db_env, "client", "list")
