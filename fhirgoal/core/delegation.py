"""The user a request acts for, with the bearer token they sent: what EHR sync may write as.

Issue 15: when a clinician's request to fhirgoal (FHIRGOAL_AUTH=external) carries a token issued
by the EHR's authorization server that the EHR's FHIR server also accepts, the outbound items that
request causes go to the EHR with that token, so that the EHR attributes the write to the
clinician (exchange/user_tokens.py). The bearer middleware (auth/middleware.py) puts the request's
credential in a context variable for the duration of the request; the outbox source
(exchange/ehr_outbound.py) reads it while it plans the items of a write; the rules a write
runs afterwards (fhir/hooks.py after-hooks: the goal status rule, a T-score, an extraction) run
as `server_work()`, so what they derive goes as the system, never as the user.

A ground-floor value so that fhir/ can mark its derived writes without importing auth/ or
exchange/. The token is a secret: it is left out of `repr` (so no log line shows it), and is
never written anywhere by anything here.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field


@dataclass(frozen=True)
class UserCredential:
    """A user's verified access token and what its claims say about where it may be used."""

    token: str = field(repr=False)
    issuer: str | None  # `iss`
    audiences: frozenset[str]  # `aud`, each without a trailing slash
    expires: float  # `exp`, epoch seconds
    subject: str  # `sub`
    fhir_user: str | None  # `fhirUser`, as the issuer wrote it (often an absolute URL)

    def valid(self, margin: float = 0.0) -> bool:
        """Not expired, with `margin` seconds to spare."""
        return time.time() + margin < self.expires

    def names(self, base: str) -> bool:
        """Whether the token's audience includes the FHIR base `base`."""
        return base.rstrip("/") in self.audiences


_acting_for: ContextVar[UserCredential | None] = ContextVar("acting_for", default=None)


@contextlib.contextmanager
def acting_for(credential: UserCredential | None) -> Iterator[None]:
    """Writes made inside are the request of the user `credential` belongs to."""
    token = _acting_for.set(credential)
    try:
        yield
    finally:
        _acting_for.reset(token)


def server_work() -> contextlib.AbstractContextManager[None]:
    """Writes made inside are the server's own (derived by a rule), whoever's request caused
    them."""
    return acting_for(None)


def user_credential() -> UserCredential | None:
    """The credential of the user the current write is made for, if any."""
    return _acting_for.get()
