"""The token and introspection endpoints of the built-in authorization server.

- client authentication by `client_secret_basic` (RFC 6749 section 2.3.1, SMART
  client-confidential-symmetric.html) or `private_key_jwt`: RFC 7523 section 2.2 and 3
  (https://www.rfc-editor.org/rfc/rfc7523) as profiled by SMART Backend Services
  (https://hl7.org/fhir/smart-app-launch/client-confidential-asymmetric.html): iss = sub =
  client_id, aud = the token endpoint URL, exp at most 5 minutes ahead, jti never reused,
  RS384 or ES384;
- `client_credentials` (https://hl7.org/fhir/smart-app-launch/backend-services.html);
- `authorization_code` with PKCE S256 (RFC 7636, https://www.rfc-editor.org/rfc/rfc7636); a code
  is used once, and presenting it again revokes every token issued from it, access tokens
  included (RFC 6749 section 4.1.2; auth/revocation.py);
- `refresh_token` with rotation: each refresh token is used once; presenting a used one revokes
  its whole family and the access tokens of the same grant (RFC 9700 section 4.14.2,
  https://www.rfc-editor.org/rfc/rfc9700);

Every access token carries `grant_id`: one per authorization code or client-credentials request,
kept through refreshes (the refresh family), so that a grant's tokens can be revoked together.
- introspection: RFC 7662 (https://www.rfc-editor.org/rfc/rfc7662).

Errors are RFC 6749 section 5.2 JSON (`{"error": ..., "error_description": ...}`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any, NamedTuple

from pymongo import ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

from fhirgoal.auth.clients import Client, ClientRegistry
from fhirgoal.auth.revocation import Revocations, token_keys
from fhirgoal.auth.scopes import ScopeError, Scopes, grantable, parse_scopes
from fhirgoal.auth.state import expired, new_secret, remember_jti, secret_hash, utcnow
from fhirgoal.auth.tokens import InvalidToken, TokenIssuer, unverified_header, verify_jwt
from fhirgoal.auth.users import UserDirectory
from fhirgoal.core.errors import FhirgoalError

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
ASSERTION_ALGORITHMS = ("RS384", "ES384")
MAX_ASSERTION_SECONDS = 300
# what an authorization code hands on to its tokens and their refresh tokens; `aud` is the
# resource server the app asked for (FHIRGOAL_TOKEN_AUDIENCES), absent for this server
GRANT_FIELDS = ("scope", "patient", "fhir_user", "sub", "encounter", "aud")


class OAuthError(FhirgoalError):
    """An RFC 6749 section 5.2 error. `alert`: the security-event kind when the request is a
    replay (auth/audit_events.py SECURITY_KINDS), audited as a security alert."""

    def __init__(
        self, error: str, description: str, status: int = 400, alert: str | None = None
    ) -> None:
        super().__init__(description)
        self.error = error
        self.description = description
        self.status = status
        self.alert = alert

    def body(self) -> dict[str, str]:
        return {"error": self.error, "error_description": self.description}


def pkce_challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _unverified_claims(token: str) -> dict[str, Any]:
    unverified_header(token)
    payload = token.split(".")[1]
    try:
        import orjson

        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except ValueError:
        raise InvalidToken("the assertion is malformed") from None
    if not isinstance(claims, dict):
        raise InvalidToken("the assertion is malformed")
    return claims


class Issued(NamedTuple):
    """A token response and, for the audit trail, whom it was issued to."""

    body: dict[str, Any]
    client_id: str
    user: str | None = None
    fhir_user: str | None = None


async def _no_revocation(keys: list[str]) -> None:
    return None


class TokenService:
    def __init__(
        self,
        db: AsyncDatabase[dict[str, Any]],
        issuer: TokenIssuer,
        clients: ClientRegistry,
        refresh_lifetime: int,
        users: UserDirectory | None = None,
        revoke: Callable[[list[str]], Awaitable[None]] = _no_revocation,
    ) -> None:
        self.revoke = revoke  # auth/runtime.py AuthRuntime.revoke
        self.users = users
        self.db = db
        self.issuer = issuer
        self.clients = clients
        self.refresh_lifetime = refresh_lifetime

    # ---- client authentication -----------------------------------------------------------------
    async def authenticate_client(
        self, form: dict[str, str], token_url: str, basic: tuple[str, str] | None = None
    ) -> Client:
        """The client of a token or introspection request: by its private_key_jwt assertion,
        its client_secret_basic credentials (`basic`), or, for a public client, its id."""
        assertion_type = form.get("client_assertion_type")
        assertion = form.get("client_assertion")
        if basic is not None:
            if assertion_type is not None or assertion is not None:
                # RFC 6749 2.3: one authentication method per request
                raise OAuthError("invalid_request", "authenticate one way only", 400)
            return await self._authenticate_secret(basic, form.get("client_id"))
        if assertion_type is None and assertion is None:
            client_id = form.get("client_id")
            if not client_id:
                raise OAuthError("invalid_client", "client authentication is required", 401)
            client = await self.clients.get(client_id)
            if client is None:
                raise OAuthError("invalid_client", "unknown or revoked client", 401)
            if client.confidential:
                how = "private_key_jwt" if client.asymmetric else "client_secret_basic"
                raise OAuthError("invalid_client", f"this client must authenticate with {how}", 401)
            return client
        if assertion_type != ASSERTION_TYPE or not assertion:
            raise OAuthError("invalid_client", "unsupported client assertion type", 401)
        try:
            return await self._verify_assertion(assertion, token_url, form.get("client_id"))
        except InvalidToken as exc:
            raise OAuthError("invalid_client", str(exc), 401) from None

    async def _authenticate_secret(
        self, basic: tuple[str, str], form_client_id: str | None
    ) -> Client:
        client_id, secret = basic
        if form_client_id is not None and form_client_id != client_id:
            raise OAuthError("invalid_client", "client_id does not match the credentials", 401)
        client = await self.clients.get(client_id)
        if client is None or not client.secret_matches(secret):
            raise OAuthError("invalid_client", "unknown client or wrong secret", 401)
        return client

    async def _verify_assertion(
        self, assertion: str, token_url: str, form_client_id: str | None
    ) -> Client:
        peek = _unverified_claims(assertion)
        client_id = peek.get("iss")
        if not isinstance(client_id, str) or peek.get("sub") != client_id:
            raise InvalidToken("the assertion's iss and sub must both be the client_id")
        if form_client_id is not None and form_client_id != client_id:
            raise InvalidToken("client_id does not match the assertion")
        client = await self.clients.get(client_id)
        if client is None or not client.asymmetric:
            raise InvalidToken("unknown or revoked client")

        async def keys(kid: str | None) -> Any:
            return await self.clients.keys(client, kid)

        claims = await verify_jwt(
            assertion,
            keys,
            issuer=client_id,
            audience=token_url,
            algorithms=ASSERTION_ALGORITHMS,
            max_lifetime=MAX_ASSERTION_SECONDS,
        )
        jti = claims.get("jti")
        if not isinstance(jti, str) or not jti:
            raise InvalidToken("the assertion has no jti")
        until = utcnow() + timedelta(seconds=MAX_ASSERTION_SECONDS + 60)
        if not await remember_jti(self.db, f"{client_id}:{jti}", until):
            raise InvalidToken("the assertion's jti was used before")
        return client

    # ---- token endpoint --------------------------------------------------------------------------
    async def token(
        self,
        form: dict[str, str],
        token_url: str,
        fhir_base: str,
        basic: tuple[str, str] | None = None,
    ) -> Issued:
        grant = form.get("grant_type")
        if grant not in ("client_credentials", "authorization_code", "refresh_token"):
            raise OAuthError("unsupported_grant_type", f"grant_type {grant!r} is not supported")
        client = await self.authenticate_client(form, token_url, basic)
        if grant == "client_credentials":
            return Issued(await self._client_credentials(client, form, fhir_base), client.client_id)
        if grant == "authorization_code":
            body, doc = await self._authorization_code(client, form, fhir_base)
        else:
            body, doc = await self._refresh(client, form, fhir_base)
        return Issued(body, client.client_id, doc.get("sub"), doc.get("fhir_user"))

    async def _client_credentials(
        self, client: Client, form: dict[str, str], fhir_base: str
    ) -> dict[str, Any]:
        if not client.asymmetric:  # SMART Backend Services: asymmetric keys only
            raise OAuthError("unauthorized_client", "client_credentials needs private_key_jwt")
        requested = _scopes(form.get("scope", ""))
        granted = grantable(requested, client.allowed)
        if not granted.resources:
            raise OAuthError("invalid_scope", "none of the requested scopes is allowed")
        token = await self.issuer.sign(
            {
                "iss": fhir_base,
                "aud": fhir_base,
                "sub": client.client_id,
                "client_id": client.client_id,
                "scope": granted.text,
                "grant_id": new_secret(),
            }
        )
        return {
            "access_token": token,
            "token_type": "Bearer",
            "expires_in": self.issuer.lifetime,
            "scope": granted.text,
        }

    async def _authorization_code(
        self, client: Client, form: dict[str, str], fhir_base: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        code = form.get("code")
        verifier = form.get("code_verifier")
        if not code:
            raise OAuthError("invalid_request", "code is required")
        codes = self.db["auth_codes"]
        key = secret_hash(code)
        # single use: whoever marks it used owns it. The used code is kept as long as the tokens
        # issued from it live, so that a second presentation can revoke them (RFC 6749 4.1.2).
        keep = utcnow() + timedelta(seconds=self.issuer.lifetime + 60)
        doc = await codes.find_one_and_update(
            {"_id": key, "used": {"$ne": True}},
            {"$set": {"used": True, "expires": keep}},
            return_document=ReturnDocument.BEFORE,
        )
        if doc is None:
            seen = await codes.find_one({"_id": key})
            if seen is not None and seen.get("grant"):
                await self.revoke([f"grant:{seen['grant']}"])
                await self.db["auth_refresh"].update_many(
                    {"family": seen["grant"]}, {"$set": {"revoked": True}}
                )
                raise OAuthError(
                    "invalid_grant",
                    "the code was used before: every token issued from it is revoked",
                    alert="code-reused",
                )
            raise OAuthError("invalid_grant", "the code is unknown, used or expired")
        if expired(doc):
            raise OAuthError("invalid_grant", "the code is unknown, used or expired")
        if doc["client_id"] != client.client_id:
            raise OAuthError("invalid_grant", "the code was issued to another client")
        if doc["redirect_uri"] != form.get("redirect_uri"):
            raise OAuthError("invalid_grant", "redirect_uri does not match the authorization")
        if not verifier or not 43 <= len(verifier) <= 128:
            raise OAuthError(
                "invalid_grant", "a PKCE code_verifier (43-128 characters) is required"
            )
        if not hmac.compare_digest(pkce_challenge(verifier), doc["code_challenge"]):
            raise OAuthError("invalid_grant", "the PKCE code_verifier does not match")
        grant = {k: doc.get(k) for k in GRANT_FIELDS}
        return await self._issue(client, grant, fhir_base, family=doc.get("grant")), doc

    async def _refresh(
        self, client: Client, form: dict[str, str], fhir_base: str
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        presented = form.get("refresh_token")
        if not presented:
            raise OAuthError("invalid_request", "refresh_token is required")
        refresh = self.db["auth_refresh"]
        key = secret_hash(presented)
        doc = await refresh.find_one_and_update(
            {"_id": key, "used": False, "revoked": False},
            {"$set": {"used": True}},
            return_document=ReturnDocument.BEFORE,
        )
        if doc is None:
            seen = await refresh.find_one({"_id": key})
            if seen is not None:  # a used token again: stolen or replayed, end the family
                await refresh.update_many({"family": seen["family"]}, {"$set": {"revoked": True}})
                await self.revoke([f"grant:{seen['family']}"])
                raise OAuthError(
                    "invalid_grant",
                    "the refresh token was used before: its grant is revoked",
                    alert="refresh-reused",
                )
            raise OAuthError("invalid_grant", "the refresh token is unknown, used or revoked")
        if expired(doc) or doc["client_id"] != client.client_id:
            raise OAuthError("invalid_grant", "the refresh token is expired or not this client's")
        if (
            doc.get("fhir_user")
            and self.users is not None
            and not await self.users.active(doc["sub"])
        ):
            raise OAuthError("invalid_grant", "the user who granted this access is revoked")
        grant = {k: doc.get(k) for k in GRANT_FIELDS}
        if form.get("scope"):
            narrower = grantable(_scopes(form["scope"]), parse_scopes(doc["scope"]))
            grant["scope"] = narrower.text
        return await self._issue(client, grant, fhir_base, family=doc["family"]), doc

    async def _issue(
        self, client: Client, grant: dict[str, Any], fhir_base: str, family: str | None
    ) -> dict[str, Any]:
        scopes = parse_scopes(grant["scope"] or "")
        family = family or new_secret()
        claims: dict[str, Any] = {
            "iss": fhir_base,
            "aud": grant.get("aud") or fhir_base,
            "sub": grant.get("sub") or client.client_id,
            "client_id": client.client_id,
            "scope": scopes.text,
            "grant_id": family,  # the refresh family is the grant (auth/revocation.py)
        }
        if grant.get("patient"):
            claims["patient"] = grant["patient"]
        if grant.get("fhir_user") and scopes.has("fhirUser"):
            claims["fhirUser"] = grant["fhir_user"]
        response: dict[str, Any] = {
            "access_token": await self.issuer.sign(claims),
            "token_type": "Bearer",
            "expires_in": self.issuer.lifetime,
            "scope": scopes.text,
        }
        if grant.get("patient"):
            response["patient"] = grant["patient"]
        if grant.get("encounter"):
            response["encounter"] = grant["encounter"]
        if scopes.has("openid") and grant.get("fhir_user") and scopes.has("fhirUser"):
            response["id_token"] = await self.issuer.sign(
                {
                    "iss": fhir_base,
                    "aud": client.client_id,
                    "sub": grant.get("sub") or client.client_id,
                    "fhirUser": grant["fhir_user"],
                }
            )
        if scopes.has("offline_access") or scopes.has("online_access"):
            token = new_secret()
            await self.db["auth_refresh"].insert_one(
                {
                    "_id": secret_hash(token),
                    "family": family,
                    "client_id": client.client_id,
                    **{k: grant.get(k) for k in GRANT_FIELDS if k != "scope"},
                    "scope": scopes.text,
                    "used": False,
                    "revoked": False,
                    "expires": utcnow() + timedelta(seconds=self.refresh_lifetime),
                }
            )
            response["refresh_token"] = token
        return response

    # ---- introspection ---------------------------------------------------------------------------
    async def introspect(
        self,
        form: dict[str, str],
        token_url: str,
        fhir_base: str,
        audiences: list[str] | None = None,
        basic: tuple[str, str] | None = None,
    ) -> dict[str, Any]:
        """RFC 7662 for a token of this issuer meant for any of `audiences` (default: this
        server; a resource server trusting this one introspects the tokens issued for it)."""
        await self.authenticate_client(form, token_url, basic)
        token = form.get("token")
        if not token:
            raise OAuthError("invalid_request", "token is required")
        try:
            claims = await self.issuer.verify(
                token, issuer=fhir_base, audience=audiences or fhir_base
            )
        except InvalidToken:
            return {"active": False}
        client_id = claims.get("client_id")
        if not isinstance(client_id, str) or await self.clients.get(client_id) is None:
            return {"active": False}
        if await Revocations(self.db).any_revoked(token_keys(claims)):
            return {"active": False}  # its grant, client or user was revoked (auth/revocation.py)
        answer = {"active": True, "token_type": "Bearer"}
        for name in (
            "scope",
            "client_id",
            "sub",
            "exp",
            "iat",
            "iss",
            "aud",
            "patient",
            "fhirUser",
        ):
            if name in claims:
                answer[name] = claims[name]
        return answer


def _scopes(text: str) -> Scopes:
    try:
        return parse_scopes(text)
    except ScopeError as exc:
        raise OAuthError("invalid_scope", str(exc)) from None
