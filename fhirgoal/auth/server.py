"""Routes of the built-in authorization server (FHIRGOAL_AUTH=smart).

SMART App Launch 2.2 (https://hl7.org/fhir/smart-app-launch/):
- discovery, `GET /fhir/.well-known/smart-configuration` (conformance.html#using-well-known) and
  the CapabilityStatement `rest.security` extension (conformance.html#declaring-support-for-oauth2-endpoints);
- `GET /auth/authorize`: EHR launch (`launch` resolved from auth_launch) and standalone launch
  (patient picker), PKCE S256 required (app-launch.html#obtain-authorization-code); under
  FHIRGOAL_USER_ACCESS=caseload the picker offers, and a launch may name, only a patient of the
  practitioner's caseload (auth/caseload.py);
- `POST /auth/login`, `POST /auth/consent`: the server-rendered login and consent pages;
- `POST /auth/token`, `POST /auth/introspect` (auth/grants.py), `GET /auth/jwks`.

Hardening (issue 12):
- `state` is required (RFC 6749 section 4.1.2.1 errors go to a valid redirect_uri; SMART App
  Launch 2.2 makes `state` mandatory);
- login and consent are bound to the browser that started the request (OWASP CSRF Prevention
  Cheat Sheet, synchronizer token + cookie): /authorize sets a random `fhirgoal_csrf` cookie
  (HttpOnly, SameSite=Strict, Path=/auth) whose hash the pending request keeps, and both forms
  carry the same value in a hidden field; a POST without the matching cookie and field is
  refused, so knowing a pending request's id is not enough;
- login throttling (OWASP Authentication Cheat Sheet): after `login_max_failures_per_user`
  failures for one user name, or `login_max_failures_per_address` from one address, within
  `login_failure_window_seconds`, attempts are refused with 429 and Retry-After, before any
  password is checked (counters in `auth_throttle`, shared by replicas);
- every login, failed login, consent decision, token issued and token request refused is
  audited (auth/audit.py SecurityTrail, rate limited).
"""

from __future__ import annotations

import base64
import hmac
import math
from dataclasses import dataclass
from datetime import UTC, timedelta
from typing import Any, Literal
from urllib.parse import parse_qsl, unquote_plus, urlencode

import orjson
from fastapi import APIRouter, Request, Response
from pymongo.asynchronous.database import AsyncDatabase

from fhirgoal.auth import pages, smart_metadata
from fhirgoal.auth.audit_events import SecurityEvent
from fhirgoal.auth.caseload import Caseloads
from fhirgoal.auth.clients import ClientRegistry
from fhirgoal.auth.grants import OAuthError, TokenService
from fhirgoal.auth.keys import KeyRing
from fhirgoal.auth.scopes import ScopeError, grantable, parse_scopes
from fhirgoal.auth.state import expired, new_secret, resolve_launch, secret_hash, utcnow
from fhirgoal.auth.tokens import TokenIssuer
from fhirgoal.auth.users import UserDirectory, patient_of
from fhirgoal.core.access import UNRESTRICTED
from fhirgoal.fhir.service import FhirService

router = APIRouter(include_in_schema=False)
REQUEST_TTL = timedelta(minutes=10)
CODE_TTL = timedelta(seconds=60)
MAX_FORM_BYTES = 64 * 1024
PICKER_SIZE = 100
CSRF_COOKIE = "fhirgoal_csrf"
THROTTLE = "auth_throttle"


def _address(request: Request) -> str | None:
    return request.client.host if request.client else None


def _record(request: Request, kind: str, outcome: str, description: str, **who: Any) -> None:
    """Audit a security event of the authorization server (rate limited, buffered)."""
    _smart(request).runtime.record(
        SecurityEvent(kind, outcome, description, address=_address(request), **who)
    )


