"""Per-request plumbing shared by the app's screens: the app's state, the browser session, the
launched patient context and its FhirApi, form bodies with their CSRF check, and the pages every
screen may answer with (an error, the re-launch prompt)."""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, quote

import httpx
from fastapi import Request, Response

from fhirgoal.config import Settings
from fhirgoal.webapp import pages
from fhirgoal.webapp.client_auth import ClientCredentials
from fhirgoal.webapp.fhir_api import FhirApi
from fhirgoal.webapp.sessions import COOKIE, BrowserSession, Launch, SessionStore

MAX_FORM_BYTES = 64 * 1024


@dataclass
class WebApp:
    settings: Settings
    sessions: SessionStore
    credentials: ClientCredentials
    http: httpx.AsyncClient | None = None


def webapp_of(request: Request) -> WebApp:
    webapp: WebApp = request.app.state.webapp
    return webapp


def http_of(webapp: WebApp) -> httpx.AsyncClient:
    assert webapp.http is not None, "the web app's HTTP client opens with the lifespan"
    return webapp.http


def session_of(request: Request) -> BrowserSession | None:
    return webapp_of(request).sessions.get(request.cookies.get(COOKIE))


def error(request: Request, title: str, text: str, status: int = 400) -> Response:
    return pages.message(webapp_of(request).settings, title, text, status)


@dataclass
class Screen:
    """What a patient screen works with: the app, the browser session, the launch, its API."""

    webapp: WebApp
    session: BrowserSession
    launch: Launch
    api: FhirApi

    @property
    def settings(self) -> Settings:
        return self.webapp.settings

    @property
    def patient_id(self) -> str:
        return str(self.launch.patient)

    def url(self, tail: str = "") -> str:
        return f"/app/c/{self.launch.key}/{tail}"

    def render(self, template: str, status: int = 200, **context: Any) -> Response:
        return pages.html(
            self.settings, template, status, launch=self.launch, csrf=self.session.csrf, **context
        )


def screen_of(request: Request, key: str) -> Screen | None:
    """The clinician's screen of launch `key`; None when it is not open in this browser, while
    the device is handed to the client (then `closed` answers with the hand-back page), or when
    it is a patient user's own launch (then `closed` sends them to their screens)."""
    session = session_of(request)
    if session is None or session.handover is not None:
        return None
    screen = _screen(request, session, key)
    return None if screen is None or screen.launch.kind == "patient" else screen


def patient_screen_of(request: Request, key: str) -> Screen | None:
    """A patient user's own launch `key` (patient_routes.py), else None."""
    session = session_of(request)
    if session is None or session.handover is not None:
        return None
    screen = _screen(request, session, key)
    return screen if screen is not None and screen.launch.kind == "patient" else None


def patient_user(fhir_user: str | None) -> str | None:
    """The Patient id of a `fhirUser` naming a Patient (relative or absolute URL), else None:
    the signed-in user is a client on their own record."""
    parts = (fhir_user or "").rstrip("/").split("/")
    if len(parts) >= 2 and parts[-2] == "Patient" and parts[-1]:
        return parts[-1]
    return None


# SMART `intent` values this app knows (app-launch.html: the EHR's hint of what the user wants
# to do, app-specific) -> the screen they open; any other intent opens the overview.
INTENTS = {"overview": "", "session": "session", "goal-new": "goals/new", "new-goal": "goals/new"}


def landing(launch: Launch) -> str:
    """Where a launch opens: a patient user's own screens, or the clinician's screen its
    `intent` names (the overview when it names none this app knows)."""
    if launch.kind == "patient":
        return f"/app/c/{launch.key}/me"
    return f"/app/c/{launch.key}/" + INTENTS.get(launch.tokens.intent or "", "")


def client_screen_of(request: Request, key: str) -> Screen | None:
    """The launch `key` while its client has the device (client mode), else None."""
    session = session_of(request)
    if session is None or session.handover is None or session.handover.key != key:
        return None
    return _screen(request, session, key)


def _screen(request: Request, session: BrowserSession, key: str) -> Screen | None:
    webapp = webapp_of(request)
    launch = session.launches.get(key)
    if launch is None:
        return None
    return Screen(webapp, session, launch, FhirApi(http_of(webapp), launch, webapp.credentials))


def relaunch(request: Request, launch: Launch | None, why: str) -> Response:
    """The re-launch prompt: what happened, and the way back in."""
    settings = webapp_of(request).settings
    again = None
    if launch is not None and launch.endpoints.iss in settings.app_allowed_issuers():
        start = "self-report" if launch.kind == "patient" else "launch"
        again = f"/app/{start}?iss={quote(launch.endpoints.iss, safe='')}"
    if launch is not None and launch.kind == "patient":
        text = f"{why.rstrip('.').capitalize()}. Please sign in again."
    else:
        text = (
            f"{why.rstrip('.').capitalize()}. Open the app again from the patient's chart in the "
            "EHR" + (", or sign in here." if again else ".")
        )
    return pages.message(settings, "Please sign in again", text, 401, again=again)


def closed(request: Request) -> Response:
    session = session_of(request)
    if session is not None and session.handover is not None:
        return handed_over(request)
    launch = session.launches.get(request.path_params.get("key", "")) if session else None
    if launch is not None and launch.kind == "patient":  # a client: never a clinician screen
        return Response(status_code=303, headers={"Location": landing(launch)})
    return relaunch(request, None, "This patient view is no longer open in this browser")


def handed_over(request: Request) -> Response:
    """What any clinician page shows while the client has the device: nothing of the record,
    and the way back for the clinician (signing in again)."""
    return pages.html(webapp_of(request).settings, "handed_over.html", 403)


FORM_REFUSED = "The form was not sent from this app; try again."


async def posted_form(request: Request, key: str) -> tuple[Screen, dict[str, list[str]]] | Response:
    """The clinician's screen of launch `key` and the form posted to it; or, when the screen is
    not open here (`closed`) or the form is not this app's (`form_of`), the page to answer with."""
    screen = screen_of(request, key)
    if screen is None:
        return closed(request)
    posted = await form_of(request, screen.session)
    if posted is None:
        return error(request, "Form refused", FORM_REFUSED, 403)
    return screen, posted


async def form_of(request: Request, session: BrowserSession) -> dict[str, list[str]] | None:
    """A url-encoded form body, or None when it is malformed, too large, or lacks the session's
    CSRF token (OWASP synchronizer token: the cookie alone is not proof of intent)."""
    if request.headers.get("content-type", "").split(";")[0].strip() != (
        "application/x-www-form-urlencoded"
    ):
        return None
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            return None
    try:
        pairs = parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=False)
    except (UnicodeDecodeError, ValueError):
        return None
    form: dict[str, list[str]] = {}
    for name, value in pairs:
        form.setdefault(name, []).append(value)
    token = (form.get("csrf") or [""])[0]
    if not token or not hmac.compare_digest(token, session.csrf):
        return None
    return form


def first(form: dict[str, list[str]], name: str) -> str:
    return (form.get(name) or [""])[0].strip()


def patient_banner(patient: dict[str, Any]) -> dict[str, str]:
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
