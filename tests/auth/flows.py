"""The SMART flows as a client drives them, shared by the auth tests: the authorization code flow
through the login and consent pages, as a browser would (forms followed by hand, PKCE S256:
https://hl7.org/fhir/smart-app-launch/app-launch.html, RFC 7636), the backend-services token
request (RFC 7523), and the security events the server records about them."""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import httpx
from joserfc.jwk import ECKey, RSAKey

from fhirgoal.core.access import UNRESTRICTED
from tests.auth import jose

if TYPE_CHECKING:  # conftest builds its `browser` fixture from this module
    from tests.auth.conftest import SmartServer

REDIRECT = "http://127.0.0.1:9/callback"  # never contacted: the test reads the redirect itself
PASSWORD = "s3cret-pass"  # every test user's
DCM = "http://dicom.nema.org/resources/ontology/DCM"


def hidden(page: str, name: str) -> str:
    """The value of a page's hidden form field."""
    match = re.search(rf'name="{name}" value="([^"]*)"', page)
    assert match, page
    return match.group(1)


def pkce() -> tuple[str, str]:
    """A PKCE verifier and its S256 challenge (RFC 7636 section 4)."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=")
    return verifier, challenge.decode()


@dataclass
class Browser:
    """A user's browser on the server's origin, for the app `webapp` redirecting to REDIRECT."""

    smart: SmartServer
    http: httpx.AsyncClient

    def authorize_params(self, scope: str, challenge: str | None, **extra: str) -> dict[str, str]:
        params = {
            "response_type": "code", "client_id": "webapp", "redirect_uri": REDIRECT,
            "scope": scope, "state": "st-1", "aud": self.smart.base,
        }  # fmt: skip
        if challenge is not None:
            params |= {"code_challenge": challenge, "code_challenge_method": "S256"}
        return params | extra

    async def consent_page(
        self, scope: str, challenge: str, user: str = "lee", password: str = PASSWORD, **extra: str
    ) -> str:
        """Authorize, then log in on the login page: the consent page's text."""
        page = await self.http.get(
            "/auth/authorize", params=self.authorize_params(scope, challenge, **extra)
        )
        assert page.status_code == 200, page.text
        assert "<form" in page.text and 'name="password"' in page.text
        consent = await self.http.post("/auth/login", data={
            "request": hidden(page.text, "request"), "username": user, "password": password,
            "csrf": hidden(page.text, "csrf"),
        })  # fmt: skip
        assert consent.status_code == 200, consent.text
        return consent.text

    async def decide(self, consent: str, patient: str | None = None) -> dict[str, list[str]]:
        """Approve on the consent page (choosing `patient` when given): the redirect's query."""
        form = {"request": hidden(consent, "request"), "nonce": hidden(consent, "nonce"),
                "csrf": hidden(consent, "csrf"), "decision": "approve"}  # fmt: skip
        if patient is not None:
            form["patient"] = patient
        redirect = await self.http.post("/auth/consent", data=form)
        assert redirect.status_code == 303, redirect.text
        location = redirect.headers["location"]
        assert location.startswith(REDIRECT)
        return parse_qs(urlsplit(location).query)

    async def sign_in(
        self,
        scope: str,
        challenge: str,
        patient: str | None = None,
        password: str = PASSWORD,
        **extra: str,
    ) -> dict[str, list[str]]:
        """Log in as lee and approve, picking `patient` (offered) or with no picker at all."""
        consent = await self.consent_page(scope, challenge, password=password, **extra)
        if patient is not None:
            assert f'<option value="{patient}"' in consent
        else:
            assert "<select" not in consent
        return await self.decide(consent, patient)

    async def token(self, **form: str) -> httpx.Response:
        return await self.http.post("/auth/token", data={"client_id": "webapp", **form})


async def token_request(smart: SmartServer, form: dict[str, str]) -> httpx.Response:
    return await smart.http.post(f"{smart.origin}/auth/token", data=form)


def grant(key: RSAKey | ECKey, smart: SmartServer, client_id: str, scope: str) -> dict[str, str]:
    """A client_credentials request with a private_key_jwt assertion (SMART Backend Services)."""
    return jose.form_assertion(
        key, client_id, f"{smart.origin}/auth/token", grant_type="client_credentials", scope=scope
    )


def refused(client: httpx.AsyncClient, path: str = "/Patient/pa") -> Callable[[], Awaitable[bool]]:
    """A condition for `wait_until`: `client`'s token is refused (401) on `path`, as it is once a
    revocation has reached the server's token cache."""

    async def check() -> bool:
        return (await client.get(path)).status_code == 401

    return check


async def security_events(smart: SmartServer, kind: str | None = None) -> list[dict[str, Any]]:
    """The stored security events (of one kind), once the buffer has been flushed."""
    await smart.app.state.auth_runtime.auditor.flush()
    found = await smart.service.repo.find(UNRESTRICTED, "AuditEvent", {}, [("_id", 1)], 1000)
    events = [v.resource for v in found if v.resource is not None]
    events = [e for e in events if e["type"].get("system") == DCM]
    return [e for e in events if kind is None or security_kind(e) == kind]


def security_kind(event: dict[str, Any]) -> str:
    return next(s["code"] for s in event["subtype"] if s["system"] == "urn:fhirgoal:security-event")
