"""The authorization server's server-rendered pages: login, consent with patient picker, errors.

SMART App Launch 2.2 leaves the user interaction to the server
(https://hl7.org/fhir/smart-app-launch/app-launch.html#obtain-authorization-code); these are plain
HTML forms with no script, every value escaped, and no state outside the pending-request record
and the browser's CSRF cookie, whose value each form repeats in a hidden `csrf` field.
"""

from __future__ import annotations

from html import escape

_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem}"
    "label{display:block;margin:.8rem 0 .2rem}input,select{width:100%;padding:.4rem}"
    "button{margin-top:1rem;padding:.5rem 1rem}.error{color:#a00}li{margin:.2rem 0}"
)


def _page(title: str, body: str) -> str:
    return (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><title>{escape(title)}</title>'
        f'<meta name="viewport" content="width=device-width"><style>{_STYLE}</style></head>'
        f"<body><h1>{escape(title)}</h1>{body}</body></html>"
    )


def login_page(request_id: str, client_id: str, csrf: str, error: str | None = None) -> str:
    notice = f'<p class="error">{escape(error)}</p>' if error else ""
    return _page(
        "Sign in to fhirgoal",
        f"<p>The application <strong>{escape(client_id)}</strong> asks to access FHIR data.</p>"
        f"{notice}"
        '<form method="post" action="/auth/login">'
        f'<input type="hidden" name="request" value="{escape(request_id)}">'
        f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
        '<label for="username">User name</label>'
        '<input id="username" name="username" autocomplete="username" required>'
        '<label for="password">Password</label>'
        '<input id="password" name="password" type="password" autocomplete="current-password" required>'
        '<button type="submit">Sign in</button></form>',
    )


def consent_page(
    request_id: str,
    nonce: str,
    csrf: str,
    client_id: str,
    username: str,
    scopes: list[str],
    patients: list[tuple[str, str]] | None,
    error: str | None = None,
) -> str:
    notice = f'<p class="error">{escape(error)}</p>' if error else ""
    items = "".join(f"<li><code>{escape(s)}</code></li>" for s in scopes)
    picker = ""
    if patients is not None:
        options = "".join(
            f'<option value="{escape(pid)}">{escape(label)}</option>' for pid, label in patients
        )
        picker = (
            '<label for="patient">Patient</label>'
            f'<select id="patient" name="patient" required>{options}</select>'
        )
        if not patients:  # FHIRGOAL_USER_ACCESS=caseload: nobody in this user's caseload
            picker = (
                '<p class="error">No patients are in your caseload: no CareTeam lists you and no '
                "patient names you (or your role or organization) as general practitioner. "
                "Ask an administrator to add you to a patient's care team.</p>"
            )
    return _page(
        "Allow access?",
        f"<p>Signed in as <strong>{escape(username)}</strong>.</p>{notice}"
        f"<p><strong>{escape(client_id)}</strong> will be allowed:</p><ul>{items}</ul>"
        '<form method="post" action="/auth/consent">'
        f'<input type="hidden" name="request" value="{escape(request_id)}">'
        f'<input type="hidden" name="nonce" value="{escape(nonce)}">'
        f'<input type="hidden" name="csrf" value="{escape(csrf)}">'
        f"{picker}"
        '<button type="submit" name="decision" value="approve">Allow</button> '
        '<button type="submit" name="decision" value="deny">Deny</button></form>',
    )


def error_page(message: str) -> str:
    return _page("Authorization failed", f'<p class="error">{escape(message)}</p>')
