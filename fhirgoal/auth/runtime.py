"""Wiring of the authorization modes into the app: what exists per FHIRGOAL_AUTH, built once the
database is connected (SMART App Launch 2.2, https://hl7.org/fhir/smart-app-launch/).

- `smart`: key ring (keys encrypted at rest), token issuer, client registry (with the web app's
  built-in client, auth/builtin_app.py), users, token service (auth/server.py routes); access tokens verified against the server's own key set, refused once
  their client, user or grant is revoked (auth/revocation.py), and refused when they name a type
  kept out of `*` (AuditEvent) that their client's registration does not name;
- `external`: tokens of an EHR's authorization server (auth/external.py);
- both: the Auditor (auth/audit.py) and its rate-limited trail of security events, and under
  FHIRGOAL_USER_ACCESS=caseload the caseloads (auth/caseload.py) that confine `user/` tokens and
  the patient picker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fhirgoal.auth.audit import Auditor, SecurityTrail
from fhirgoal.auth.audit_events import SecurityEvent
from fhirgoal.auth.bearer import Authenticator, CachedAuthenticator
from fhirgoal.auth.caseload import Caseloads
from fhirgoal.auth.context import ParamCompiler
from fhirgoal.auth.external_discovery import ExternalAuthorizationServer
from fhirgoal.auth.tokens import InvalidToken
from fhirgoal.config import Settings
from fhirgoal.core.access import UNRESTRICTED, AccessContext
from fhirgoal.core.errors import FhirError
from fhirgoal.fhir.export_jobs import ExportRunner
from fhirgoal.fhir.service import FhirService


def param_compiler(service: FhirService) -> ParamCompiler:
    """Granular scope parameters compiled by the search compiler, as a search would be. Chains,
    `_has` and `:in` need other searches and are refused (the scope then grants nothing)."""

    def compile_params(rt: str, params: tuple[tuple[str, str], ...]) -> dict[str, Any]:
        if not service.conformance.is_stored(rt):
            raise ValueError(f"unknown resource type {rt}")
        try:
            compiled = service.engine.compiler(rt).compile(list(params), "")
        except FhirError as exc:
            raise ValueError(exc.diagnostics) from None
        if compiled.deferred:
            raise ValueError("granular scopes cannot chain")
        return compiled.filter

    return compile_params


@dataclass
class AuthRuntime:
    settings: Settings
    authenticator: Authenticator | None = None
    auditor: Auditor | None = None
    security: SecurityTrail | None = None
    smart: Any = None  # auth.server.SmartServer in smart mode
    caseloads: Caseloads | None = None  # None: FHIRGOAL_USER_ACCESS=all
    # External mode: one view of the EHR's authorization server, for what /.well-known publishes
    # and for where the token checks find its keys.
    external_authorization: ExternalAuthorizationServer | None = None

    def __post_init__(self) -> None:
        if self.settings.auth == "external":
            self.external_authorization = ExternalAuthorizationServer(self.settings)

    def record(self, event: SecurityEvent) -> None:
        """Audit a security event (rate limited; nothing when the audit is off)."""
        if self.security is not None:
            self.security.record(event)

    async def start(self, service: FhirService, exports: ExportRunner | None = None) -> None:
        settings = self.settings
        if exports is not None:
            exports.access_for_owner = self.owner_access
        compile_params = param_compiler(service)
        if settings.audit and settings.auth != "off":
            self.auditor = Auditor(service, settings.audit_flush_seconds, settings.audit_buffer)
            self.security = self.auditor.security = SecurityTrail(
                self.auditor, settings.security_audit_burst, settings.security_audit_per_minute
            )
            self.auditor.start()
            service.entry_audit = self.auditor.store_entries
        if settings.user_access == "caseload":
            self.caseloads = Caseloads(service, settings.caseload_refresh_seconds)
        if settings.auth == "smart":
            from fhirgoal.auth import revocation
            from fhirgoal.auth.scopes import names_unregistered, parse_scopes

            self.smart = await _smart_server(settings, service, self)
            issuer, clients = self.smart.issuer, self.smart.clients
            revocations = revocation.Revocations(service.database)

            async def verify(token: str, base: str) -> dict[str, Any]:
                claims = await issuer.verify(token, issuer=base, audience=base)
                client_id = claims.get("client_id")
                client = await clients.get(client_id) if isinstance(client_id, str) else None
                if client is None:
                    raise InvalidToken("the token's client is revoked")
                scope = claims.get("scope")
                if (
                    isinstance(scope, str)
                    and "AuditEvent" in scope
                    and names_unregistered(parse_scopes(scope), client.allowed)
                ):
                    raise InvalidToken(
                        "the token names AuditEvent, which its client is not registered for",
                        forged=True,
                    )
                if await revocations.any_revoked(revocation.token_keys(claims)):
                    raise InvalidToken("the token is revoked")
                return claims

            self.authenticator = CachedAuthenticator(
                verify,
                compile_params,
                keys_of=revocation.token_keys,
                recent=revocations.recent,
                check_seconds=settings.revocation_check_seconds,
                caseloads=self.caseloads,
            )
        elif settings.auth == "external":
            from fhirgoal.auth.external import ExternalVerifier

            self.authenticator = CachedAuthenticator(
                ExternalVerifier(settings, self.external_authorization),
                compile_params,
                max_cache_seconds=settings.external_introspection_cache_seconds,
                caseloads=self.caseloads,
            )

    async def owner_access(self, owner: dict[str, Any]) -> AccessContext | None:
        """The access of the requester of a Bulk export that is run again after a restart
        (fhir/export.py), rebuilt from what was recorded of its token; None when that requester's
        client or user has been revoked since, or the mode cannot rebuild it."""
        if self.settings.auth == "off":
            return UNRESTRICTED if owner.get("unrestricted") else None
        if not isinstance(self.authenticator, CachedAuthenticator) or owner.get("unrestricted"):
            return None
        names = {"sub": "subject", "client_id": "client_id", "scope": "scope"}
        names |= {"patient": "patient", "fhirUser": "fhir_user"}
        claims = {claim: owner[key] for claim, key in names.items() if owner.get(key)}
        if self.smart is not None:
            from fhirgoal.auth import revocation

            client_id = claims.get("client_id")
            if not isinstance(client_id, str) or await self.smart.clients.get(client_id) is None:
                return None
            revocations = revocation.Revocations(self.smart.db)
            if await revocations.any_revoked(revocation.token_keys(claims)):
                return None
        try:
            return await self.authenticator.context_for(claims)
        except InvalidToken:
            return None

    async def revoke(self, keys: list[str]) -> None:
        """Revoke tokens (auth/revocation.py): recorded for every replica, and dropped from this
        replica's cache at once."""
        from fhirgoal.auth import revocation

        assert self.smart is not None
        await revocation.revoke(self.smart.db, keys)
        if isinstance(self.authenticator, CachedAuthenticator):
            self.authenticator.evict(set(keys))

    async def stop(self) -> None:
        if self.auditor is not None:
            await self.auditor.stop()


