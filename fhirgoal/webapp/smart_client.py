"""The app's side of SMART App Launch 2.2 (https://hl7.org/fhir/smart-app-launch/app-launch.html).

- discovery: `GET <iss>/.well-known/smart-configuration` (conformance.html#using-well-known);
- authorization request: `response_type=code`, `client_id`, `redirect_uri`, `scope`, `state`,
  `aud` = the iss, `launch` for an EHR launch, PKCE with `code_challenge_method=S256` (RFC 7636;
  SMART 2.x: apps SHALL use S256);
- token request with the `code_verifier` and the app's client authentication (client_auth.py:
  public, client_secret_basic or private_key_jwt), and refresh (app-launch.html#step-7-refresh) before the
  access token expires; the launch context (`patient`, `encounter`, `need_patient_banner`,
  `smart_style_url`, `intent`) comes with the token response and is kept through refreshes.

Transport is httpx with timeouts; every failure becomes a LaunchError whose message can be shown
to the user (never a token or a secret).
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import time
from dataclasses import dataclass, field, replace
from typing import Any
from urllib.parse import urlencode

import httpx
import orjson

from fhirgoal.webapp.client_auth import ClientCredentials


class LaunchError(Exception):
    """A launch or token step failed; the message is for the user."""


@dataclass(frozen=True)
class SmartEndpoints:
    iss: str
    authorize: str
    token: str
    capabilities: frozenset[str] = frozenset()


@dataclass(frozen=True)
class TokenSet:
    access_token: str
    expires_at: float  # time.time() seconds
    scope: str
    refresh_token: str | None = None
    patient: str | None = None
    encounter: str | None = None
    fhir_user: str | None = None
    need_patient_banner: bool = True
    smart_style_url: str | None = None
    intent: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def expires_within(self, seconds: float) -> bool:
        return self.expires_at - time.time() < seconds


def new_pkce() -> tuple[str, str]:
    """A PKCE verifier (43+ characters of 32 random bytes) and its S256 challenge."""
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


async def _json(response: httpx.Response, what: str) -> dict[str, Any]:
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        raise LaunchError(f"{what} did not answer JSON (HTTP {response.status_code})") from None
    if not isinstance(body, dict):
        raise LaunchError(f"{what} did not answer a JSON object")
    return body


async def discover(http: httpx.AsyncClient, iss: str) -> SmartEndpoints:
    """The authorization server of the FHIR server `iss`, from its well-known document."""
    url = f"{iss.rstrip('/')}/.well-known/smart-configuration"
    try:
        response = await http.get(url, headers={"Accept": "application/json"})
    except httpx.HTTPError as exc:
        raise LaunchError(
            f"the FHIR server {iss} could not be reached ({type(exc).__name__})"
        ) from None
    if response.status_code != 200:
        raise LaunchError(f"{iss} does not offer SMART on FHIR (HTTP {response.status_code})")
    body = await _json(response, "the SMART configuration")
    authorize, token = body.get("authorization_endpoint"), body.get("token_endpoint")
    if not isinstance(authorize, str) or not isinstance(token, str):
        raise LaunchError(f"{iss}'s SMART configuration names no authorization or token endpoint")
    methods = body.get("code_challenge_methods_supported")
    if isinstance(methods, list) and "S256" not in methods:
        raise LaunchError(f"{iss}'s authorization server does not support PKCE S256")
    capabilities = body.get("capabilities")
    return SmartEndpoints(
        iss=iss.rstrip("/"),
        authorize=authorize,
        token=token,
        capabilities=frozenset(c for c in capabilities or [] if isinstance(c, str)),
    )


def authorize_url(
    endpoints: SmartEndpoints,
    *,
    client_id: str,
    redirect_uri: str,
    scope: str,
    state: str,
    challenge: str,
    launch: str | None = None,
    prompt: str | None = None,
) -> str:
    params = {
        "response_type": "code",
        "client_id": client_id,
        "redirect_uri": redirect_uri,
        "scope": scope,
        "state": state,
        "aud": endpoints.iss,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    if launch:
        params["launch"] = launch
    if prompt:  # OpenID Connect Core 3.1.2.1: "login" asks the user to authenticate again
        params["prompt"] = prompt
    separator = "&" if "?" in endpoints.authorize else "?"
    return f"{endpoints.authorize}{separator}{urlencode(params)}"


def _claims_of(id_token: str) -> dict[str, Any]:
    """The payload of an id_token, read for display only (who is signed in): nothing is
    authorized on it, the FHIR server checks the access token on every request."""
    try:
        payload = id_token.split(".")[1]
        decoded = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError, orjson.JSONDecodeError):
        return {}
    return decoded if isinstance(decoded, dict) else {}


def _token_set(body: dict[str, Any], previous: TokenSet | None = None) -> TokenSet:
    access = body.get("access_token")
    if not isinstance(access, str) or not access:
        raise LaunchError("the authorization server gave no access token")
    if str(body.get("token_type", "")).lower() != "bearer":
        raise LaunchError("the authorization server gave a token that is not a Bearer token")
    expires_in = body.get("expires_in")
    lifetime = float(expires_in) if isinstance(expires_in, int | float) else 300.0
    fhir_user = None
    if isinstance(body.get("id_token"), str):
        fhir_user = _claims_of(body["id_token"]).get("fhirUser")
    fresh = TokenSet(
        access_token=access,
        expires_at=time.time() + lifetime,
        scope=str(body.get("scope", "")),
        refresh_token=body.get("refresh_token")
        if isinstance(body.get("refresh_token"), str)
        else None,
        patient=body.get("patient") if isinstance(body.get("patient"), str) else None,
        encounter=body.get("encounter") if isinstance(body.get("encounter"), str) else None,
        fhir_user=fhir_user if isinstance(fhir_user, str) else None,
        need_patient_banner=body.get("need_patient_banner") is not False,
        smart_style_url=body.get("smart_style_url")
        if isinstance(body.get("smart_style_url"), str)
        else None,
        intent=body.get("intent") if isinstance(body.get("intent"), str) else None,
    )
    if previous is None:
        return fresh
    # A refresh response need not repeat the launch context (app-launch.html#step-7): keep it.
    return replace(
        fresh,
        refresh_token=fresh.refresh_token or previous.refresh_token,
        patient=fresh.patient or previous.patient,
        encounter=fresh.encounter or previous.encounter,
        fhir_user=fresh.fhir_user or previous.fhir_user,
        need_patient_banner=previous.need_patient_banner,
        smart_style_url=fresh.smart_style_url or previous.smart_style_url,
        intent=fresh.intent or previous.intent,
    )


async def _token_request(
    http: httpx.AsyncClient,
    endpoints: SmartEndpoints,
    credentials: ClientCredentials,
    form: dict[str, str],
) -> dict[str, Any]:
    form, auth = credentials.authenticate(form, endpoints.token)
    try:
        response = await http.post(
            endpoints.token,
            data=form,
            headers={"Accept": "application/json"},
            auth=auth or httpx.USE_CLIENT_DEFAULT,
        )
    except httpx.HTTPError as exc:
        raise LaunchError(
            f"the token endpoint could not be reached ({type(exc).__name__})"
        ) from None
    body = await _json(response, "the token endpoint")
    if response.status_code != 200:
        error = body.get("error_description") or body.get("error") or "refused"
        raise LaunchError(f"the authorization server refused the token request: {error}")
    return body


async def exchange_code(
    http: httpx.AsyncClient,
    endpoints: SmartEndpoints,
    *,
    credentials: ClientCredentials,
    code: str,
    redirect_uri: str,
    verifier: str,
) -> TokenSet:
    form = {
        "grant_type": "authorization_code",
        "code": code,
        "redirect_uri": redirect_uri,
        "code_verifier": verifier,
    }
    return _token_set(await _token_request(http, endpoints, credentials, form))


async def refresh(
    http: httpx.AsyncClient,
    endpoints: SmartEndpoints,
    *,
    credentials: ClientCredentials,
    tokens: TokenSet,
) -> TokenSet:
    if not tokens.refresh_token:
        raise LaunchError("the session has no refresh token")
    form = {"grant_type": "refresh_token", "refresh_token": tokens.refresh_token}
    return _token_set(await _token_request(http, endpoints, credentials, form), tokens)