@dataclass
class SmartServer:
    db: AsyncDatabase[dict[str, Any]]
    keys: KeyRing
    issuer: TokenIssuer
    clients: ClientRegistry
    users: UserDirectory
    tokens: TokenService
    service: FhirService
    runtime: Any  # auth.runtime.AuthRuntime: the security trail, revocation
    caseloads: Caseloads | None = None  # None: FHIRGOAL_USER_ACCESS=all


def _smart(request: Request) -> SmartServer:
    server: SmartServer = request.app.state.smart
    return server


def fhir_base(request: Request) -> str:
    """This server's FHIR base: the tokens' iss and aud, and the root of every URL the discovery
    document gives. Fixed by configuration (Settings.public_fhir_base), never by the request's
    Host: a request sent with another Host still gets the configured URLs."""
    base: str = request.app.state.fhir_base
    return base


def auth_base(fhir: str) -> str:
    return fhir[: -len("/fhir")] if fhir.endswith("/fhir") else fhir


def endpoints(fhir: str) -> dict[str, str]:
    root = auth_base(fhir)
    return {
        "authorize": f"{root}/auth/authorize",
        "token": f"{root}/auth/token",
        "introspect": f"{root}/auth/introspect",
        "jwks": f"{root}/auth/jwks",
    }


def smart_configuration(fhir: str) -> dict[str, Any]:
    urls = endpoints(fhir)
    return {
        "issuer": fhir,
        "jwks_uri": urls["jwks"],
        "authorization_endpoint": urls["authorize"],
        "token_endpoint": urls["token"],
        "introspection_endpoint": urls["introspect"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "token_endpoint_auth_methods_supported": ["private_key_jwt", "client_secret_basic"],
        "token_endpoint_auth_signing_alg_values_supported": ["RS384", "ES384"],
        "scopes_supported": [
            "openid", "fhirUser", "launch", "launch/patient", "offline_access", "online_access",
            "patient/*.cruds", "user/*.cruds", "system/*.cruds", "patient/*.rs", "user/*.rs",
            "system/*.rs", "patient/*.read", "user/*.read", "system/*.read",
        ],
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "capabilities": [
            "launch-ehr", "launch-standalone", "client-public", "client-confidential-asymmetric",
            "client-confidential-symmetric",
            "context-ehr-patient", "context-standalone-patient", "sso-openid-connect",
            "permission-offline", "permission-online", "permission-patient", "permission-user",
            "permission-v1", "permission-v2",
        ],
    }  # fmt: skip


def capability_security(fhir: str) -> dict[str, Any]:
    """CapabilityStatement.rest.security for SMART (conformance.html, oauth-uris extension)."""
    return smart_metadata.capability_security(smart_configuration(fhir))


def _json(body: dict[str, Any], status: int = 200) -> Response:
    return Response(
        orjson.dumps(body),
        status_code=status,
        media_type="application/json",
        headers={"Cache-Control": "no-store", "Pragma": "no-cache"},
    )


def _html(text: str, status: int = 200) -> Response:
    return Response(
        text,
        status_code=status,
        media_type="text/html; charset=utf-8",
        headers={
            "Cache-Control": "no-store",
            "X-Frame-Options": "DENY",
            # no form-action: browsers apply it to the redirect to the app after consent
            "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'",
        },
    )


def _redirect(uri: str, params: dict[str, str | None]) -> Response:
    query = urlencode({k: v for k, v in params.items() if v is not None})
    separator = "&" if "?" in uri else "?"
    return Response(status_code=303, headers={"Location": f"{uri}{separator}{query}"})


async def _form(request: Request) -> dict[str, str]:
    if request.headers.get("content-type", "").split(";")[0].strip() != (
        "application/x-www-form-urlencoded"
    ):
        raise OAuthError("invalid_request", "send the parameters as a form")
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise OAuthError("invalid_request", "the request is too large")
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True)
    except (UnicodeDecodeError, ValueError):
        raise OAuthError("invalid_request", "the form is malformed") from None
    form: dict[str, str] = {}
    for name, value in pairs:
        if name in form:  # RFC 6749 section 3.1: no parameter may be repeated
            raise OAuthError("invalid_request", f"parameter {name} is repeated")
        form[name] = value
    return form


