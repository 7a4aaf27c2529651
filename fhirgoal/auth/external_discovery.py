"""What a resource server behind an EHR's authorization server publishes (FHIRGOAL_AUTH=external).

SMART App Launch 2.2, conformance.html ("Using .well-known"): a FHIR server SHALL publish
`<base>/.well-known/smart-configuration` naming the authorization server that protects it (its
`authorization_endpoint`, `token_endpoint`, `jwks_uri`, `capabilities`, ...). In external mode that
server is the EHR's, so the document describes it, not fhirgoal. It comes from one of:

- settings: FHIRGOAL_EXTERNAL_AUTHORIZE_URL and FHIRGOAL_EXTERNAL_TOKEN_URL (with the issuer,
  JWKS and introspection URLs already configured for token checks, and
  FHIRGOAL_EXTERNAL_CAPABILITIES), for an authorization server that publishes nothing usable;
- discovery: the issuer's own `<FHIRGOAL_EXTERNAL_ISSUER>/.well-known/smart-configuration`, else
  its OpenID Connect `/.well-known/openid-configuration` (OpenID Connect Discovery 1.0 section 4),
  kept FHIRGOAL_EXTERNAL_DISCOVERY_SECONDS. Only the fields SMART defines are relayed (nothing
  else of a remote document reaches our clients), and any setting wins over the discovered value.

A discovery that fails serves the last good document if there is one (a restarting EHR does not
take fhirgoal's discovery down), else 503; failures are retried at most every
FHIRGOAL_EXTERNAL_JWKS_MIN_REFETCH seconds so that a stream of requests cannot turn this server
into a request amplifier against the EHR. The CapabilityStatement's `rest.security` gets the same
endpoints (auth/smart_metadata.py).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import orjson
import structlog
from fastapi import APIRouter, Request, Response

from fhirgoal.auth import smart_metadata
from fhirgoal.config import Settings
from fhirgoal.core.errors import FhirError

log = structlog.get_logger(__name__)
router = APIRouter(include_in_schema=False)

# The SMART App Launch 2.2 well-known fields (conformance.html#metadata), the only ones relayed.
SMART_FIELDS = (
    "issuer", "jwks_uri", "authorization_endpoint", "grant_types_supported", "token_endpoint",
    "token_endpoint_auth_methods_supported", "token_endpoint_auth_signing_alg_values_supported",
    "registration_endpoint", "associated_endpoints", "user_access_brand_bundle",
    "user_access_brand_identifier", "scopes_supported", "response_types_supported",
    "management_endpoint", "introspection_endpoint", "revocation_endpoint", "capabilities",
    "code_challenge_methods_supported",
)  # fmt: skip
MAX_DOCUMENT_BYTES = 256 * 1024
FETCH_TIMEOUT = httpx.Timeout(5.0)


class DiscoveryUnavailable(Exception):
    pass


class ExternalAuthorizationServer:
    """The EHR authorization server's SMART configuration, as this FHIR server publishes it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._document: dict[str, Any] | None = None
        self._fetched = 0.0  # time.monotonic() of the last good fetch
        self._failed = -float("inf")  # ... and of the last failed one
        self._lock = asyncio.Lock()
        self.fetches = 0  # observable in tests

    def _configured(self) -> dict[str, Any]:
        """The fields the settings give."""
        s = self.settings
        fields: dict[str, Any] = {
            "issuer": s.external_issuer,
            "jwks_uri": s.external_jwks_url,
            "authorization_endpoint": s.external_authorize_url,
            "token_endpoint": s.external_token_url,
            "introspection_endpoint": s.external_introspection_url,
            "capabilities": s.external_capabilities.split() or None,
        }
        return {name: value for name, value in fields.items() if value}

    def _complete_from_settings(self) -> bool:
        return bool(self.settings.external_authorize_url and self.settings.external_token_url)

    async def configuration(self) -> dict[str, Any]:
        """The well-known document; DiscoveryUnavailable when there is none to give."""
        configured = self._configured()
        if self._complete_from_settings() or not self.settings.external_issuer:
            if "authorization_endpoint" not in configured or "token_endpoint" not in configured:
                raise DiscoveryUnavailable(
                    "no authorization server is configured: set FHIRGOAL_EXTERNAL_ISSUER (to "
                    "discover it) or FHIRGOAL_EXTERNAL_AUTHORIZE_URL and _TOKEN_URL"
                )
            return {**DEFAULTS, "capabilities": list(SETTINGS_CAPABILITIES), **configured}
        discovered = await self._discovered()
        return {**DEFAULTS, **discovered, **configured}

    async def _discovered(self) -> dict[str, Any]:
        now = time.monotonic()
        fresh = now - self._fetched < self.settings.external_discovery_seconds
        if self._document is not None and fresh:
            return self._document
        async with self._lock:
            if self._document is not None and time.monotonic() - self._fetched < (
                self.settings.external_discovery_seconds
            ):
                return self._document  # another request fetched it meanwhile
            if time.monotonic() - self._failed >= self.settings.external_jwks_min_refetch:
                try:
                    self._document = await self._fetch()
                    self._fetched = time.monotonic()
                except DiscoveryUnavailable as exc:
                    self._failed = time.monotonic()
                    log.warning("external authorization server discovery failed", error=str(exc))
            if self._document is None:
                raise DiscoveryUnavailable(
                    "the authorization server's configuration cannot be fetched now"
                )
            return self._document  # the last good one, when a refetch failed

    async def _fetch(self) -> dict[str, Any]:
        issuer = str(self.settings.external_issuer).rstrip("/")
        problems = []
        async with httpx.AsyncClient(timeout=FETCH_TIMEOUT, follow_redirects=False) as http:
            for path in ("/.well-known/smart-configuration", "/.well-known/openid-configuration"):
                self.fetches += 1
                try:
                    response = await http.get(issuer + path, headers={"Accept": "application/json"})
                except httpx.HTTPError as exc:
                    problems.append(f"{path}: {type(exc).__name__}")
                    continue
                document = _document_of(response)
                if document is not None:
                    return document
                problems.append(f"{path}: HTTP {response.status_code}, no usable document")
        raise DiscoveryUnavailable("; ".join(problems))

    async def security(self) -> dict[str, Any]:
        """CapabilityStatement.rest.security; without the endpoints when none can be given (the
        CapabilityStatement is served all the same)."""
        try:
            return smart_metadata.capability_security(await self.configuration())
        except DiscoveryUnavailable:
            return smart_metadata.capability_security({})


