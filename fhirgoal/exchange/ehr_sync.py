"""The EHR connections of one process: what outbound sync, inbound pulls and the CLI share.

Issue 15 (sync with EHRs). `EhrSync` keeps the connections in memory (the outbox source decides
from memory which writes concern which connection: exchange/ehr_outbound.py), reread on start and
every `subscription_refresh_seconds` (a connection added with `fhirgoal ehr add` reaches a running
server within that time), and per connection its Backend Services client
(exchange/backend_auth.py), its dialect (exchange/dialect.py) and its links
(exchange/links.py). exchange/ehr_install.py plugs it into the service and runs the pulls.

Echoes: what an inbound pull writes into fhirgoal must not be sent back to the EHR it came from.
The pull marks the writes it makes (`applying`, a context variable: it follows the write through
the service into the outbox source and into the hooks the write runs, and nowhere else), and the
source records nothing for that connection.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

import httpx
import structlog

from fhirgoal.auth.keys import encryption_key
from fhirgoal.config import Settings
from fhirgoal.exchange.backend_auth import BackendServicesClient
from fhirgoal.exchange.connections import ConnectionStore, EhrConnection
from fhirgoal.exchange.dialect import Dialect, load_dialect
from fhirgoal.exchange.links import LinkLocks, LinkStore
from fhirgoal.exchange.user_tokens import UserTokens
from fhirgoal.fhir.service import FhirService

log = structlog.get_logger(__name__)

EHR_SYNC = "ehr-sync"  # the outbox item kind
_applying: ContextVar[str | None] = ContextVar("ehr_sync_applying", default=None)


@contextlib.contextmanager
def applying(connection: str) -> Iterator[None]:
    """Writes made inside come from `connection` (none of them is sent back to it)."""
    token = _applying.set(connection)
    try:
        yield
    finally:
        _applying.reset(token)


def applying_from() -> str | None:
    return _applying.get()


class EhrSync:
    def __init__(self, service: FhirService, settings: Settings) -> None:
        self.service = service
        self.settings = settings
        self.base = settings.public_fhir_base()
        self.store = ConnectionStore(service.database)
        self.links = LinkStore(service.database)
        self.locks = LinkLocks()
        self._connections: dict[str, EhrConnection] = {}
        self._clients: dict[str, BackendServicesClient] = {}
        self._dialects: dict[str, Dialect] = {}
        self._http: httpx.AsyncClient | None = None
        self._kek: bytes | None = None
        # the users' tokens of items this process recorded (exchange/user_tokens.py)
        self.user_tokens = UserTokens(settings.ehr_user_token_margin_seconds)

    async def ensure_indexes(self) -> None:
        await self.links.ensure_indexes()

    # ---- the connections -------------------------------------------------------------------
    async def refresh(self) -> None:
        """Reread the connections (start-up, and `fhirgoal ehr add|remove` from elsewhere); a
        changed connection gets a new client and dialect."""
        found = {c.name: c for c in await self.store.list()}
        for name in list(self._connections):
            if found.get(name) != self._connections[name]:
                self._clients.pop(name, None)
                self._dialects.pop(name, None)
        self._connections = found

    @property
    def connections(self) -> list[EhrConnection]:
        return list(self._connections.values())

    def get(self, name: str) -> EhrConnection | None:
        return self._connections.get(name)

    @property
    def http(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(
                timeout=self.settings.outbox_timeout_seconds, follow_redirects=False
            )
        return self._http

    def client(self, connection: EhrConnection) -> BackendServicesClient:
        client = self._clients.get(connection.name)
        if client is None:
            if self._kek is None:
                self._kek = encryption_key(self.settings.key_encryption_key, self.settings.data_dir)
            key = connection.private_key(self._kek)
            client = BackendServicesClient(
                connection.base,
                connection.client_id,
                key,
                connection.scopes,
                self.http,
                token_url=connection.token_url,
            )
            self._clients[connection.name] = client
        return client

    def dialect(self, connection: EhrConnection) -> Dialect:
        """The connection's dialect (DialectError when its mapping cannot be loaded)."""
        dialect = self._dialects.get(connection.name)
        if dialect is None:
            dialect = self._dialects[connection.name] = load_dialect(connection.mapping)
        return dialect

    async def close(self) -> None:
        if self._http is not None:
            await self._http.aclose()
            self._http = None
        self._clients.clear()