# ---- discovery -----------------------------------------------------------------------------------
@router.get("/fhir/.well-known/smart-configuration")
async def well_known(request: Request) -> Response:
    return Response(
        orjson.dumps(smart_configuration(fhir_base(request))), media_type="application/json"
    )


@router.get("/auth/jwks")
async def jwks(request: Request) -> Response:
    return Response(
        orjson.dumps(await _smart(request).keys.public_jwks()), media_type="application/json"
    )


# ---- token & introspection -------------------------------------------------------------------
@router.post("/auth/token")
async def token(request: Request) -> Response:
    return await _token_service(request, "token")


@router.post("/auth/introspect")
async def introspect(request: Request) -> Response:
    return await _token_service(request, "introspect")


async def _token_service(request: Request, operation: Literal["token", "introspect"]) -> Response:
    """One form POST to the token service; OAuth errors as RFC 6749 §5.2 JSON."""
    fhir = fhir_base(request)
    tokens = _smart(request).tokens
    token_url = endpoints(fhir)["token"]
    form: dict[str, str] = {}
    basic: tuple[str, str] | None = None
    try:
        form = await _form(request)
        basic = _basic_credentials(request)
        if operation == "introspect":
            audiences = sorted(request.app.state.settings.token_audience_set())
            return _json(await tokens.introspect(form, token_url, fhir, audiences, basic))
        issued = await tokens.token(form, token_url, fhir, basic)
    except OAuthError as exc:
        if operation == "token":
            _record(
                request,
                exc.alert or "token-refused",
                "8" if exc.alert else "4",
                f"{exc.error}: {exc.description}",
                client_id=_short(form.get("client_id") or (basic[0] if basic else None)),
                grant_type=_short(form.get("grant_type")),
            )
        return _json(exc.body(), exc.status)
    _record(
        request,
        "token-issued",
        "0",
        f"access token issued, scope: {issued.body.get('scope', '')}",
        client_id=issued.client_id,
        user=issued.user,
        fhir_user=issued.fhir_user,
        grant_type=form.get("grant_type"),
    )
    return _json(issued.body)


def _basic_credentials(request: Request) -> tuple[str, str] | None:
    """client_secret_basic: the `Authorization: Basic` id and secret, each form-urlencoded
    (RFC 6749 section 2.3.1); None without such a header."""
    header = request.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(value.strip(), validate=True).decode()
    except (ValueError, UnicodeDecodeError):
        raise OAuthError("invalid_client", "the Basic credentials are malformed", 401) from None
    client_id, colon, secret = decoded.partition(":")
    if not colon or not client_id:
        raise OAuthError("invalid_client", "the Basic credentials are malformed", 401)
    return unquote_plus(client_id), unquote_plus(secret)


def _short(value: str | None, limit: int = 200) -> str | None:
    """A caller-chosen value for the audit trail, cut to a sane length."""
    return value[:limit] if value else None


