"""A SMART Backend Services client: system-level access tokens for calls to another FHIR server.

https://hl7.org/fhir/smart-app-launch/backend-services.html (SMART App Launch 2.x), RFC 7523
(JWT client assertions), RFC 6749 section 4.4 (client credentials):

- discovery: the token endpoint comes from `<base>/.well-known/smart-configuration`
  (`token_endpoint`), read once per client, unless the connection names it (`token_url`);
- authentication: `private_key_jwt`, a client assertion signed with the client's key (RS384 or
  ES384, the two algorithms SMART requires servers to accept), `iss` = `sub` = the client id,
  `aud` = the token endpoint, `exp` at most five minutes ahead, a `jti` never used before;
- grant: `client_credentials` with the configured `system/` scopes;
- the token is kept until shortly before it expires (`expires_in`), then a new one is asked for;
  a request answered 401 gets a fresh token and is sent once more (the server may have revoked
  the token, or rotated its keys, before its expiry).

Generic on purpose: a base URL, a client id, a key and scopes; the EHR connections
(exchange/connections.py) and the payer connections (evidence/payers/) use it.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import Any
from urllib.parse import urlencode

import httpx
from joserfc import jwt
from joserfc.jwk import ECKey, RSAKey

from fhirgoal.core.errors import FhirgoalError

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
# SMART: "exp ... no more than five minutes in the future"; kept well inside it.
ASSERTION_SECONDS = 240
# A token is renewed this long before the expiry its server announced (clock skew, requests in
# flight when it lapses).
RENEW_BEFORE_SECONDS = 30.0


def with_query(url: str, params: Sequence[tuple[str, str]] | None) -> str:
    """`url` with `params` added to its query string."""
    if not params:
        return url
    return f"{url}{'&' if '?' in url else '?'}{urlencode(list(params))}"


class BackendAuthError(FhirgoalError, RuntimeError):
    """Discovery or the token request failed; the message says which and why."""


def signing_alg(key: RSAKey | ECKey) -> str:
    """RS384 for an RSA key, ES384 for a P-384 key (the SMART pair); a key's own `alg` wins."""
    if key.alg:
        return str(key.alg)
    if isinstance(key, RSAKey):
        return "RS384"
    curve = key.as_dict(private=False).get("crv")
    if curve == "P-384":
        return "ES384"
    raise BackendAuthError(f"an EC key on {curve} has no SMART signing algorithm (P-384: ES384)")


class BackendServicesClient:
    def __init__(
        self,
        base: str,
        client_id: str,
        key: RSAKey | ECKey,
        scopes: str,
        http: httpx.AsyncClient,
        token_url: str | None = None,
    ) -> None:
        self.base = base.rstrip("/")
        self.client_id = client_id
        self.key = key
        self.alg = signing_alg(key)
        self.scopes = scopes
        self.http = http
        # a token endpoint given with the connection spares the discovery
        self._token_endpoint: str | None = token_url
        self._token: str | None = None
        self._renew_at = 0.0
        self._lock = asyncio.Lock()  # one token request at a time, shared by every caller

    # ---- discovery and tokens --------------------------------------------------------------
    async def token_endpoint(self) -> str:
        if self._token_endpoint is None:
            url = f"{self.base}/.well-known/smart-configuration"
            try:
                response = await self.http.get(url, headers={"Accept": "application/json"})
            except httpx.HTTPError as error:
                raise BackendAuthError(f"GET {url}: {type(error).__name__}: {error}") from None
            if response.status_code != 200:
                raise BackendAuthError(f"GET {url}: HTTP {response.status_code}")
            try:
                endpoint = response.json().get("token_endpoint")
            except ValueError:
                endpoint = None
            if not isinstance(endpoint, str) or not endpoint.startswith(("http://", "https://")):
                raise BackendAuthError(f"{url} names no token_endpoint")
            self._token_endpoint = endpoint
        return self._token_endpoint

    def assertion(self, audience: str) -> str:
        """A signed client assertion for the token endpoint `audience` (RFC 7523 section 3)."""
        moment = int(time.time())
        claims = {
            "iss": self.client_id,
            "sub": self.client_id,
            "aud": audience,
            "iat": moment,
            "exp": moment + ASSERTION_SECONDS,
            "jti": uuid.uuid4().hex,
        }
        header = {"alg": self.alg, "typ": "JWT", "kid": self.key.kid}
        return jwt.encode(header, claims, self.key, algorithms=[self.alg])

    async def forget(self, token: str) -> None:
        """Drop `token` if it is the one kept (a concurrent caller may have renewed it)."""
        async with self._lock:
            if self._token == token:
                self._token = None

    async def token(self, refused: str | None = None) -> str:
        """A valid access token: the kept one, or a new one when it is near its expiry or is
        the `refused` one (a caller got 401 with it; a concurrent caller may have renewed it)."""
        async with self._lock:
            kept = self._token
            if kept is not None and kept != refused and time.monotonic() < self._renew_at:
                return kept
            endpoint = await self.token_endpoint()
            form = {
                "grant_type": "client_credentials",
                "scope": self.scopes,
                "client_assertion_type": ASSERTION_TYPE,
                "client_assertion": self.assertion(endpoint),
            }
            asked = time.monotonic()
            try:
                response = await self.http.post(
                    endpoint, data=form, headers={"Accept": "application/json"}
                )
            except httpx.HTTPError as error:
                raise BackendAuthError(
                    f"POST {endpoint}: {type(error).__name__}: {error}"
                ) from None
            body: dict[str, Any] = {}
            with contextlib.suppress(ValueError):
                parsed = response.json()
                body = parsed if isinstance(parsed, dict) else {}
            if response.status_code != 200 or not isinstance(body.get("access_token"), str):
                reason = body.get("error_description") or body.get("error") or "no access_token"
                raise BackendAuthError(
                    f"token request to {endpoint} refused: HTTP {response.status_code}: {reason}"
                )
            lifetime = float(body.get("expires_in") or 300)
            self._token = str(body["access_token"])
            self._renew_at = asked + max(0.0, lifetime - RENEW_BEFORE_SECONDS)
            return self._token

    # ---- authorized requests ---------------------------------------------------------------
    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        params: Sequence[tuple[str, str]] | None = None,
    ) -> httpx.Response:
        """`method url` with the access token; on a 401 once more with a new token; after a 403
        the token is not kept (the scopes it was granted may be what the EHR's administrator
        has since widened: the next request asks for a new one). Transport errors propagate
        (httpx.HTTPError); token failures raise BackendAuthError."""
        url = with_query(url, params)
        token = await self.token()
        for renewed in (False, True):
            response = await self.http.request(
                method,
                url,
                headers={**(headers or {}), "Authorization": f"Bearer {token}"},
                content=content,
            )
            if response.status_code == 403:
                await self.forget(token)
            if response.status_code != 401 or renewed:
                return response
            token = await self.token(refused=token)
        raise AssertionError("unreachable")  # pragma: no cover

    @contextlib.asynccontextmanager
    async def stream(
        self, url: str, *, headers: dict[str, str] | None = None, authorized: bool = True
    ) -> AsyncIterator[httpx.Response]:
        """`GET url` with its body left to be read as it comes (a Bulk Data file); with the
        access token unless `authorized` is False, and on a 401 once more with a new one."""
        token = await self.token() if authorized else None
        for renewed in (False, True):
            sent = dict(headers or {})
            if token is not None:
                sent["Authorization"] = f"Bearer {token}"
            async with self.http.stream("GET", url, headers=sent) as response:
                if response.status_code != 401 or renewed or token is None:
                    yield response
                    return
            token = await self.token(refused=token)
