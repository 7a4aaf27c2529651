"""Signed JWTs: issuing the server's access and id tokens, verifying any JWT against a key set.

JWT: RFC 7519 (https://www.rfc-editor.org/rfc/rfc7519); JWT access tokens: RFC 9068; bearer use:
RFC 6750 (https://www.rfc-editor.org/rfc/rfc6750); SMART App Launch 2.2 token response
(https://hl7.org/fhir/smart-app-launch/app-launch.html#response-5).

Verification names its algorithms explicitly (joserfc refuses RS384/ES384 otherwise, and an
explicit list is also what shuts out `alg: none` and an HMAC "signed" with a public key), requires
`exp`, and checks `iss` and `aud` exactly.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, RSAKey

from fhirgoal.auth.keys import KeyRing
from fhirgoal.core.errors import FhirgoalError

# SMART requires RS384 and ES384; RS256/ES256 are what many EHR issuers sign with.
ASYMMETRIC = ("RS384", "ES384", "RS256", "ES256")
LEEWAY_SECONDS = 30


class InvalidToken(FhirgoalError):
    """The token cannot be accepted; the message is safe to show (RFC 6750 error_description).
    `forged`: it is not a token this server's keys could have made (bad signature, refused
    algorithm such as `none`, unknown key, not a JWS at all), audited as a security alert."""

    def __init__(self, message: str, forged: bool = False) -> None:
        super().__init__(message)
        self.forged = forged


def _b64json(part: str) -> dict[str, Any]:
    import base64

    padded = part + "=" * (-len(part) % 4)
    value = orjson.loads(base64.urlsafe_b64decode(padded))
    if not isinstance(value, dict):
        raise ValueError("not a JSON object")
    return value


def unverified_header(token: str) -> dict[str, Any]:
    """The JOSE header, to pick a key by `kid` and refuse bad algorithms before any crypto."""
    parts = token.split(".")
    if len(parts) != 3:
        raise InvalidToken("the token is not a signed JWT", forged=True)
    try:
        return _b64json(parts[0])
    except (ValueError, TypeError):
        raise InvalidToken("the token header is malformed", forged=True) from None


def looks_like_jwt(token: str) -> bool:
    return token.count(".") == 2


KeyLookup = Callable[[str | None], Awaitable[KeySet]]


async def verify_jwt(
    token: str,
    keys: KeyLookup,
    *,
    issuer: str | None,
    audience: str | list[str] | None,
    algorithms: tuple[str, ...] = ASYMMETRIC,
    max_lifetime: int | None = None,
) -> dict[str, Any]:
    """The claims of a valid token; InvalidToken otherwise."""
    header = unverified_header(token)
    alg = header.get("alg")
    if alg not in algorithms:
        raise InvalidToken(f"the signing algorithm {alg!r} is not accepted", forged=True)
    kid = header.get("kid")
    key_set = await keys(kid if isinstance(kid, str) else None)
    if isinstance(kid, str) and not any(k.kid == kid for k in key_set.keys):
        raise InvalidToken("the token is signed with an unknown key", forged=True)
    try:
        decoded = jwt.decode(token, key_set, algorithms=list(algorithms))
    except (JoseError, ValueError):
        raise InvalidToken("the token signature is invalid", forged=True) from None
    claims = dict(decoded.claims)
    now = int(time.time())
    exp = claims.get("exp")
    if not isinstance(exp, int | float):
        raise InvalidToken("the token has no expiry")
    if exp + LEEWAY_SECONDS < now:
        raise InvalidToken("the token has expired")
    nbf = claims.get("nbf")
    if isinstance(nbf, int | float) and nbf - LEEWAY_SECONDS > now:
        raise InvalidToken("the token is not valid yet")
    if max_lifetime is not None and exp - now > max_lifetime + LEEWAY_SECONDS:
        raise InvalidToken(f"the token lives longer than {max_lifetime} seconds")
    if issuer is not None and claims.get("iss") != issuer:
        raise InvalidToken("the token has the wrong issuer")
    if audience is not None:
        wanted = {audience} if isinstance(audience, str) else set(audience)
        aud = claims.get("aud")
        given = {aud} if isinstance(aud, str) else set(aud) if isinstance(aud, list) else set()
        if not wanted & given:
            raise InvalidToken("the token has the wrong audience")
    return claims


class TokenIssuer:
    """Signs the server's access tokens and id tokens with the current key of the key ring."""

    def __init__(self, keys: KeyRing, lifetime: int) -> None:
        self.keys = keys
        self.lifetime = lifetime

    async def sign(self, claims: dict[str, Any], lifetime: int | None = None) -> str:
        key: RSAKey | ECKey = await self.keys.signing_key()
        now = int(time.time())
        body = {
            "iat": now,
            "exp": now + (lifetime or self.lifetime),
            "jti": secrets.token_urlsafe(16),
            **claims,
        }
        alg = key.alg or "RS384"
        return jwt.encode({"alg": alg, "kid": key.kid, "typ": "JWT"}, body, key, algorithms=[alg])

    async def verify(self, token: str, *, issuer: str, audience: str | list[str]) -> dict[str, Any]:
        return await verify_jwt(
            token,
            self.keys.verifying_keys,
            issuer=issuer,
            audience=audience,
            algorithms=("RS384", "ES384"),
        )
