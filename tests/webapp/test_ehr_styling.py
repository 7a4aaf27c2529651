"""An EHR's launch context beyond the patient (SMART App Launch 2.2, app-launch.html): `intent`
opens the screen it names (an unknown one: the overview), `smart_style_url` restyles the app with
the EHR's colours and fonts, sanitised (nothing but colours, sizes and family names gets through),
and `need_patient_banner: false` leaves the banner to the EHR.

fhirgoal's own authorization server gives none of these, so the EHR here is a small real
authorization server (below: authorization code with PKCE S256, RS384 JWT access tokens, a JWKS,
a style document) protecting a fhirgoal in external mode whose endpoints are given by settings."""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, RedirectResponse
from starlette.routing import Route

from fhirgoal.demo import write_demo
from tests.auth import jose
from tests.auth.conftest import SmartServer, run_smart
from tests.conftest import serve_app
from tests.webapp.conftest import axe_violations, screenshot

STYLE = {
    "color_background": "#fdf8f2", "color_text": "#1a1a1a", "color_highlight": "#7a1f5c",
    "color_error": "red;} body { background: url(https://attacker.example/x) }",
    "dim_font_size": "18px", "dim_border_radius": "2px",
    "font_family_body": "Georgia, 'Times New Roman', serif",
    "font_family_heading": "url(https://attacker.example/f)",
}  # fmt: skip
SCOPE = "launch openid fhirUser online_access patient/*.cruds user/Questionnaire.rs"


@dataclass
class EhrAuthServer:
    """The EHR's authorization server: approves at once (its user is signed in to the EHR) and
    gives each launch value's context."""

    url: str = ""
    audience: str = ""
    key: Any = field(default_factory=jose.rsa_key)
    launches: dict[str, dict[str, Any]] = field(default_factory=dict)
    codes: dict[str, dict[str, str]] = field(default_factory=dict)

    def app(self) -> Starlette:
        async def authorize(request: Request) -> RedirectResponse:
            q = request.query_params
            assert q["code_challenge_method"] == "S256" and q["aud"] == self.audience
            code = secrets.token_urlsafe(16)
            self.codes[code] = {"challenge": q["code_challenge"], "launch": q["launch"],
                                "redirect_uri": q["redirect_uri"]}  # fmt: skip
            query = urlencode({"code": code, "state": q["state"]})
            return RedirectResponse(f"{q['redirect_uri']}?{query}", status_code=302)

        async def token(request: Request) -> JSONResponse:
            form = dict(parse_qsl((await request.body()).decode()))
            grant = self.codes.pop(form.get("code", ""), None)
            digest = hashlib.sha256(form.get("code_verifier", "").encode()).digest()
            challenge = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
            if grant is None or challenge != grant["challenge"]:
                return JSONResponse({"error": "invalid_grant"}, status_code=400)
            context = self.launches[grant["launch"]]
            now = int(time.time())
            access = jose.sign(self.key, {
                "iss": self.url, "aud": self.audience, "sub": "dr-morgan", "scope": SCOPE,
                "client_id": "clinic-app", "patient": context["patient"],
                "fhirUser": "Practitioner/demo-therapist", "iat": now, "exp": now + 300,
            })  # fmt: skip
            return JSONResponse({"access_token": access, "token_type": "Bearer",
                                 "expires_in": 300, "scope": SCOPE, **context})  # fmt: skip

        async def jwks(request: Request) -> JSONResponse:
            return JSONResponse(jose.public_jwks(self.key))

        async def style(request: Request) -> JSONResponse:
            return JSONResponse(STYLE)

        return Starlette(routes=[
            Route("/authorize", authorize), Route("/token", token, methods=["POST"]),
            Route("/jwks", jwks), Route("/style.json", style),
        ])  # fmt: skip


@pytest.fixture
async def styled_ehr(mongo_uri: str) -> AsyncIterator[tuple[EhrAuthServer, SmartServer]]:
    ehr = EhrAuthServer()
    server, task, port = await serve_app(ehr.app(), lifespan="off")
    ehr.url = f"http://127.0.0.1:{port}"
    overrides = {
        "auth": "external", "external_issuer": ehr.url, "external_jwks_url": f"{ehr.url}/jwks",
        "external_authorize_url": f"{ehr.url}/authorize", "external_token_url": f"{ehr.url}/token",
        "app_client_id": "clinic-app",
    }  # fmt: skip
    try:
        async with run_smart(mongo_uri, **overrides) as fhir:
            await write_demo(fhir.service)
            ehr.audience = fhir.base
            yield ehr, fhir
    finally:
        server.should_exit = True
        await task


async def test_intent_and_the_ehrs_style(
    styled_ehr: tuple[EhrAuthServer, SmartServer], page: Any, axe_source: str
) -> None:
    ehr, fhir = styled_ehr
    ehr.launches["in-session"] = {
        "patient": "demo-blair", "intent": "session", "need_patient_banner": False,
        "smart_style_url": f"{ehr.url}/style.json",
    }  # fmt: skip
    ehr.launches["other"] = {"patient": "demo-alex", "intent": "reconcile-medications"}

    await page.goto(f"{fhir.origin}/app/launch?iss={quote(fhir.base)}&launch=in-session")
    await page.wait_for_url("**/app/c/*/session")  # intent=session: the session screen at once
    assert await page.locator(".patient-banner").count() == 0  # the EHR shows its own banner

    def prop(name: str) -> str:
        return f"getComputedStyle(document.documentElement).getPropertyValue('{name}').trim()"

    assert await page.evaluate(prop("--accent")) == "#7a1f5c"
    assert await page.evaluate(prop("--paper")) == "#fdf8f2"
    assert await page.evaluate(prop("--font-size")) == "18px"
    assert await page.evaluate("getComputedStyle(document.body).fontSize") == "18px"
    assert "Georgia" in await page.evaluate("getComputedStyle(document.body).fontFamily")
    # the injections are dropped: the app's own error colour and heading font remain
    assert await page.evaluate(prop("--red")) == "#b3261e"
    key = page.url.split("/c/")[1].split("/")[0]
    css = await (await page.request.get(f"{fhir.origin}/app/c/{key}/style.css")).text()
    assert "url(" not in css and "attacker" not in css and "--red" not in css
    assert await axe_violations(page, axe_source) == []
    await screenshot(page, "ehr-styled-session")

    # an intent the app does not know opens the overview; no style URL, the app's own look
    await page.goto(f"{fhir.origin}/app/launch?iss={quote(fhir.base)}&launch=other")
    await page.wait_for_url("**/app/c/*/")
    assert "Alex" in await page.locator(".patient-banner").inner_text()
    assert await page.evaluate(prop("--accent")) == "#0b5cad"
