"""Test-side JOSE: client key pairs and signed client assertions, built with joserfc like a real
backend client would (SMART Backend Services, RFC 7523)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from typing import Any

from joserfc import jwt
from joserfc.jwk import ECKey, OctKey, RSAKey

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def rsa_key() -> RSAKey:
    return RSAKey.generate_key(2048, parameters={"alg": "RS384", "use": "sig"}, auto_kid=True)


def ec_key() -> ECKey:
    return ECKey.generate_key("P-384", parameters={"alg": "ES384", "use": "sig"}, auto_kid=True)


def public_jwks(*keys: RSAKey | ECKey) -> dict[str, Any]:
    return {"keys": [k.as_dict(private=False) for k in keys]}


def sign(key: RSAKey | ECKey, claims: dict[str, Any], alg: str | None = None, **header: Any) -> str:
    alg = alg or key.alg or "RS384"
    return jwt.encode({"alg": alg, "kid": key.kid, **header}, claims, key, algorithms=[alg])


def assertion(
    key: RSAKey | ECKey, client_id: str, token_url: str, lifetime: int = 240, **overrides: Any
) -> str:
    now = int(time.time())
    claims = {
        "iss": client_id,
        "sub": client_id,
        "aud": token_url,
        "exp": now + lifetime,
        "iat": now,
        "jti": uuid.uuid4().hex,
        **overrides,
    }
    return sign(key, claims)


def unsigned(claims: dict[str, Any]) -> str:
    """An `alg: none` token, as an attacker would craft it."""

    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def hs256_with_public_key(public_jwk: dict[str, Any], claims: dict[str, Any], kid: str) -> str:
    """The classic confusion attack: HMAC 'signed' with the RSA public key as the secret."""
    secret = json.dumps(public_jwk, sort_keys=True).encode()
    key = OctKey.import_key(secret)
    return jwt.encode({"alg": "HS256", "kid": kid}, claims, key, algorithms=["HS256"])


def form_assertion(
    key: RSAKey | ECKey, client_id: str, token_url: str, **extra: str
) -> dict[str, str]:
    return {
        "client_assertion_type": ASSERTION_TYPE,
        "client_assertion": assertion(key, client_id, token_url),
        **extra,
    }