async def _smart_server(settings: Settings, service: FhirService, runtime: AuthRuntime) -> Any:
    from fhirgoal.auth import revocation, state
    from fhirgoal.auth.builtin_app import register_builtin_app
    from fhirgoal.auth.clients import ClientRegistry
    from fhirgoal.auth.grants import TokenService
    from fhirgoal.auth.keys import KeyRing, encryption_key
    from fhirgoal.auth.server import SmartServer
    from fhirgoal.auth.tokens import TokenIssuer
    from fhirgoal.auth.users import UserDirectory

    db = service.database
    keys = KeyRing(
        db, encryption_key(settings.key_encryption_key, settings.data_dir), settings.signing_alg
    )
    await keys.ensure()
    await state.ensure_indexes(db)
    await revocation.ensure_indexes(db)
    issuer = TokenIssuer(keys, settings.access_token_seconds)
    clients = ClientRegistry(db)
    await register_builtin_app(clients, settings)
    users = UserDirectory(db)
    tokens = TokenService(
        db, issuer, clients, settings.refresh_token_seconds, users, revoke=runtime.revoke
    )
    return SmartServer(
        db=db,
        keys=keys,
        issuer=issuer,
        clients=clients,
        users=users,
        tokens=tokens,
        service=service,
        runtime=runtime,
        caseloads=runtime.caseloads,
    )
