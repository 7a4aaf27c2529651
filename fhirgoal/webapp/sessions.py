"""Browser sessions of the web app: tokens stay on the server, the browser holds a random id.

A backend-for-frontend keeps every token out of the browser (SMART App Launch 2.2, "best
practices": tokens in server-side storage; OWASP Session Management Cheat Sheet): the cookie
`fhirgoal_app` carries 32 random bytes, HttpOnly, SameSite (Lax over http; None with Secure over
https, so that the app works inside an EHR's iframe on another site), and the store is keyed by
the id's SHA-256 so that what the server holds cannot be replayed as a cookie.

One browser session holds several *launches* (one per patient the clinician opened: each EHR
launch or standalone sign-in is its own context with its own tokens, named by a random key in the
URL), so two tabs on two patients never mix. Pending authorization requests are kept by `state`
for ten minutes and used once (RFC 6749 section 10.12: `state` ties the callback to the browser
that started the launch).

The store is in memory and bounded (least recently used sessions go first). It is per process: a
deployment with several replicas routes a browser to the same replica (sticky sessions) or signs
in again; README says so.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field

from fhirgoal.webapp.smart_client import SmartEndpoints, TokenSet

COOKIE = "fhirgoal_app"
PENDING_SECONDS = 600
MAX_SESSIONS = 10_000
MAX_PENDING = 20  # per browser session
MAX_LAUNCHES = 20  # patients open at once per browser session


@dataclass
class PendingLaunch:
    state: str
    endpoints: SmartEndpoints
    verifier: str
    redirect_uri: str
    # "ehr" | "standalone" | "patient" (a client's own sign-in) | "handback" (the clinician
    # signing in again)
    kind: str
    created: float = field(default_factory=time.time)
    handback_of: str | None = None  # the launch key a "handback" sign-in returns to


@dataclass
class Launch:
    """One signed-in patient context: its FHIR server, tokens and what the server offers."""

    key: str
    endpoints: SmartEndpoints
    tokens: TokenSet
    kind: str  # "ehr" | "standalone" | "patient": a patient user's own record (self-report only)
    operations: frozenset[str] = frozenset()  # operation names the CapabilityStatement lists
    # the EHR's look from smart_style_url, as sanitised CSS custom properties (styling.py)
    style: dict[str, str] = field(default_factory=dict)
    # instruments the client completed on this device in client mode (key -> when), so that the
    # session screen does not ask for them again
    self_reported: dict[str, str] = field(default_factory=dict)
    # one refresh at a time: a page's parallel requests must not present the same refresh token
    # twice (the server takes a reused refresh token as stolen and revokes the grant)
    refreshing: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def iss(self) -> str:
        return self.endpoints.iss

    @property
    def patient(self) -> str | None:
        return self.tokens.patient


@dataclass(frozen=True)
class Handover:
    """The device is in the client's hands for one instrument of one launch (selfreport.py)."""

    key: str  # the launch
    instrument: str  # "ors" | "srs"
    done: bool = False


@dataclass
class BrowserSession:
    csrf: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    # while set, every clinician screen of this browser answers with the hand-back page
    handover: Handover | None = None
    pending: OrderedDict[str, PendingLaunch] = field(default_factory=OrderedDict)
    launches: OrderedDict[str, Launch] = field(default_factory=OrderedDict)
    used: float = field(default_factory=time.time)

    def add_pending(self, pending: PendingLaunch) -> None:
        self.pending[pending.state] = pending
        while len(self.pending) > MAX_PENDING:
            self.pending.popitem(last=False)

    def take_pending(self, state: str) -> PendingLaunch | None:
        pending = self.pending.pop(state, None)
        if pending is None or time.time() - pending.created > PENDING_SECONDS:
            return None
        return pending

    def add_launch(self, launch: Launch) -> None:
        self.launches[launch.key] = launch
        while len(self.launches) > MAX_LAUNCHES:
            self.launches.popitem(last=False)


def _key(cookie: str) -> str:
    return hashlib.sha256(cookie.encode()).hexdigest()


class SessionStore:
    def __init__(self, idle_seconds: float) -> None:
        self.idle_seconds = idle_seconds
        self._sessions: OrderedDict[str, BrowserSession] = OrderedDict()

    def get(self, cookie: str | None) -> BrowserSession | None:
        if not cookie:
            return None
        key = _key(cookie)
        session = self._sessions.get(key)
        if session is None:
            return None
        if time.time() - session.used > self.idle_seconds:
            del self._sessions[key]
            return None
        session.used = time.time()
        self._sessions.move_to_end(key)
        return session

    def create(self) -> tuple[str, BrowserSession]:
        """A new session and the cookie value that names it."""
        cookie = secrets.token_urlsafe(32)
        session = BrowserSession()
        self._sessions[_key(cookie)] = session
        while len(self._sessions) > MAX_SESSIONS:
            self._sessions.popitem(last=False)
        return cookie, session

    def rotate(self, cookie: str) -> str | None:
        """A new id for the session `cookie` names, the old one forgotten (OWASP: renew the
        session id when the user signs in, so an id planted before sign-in is worth nothing)."""
        session = self._sessions.pop(_key(cookie), None)
        if session is None:
            return None
        fresh = secrets.token_urlsafe(32)
        self._sessions[_key(fresh)] = session
        return fresh

    def end(self, cookie: str | None) -> None:
        if cookie:
            self._sessions.pop(_key(cookie), None)