# ---- authorization code flow -----------------------------------------------------------------
@router.get("/auth/authorize")
async def authorize(request: Request) -> Response:
    server = _smart(request)
    q = request.query_params
    client = await server.clients.get(q.get("client_id", ""))
    if client is None:
        return _html(pages.error_page("Unknown or revoked client."), 400)
    redirect_uri = q.get("redirect_uri", "")
    if redirect_uri not in client.redirect_uris:
        return _html(pages.error_page("The redirect_uri is not registered for this client."), 400)
    state = q.get("state")

    def fail(error: str, description: str) -> Response:
        return _redirect(
            redirect_uri, {"error": error, "error_description": description, "state": state}
        )

    if not state:
        return fail("invalid_request", "state is required")
    if q.get("response_type") != "code":
        return fail("unsupported_response_type", "response_type must be code")
    if not q.get("code_challenge") or q.get("code_challenge_method") != "S256":
        return fail("invalid_request", "PKCE with code_challenge_method=S256 is required")
    fhir = fhir_base(request)
    # `aud` names the resource server the token is for (SMART App Launch 2.2,
    # app-launch.html#obtain-authorization-code): this one, or a server configured to trust this
    # authorization server (FHIRGOAL_TOKEN_AUDIENCES); any other would let a token meant for one
    # server be replayed at another
    audience = (q.get("aud") or "").rstrip("/")
    if audience not in request.app.state.settings.token_audience_set():
        return fail("invalid_request", f"aud must be this FHIR server, {fhir}")
    try:
        requested = parse_scopes(q.get("scope", ""))
    except ScopeError as exc:
        return fail("invalid_scope", str(exc))
    scopes = grantable(requested, client.allowed)
    launch: dict[str, Any] = {}
    if q.get("launch"):
        found = await resolve_launch(server.db, q["launch"])
        if found is None:
            return fail("invalid_request", "the launch context is unknown or expired")
        launch = {k: found.get(k) for k in ("patient", "encounter", "fhir_user")}
    request_id = new_secret()
    # the browser's CSRF secret: kept while it is one of ours, so that two tabs share it
    csrf = request.cookies.get(CSRF_COOKIE) or ""
    if len(csrf) != 43:
        csrf = new_secret()
    await server.db["auth_requests"].insert_one(
        {
            "_id": request_id,
            "client_id": client.client_id,
            "redirect_uri": redirect_uri,
            "state": state,
            "scope": scopes.text,
            "code_challenge": q["code_challenge"],
            "aud": audience,
            "launch": launch,
            "user": None,
            "nonce": None,
            "csrf": secret_hash(csrf),
            "expires": utcnow() + REQUEST_TTL,
        }
    )
    response = _html(pages.login_page(request_id, client.client_id, csrf))
    response.set_cookie(
        CSRF_COOKIE,
        csrf,
        max_age=int(REQUEST_TTL.total_seconds()),
        path="/auth",
        secure=fhir_base(request).startswith("https:"),
        httponly=True,
        samesite="strict",
    )
    return response


def _same_browser(request: Request, pending: dict[str, Any], form: dict[str, str]) -> bool:
    """The CSRF check: the form's hidden value, the browser's cookie and the hash the pending
    request keeps all agree."""
    cookie = request.cookies.get(CSRF_COOKIE) or ""
    field = form.get("csrf") or ""
    return bool(
        cookie
        and pending.get("csrf")
        and hmac.compare_digest(cookie, field)
        and hmac.compare_digest(secret_hash(cookie), pending["csrf"])
    )


def _csrf_refused(request: Request, pending: dict[str, Any]) -> Response:
    _record(
        request,
        "csrf-refused",
        "8",
        "a login or consent form was posted without the browser's CSRF cookie and field",
        client_id=pending.get("client_id"),
    )
    return _html(
        pages.error_page(
            "This request did not come from the sign-in page this browser opened "
            "(cookies must be enabled); start again from the app."
        ),
        403,
    )


async def _throttled(server: SmartServer, keys: list[tuple[str, int]]) -> int:
    """Seconds until a throttled login may be tried again; 0 when it is not throttled."""
    now = utcnow()
    found = server.db[THROTTLE].find({"_id": {"$in": [key for key, _ in keys]}})
    limits = dict(keys)
    wait = 0
    async for doc in found:
        expires = doc["expires"] if doc["expires"].tzinfo else doc["expires"].replace(tzinfo=UTC)
        if doc.get("n", 0) >= limits[doc["_id"]] and expires > now:
            wait = max(wait, math.ceil((expires - now).total_seconds()))
    return wait


async def _count_failure(server: SmartServer, keys: list[tuple[str, int]], window: int) -> None:
    now = utcnow()
    throttle = server.db[THROTTLE]
    for key, _ in keys:
        counted = await throttle.update_one(
            {"_id": key, "expires": {"$gt": now}}, {"$inc": {"n": 1}}
        )
        if counted.matched_count == 0:  # a first failure, or the last window is over
            await throttle.replace_one(
                {"_id": key}, {"n": 1, "expires": now + timedelta(seconds=window)}, upsert=True
            )


