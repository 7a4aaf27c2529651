"""Bearer tokens on the FHIR API: from an `Authorization` header to an AccessContext.

RFC 6750 (https://www.rfc-editor.org/rfc/rfc6750) for the header and the 401 challenge
(`WWW-Authenticate: Bearer error="invalid_token"`, section 3); SMART App Launch 2.2 for the claims
that give the context (`scope`, `patient`, `fhirUser`:
https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html).

A token is verified once: the AccessContext built from it is kept in an LRU cache keyed by the token
string until the token expires, so the per-request cost of a known token is a dict lookup (and a
clock reading, to know when to reread revocations: auth/revocation.py). A context built on a
user's caseload (auth/caseload.py) is rebuilt from the cached claims once that caseload is older
than FHIRGOAL_CASELOAD_REFRESH_SECONDS; the rebuilt context keeps the token's revocation keys.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

from fhirgoal.auth.context import ParamCompiler, build_context, needs_caseload
from fhirgoal.auth.scopes import ScopeError, Scopes, parse_scopes
from fhirgoal.auth.tokens import InvalidToken
from fhirgoal.core.access import AccessContext, Caseload
from fhirgoal.core.errors import FhirError

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
# The revocation keys a token's claims concern (auth/revocation.py token_keys).
KeysOf = Callable[[dict[str, Any]], tuple[str, ...]]
# Keys revoked since the last call, by any replica (auth/revocation.py Revocations.recent).
RecentRevocations = Callable[[], Awaitable[set[str]]]


@dataclass(slots=True)
class _Cached:
    """A verified token: its context until `until` (epoch seconds), the claims it was built from
    (to rebuild it on a newer caseload) and the revocation keys that concern it."""

    until: float
    context: AccessContext
    claims: dict[str, Any]
    keys: tuple[str, ...]


class CachedAuthenticator:
    """Verify a token with `verifier` (claims or InvalidToken), cache the context until expiry.

    Revocation (auth/revocation.py): `evict` drops the cached tokens of revoked keys at once (the
    replica that revokes calls it), and every `check_seconds` the first request rereads the keys
    revoked elsewhere (one query per interval, not per request) and drops theirs. A key evicted
    while a context is being built (the verification, a caseload's searches) refuses that token
    too, so that a context built across a revocation is neither used nor cached.

    With `caseloads` (FHIRGOAL_USER_ACCESS=caseload), a token the policy bears on gets the
    caseload of its `fhirUser`; patient and system tokens never wait for one."""

    def __init__(
        self,
        verifier: Verifier,
        compile_params: ParamCompiler | None,
        max_cache_seconds: float | None = None,
        keys_of: KeysOf | None = None,
        recent: RecentRevocations | None = None,
        check_seconds: float = 5.0,
        caseloads: Caseloads | None = None,
    ) -> None:
        self.verifier = verifier
        self.compile_params = compile_params
        self.max_cache_seconds = max_cache_seconds
        self.keys_of = keys_of
        self.recent = recent
        self.check_seconds = check_seconds
        self.caseloads = caseloads
        self._next_check = time.monotonic() + check_seconds
        self._cache: OrderedDict[tuple[str, str], _Cached] = OrderedDict()
        # evictions so far, and the recently evicted keys with the count at their eviction
        self._evictions = 0
        self._evicted: OrderedDict[str, int] = OrderedDict()

    async def authenticate(self, token: str, base: str) -> AccessContext:
        if self.recent is not None and time.monotonic() >= self._next_check:
            self._next_check = time.monotonic() + self.check_seconds
            self.evict(await self.recent())
        key = (token, base)
        hit = self._cache.get(key)
        now = time.time()
        if hit is not None:
            if hit.until > now:
                self._cache.move_to_end(key)
                if hit.context.caseload is None or hit.context.caseload.fresh:
                    return hit.context
                # the caseload is stale: rebuild on the current one, keeping claims and keys
                before = self._evictions
                context = await self._context(hit.claims)
                self._refuse_if_evicted(before, hit.keys)
                hit.context = context
                if key not in self._cache:  # dropped from the LRU meanwhile
                    self._store(key, hit)
                return context
            del self._cache[key]
        before = self._evictions
        claims = await self.verifier(token, base)
        context = await self._context(claims)
        keys = self.keys_of(claims) if self.keys_of is not None else ()
        self._refuse_if_evicted(before, keys)
        until = float(claims.get("exp") or now + (self.max_cache_seconds or 0))
        if self.max_cache_seconds is not None:
            until = min(until, now + self.max_cache_seconds)
        self._store(key, _Cached(until, context, claims, keys))
        return context

    def _store(self, key: tuple[str, str], entry: _Cached) -> None:
        self._cache[key] = entry
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)

    def _refuse_if_evicted(self, before: int, keys: tuple[str, ...]) -> None:
        """InvalidToken when one of the token's keys was evicted after eviction number `before`
        (while its context was being built)."""
        if self._evictions != before and any(self._evicted.get(k, 0) > before for k in keys):
            raise InvalidToken("the token is revoked")

    def claims_of(self, token: str, base: str) -> dict[str, Any] | None:
        """The verified claims of a token `authenticate` has just accepted (None when the cache
        has dropped it since)."""
        hit = self._cache.get((token, base))
        return hit.claims if hit is not None else None

    async def context_for(self, claims: dict[str, Any]) -> AccessContext:
        """The context of claims verified earlier (a Bulk export resumed after a restart)."""
        return await self._context(claims)

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

    def evict(self, revoked: set[str]) -> int:
        """Forget the cached tokens that any of the `revoked` keys concerns; how many."""
        if not revoked:
            return 0
        self._evictions += 1
        for revoked_key in revoked:
            self._evicted[revoked_key] = self._evictions
            self._evicted.move_to_end(revoked_key)
        while len(self._evicted) > CACHE_SIZE:
            self._evicted.popitem(last=False)
        gone = [k for k, entry in self._cache.items() if not revoked.isdisjoint(entry.keys)]
        for key in gone:
            del self._cache[key]
        return len(gone)

    def forget(self) -> None:
        self._cache.clear()
