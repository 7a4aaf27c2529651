"""User-level writes to an EHR: what a clinician's request causes goes with the clinician's token.

Issue 15 ("can also take a user's token from the app's EHR launch for user-level writes"). When
fhirgoal trusts the EHR's authorization server (FHIRGOAL_AUTH=external), a clinician's app sends
fhirgoal a token the EHR issued. If the EHR's FHIR server accepts that token too, the outbox items
the request causes for that EHR connection are delivered with it, so the EHR records the write as
the clinician's (its Provenance and AuditEvent name them), not as fhirgoal's Backend Services
client. SMART App Launch 2.2 (https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html):
a token's `aud` names the resource servers that take it, its scopes are the user's; RFC 6750
section 2.1 for sending it, section 3.1 for the 401 (`invalid_token`) and 403
(`insufficient_scope`) that refuse it.

Rules:
- Which EHR: a token goes only to a connection whose EHR accepts it: its `aud` includes the
  connection's base, or the connection names the token's issuer (`user_token_issuer`, for an EHR
  that takes its issuer's tokens whatever their audience). Never to another connection, never in
  smart mode (fhirgoal's own tokens are not the EHR's to take), never a `system/` token.
- Which items: only those recorded by the request that carried it (core/delegation.py: the
  credential lives in a context variable for the duration of the request; rules that derive
  writes, fhir/hooks.py after-hooks, run without it). Deletions go as the system.
- Where it is kept: in this process's memory only, keyed by the outbox item (the item's key
  names its connection, resource version and content), never in the outbox, the database or a
  log (UserCredential leaves the token out of its repr). Not sealed with the key-encryption key
  to survive a restart: the tokens live minutes, deliveries take well under a second to a
  healthy EHR, and a restart or another replica delivering the item falls back to the backend
  token, which is correct, only less specific; keeping bearer secrets out of the database (and
  its backups) is worth more than attribution across a restart.
- How long: until the item is settled (delivered, void, dead) or the token is refused, and no
  longer than its expiry: at expiry the token itself is dropped and only who it belonged to is
  kept (for the audit), and that too after an hour. A transient failure (the EHR answers 500)
  keeps it for the retry while it is valid.
- Refused: a 401 or 403 with the user's token sends that request once more with the backend
  token, and the rest of the delivery too; the user's token is never tried again. The scopes are
  the user's: fhirgoal asks for no other token on the user's behalf and widens nothing.
- Visible: the delivery's AuditEvent (exchange/ehr_audit.py) names the user as the agent it was
  sent for, and says when the backend token was used instead and why; `fhirgoal sync status`
  counts both per connection.
"""

from __future__ import annotations

import dataclasses
import time
from collections import OrderedDict
from collections.abc import Sequence

import httpx

from fhirgoal.core.delegation import UserCredential
from fhirgoal.exchange.backend_auth import BackendServicesClient, with_query
from fhirgoal.exchange.connections import EhrConnection
from fhirgoal.exchange.ehr_audit import OnBehalf

# Items holding a user's token at once, at most (the oldest go first: they fall back to the
# backend token, which is correct, only less specific).
MAX_HELD = 10_000
# How long who held an expired token is remembered for the audit of its item.
FORGET_AFTER_SECONDS = 3600.0
# How often holding a token also drops the expired ones (the delivery worker's upkeep does too,
# but a process that runs none must not keep them either).
PURGE_EVERY_SECONDS = 5.0
# What refuses a bearer token (RFC 6750 section 3.1): the user's token is not tried again.
REFUSED = frozenset({401, 403})


def accepts(connection: EhrConnection, credential: UserCredential) -> bool:
    """Whether the connection's EHR takes the user's token (see the module)."""
    if not connection.user_tokens:
        return False
    if credential.names(connection.base):
        return True
    issuer = connection.user_token_issuer
    return issuer is not None and credential.issuer == issuer


class UserTokens:
    """The user tokens of the outbox items of this process, by item key."""

    def __init__(self, margin_seconds: float) -> None:
        self.margin = margin_seconds
        self._held: OrderedDict[str, tuple[str, UserCredential]] = OrderedDict()
        self._purged_at = time.monotonic()

    def __len__(self) -> int:
        return len(self._held)

    def hold(self, key: str, connection: str, credential: UserCredential) -> None:
        if time.monotonic() - self._purged_at >= PURGE_EVERY_SECONDS:
            self.purge()
        self._held[key] = (connection, credential)
        self._held.move_to_end(key)
        while len(self._held) > MAX_HELD:
            self._held.popitem(last=False)

    def get(self, key: str, connection: str) -> UserCredential | None:
        """The credential held for item `key` of `connection` (its token "" once expired)."""
        held = self._held.get(key)
        if held is None or held[0] != connection:
            return None
        return held[1]

    def drop(self, key: str) -> None:
        self._held.pop(key, None)

    def purge(self) -> None:
        """Drop the tokens that have expired (who they were for stays a while, for the audit)."""
        self._purged_at = time.monotonic()
        moment = time.time()
        for key, (connection, credential) in list(self._held.items()):
            if credential.expires + FORGET_AFTER_SECONDS < moment:
                del self._held[key]
            elif credential.token and credential.expires <= moment:
                self._held[key] = (connection, dataclasses.replace(credential, token=""))


class UserTokenClient:
    """Requests with the user's token (BackendServicesClient's `request`, for one delivery):
    the backend token instead when the user's has expired, and from the first 401/403 on."""

    def __init__(
        self, credential: UserCredential, backend: BackendServicesClient, margin_seconds: float
    ) -> None:
        self.credential = credential
        self.backend = backend
        self.margin = margin_seconds
        self.used = False  # a request the EHR took carried the user's token
        self.fell_back: str | None = None  # why the backend token was used

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        params: Sequence[tuple[str, str]] | None = None,
    ) -> httpx.Response:
        if self.fell_back is None:
            if not self.credential.token or not self.credential.valid(self.margin):
                self.fell_back = "the user's token had expired before delivery"
            else:
                response = await self.backend.http.request(
                    method,
                    with_query(url, params),
                    headers={
                        **(headers or {}),
                        "Authorization": f"Bearer {self.credential.token}",
                    },
                    content=content,
                )
                if response.status_code not in REFUSED:
                    self.used = True
                    return response
                self.fell_back = f"the EHR refused the user's token (HTTP {response.status_code})"
        return await self.backend.request(
            method, url, headers=headers, content=content, params=params
        )

    def on_behalf(self) -> OnBehalf:
        credential = self.credential
        return OnBehalf(
            credential.subject,
            credential.fhir_user,
            credential.issuer,
            as_user=self.used and self.fell_back is None,
            why=self.fell_back,
        )
