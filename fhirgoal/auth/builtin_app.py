"""The clinician web app (fhirgoal/webapp, served at /app) as a client of the built-in
authorization server, registered at every start-up in `smart` mode.

By default it is a *public* client (SMART App Launch 2.2, client-authentication.html: PKCE S256
binds each code to the browser session that asked for it, and the redirect URI is fixed by
registration). When the app is given credentials of its own for EHRs that register confidential
apps (webapp/client_auth.py), it uses them here too, and is registered accordingly:
FHIRGOAL_APP_PRIVATE_KEY_FILE makes it a confidential asymmetric client whose keys are those it
publishes at `<public origin>/app/jwks` (fetched and cached like any client's `jwks_url`);
FHIRGOAL_APP_CLIENT_SECRET a confidential symmetric one (the secret's hash is stored). Against an
EHR's authorization server the EHR's administrator registers it (`fhirgoal client register`
values in README, "The clinician app").

The registration follows the settings (FHIRGOAL_APP_CLIENT_ID, FHIRGOAL_APP_REDIRECT_URI): a
changed redirect URI or scope list is written over the stored one at start-up. A registration an
administrator revoked (`fhirgoal client revoke fhirgoal-app`) stays revoked: start-up never
brings a revoked client back.
"""

from __future__ import annotations

from contextlib import suppress

import structlog

from fhirgoal.auth.clients import Client, ClientExists, ClientRegistry, secret_digest
from fhirgoal.auth.scopes import parse_scopes
from fhirgoal.config import Settings

log = structlog.get_logger(__name__)

# What the app may ever be granted: identity (openid fhirUser), EHR and standalone launch
# context, refresh tokens, and read/write in the user's or patient's reach (a user's own scopes
# and the consent page narrow it further; the FHIR server enforces them on every request).
BUILTIN_APP_SCOPES = (
    "openid fhirUser launch launch/patient online_access offline_access "
    "user/*.cruds patient/*.cruds"
)


async def register_builtin_app(clients: ClientRegistry, settings: Settings) -> None:
    """Register (or bring up to date) the web app's public client; leave a revoked one alone."""
    if not settings.app_enabled:
        return
    parse_scopes(BUILTIN_APP_SCOPES)
    jwks_url = settings.app_jwks_url() if settings.app_private_key_file else None
    secret_hash = (
        secret_digest(settings.app_client_secret)
        if settings.app_client_secret and not jwks_url
        else None
    )
    result = await clients.collection.update_one(
        {"_id": settings.app_client_id, "revoked": {"$ne": True}},
        {
            "$set": {
                "scopes": BUILTIN_APP_SCOPES,
                "redirect_uris": [settings.app_callback_url()],
                "jwks": None,
                "jwks_url": jwks_url,
                "secret_hash": secret_hash,
            }
        },
    )
    if result.matched_count:
        return
    if await clients.collection.find_one({"_id": settings.app_client_id}) is not None:
        log.warning(
            "the web app's client is revoked; the app cannot sign in",
            client_id=settings.app_client_id,
        )
        return
    with suppress(ClientExists):  # another replica registered it at the same moment
        await clients.register(
            Client(
                client_id=settings.app_client_id,
                scopes=BUILTIN_APP_SCOPES,
                redirect_uris=[settings.app_callback_url()],
                jwks_url=jwks_url,
                secret_hash=secret_hash,
            )
        )
