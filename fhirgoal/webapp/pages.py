"""HTML responses of the web app: Jinja2 templates (autoescaped) and the security headers.

- CSP (https://www.w3.org/TR/CSP3/): scripts and styles from the app's own files only, no inline
  script or style, no plugins; `frame-ancestors 'self'` plus the EHR origins configured
  (FHIRGOAL_APP_FRAME_ANCESTORS), so an EHR can show the app in its chart and nobody else can
  frame it (clickjacking). No `form-action`: Chromium applies it to the redirect to the
  authorization server, which may be anywhere an EHR runs it.
- `Referrer-Policy: no-referrer`: the callback URL carries the authorization code.
- `Cache-Control: no-store`: pages hold health data.
"""

from __future__ import annotations

from typing import Any

from fastapi import Response
from jinja2 import Environment, PackageLoader, select_autoescape

from fhirgoal.config import Settings

_env = Environment(
    loader=PackageLoader("fhirgoal.webapp", "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)


def content_security_policy(settings: Settings) -> str:
    ancestors = " ".join(["'self'", *settings.app_frame_ancestors.split()])
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src 'self'; base-uri 'none'; frame-ancestors {ancestors}"
    )


def html(settings: Settings, template: str, status: int = 200, **context: Any) -> Response:
    body = _env.get_template(template).render(**context)
    return Response(
        body,
        status_code=status,
        media_type="text/html; charset=utf-8",
        headers={
            "Content-Security-Policy": content_security_policy(settings),
            "Cache-Control": "no-store",
            "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff",
        },
    )


def message(settings: Settings, title: str, text: str, status: int, **extra: Any) -> Response:
    """A page that says what went wrong and what to do (an error, a re-launch prompt)."""
    return html(settings, "message.html", status, title=title, text=text, **extra)
