"""The web app's routes under /app: launch, callback, and the screens of a launched patient.

SMART App Launch 2.2 (https://hl7.org/fhir/smart-app-launch/app-launch.html):
- `GET /app/launch?iss=..&launch=..`: EHR launch (with `launch`) or standalone launch (without:
  the authorization server's patient picker chooses the patient). The `iss` must be one of the
  configured FHIR servers (FHIRGOAL_APP_ISSUERS, and this server): the app fetches discovery
  documents from nowhere else;
- `GET /app/callback`: `state` checked against the browser session that started the launch,
  the code exchanged with its PKCE verifier; the launch becomes a patient context `/app/c/{key}/`;
- `GET /app/`: the start page (open patients of this browser, standalone sign-in).

Handlers are thin: they read the session, call the FHIR server through FhirApi, and render.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import APIRouter, Request, Response

from fhirgoal.config import Settings
from fhirgoal.webapp import overview, pages
from fhirgoal.webapp.charts import render
from fhirgoal.webapp.fhir_api import FhirApi, FhirCallError, NeedsRelaunch
from fhirgoal.webapp.sessions import (
    COOKIE,
    BrowserSession,
    Launch,
    PendingLaunch,
    SessionStore,
)
from fhirgoal.webapp.smart_client import (
    LaunchError,
    authorize_url,
    discover,
    exchange_code,
    new_pkce,
)
from fhirgoal.webapp.summary import goal_levels, level_key, level_label, parse_progress

router = APIRouter(prefix="/app", include_in_schema=False)

# The clinician's request: identity, the launch context, a refresh token while signed in, and
# read/write on the launched patient's record only (least privilege: a patient/ scope reaches
# that one compartment, whatever the clinician's caseload).
EHR_SCOPE = "launch openid fhirUser online_access patient/*.cruds"
STANDALONE_SCOPE = "launch/patient openid fhirUser online_access patient/*.cruds"


@dataclass
class WebApp:
    settings: Settings
    sessions: SessionStore
    http: httpx.AsyncClient | None = None


def _webapp(request: Request) -> WebApp:
    webapp: WebApp = request.app.state.webapp
    return webapp


def _http(webapp: WebApp) -> httpx.AsyncClient:
    assert webapp.http is not None, "the web app's HTTP client opens with the lifespan"
    return webapp.http


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


def _session(request: Request) -> BrowserSession | None:
    return _webapp(request).sessions.get(request.cookies.get(COOKIE))


def _error(request: Request, title: str, text: str, status: int = 400) -> Response:
    return pages.message(_webapp(request).settings, title, text, status)


@router.get("/")
async def start(request: Request) -> Response:
    webapp = _webapp(request)
    session = _session(request)
    launches = list(session.launches.values()) if session else []
    return pages.html(
        webapp.settings,
        "start.html",
        launches=launches,
        default_iss=webapp.settings.app_default_iss or webapp.settings.public_fhir_base(),
    )


@router.get("/launch")
async def launch(request: Request) -> Response:
    webapp = _webapp(request)
    settings = webapp.settings
    iss = (request.query_params.get("iss") or "").rstrip("/")
    launch_value = request.query_params.get("launch")
    if not iss:
        return _error(request, "Cannot start the app", "The launch names no FHIR server (iss).")
    if iss not in settings.app_allowed_issuers():
        return _error(
            request,
            "Unknown FHIR server",
            f"This app is not set up for the FHIR server {iss}. An administrator can add it to "
            "FHIRGOAL_APP_ISSUERS.",
            403,
        )
    try:
        endpoints = await discover(_http(webapp), iss)
    except LaunchError as exc:
        return _error(request, "Cannot start the app", str(exc), 502)
    cookie = request.cookies.get(COOKIE)
    session = webapp.sessions.get(cookie)
    new_cookie = None
    if session is None:
        new_cookie, session = webapp.sessions.create()
    verifier, challenge = new_pkce()
    state = secrets.token_urlsafe(24)
    kind = "ehr" if launch_value else "standalone"
    session.add_pending(
        PendingLaunch(state, endpoints, verifier, settings.app_callback_url(), kind)
    )
    location = authorize_url(
        endpoints,
        client_id=settings.app_client_id,
        redirect_uri=settings.app_callback_url(),
        scope=EHR_SCOPE if launch_value else STANDALONE_SCOPE,
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
    webapp = _webapp(request)
    q = request.query_params
    session = _session(request)
    pending = session.take_pending(q.get("state", "")) if session else None
    if session is None or pending is None:
        return _error(
            request,
            "Sign-in not recognised",
            "This sign-in was not started in this browser, was already used, or has expired. "
            "Start the app again (from the EHR, or from the app's start page).",
        )
    if q.get("error"):
        described = q.get("error_description") or q["error"]
        return _error(
            request, "Sign-in did not complete", f"The authorization server said: {described}.", 403
        )
    try:
        tokens = await exchange_code(
            _http(webapp),
            pending.endpoints,
            client_id=webapp.settings.app_client_id,
            code=q.get("code", ""),
            redirect_uri=pending.redirect_uri,
            verifier=pending.verifier,
        )
    except LaunchError as exc:
        return _error(request, "Sign-in did not complete", str(exc), 502)
    if not tokens.patient:
        return _error(
            request,
            "No patient chosen",
            "The authorization server gave no patient context; launch the app from a patient's "
            "chart, or choose a patient when signing in.",
        )
    launch = Launch(secrets.token_urlsafe(12), pending.endpoints, tokens, pending.kind)
    api = FhirApi(_http(webapp), launch, webapp.settings.app_client_id)
    launch.operations = await _operations(api)
    session.add_launch(launch)
    return Response(status_code=303, headers={"Location": f"/app/c/{launch.key}/"})


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


def _launch_of(request: Request, key: str) -> Launch | None:
    session = _session(request)
    return session.launches.get(key) if session else None


def _expired(request: Request, launch: Launch | None, why: str) -> Response:
    """The re-launch prompt: what happened, and the way back in for this kind of launch."""
    settings = _webapp(request).settings
    again = None
    if launch is not None and launch.endpoints.iss in settings.app_allowed_issuers():
        again = f"/app/launch?iss={launch.endpoints.iss}"
    return pages.message(
        settings,
        "Please sign in again",
        f"{why}. Open the app again from the patient's chart in the EHR"
        + (", or sign in here." if again else "."),
        401,
        again=again,
    )


def _patient_banner(patient: dict[str, Any]) -> dict[str, str]:
    name = (patient.get("name") or [{}])[0]
    label = name.get("text") or " ".join([*name.get("given", []), name.get("family", "")]).strip()
    return {
        "id": str(patient.get("id", "")),
        "name": label or "(no name)",
        "gender": str(patient.get("gender", "unknown")),
        "birth_date": str(patient.get("birthDate", "unknown")),
        "mrn": next(
            (str(i.get("value")) for i in patient.get("identifier") or [] if i.get("value")), ""
        ),
    }


@router.get("/c/{key}/")
async def patient_overview(request: Request, key: str) -> Response:
    webapp = _webapp(request)
    launch = _launch_of(request, key)
    if launch is None:
        return _expired(request, None, "This patient view is no longer open in this browser")
    api = FhirApi(_http(webapp), launch, webapp.settings.app_client_id)
    patient_id = str(launch.patient)
    has_progress = "Patient/progress" in launch.operations
    try:
        patient, goals, summary = await asyncio.gather(
            api.read(f"Patient/{patient_id}"),
            api.search("Goal", {"patient": f"Patient/{patient_id}", "_count": "100"}),
            api.read(f"Patient/{patient_id}/$progress") if has_progress else _nothing(),
        )
    except NeedsRelaunch as exc:
        return _expired(request, launch, str(exc).capitalize())
    except FhirCallError as exc:
        return _error(request, "The FHIR server refused", str(exc), 502)
    progress = parse_progress(summary) if summary else None
    levels = {str(g.get("id")): goal_levels(g) for g in goals}
    charts = []
    if progress is not None:
        charts = [overview.ors_chart(progress), overview.srs_chart(progress),
                  overview.tscore_chart(progress), *overview.comparator_charts(progress)]  # fmt: skip
    return pages.html(
        webapp.settings,
        "overview.html",
        launch=launch,
        patient=_patient_banner(patient),
        show_banner=launch.tokens.need_patient_banner,
        progress=progress,
        goals=goals,
        levels=levels,
        charts=[render(c) for c in charts],
        level_label=level_label,
        level_key=level_key,
    )


async def _nothing() -> dict[str, Any]:
    return {}
