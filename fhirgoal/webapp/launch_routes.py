"""The web app's launch routes under /app: the start page, launch and callback.

SMART App Launch 2.2 (https://hl7.org/fhir/smart-app-launch/app-launch.html):
- `GET /app/launch?iss=..&launch=..`: EHR launch (with `launch`) or standalone launch (without:
  the authorization server's patient picker chooses the patient). The `iss` must be one of the
  configured FHIR servers (FHIRGOAL_APP_ISSUERS, and this server): the app fetches discovery
  documents from nowhere else;
- `GET /app/callback`: `state` checked against the browser session that started the launch,
  the code exchanged with its PKCE verifier; the launch becomes a patient context `/app/c/{key}/`,
  opened on the screen its `intent` names (context.INTENTS; an unknown intent: the overview) and
  styled after its `smart_style_url` (styling.py);
- `GET /app/self-report`: a client's own standalone launch (patient/ scopes); a patient user
  (fhirUser Patient/..) gets the self-report screens on their own record only (patient_routes.py);
- `GET /app/`: the start page (open patients of this browser, standalone sign-in).
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import replace

import httpx
from fastapi import APIRouter, Request, Response

from fhirgoal.webapp import pages
from fhirgoal.webapp.context import (
    WebApp,
    error,
    handed_over,
    http_of,
    landing,
    patient_user,
    session_of,
    webapp_of,
)
from fhirgoal.webapp.fhir_api import FhirApi, FhirCallError, NeedsRelaunch
from fhirgoal.webapp.sessions import COOKIE, BrowserSession, Launch, PendingLaunch
from fhirgoal.webapp.smart_client import (
    LaunchError,
    TokenSet,
    authorize_url,
    discover,
    exchange_code,
    new_pkce,
)
from fhirgoal.webapp.styling import fetch_style, stylesheet

router = APIRouter(prefix="/app", include_in_schema=False)

# The clinician's request: identity, the launch context, a refresh token while signed in, and
# read/write on the launched patient's record only (least privilege: a patient/ scope reaches
# that one compartment, whatever the clinician's caseload), and read of Questionnaires, which
# are in no patient's compartment: the session screen builds the ORS/SRS from the server's own.
EHR_SCOPE = "launch openid fhirUser online_access patient/*.cruds user/Questionnaire.rs"
STANDALONE_SCOPE = (
    "launch/patient openid fhirUser online_access patient/*.cruds user/Questionnaire.rs"
)
# A client's own sign-in (patient-facing standalone launch): read their record, record their own
# questionnaire answers (the server derives the scores), read the Questionnaires.
PATIENT_SCOPE = (
    "launch/patient openid fhirUser online_access patient/*.rs patient/QuestionnaireResponse.c "
    "user/Questionnaire.rs"
)


def _set_cookie(webapp: WebApp, response: Response, value: str) -> None:
    secure = webapp.settings.public_origin().startswith("https:")
    response.set_cookie(
        COOKIE,
        value,
        path="/app",
        httponly=True,
        secure=secure,
        # inside an EHR's iframe on another site only SameSite=None reaches the app; browsers
        # accept it only with Secure, so plain http keeps Lax (same-site use)
        samesite="none" if secure else "lax",
        max_age=webapp.settings.app_session_seconds,
    )


@router.get("/")
async def start(request: Request) -> Response:
    webapp = webapp_of(request)
    session = session_of(request)
    if session is not None and session.handover is not None:
        return handed_over(request)  # the client has the device: no list of open patients
    launches = list(session.launches.values()) if session else []
    return pages.html(
        webapp.settings,
        "start.html",
        launches=launches,
        default_iss=webapp.settings.app_default_iss or webapp.settings.public_fhir_base(),
    )


@router.get("/launch")
async def launch(request: Request) -> Response:
    iss = (request.query_params.get("iss") or "").rstrip("/")
    launch_value = request.query_params.get("launch")
    if launch_value:
        return await _begin(request, iss, "ehr", EHR_SCOPE, launch_value)
    return await _begin(request, iss, "standalone", STANDALONE_SCOPE)


@router.get("/self-report")
async def self_report(request: Request) -> Response:
    """A client's own standalone launch (patient/ scopes, `launch/patient`): the authorization
    server puts a patient user on their own record; the app then shows only the self-report
    screens (patient_routes.py)."""
    settings = webapp_of(request).settings
    iss = (request.query_params.get("iss") or "").rstrip("/")
    return await _begin(
        request, iss or settings.app_default_iss or settings.public_fhir_base(), "patient",
        PATIENT_SCOPE,
    )  # fmt: skip


async def _begin(
    request: Request, iss: str, kind: str, scope: str, launch_value: str | None = None
) -> Response:
    """Discovery, then the authorization request, its state and PKCE verifier kept in the
    browser session."""
    webapp = webapp_of(request)
    settings = webapp.settings
    if not iss:
        return error(request, "Cannot start the app", "The launch names no FHIR server (iss).")
    if iss not in settings.app_allowed_issuers():
        return error(
            request,
            "Unknown FHIR server",
            f"This app is not set up for the FHIR server {iss}. An administrator can add it to "
            "FHIRGOAL_APP_ISSUERS.",
            403,
        )
    try:
        endpoints = await discover(http_of(webapp), iss)
    except LaunchError as exc:
        return error(request, "Cannot start the app", str(exc), 502)
    cookie = request.cookies.get(COOKIE)
    session = webapp.sessions.get(cookie)
    new_cookie = None
    if session is None:
        new_cookie, session = webapp.sessions.create()
    verifier, challenge = new_pkce()
    state = secrets.token_urlsafe(24)
    session.add_pending(
        PendingLaunch(state, endpoints, verifier, settings.app_callback_url(), kind)
    )
    location = authorize_url(
        endpoints,
        client_id=settings.app_client_id,
        redirect_uri=settings.app_callback_url(),
        scope=scope,
        state=state,
        challenge=challenge,
        launch=launch_value,
    )
    response = Response(
        status_code=302, headers={"Location": location, "Cache-Control": "no-store"}
    )
    if new_cookie:
        _set_cookie(webapp, response, new_cookie)
    return response


@router.get("/callback")
async def callback(request: Request) -> Response:
    webapp = webapp_of(request)
    q = request.query_params
    session = session_of(request)
    pending = session.take_pending(q.get("state", "")) if session else None
    if session is None or pending is None:
        return error(
            request,
            "Sign-in not recognised",
            "This sign-in was not started in this browser, was already used, or has expired. "
            "Start the app again (from the EHR, or from the app's start page).",
        )
    if q.get("error"):
        described = q.get("error_description") or q["error"]
        return error(
            request, "Sign-in did not complete", f"The authorization server said: {described}.", 403
        )
    try:
        tokens = await exchange_code(
            http_of(webapp),
            pending.endpoints,
            credentials=webapp.credentials,
            code=q.get("code", ""),
            redirect_uri=pending.redirect_uri,
            verifier=pending.verifier,
        )
    except LaunchError as exc:
        return error(request, "Sign-in did not complete", str(exc), 502)
    if pending.kind == "handback":
        return _hand_back(request, session, pending, tokens)
    if not tokens.patient:
        return error(
            request,
            "No patient chosen",
            "The authorization server gave no patient context; launch the app from a patient's "
            "chart, or choose a patient when signing in.",
        )
    # Who signed in decides what the app shows, whichever way they came in: a patient user gets
    # the self-report screens on their own record only, never a clinician screen.
    own_record = patient_user(tokens.fhir_user)
    if own_record is not None and own_record != tokens.patient:
        return error(
            request,
            "Not your record",
            "This sign-in is for a client's own record, but the authorization server gave "
            "another patient. Nothing was opened.",
            403,
        )
    if own_record is None and pending.kind == "patient":
        return error(
            request,
            "This sign-in is for clients",
            'Clinicians open a client\'s record with "Sign in and choose a client" on the '
            "start page, or from the EHR.",
            403,
        )
    kind = "patient" if own_record is not None else pending.kind
    launch = Launch(secrets.token_urlsafe(12), pending.endpoints, tokens, kind)
    api = FhirApi(http_of(webapp), launch, webapp.credentials)
    launch.operations, launch.style = await asyncio.gather(
        _operations(api),
        fetch_style(http_of(webapp), tokens.smart_style_url) if tokens.smart_style_url else _none(),
    )
    session.add_launch(launch)
    response = Response(status_code=303, headers={"Location": landing(launch)})
    renewed = webapp.sessions.rotate(request.cookies.get(COOKIE, ""))
    if renewed:
        _set_cookie(webapp, response, renewed)
    return response


def _hand_back(
    request: Request, session: BrowserSession, pending: PendingLaunch, tokens: TokenSet
) -> Response:
    """The clinician signed in again after the client's self-report: the same clinician on the
    same patient gets the launch back (with the fresh tokens); anyone else leaves the device in
    client mode."""
    webapp = webapp_of(request)
    launch = session.launches.get(pending.handback_of or "")
    if launch is None:
        session.handover = None
        return Response(status_code=303, headers={"Location": "/app/"})
    if tokens.patient != launch.patient or tokens.fhir_user != launch.tokens.fhir_user:
        return error(
            request,
            "Not the same sign-in",
            "Only the clinician who handed over the device, on the same client, can return to "
            "the record here. The device stays in client mode.",
            403,
        )
    launch.tokens = replace(
        tokens,
        encounter=tokens.encounter or launch.tokens.encounter,
        need_patient_banner=launch.tokens.need_patient_banner,
    )
    session.handover = None
    response = Response(status_code=303, headers={"Location": f"/app/c/{launch.key}/session"})
    renewed = webapp.sessions.rotate(request.cookies.get(COOKIE, ""))
    if renewed:
        _set_cookie(webapp, response, renewed)
    return response


@router.get("/handback")
async def hand_back(request: Request) -> Response:
    """Start the clinician's sign-in that ends client mode: a standalone authorization request
    with OpenID Connect `prompt=login`, so that an authorization server remembering the
    clinician's login still asks for it (whoever holds the device must know it)."""
    webapp = webapp_of(request)
    session = session_of(request)
    handover = session.handover if session else None
    launch = session.launches.get(handover.key) if session and handover else None
    if session is None or launch is None:
        return Response(status_code=303, headers={"Location": "/app/"})
    settings = webapp.settings
    verifier, challenge = new_pkce()
    state = secrets.token_urlsafe(24)
    session.add_pending(
        PendingLaunch(state, launch.endpoints, verifier, settings.app_callback_url(), "handback",
                      handback_of=launch.key)
    )  # fmt: skip
    location = authorize_url(
        launch.endpoints,
        client_id=settings.app_client_id,
        redirect_uri=settings.app_callback_url(),
        scope=STANDALONE_SCOPE,
        state=state,
        challenge=challenge,
        prompt="login",
    )
    return Response(status_code=302, headers={"Location": location, "Cache-Control": "no-store"})


async def _none() -> dict[str, str]:
    return {}


@router.get("/c/{key}/style.css")
async def launch_style(request: Request, key: str) -> Response:
    """The launch's EHR styling as CSS custom properties (styling.py); empty without one."""
    session = session_of(request)
    launch = session.launches.get(key) if session else None
    body = stylesheet(launch.style) if launch is not None and launch.style else ""
    return Response(body, media_type="text/css", headers={"Cache-Control": "no-store"})


async def _operations(api: FhirApi) -> frozenset[str]:
    """The operation names the server's CapabilityStatement lists (rest.operation and
    rest.resource.operation, https://hl7.org/fhir/R4/capabilitystatement.html)."""
    try:
        statement = await api.read("metadata")
    except (FhirCallError, NeedsRelaunch, httpx.HTTPError):
        return frozenset()
    names: set[str] = set()
    for rest in statement.get("rest") or []:
        for op in rest.get("operation") or []:
            names.add(str(op.get("name", "")))
        for resource in rest.get("resource") or []:
            for op in resource.get("operation") or []:
                names.add(f"{resource.get('type')}/{op.get('name', '')}")
    return frozenset(names)
