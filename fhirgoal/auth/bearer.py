"""Bearer tokens on the FHIR API: from an `Authorization` header to an AccessContext.

RFC 6750 (https://www.rfc-editor.org/rfc/rfc6750) for the header and the 401 challenge
(`WWW-Authenticate: Bearer error="invalid_token"`, section 3); SMART App Launch 2.2 for the claims
that give the context (`scope`, `patient`, `fhirUser`:
https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html).

A token is verified once: the AccessContext built from it is kept in an LRU cache keyed by the token
string until the token expires, so the per-request cost of a known token is a dict lookup (and a
clock reading, to know when to reread revocations: auth/revocation.py).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from fhirgoal.auth.context import AccessContext, ParamCompiler, build_context
from fhirgoal.auth.scopes import ScopeError, parse_scopes
from fhirgoal.auth.tokens import InvalidToken
from fhirgoal.fhir.errors import FhirError

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
    claims: dict[str, Any], compile_params: ParamCompiler | None
) -> AccessContext:
    """The AccessContext of verified claims (a JWT's or an introspection response's)."""
    scope = claims.get("scope")
    if isinstance(scope, list):  # some issuers send `scp` style arrays
        scope = " ".join(str(s) for s in scope)
    if not isinstance(scope, str):
        raise InvalidToken("the token carries no scope")
    try:
        scopes = parse_scopes(scope)
    except ScopeError as exc:
        raise InvalidToken(str(exc)) from None
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
    )


class Authenticator(Protocol):
    async def authenticate(self, token: str, base: str) -> AccessContext: ...


Verifier = Callable[[str, str], Awaitable[dict[str, Any]]]
# The revocation keys a token's claims concern (auth/revocation.py token_keys).
KeysOf = Callable[[dict[str, Any]], tuple[str, ...]]
# Keys revoked since the last call, by any replica (auth/revocation.py Revocations.recent).
RecentRevocations = Callable[[], Awaitable[set[str]]]


class CachedAuthenticator:
    """Verify a token with `verifier` (claims or InvalidToken), cache the context until expiry.

    Revocation (auth/revocation.py): `evict` drops the cached tokens of revoked keys at once (the
    replica that revokes calls it), and every `check_seconds` the first request rereads the keys
    revoked elsewhere (one query per interval, not per request) and drops theirs."""

    def __init__(
        self,
        verifier: Verifier,
        compile_params: ParamCompiler | None,
        max_cache_seconds: float | None = None,
        keys_of: KeysOf | None = None,
        recent: RecentRevocations | None = None,
        check_seconds: float = 5.0,
    ) -> None:
        self.verifier = verifier
        self.compile_params = compile_params
        self.max_cache_seconds = max_cache_seconds
        self.keys_of = keys_of
        self.recent = recent
        self.check_seconds = check_seconds
        self._next_check = time.monotonic() + check_seconds
        self._cache: OrderedDict[tuple[str, str], tuple[float, AccessContext, tuple[str, ...]]] = (
            OrderedDict()
        )

    async def authenticate(self, token: str, base: str) -> AccessContext:
        if self.recent is not None and time.monotonic() >= self._next_check:
            self._next_check = time.monotonic() + self.check_seconds
            self.evict(await self.recent())
        key = (token, base)
        hit = self._cache.get(key)
        now = time.time()
        if hit is not None:
            if hit[0] > now:
                self._cache.move_to_end(key)
                return hit[1]
            del self._cache[key]
        claims = await self.verifier(token, base)
        context = context_from_claims(claims, self.compile_params)
        until = float(claims.get("exp") or now + (self.max_cache_seconds or 0))
        if self.max_cache_seconds is not None:
            until = min(until, now + self.max_cache_seconds)
        keys = self.keys_of(claims) if self.keys_of is not None else ()
        self._cache[key] = (until, context, keys)
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return context

    def evict(self, revoked: set[str]) -> int:
        """Forget the cached tokens that any of the `revoked` keys concerns; how many."""
        if not revoked:
            return 0
        gone = [k for k, (_, _, keys) in self._cache.items() if not revoked.isdisjoint(keys)]
        for key in gone:
            del self._cache[key]
        return len(gone)

    def forget(self) -> None:
        self._cache.clear()
