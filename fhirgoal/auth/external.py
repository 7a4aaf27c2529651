"""External mode (FHIRGOAL_AUTH=external): accept tokens issued by an EHR's authorization server.

JWT access tokens are verified against the issuer's JWKS (RFC 7517, fetched and cached by
auth/jwks.py; RFC 9068 for JWT access tokens: https://www.rfc-editor.org/rfc/rfc9068) with `iss`
= FHIRGOAL_EXTERNAL_ISSUER and `aud` = FHIRGOAL_EXTERNAL_AUDIENCE (default: this FHIR base).
Opaque tokens go to the issuer's introspection endpoint (RFC 7662,
https://www.rfc-editor.org/rfc/rfc7662) with this server's client credentials; the answer is cached
briefly. Either way the `scope`, `patient` and `fhirUser` give the context, as SMART App Launch 2.2
describes (https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html).

A user's token (`user/` or `patient/` scopes, from an app's launch) is also what EHR sync may write
to the EHR with, for that user (issue 15): `user_credential` makes the credential the request then
acts for (core/delegation.py, exchange/user_tokens.py). A client's `system/` token is not a user's.
"""

from __future__ import annotations

import time
from typing import Any

import httpx

from fhirgoal.auth.external_discovery import DiscoveryUnavailable, ExternalAuthorizationServer
from fhirgoal.auth.jwks import JwksCache
from fhirgoal.auth.tokens import ASYMMETRIC, InvalidToken, looks_like_jwt, verify_jwt
from fhirgoal.config import Settings
from fhirgoal.core.delegation import UserCredential


class ExternalVerifier:
    """Checks the EHR's access tokens. The JWKS is FHIRGOAL_EXTERNAL_JWKS_URL, else the `jwks_uri`
    of the issuer's discovered configuration (auth/external_discovery.py): the issuer publishes
    where its keys are, as OpenID Connect Discovery does, so naming the issuer is enough."""

    def __init__(
        self, settings: Settings, discovery: ExternalAuthorizationServer | None = None
    ) -> None:
        if not (
            settings.external_jwks_url
            or settings.external_introspection_url
            or settings.external_issuer
        ):
            raise RuntimeError(
                "FHIRGOAL_AUTH=external needs FHIRGOAL_EXTERNAL_ISSUER (its JWKS is discovered), "
                "FHIRGOAL_EXTERNAL_JWKS_URL or FHIRGOAL_EXTERNAL_INTROSPECTION_URL"
            )
        if settings.external_jwks_url and not settings.external_issuer:
            raise RuntimeError("FHIRGOAL_AUTH=external needs FHIRGOAL_EXTERNAL_ISSUER")
        self.settings = settings
        self.discovery = discovery
        self.jwks = JwksCache(settings.external_jwks_ttl, settings.external_jwks_min_refetch)

    async def _jwks_url(self) -> str | None:
        if self.settings.external_jwks_url:
            return self.settings.external_jwks_url
        if self.discovery is None or not self.settings.external_issuer:
            return None
        try:
            url = (await self.discovery.configuration()).get("jwks_uri")
        except DiscoveryUnavailable:
            raise InvalidToken("the authorization server's keys cannot be found now") from None
        return url if isinstance(url, str) and url else None

    async def __call__(self, token: str, base: str) -> dict[str, Any]:
        settings = self.settings
        audience = settings.external_audience or base
        url = await self._jwks_url() if looks_like_jwt(token) else None
        if url is not None:

            async def keys(kid: str | None) -> Any:
                return await self.jwks.get(url, kid)

            return await verify_jwt(
                token,
                keys,
                issuer=settings.external_issuer,
                audience=audience,
                algorithms=ASYMMETRIC,
            )
        if settings.external_introspection_url:
            return await self._introspect(token, audience)
        raise InvalidToken("the token is not a JWT and no introspection endpoint is configured")

    async def _introspect(self, token: str, audience: str) -> dict[str, Any]:
        settings = self.settings
        assert settings.external_introspection_url
        auth = None
        if settings.external_client_id:
            auth = httpx.BasicAuth(
                settings.external_client_id, settings.external_client_secret or ""
            )
        try:
            async with httpx.AsyncClient(timeout=5.0) as client:
                response = await client.post(
                    settings.external_introspection_url,
                    data={"token": token, "token_type_hint": "access_token"},
                    headers={"Accept": "application/json"},
                    auth=auth or httpx.USE_CLIENT_DEFAULT,
                )
                response.raise_for_status()
                answer = response.json()
        except (httpx.HTTPError, ValueError):
            raise InvalidToken("the token cannot be introspected") from None
        if not isinstance(answer, dict) or answer.get("active") is not True:
            raise InvalidToken("the token is not active")
        exp = answer.get("exp")
        if isinstance(exp, int | float) and exp < time.time():
            raise InvalidToken("the token has expired")
        if settings.external_issuer and answer.get("iss") not in (None, settings.external_issuer):
            raise InvalidToken("the token has the wrong issuer")
        aud = answer.get("aud")
        if aud is not None:
            given = {aud} if isinstance(aud, str) else set(aud) if isinstance(aud, list) else set()
            if audience not in given:
                raise InvalidToken("the token has the wrong audience")
        return answer


def user_credential(token: str, claims: dict[str, Any] | None) -> UserCredential | None:
    """The credential of a user's verified token: one with `user/` or `patient/` scopes, an
    expiry and a subject; None for anything else (a backend client's `system/` token)."""
    if not claims:
        return None
    scope = claims.get("scope")
    if isinstance(scope, list):
        scope = " ".join(str(s) for s in scope)
    if not isinstance(scope, str) or not any(
        s.startswith(("user/", "patient/")) for s in scope.split()
    ):
        return None
    exp, sub = claims.get("exp"), claims.get("sub")
    if not isinstance(exp, int | float) or not sub:
        return None
    aud = claims.get("aud")
    audiences = [aud] if isinstance(aud, str) else aud if isinstance(aud, list) else []
    fhir_user = claims.get("fhirUser")
    issuer = claims.get("iss")
    return UserCredential(
        token=token,
        issuer=str(issuer) if issuer else None,
        audiences=frozenset(str(a).rstrip("/") for a in audiences),
        expires=float(exp),
        subject=str(sub),
        fhir_user=str(fhir_user) if fhir_user else None,
    )
