"""Remote JSON Web Key Sets, fetched over HTTP and cached.

RFC 7517 section 5 (https://www.rfc-editor.org/rfc/rfc7517#section-5); SMART Backend Services
registration by `jwks_url` (https://hl7.org/fhir/smart-app-launch/client-confidential-asymmetric.html).

A set is kept for `ttl` seconds. A token signed with a kid the cached set lacks triggers one
refetch (the issuer may have rotated its keys), at most once every `min_refetch` seconds per URL so
that a stream of tokens with made-up kids cannot turn the server into a fetch amplifier.
"""

from __future__ import annotations

import time
from typing import Any

import httpx
from joserfc.jwk import KeySet

from fhirgoal.auth.tokens import InvalidToken


def key_set(jwks: dict[str, Any]) -> KeySet:
    """Import the public keys of a JWKS document, skipping those this server cannot use."""
    usable = [k for k in jwks.get("keys", []) if k.get("kty") in ("RSA", "EC") and "d" not in k]
    return KeySet.import_key_set({"keys": usable})


class JwksCache:
    def __init__(self, ttl: float = 300.0, min_refetch: float = 30.0, timeout: float = 5.0) -> None:
        self.ttl = ttl
        self.min_refetch = min_refetch
        self.timeout = timeout
        self._sets: dict[str, tuple[float, KeySet]] = {}
        self.fetches = 0  # observable in tests: how often the network was asked

    async def _fetch(self, url: str) -> KeySet:
        self.fetches += 1
        try:
            async with httpx.AsyncClient(timeout=self.timeout) as client:
                response = await client.get(url, headers={"Accept": "application/json"})
                response.raise_for_status()
                document = response.json()
        except (httpx.HTTPError, ValueError):
            raise InvalidToken("the issuer's key set cannot be fetched") from None
        if not isinstance(document, dict):
            raise InvalidToken("the issuer's key set is malformed")
        keys = key_set(document)
        self._sets[url] = (time.monotonic(), keys)
        return keys

    async def get(self, url: str, kid: str | None = None) -> KeySet:
        cached = self._sets.get(url)
        now = time.monotonic()
        if cached is None or now - cached[0] > self.ttl:
            return await self._fetch(url)
        fetched_at, keys = cached
        unknown = kid is not None and not any(k.kid == kid for k in keys.keys)
        if unknown and now - fetched_at >= self.min_refetch:
            return await self._fetch(url)
        return keys
