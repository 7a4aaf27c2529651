"""The clinician web app: a SMART on FHIR app served by fhirgoal under /app (issue 14).

A backend-for-frontend: the SMART client runs on the server (smart_client.py: discovery,
authorization code + PKCE S256, refresh), tokens stay in a server-side session (sessions.py),
pages are server-rendered HTML (templates/, pages.py) with charts drawn as inline SVG
(charts.py), and a small first-party script (static/app.js) adds keyboard and pointer reading of
the charts. The app reaches FHIR only over HTTP with its token (fhir_api.py), exactly as it would
any EHR's FHIR server given as `iss`, even when that server is the process serving it; it imports
nothing of the server (tests/test_layering.py).

Why server-side and not a single-page app with fhirclient.js: no token ever reaches the browser
(nothing for an XSS or a browser extension to steal), refresh tokens can be kept at all (SMART
discourages them in public browser apps), the pages work without JavaScript and print as they
are, and nothing needs a JavaScript build or a CDN.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
from fastapi import FastAPI
from starlette.staticfiles import StaticFiles

from fhirgoal.config import Settings
from fhirgoal.webapp import (
    client_auth,
    flag_routes,
    goal_routes,
    launch_routes,
    overview_routes,
    patient_routes,
    payer_routes,
    selfreport_routes,
    session_routes,
)
from fhirgoal.webapp.client_auth import load_credentials
from fhirgoal.webapp.context import WebApp
from fhirgoal.webapp.sessions import SessionStore

# outbound calls to FHIR and authorization servers: bounded, never hanging a page for long
HTTP_TIMEOUT = httpx.Timeout(15.0, connect=5.0)


def mount(app: FastAPI, settings: Settings) -> None:
    """Serve the app under /app of `app` (no-op when FHIRGOAL_APP_ENABLED=false)."""
    if not settings.app_enabled:
        return
    # unusable credentials stop the start-up (CredentialsError), not the first sign-in
    webapp = WebApp(
        settings, SessionStore(settings.app_session_seconds), load_credentials(settings)
    )
    app.state.webapp = webapp
    for routes in (
        client_auth,
        launch_routes,
        overview_routes,
        patient_routes,
        goal_routes,
        session_routes,
        selfreport_routes,
        flag_routes,
        payer_routes,
    ):
        app.include_router(routes.router)
    app.mount(
        "/app/static",
        StaticFiles(packages=[("fhirgoal.webapp", "static")]),
        name="app-static",
    )
    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(application: Any) -> AsyncIterator[Any]:
        async with (
            httpx.AsyncClient(timeout=HTTP_TIMEOUT, follow_redirects=False) as http,
            inner(application) as state,
        ):
            webapp.http = http
            yield state

    app.router.lifespan_context = lifespan


__all__ = ["mount"]
