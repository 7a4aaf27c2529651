"""The FHIR API's front door when authorization is on: bearer token -> AccessContext, and audit.

RFC 6750 section 2.1 (https://www.rfc-editor.org/rfc/rfc6750#section-2.1): the token comes in the
`Authorization: Bearer` header; a missing or rejected one gets 401 with a `WWW-Authenticate`
challenge, and is audited as a security event (a forged one as a security alert), rate limited
per source address (auth/audit.py SecurityTrail). The `aud` a token must name is the configured
FHIR base (Settings.public_fhir_base), never the request's Host header. The context goes into the request state, where `fhir.rest.access` hands it to the
service and the repository.

Audit (https://hl7.org/fhir/R4/auditevent.html, https://hl7.org/fhir/R4/provenance.html): the
response's start is held back until the audit of a write (and its Provenance) is stored, so that a
client never sees a write acknowledged whose audit record could still be lost; reads are audited
through the Auditor's buffer. Pure ASGI, so there is no per-request task or body copy.
"""

from __future__ import annotations

from typing import Any

import structlog
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhirgoal.auth.audit import Auditor
from fhirgoal.auth.audit_events import (
    Interaction,
    SecurityEvent,
    classify,
    stored_before_response,
)
from fhirgoal.auth.bearer import CachedAuthenticator, bearer_token, unauthorized
from fhirgoal.auth.external import user_credential
from fhirgoal.auth.runtime import AuthRuntime
from fhirgoal.auth.tokens import InvalidToken
from fhirgoal.core.access import SERVER_WRITTEN, AccessContext
from fhirgoal.core.delegation import acting_for
from fhirgoal.core.errors import FhirError
from fhirgoal.guard import error_response

log = structlog.get_logger(__name__)

# Reachable without a token: discovery and the CapabilityStatement (SMART App Launch 2.2,
# https://hl7.org/fhir/smart-app-launch/conformance.html).
PUBLIC = frozenset({"/fhir/metadata", "/fhir/.well-known/smart-configuration"})


async def _send_error(error: FhirError, scope: Scope, receive: Receive, send: Send) -> None:
    await error_response(error)(scope, receive, send)


class BearerAuth:
    def __init__(self, app: ASGIApp, runtime: AuthRuntime) -> None:
        self.app = app
        self.runtime = runtime  # filled in by the lifespan, once the database is connected
        # the `aud` every token must name: configured, never a request's Host (fhir/rest.py)
        self.fhir_base = runtime.settings.public_fhir_base()
        # external mode: a user's token may be what EHR sync writes with (issue 15)
        settings = runtime.settings
        self.delegates = settings.auth == "external" and settings.ehr_user_tokens

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not path.startswith("/fhir") or path in PUBLIC:
            await self.app(scope, receive, send)
            return
        try:
            try:
                token = bearer_token(scope["headers"])
            except FhirError:
                self._record(scope, "bearer-invalid", "4", "not a Bearer Authorization header")
                raise
            if token is None:
                self._record(scope, "bearer-missing", "4", "no access token")
                raise unauthorized(None, "this server needs a Bearer access token")
            authenticator = self.runtime.authenticator
            if authenticator is None:
                raise FhirError("unavailable", "the server is starting")
            try:
                context = await authenticator.authenticate(token, self.fhir_base)
            except InvalidToken as exc:
                if exc.forged:
                    self._record(scope, "bearer-forged", "8", str(exc))
                else:
                    self._record(scope, "bearer-invalid", "4", str(exc))
                raise unauthorized("invalid_token", str(exc)) from None
        except FhirError as error:
            await _send_error(error, scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        state["access"] = context
        auditor = self.runtime.auditor
        # a request that may change data is answered once its audit is stored; others are noted
        # in the buffer as their response starts
        interaction = None
        if stored_before_response(scope["method"], path):
            interaction = classify(scope["method"], path, scope.get("query_string", b""))
            if interaction.writes and interaction.resource_type in SERVER_WRITTEN:
                # refused before any handler runs: a conditional create that would match an
                # existing event, or a delete that would find none, is still a write attempt
                await self._refuse_write(auditor, scope, interaction, receive, send)
                return
        # a user's token from the EHR's authorization server: what EHR sync may write with,
        # for the writes of this request (core/delegation.py, exchange/user_tokens.py); a
        # request that cannot write needs none
        credential = None
        if (
            self.delegates
            and interaction is not None
            and isinstance(authenticator, CachedAuthenticator)
        ):
            credential = user_credential(token, authenticator.claims_of(token, self.fhir_base))
        with acting_for(credential):
            await self._serve(scope, receive, send, context, state, interaction, auditor)

    async def _serve(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        context: AccessContext,
        state: dict[str, Any],
        interaction: Interaction | None,
        auditor: Auditor | None,
    ) -> None:
        if auditor is None:
            await self.app(scope, receive, send)
            return
        responded = dropped = False

        async def send_audited(message: Message) -> None:
            nonlocal responded, dropped
            if responded or message["type"] != "http.response.start":
                if not dropped:
                    await send(message)
                return
            responded = True
            if interaction is None:
                if auditor.full:
                    await auditor.flush()
                auditor.note(context, scope, state, message["status"])
            elif not await self._audit_write(auditor, scope, interaction, message, receive, send):
                dropped = True
                return
            await send(message)

        try:
            await self.app(scope, receive, send_audited)
        except Exception:
            if not responded:  # the app's own 500 handler did not answer: still leave a trace
                auditor.note(context, scope, state, 500)
            raise

    async def _refuse_write(
        self,
        auditor: Auditor | None,
        scope: Scope,
        interaction: Interaction,
        receive: Receive,
        send: Send,
    ) -> None:
        error = FhirError(
            "method-not-allowed",
            f"{interaction.resource_type} is written by the server only: "
            "it cannot be created or changed",
        )
        if auditor is not None:
            state = scope["state"]
            try:
                await auditor.store_write(state["access"], interaction, 405, scope, state, {})
            except Exception:
                log.exception("audit of a refused write could not be stored")
        await _send_error(error, scope, receive, send)

    def _record(self, scope: Scope, kind: str, outcome: str, description: str) -> None:
        """Audit an authentication failure (rate limited per address: auth/audit.py)."""
        client = scope.get("client")
        self.runtime.record(
            SecurityEvent(
                kind,
                outcome,
                f"{scope['method']} {scope['path']}: {description}"[:300],
                address=str(client[0]) if client else None,
            )
        )

    async def _audit_write(
        self,
        auditor: Auditor,
        scope: Scope,
        interaction: Interaction,
        start: Message,
        receive: Receive,
        send: Send,
    ) -> bool:
        """Store the write's audit records; False when they could not be, and a 503 was sent
        in place of the response, whose start is then dropped with the rest of it."""
        state = scope["state"]
        context = state["access"]
        status = int(start["status"])
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in start["headers"]}
        try:
            await auditor.store_write(context, interaction, status, scope, state, headers)
        except Exception:
            log.exception("audit of a write could not be stored", path=scope.get("path"))
            error = FhirError(
                "unavailable",
                "the change may have been applied but its audit record could not be stored; "
                "check the resource before retrying",
            )
            await _send_error(error, scope, receive, send)
            return False
        return True