async def _pending(server: SmartServer, request_id: str) -> dict[str, Any] | None:
    doc = await server.db["auth_requests"].find_one({"_id": request_id})
    return None if doc is None or expired(doc) else doc


def _needs_picker(pending: dict[str, Any]) -> bool:
    scopes = parse_scopes(pending["scope"])
    return scopes.has("launch/patient") and not pending["launch"].get("patient")


async def _patient_choices(server: SmartServer, fhir_user: str | None) -> list[tuple[str, str]]:
    query: dict[str, Any] = {}
    if server.caseloads is not None:
        patients = (await server.caseloads.of(fhir_user)).patients
        query = {"_id": {"$in": sorted(p.removeprefix("Patient/") for p in patients)}}
    found = await server.service.find_where(
        UNRESTRICTED, "Patient", query, [("_id", 1)], PICKER_SIZE
    )
    choices = []
    for version in found:
        names = (version.resource or {}).get("name") or [{}]
        name = names[0]
        label = " ".join([*name.get("given", []), name.get("family", "")]).strip()
        choices.append((version.id, f"{label or version.id} ({version.id})"))
    return choices


def _caseload_refused(request: Request, pending: dict[str, Any], what: str) -> None:
    _record(
        request,
        "launch-refused",
        "4",
        f"{what} is not in the user's caseload",
        user=pending.get("user"),
        fhir_user=pending.get("fhir_user"),
        client_id=pending["client_id"],
    )


async def _may_launch(server: SmartServer, fhir_user: str | None, patient: str) -> bool:
    """Is the patient in the practitioner's caseload (always, under FHIRGOAL_USER_ACCESS=all)?
    A patient user may launch on their own record only."""
    own = patient_of(fhir_user)
    if own is not None or (fhir_user or "").startswith("Patient/"):
        return own == patient
    if server.caseloads is None:
        return True
    return f"Patient/{patient}" in (await server.caseloads.of(fhir_user)).patients


@router.post("/auth/login")
async def login(request: Request) -> Response:
    server = _smart(request)
    try:
        form = await _form(request)
    except OAuthError as exc:
        return _html(pages.error_page(exc.description), 400)
    pending = await _pending(server, form.get("request", ""))
    if pending is None:
        return _html(pages.error_page("This sign-in has expired; start again from the app."), 400)
    if not _same_browser(request, pending, form):
        return _csrf_refused(request, pending)
    settings = request.app.state.settings
    username = form.get("username", "")
    throttle_keys = [
        (f"user:{username}", settings.login_max_failures_per_user),
        (f"address:{_address(request)}", settings.login_max_failures_per_address),
    ]
    csrf = form["csrf"]
    wait = await _throttled(server, throttle_keys)
    if wait:
        _record(
            request,
            "login-throttled",
            "4",
            "sign-in refused: too many failed attempts",
            user=_short(username),
            client_id=pending["client_id"],
        )
        minutes = max(1, math.ceil(wait / 60))
        page = pages.login_page(
            pending["_id"],
            pending["client_id"],
            csrf,
            f"Too many failed sign-ins for this user name or from this address. "
            f"Try again in {minutes} minute{'s' if minutes > 1 else ''}.",
        )
        response = _html(page, 429)
        response.headers["Retry-After"] = str(wait)
        return response
    user = await server.users.authenticate(username, form.get("password", ""))
    if user is None:
        await _count_failure(server, throttle_keys, settings.login_failure_window_seconds)
        _record(
            request,
            "login-failed",
            "4",
            "wrong user name or password",
            user=_short(username),
            client_id=pending["client_id"],
        )
        page = pages.login_page(
            pending["_id"], pending["client_id"], csrf, "Wrong user name or password."
        )
        return _html(page, 401)
    await server.db[THROTTLE].delete_one({"_id": f"user:{username}"})
    _record(
        request,
        "login",
        "0",
        "signed in",
        user=user.username,
        fhir_user=user.fhir_user,
        client_id=pending["client_id"],
    )
    granted = grantable(parse_scopes(pending["scope"]), parse_scopes(user.scopes))
    nonce = new_secret()
    launch = pending["launch"]
    if user.patient is not None and not launch.get("patient"):
        # a patient user's standalone launch is on their own record: no picker
        launch = {**launch, "patient": user.patient}
    await server.db["auth_requests"].update_one(
        {"_id": pending["_id"]},
        {
            "$set": {
                "user": user.username,
                "fhir_user": user.fhir_user,
                "scope": granted.text,
                "nonce": nonce,
                "launch": launch,
            }
        },
    )
    pending["scope"], pending["launch"] = granted.text, launch
    picker = await _patient_choices(server, user.fhir_user) if _needs_picker(pending) else None
    return _html(
        pages.consent_page(
            pending["_id"],
            nonce,
            csrf,
            pending["client_id"],
            user.username,
            granted.text.split(),
            picker,
        )
    )


