"""Bearer tokens on the FHIR API: from an `Authorization` header to an AccessContext.

RFC 6750 (https://www.rfc-editor.org/rfc/rfc6750) for the header and the 401 challenge
(`WWW-Authenticate: Bearer error="invalid_token"`, section 3); SMART App Launch 2.2 for the claims
that give the context (`scope`, `patient`, `fhirUser`:
https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html).

A token is verified once: the AccessContext built from it is kept in an LRU cache keyed by the token
string until the token expires, so the per-request cost of a known token is a dict lookup. A
context built on a user's caseload (auth/caseload.py) is rebuilt from the cached claims once that
caseload is older than FHIRGOAL_CASELOAD_REFRESH_SECONDS.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Protocol

from fhirgoal.auth.context import (
    AccessContext,
    Caseload,
    ParamCompiler,
    build_context,
    needs_caseload,
)
from fhirgoal.auth.scopes import ScopeError, Scopes, parse_scopes
from fhirgoal.auth.tokens import InvalidToken
from fhirgoal.fhir.errors import FhirError

if TYPE_CHECKING:
    from fhirgoal.auth.caseload import Caseloads

CACHE_SIZE = 10_000


def challenge(error: str | None = None, description: str | None = None) -> dict[str, str]:
    """The RFC 6750 section 3 `WWW-Authenticate` header."""
    value = 'Bearer realm="fhirgoal"'
    if error:
        value += f', error="{error}"'
    if error and description:  # RFC 6750 3.1: no error details when no token was sent
        value += f', error_description="{description.replace(chr(34), chr(39))}"'
    return {"WWW-Authenticate": value}


def unauthorized(error: str | None, description: str) -> FhirError:
    return FhirError("unauthorized", description, headers=challenge(error, description))


def bearer_token(headers: list[tuple[bytes, bytes]]) -> str | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise unauthorized(
                    "invalid_request", "the Authorization header is not a Bearer token"
                )
            return token.strip()
    return None


def context_from_claims(
    claims: dict[str, Any],
    compile_params: ParamCompiler | None,
    caseload: Caseload | None = None,
    patient_types: frozenset[str] = frozenset(),
) -> AccessContext:
    """The AccessContext of verified claims (a JWT's or an introspection response's)."""
    scopes = _scopes(claims)
    patient = claims.get("patient")
    fhir_user = claims.get("fhirUser")
    subject = claims.get("sub") or claims.get("client_id") or "unknown"
    return build_context(
        scopes,
        subject=str(subject),
        client_id=str(claims["client_id"]) if claims.get("client_id") else None,
        patient=str(patient) if patient else None,
        fhir_user=str(fhir_user) if fhir_user else None,
        compile_params=compile_params,
        caseload=caseload,
        patient_types=patient_types,
    )


def _scopes(claims: dict[str, Any]) -> Scopes:
    scope = claims.get("scope")
    if isinstance(scope, list):  # some issuers send `scp` style arrays
        scope = " ".join(str(s) for s in scope)
    if not isinstance(scope, str):
        raise InvalidToken("the token carries no scope")
    try:
        return parse_scopes(scope)
    except ScopeError as exc:
        raise InvalidToken(str(exc)) from None


class Authenticator(Protocol):
    async def authenticate(self, token: str, base: str) -> AccessContext: ...


Verifier = Callable[[str, str], Awaitable[dict[str, Any]]]


class CachedAuthenticator:
    """Verify a token with `verifier` (claims or InvalidToken), cache the context until expiry.

    With `caseloads` (FHIRGOAL_USER_ACCESS=caseload), a token the policy bears on gets the
    caseload of its `fhirUser`; patient and system tokens never wait for one."""

    def __init__(
        self,
        verifier: Verifier,
        compile_params: ParamCompiler | None,
        max_cache_seconds: float | None = None,
        caseloads: Caseloads | None = None,
    ) -> None:
        self.verifier = verifier
        self.compile_params = compile_params
        self.max_cache_seconds = max_cache_seconds
        self.caseloads = caseloads
        self._cache: OrderedDict[tuple[str, str], tuple[float, AccessContext, dict[str, Any]]] = (
            OrderedDict()
        )

    async def authenticate(self, token: str, base: str) -> AccessContext:
        key = (token, base)
        hit = self._cache.get(key)
        now = time.time()
        if hit is not None:
            if hit[0] > now:
                self._cache.move_to_end(key)
                context = hit[1]
                if context.caseload is None or context.caseload.fresh:
                    return context
                context = await self._context(hit[2])
                self._cache[key] = (hit[0], context, hit[2])
                return context
            del self._cache[key]
        claims = await self.verifier(token, base)
        context = await self._context(claims)
        until = float(claims.get("exp") or now + (self.max_cache_seconds or 0))
        if self.max_cache_seconds is not None:
            until = min(until, now + self.max_cache_seconds)
        self._cache[key] = (until, context, claims)
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return context

    async def _context(self, claims: dict[str, Any]) -> AccessContext:
        caseloads = self.caseloads
        if caseloads is None:
            return context_from_claims(claims, self.compile_params)
        fhir_user = claims.get("fhirUser")
        fhir_user = str(fhir_user) if fhir_user else None
        if not needs_caseload(_scopes(claims), fhir_user):
            return context_from_claims(claims, self.compile_params)
        caseload = await caseloads.of(fhir_user)
        return context_from_claims(claims, self.compile_params, caseload, caseloads.patient_types)

    def forget(self) -> None:
        self._cache.clear()