# What an authorization server that does not say otherwise is taken to offer: SMART 2.x apps
# SHALL use PKCE S256 and the authorization code grant.
DEFAULTS: dict[str, Any] = {
    "grant_types_supported": ["authorization_code"],
    "response_types_supported": ["code"],
    "code_challenge_methods_supported": ["S256"],
}
# The capabilities published for an authorization server given by settings alone, unless
# FHIRGOAL_EXTERNAL_CAPABILITIES says otherwise: the launches and contexts the clinician app uses.
SETTINGS_CAPABILITIES = (
    "launch-ehr", "launch-standalone", "client-public", "context-ehr-patient",
    "context-standalone-patient", "permission-patient", "permission-user", "permission-v2",
)  # fmt: skip


def _document_of(response: httpx.Response) -> dict[str, Any] | None:
    if response.status_code != 200 or len(response.content) > MAX_DOCUMENT_BYTES:
        return None
    try:
        body = orjson.loads(response.content)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(body, dict):
        return None
    relayed = {name: body[name] for name in SMART_FIELDS if name in body}
    endpoints = ("authorization_endpoint", "token_endpoint")
    if not all(isinstance(relayed.get(name), str) for name in endpoints):
        return None
    return relayed


@router.get("/fhir/.well-known/smart-configuration")
async def well_known(request: Request) -> Response:
    server: ExternalAuthorizationServer = request.app.state.external_authorization
    try:
        document = await server.configuration()
    except DiscoveryUnavailable as exc:
        raise FhirError("unavailable", str(exc)) from None
    return Response(orjson.dumps(document), media_type="application/json")