@router.post("/auth/consent")
async def consent(request: Request) -> Response:
    server = _smart(request)
    try:
        form = await _form(request)
    except OAuthError as exc:
        return _html(pages.error_page(exc.description), 400)
    pending = await _pending(server, form.get("request", ""))
    if (
        pending is None
        or not pending.get("nonce")
        or not hmac.compare_digest(pending["nonce"], form.get("nonce", ""))
    ):
        return _html(pages.error_page("This consent has expired; start again from the app."), 400)
    if not _same_browser(request, pending, form):
        return _csrf_refused(request, pending)
    await server.db["auth_requests"].delete_one({"_id": pending["_id"]})  # one decision only
    approved = form.get("decision") == "approve"
    _record(
        request,
        "consent-approved" if approved else "consent-denied",
        "0",
        f"the user {'approved' if approved else 'denied'} scope: {pending['scope']}",
        user=pending.get("user"),
        fhir_user=pending.get("fhir_user"),
        client_id=pending["client_id"],
    )
    if not approved:
        return _redirect(
            pending["redirect_uri"],
            {
                "error": "access_denied",
                "error_description": "the user denied access",
                "state": pending["state"],
            },
        )
    launch = pending["launch"]
    patient = launch.get("patient")
    if _needs_picker(pending):
        patient = form.get("patient") or None
        exists = (
            patient is not None
            and await server.service.current(UNRESTRICTED, "Patient", patient) is not None
        )
        allowed = exists and await _may_launch(server, pending.get("fhir_user"), str(patient))
        if exists and not allowed:  # the picker offered only the caseload: a crafted choice
            _caseload_refused(request, pending, f"a picker choice, Patient/{patient}")
        if not allowed:
            return _redirect(
                pending["redirect_uri"],
                {
                    "error": "invalid_request",
                    "error_description": "no such patient was chosen",
                    "state": pending["state"],
                },
            )
    elif patient and not await _may_launch(server, pending.get("fhir_user"), patient):
        _caseload_refused(request, pending, f"the EHR launch's Patient/{patient}")
        return _redirect(
            pending["redirect_uri"],
            {
                "error": "access_denied",
                "error_description": "the launch patient is not in the user's caseload",
                "state": pending["state"],
            },
        )
    code = new_secret()
    await server.db["auth_codes"].insert_one(
        {
            "_id": secret_hash(code),
            "grant": new_secret(),  # names every token issued from this code (auth/grants.py)
            "client_id": pending["client_id"],
            "redirect_uri": pending["redirect_uri"],
            "code_challenge": pending["code_challenge"],
            "aud": pending.get("aud"),
            "scope": pending["scope"],
            "patient": patient,
            "encounter": launch.get("encounter"),
            "fhir_user": pending.get("fhir_user"),
            "sub": pending["user"],
            "expires": utcnow() + CODE_TTL,
        }
    )
    return _redirect(pending["redirect_uri"], {"code": code, "state": pending["state"]})
