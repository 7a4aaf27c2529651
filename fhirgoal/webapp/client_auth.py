"""How the app authenticates to an authorization server's token endpoint, and the public keys it
publishes for that (SMART App Launch 2.2, client-authentication.html).

- public (the default): `client_id` in the form, the code bound to the browser by PKCE alone;
- `client_secret_basic` (client-confidential-symmetric.html, RFC 6749 section 2.3.1): the id and
  FHIRGOAL_APP_CLIENT_SECRET, each form-urlencoded, as HTTP Basic credentials;
- `private_key_jwt` (client-confidential-asymmetric.html, RFC 7523): a JWT signed with the key of
  FHIRGOAL_APP_PRIVATE_KEY_FILE (a private JWK, a JWKS holding one, or a PEM private key; RSA
  signs RS384, EC P-384 signs ES384, the two algorithms SMART requires servers to accept), with
  iss = sub = client_id, aud = the token endpoint, a fresh `jti`, five minutes at most. The public
  half is published at `GET /app/jwks` for the EHR administrator to register as the app's
  `jwks_uri` (or to copy).

The app is a backend-for-frontend, so it can keep a secret: an EHR that registers confidential
apps can require one. The credentials never leave the server.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import orjson
from fastapi import APIRouter, Request, Response
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import ECKey, KeySet, RSAKey

from fhirgoal.config import Settings

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_SECONDS = 240  # under the 5 minutes SMART allows, with room for clock skew
router = APIRouter(prefix="/app", include_in_schema=False)


class CredentialsError(ValueError):
    """The configured credentials cannot be used; stops the start-up with this message."""


@dataclass(frozen=True)
class ClientCredentials:
    client_id: str
    secret: str | None = None
    key: RSAKey | ECKey | None = None

    @property
    def method(self) -> str:
        """The token_endpoint_auth_method (RFC 7591 names)."""
        if self.key is not None:
            return "private_key_jwt"
        return "client_secret_basic" if self.secret else "none"

    @property
    def algorithm(self) -> str:
        return "ES384" if isinstance(self.key, ECKey) else "RS384"

    def authenticate(
        self, form: dict[str, str], token_url: str
    ) -> tuple[dict[str, str], httpx.Auth | None]:
        """The token request's form and HTTP authentication for this client."""
        if self.key is not None:
            return {**form, "client_assertion_type": ASSERTION_TYPE,
                    "client_assertion": self._assertion(token_url)}, None  # fmt: skip
        if self.secret:
            # RFC 6749 2.3.1: both parts form-urlencoded before the Basic encoding
            return form, httpx.BasicAuth(quote(self.client_id, safe=""),
                                         quote(self.secret, safe=""))  # fmt: skip
        return {**form, "client_id": self.client_id}, None

    def _assertion(self, token_url: str) -> str:
        assert self.key is not None
        now = int(time.time())
        claims = {
            "iss": self.client_id, "sub": self.client_id, "aud": token_url,
            "iat": now, "exp": now + ASSERTION_SECONDS, "jti": secrets.token_urlsafe(24),
        }  # fmt: skip
        header = {"alg": self.algorithm, "kid": self.key.kid, "typ": "JWT"}
        return jwt.encode(header, claims, self.key, algorithms=[self.algorithm])

    def public_jwks(self) -> dict[str, Any]:
        if self.key is None:
            return {"keys": []}
        public: dict[str, Any] = dict(self.key.as_dict(private=False))
        public.update({"alg": self.algorithm, "use": "sig", "kid": self.key.kid})
        return {"keys": [public]}


def load_credentials(settings: Settings) -> ClientCredentials:
    secret = settings.app_client_secret
    key_file = settings.app_private_key_file
    if secret and key_file:
        raise CredentialsError(
            "set FHIRGOAL_APP_CLIENT_SECRET or FHIRGOAL_APP_PRIVATE_KEY_FILE, not both: a client "
            "authenticates one way"
        )
    key = _read_key(key_file) if key_file else None
    return ClientCredentials(settings.app_client_id, secret or None, key)


def _read_key(path: Path) -> RSAKey | ECKey:
    try:
        text = path.read_text()
    except OSError as exc:
        raise CredentialsError(f"FHIRGOAL_APP_PRIVATE_KEY_FILE cannot be read: {exc}") from None
    try:
        if text.lstrip().startswith("{"):
            document = orjson.loads(text)
            jwk = document["keys"][0] if "keys" in document else document
            key = KeySet.import_key_set({"keys": [jwk]}).keys[0]
        else:
            key = _pem_key(text)
    except (ValueError, KeyError, IndexError, TypeError, JoseError) as exc:
        raise CredentialsError(
            f"FHIRGOAL_APP_PRIVATE_KEY_FILE holds no usable key: {exc}"
        ) from None
    if not isinstance(key, RSAKey | ECKey) or not key.is_private:
        raise CredentialsError("FHIRGOAL_APP_PRIVATE_KEY_FILE must hold an RSA or EC private key")
    if isinstance(key, ECKey) and key.as_dict(private=False).get("crv") != "P-384":
        raise CredentialsError("an EC key of the app must be on P-384 (it signs ES384)")
    if not key.kid:
        key = type(key).import_key(key.as_dict(private=True), {"kid": key.thumbprint()})
    return key


def _pem_key(text: str) -> RSAKey | ECKey:
    for kind in (RSAKey, ECKey):
        try:
            return kind.import_key(text)
        except (ValueError, JoseError):
            continue
    raise ValueError("not an RSA or EC private key in PEM")


@router.get("/jwks")
async def jwks(request: Request) -> Response:
    """The app's public keys for private_key_jwt (empty when it uses none)."""
    credentials: ClientCredentials = request.app.state.webapp.credentials
    return Response(orjson.dumps(credentials.public_jwks()), media_type="application/json")
