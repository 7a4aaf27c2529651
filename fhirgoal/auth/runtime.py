"""Wiring of the authorization modes into the app: what exists per FHIRGOAL_AUTH, built once the
database is connected (SMART App Launch 2.2, https://hl7.org/fhir/smart-app-launch/).

- `smart`: key ring, token issuer, client registry, users, token service (auth/server.py routes);
  access tokens verified against the server's own key set, and refused once their client is
  revoked;
- `external`: tokens of an EHR's authorization server (auth/external.py);
- both: the Auditor (auth/audit.py), and under FHIRGOAL_USER_ACCESS=caseload the caseloads
  (auth/caseload.py) that confine `user/` tokens and the patient picker.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fhirgoal.auth.audit import Auditor
from fhirgoal.auth.bearer import Authenticator, CachedAuthenticator
from fhirgoal.auth.caseload import Caseloads
from fhirgoal.auth.context import ParamCompiler
from fhirgoal.config import Settings
from fhirgoal.fhir.errors import FhirError
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
    smart: Any = None  # auth.server.SmartServer in smart mode
    caseloads: Caseloads | None = None  # None: FHIRGOAL_USER_ACCESS=all

    async def start(self, service: FhirService) -> None:
        settings = self.settings
        compile_params = param_compiler(service)
        if settings.user_access == "caseload":
            self.caseloads = Caseloads(service, settings.caseload_refresh_seconds)
        if settings.auth == "smart":
            self.smart = await _smart_server(settings, service, self.caseloads)
            issuer, clients = self.smart.issuer, self.smart.clients

            async def verify(token: str, base: str) -> dict[str, Any]:
                from fhirgoal.auth.tokens import InvalidToken

                claims = await issuer.verify(token, issuer=base, audience=base)
                client_id = claims.get("client_id")
                if not isinstance(client_id, str) or await clients.get(client_id) is None:
                    raise InvalidToken("the token's client is revoked")
                return claims

            self.authenticator = CachedAuthenticator(
                verify, compile_params, caseloads=self.caseloads
            )
        elif settings.auth == "external":
            from fhirgoal.auth.external import ExternalVerifier

            self.authenticator = CachedAuthenticator(
                ExternalVerifier(settings),
                compile_params,
                max_cache_seconds=settings.external_introspection_cache_seconds,
                caseloads=self.caseloads,
            )
        if settings.audit and settings.auth != "off":
            self.auditor = Auditor(service, settings.audit_flush_seconds, settings.audit_buffer)
            self.auditor.start()

    async def stop(self) -> None:
        if self.auditor is not None:
            await self.auditor.stop()


async def _smart_server(
    settings: Settings, service: FhirService, caseloads: Caseloads | None
) -> Any:
    from fhirgoal.auth import state
    from fhirgoal.auth.clients import ClientRegistry
    from fhirgoal.auth.grants import TokenService
    from fhirgoal.auth.keys import KeyRing
    from fhirgoal.auth.server import SmartServer
    from fhirgoal.auth.tokens import TokenIssuer
    from fhirgoal.auth.users import UserDirectory

    db = service.repo.db
    keys = KeyRing(db, settings.signing_alg)
    await keys.ensure()
    await state.ensure_indexes(db)
    issuer = TokenIssuer(keys, settings.access_token_seconds)
    clients = ClientRegistry(db)
    users = UserDirectory(db)
    return SmartServer(
        db=db,
        keys=keys,
        issuer=issuer,
        clients=clients,
        users=users,
        tokens=TokenService(db, issuer, clients, settings.refresh_token_seconds, users),
        service=service,
        base_url=settings.base_url,
        caseloads=caseloads,
    )
