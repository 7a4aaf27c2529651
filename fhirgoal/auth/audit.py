"""The audit trail: an AuditEvent for every FHIR API request, a Provenance for every write.

https://hl7.org/fhir/R4/auditevent.html (type `rest`, subtype from restful-interaction, action
C/R/U/D/E, outcome 0/4/8, agent with network address, entity `what` and the patient) and
https://hl7.org/fhir/R4/provenance.html (target, recorded, activity, agent), after IHE BALP's
shape for RESTful events (https://profiles.ihe.net/ITI/BALP/).

Durability: a write's AuditEvent and Provenance are stored before the write is acknowledged (the
middleware holds the response until `store_write` returns). Reads go through a bounded in-memory
buffer, stored as soon as `SEGMENT` events wait and the rest every `flush_interval` seconds
(default 1 s): if the process dies, the read events of at most that last interval are lost. When
the buffer is full, requests wait for a flush rather than drop events.

AuditEvents are stored through the append log (store/append_log.py): a flush is one database
write whatever its size, and the events get their search index later, off the request path; every
reader of AuditEvent catches the log up first, so a search always sees every stored event.
Provenance is stored as an ordinary resource at once (clinical views read it).

AuditEvents are append-only through the API (auth/context.py APPEND_ONLY) and are reached only by
a scope that names them (auth/scopes.py NOT_IN_WILDCARD).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import itertools
import secrets
from collections.abc import MutableMapping
from typing import Any, NamedTuple

import structlog

from fhirgoal.auth.context import UNRESTRICTED, AccessContext
from fhirgoal.fhir.instants import instant_text, now, now_text
from fhirgoal.fhir.jsonio import dumps
from fhirgoal.fhir.service import FhirService
from fhirgoal.store.append_log import SEGMENT_MAX

log = structlog.get_logger(__name__)

EVENT_TYPE = {
    "system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
    "code": "rest",
    "display": "RESTful Operation",
}
INTERACTION_SYSTEM = "http://hl7.org/fhir/restful-interaction"
CLIENT_SYSTEM = "urn:fhirgoal:oauth-client"
_ACTIVITY = {"C": "CREATE", "U": "UPDATE", "D": "DELETE"}
_NOT_TRACED = frozenset({"AuditEvent", "Provenance"})  # no Provenance of the audit trail itself
SEGMENT = 500  # buffered read events that are stored at once rather than at the next interval


class Interaction(NamedTuple):
    """What a request does, as its AuditEvent says it. A tuple: one is built per request, and
    a frozen dataclass costs a `setattr` call per field."""

    action: str  # C R U D E (E: a search, per the AuditEvent action value set)
    subtype: str  # restful-interaction code
    resource_type: str | None = None
    resource_id: str | None = None
    compartment: str | None = None  # "Patient/123" of a compartment search
    query: bytes = b""

    @property
    def writes(self) -> bool:
        return self.action in "CUD"


def classify(method: str, path: str, query: bytes) -> Interaction:
    """What a FHIR REST request does, from its method and path (https://hl7.org/fhir/R4/http.html)."""
    parts = [p for p in path[len("/fhir") :].split("/") if p]
    n = len(parts)
    rt = parts[0] if n and not parts[0].startswith("_") else None
    rid = parts[1] if n >= 2 and not parts[1].startswith("_") else None
    if method == "GET":
        if n == 0:
            return Interaction("E", "search-system", query=query)
        if parts[0] == "_history":
            return Interaction("R", "history-system", query=query)
        if n == 1:
            return Interaction("E", "search-type", rt, query=query)
        if n == 2 and parts[1] == "_history":
            return Interaction("R", "history-type", rt, query=query)
        if n == 2:
            return Interaction("R", "read", rt, rid)
        if n == 3 and parts[2] == "_history":
            return Interaction("R", "history-instance", rt, rid, query=query)
        if n == 4 and parts[2] == "_history":
            return Interaction("R", "vread", rt, rid)
        if n == 3:
            compartment = f"{parts[0]}/{parts[1]}"
            return Interaction("E", "search-type", parts[2], None, compartment, query)
    if method == "POST":
        if n == 2 and parts[1] == "_search":
            return Interaction("E", "search-type", rt, query=query)
        return Interaction("C", "create", rt)
    if method == "PUT":
        return Interaction("U", "update", rt, rid, query=query)
    if method == "PATCH":
        return Interaction("U", "patch", rt, rid)
    if method == "DELETE":
        return Interaction("D", "delete", rt, rid, query=query)
    return Interaction("E", "operation", rt, rid, query=query)


def _who(context: AccessContext) -> dict[str, Any]:
    if context.fhir_user:
        return {"reference": context.fhir_user}
    client = context.client_id or context.subject
    return {"identifier": {"system": CLIENT_SYSTEM, "value": client}, "display": client}


def _written(headers: dict[str, str], interaction: Interaction) -> str | None:
    """`Type/id/_history/vid` of the version a successful write produced."""
    location = headers.get("location") or headers.get("content-location")
    if location and "/_history/" in location:
        parts = location.rstrip("/").split("/")
        return "/".join(parts[-4:])
    etag = headers.get("etag", "")
    version = etag.removeprefix("W/").strip('"')
    if interaction.resource_type and interaction.resource_id and version.isdigit():
        return f"{interaction.resource_type}/{interaction.resource_id}/_history/{version}"
    return None


# Event ids: a random 64-bit prefix per process and a counter, unique like a UUID4 across processes
# and restarts at a tenth of the cost of uuid4() (a system call and an object per event). An id is
# fixed when the event is built, so that resending a batch cannot store it twice.
_ID_PREFIX = secrets.token_hex(8)
_ID_SEQUENCE = itertools.count(1)

# An event is written straight to the JSON its append-log segment holds (store/append_log.py): the
# parts that repeat (event type and subtype, the outcome of a status, the agents of a token calling
# from one address) are serialized once and joined with the few that change (id, time, entities).
# Every part goes through jsonio.dumps, so whatever a request path holds is escaped as JSON.
_SOURCE = {
    "observer": {"display": "fhirgoal"},
    "type": [{"system": "http://terminology.hl7.org/CodeSystem/security-source-type", "code": "4"}],
}
_PATIENT_ROLE = {
    "system": "http://terminology.hl7.org/CodeSystem/object-role",
    "code": "1",
    "display": "Patient",
}
_QUERY_TYPE = {"system": "http://terminology.hl7.org/CodeSystem/audit-entity-type", "code": "2"}
_AGENTS_KEPT = 4096  # (token, address) pairs whose agents are kept serialized


@functools.cache
def _head(subtype: str, action: str) -> bytes:
    """`{"resourceType":"AuditEvent",...,"source":{...}` without its closing brace."""
    return dumps(
        {
            "resourceType": "AuditEvent",
            "type": EVENT_TYPE,
            "subtype": [{"system": INTERACTION_SYSTEM, "code": subtype}],
            "action": action,
            "source": _SOURCE,
        }
    )[:-1]


@functools.cache
def _outcome(status: int) -> bytes:
    """`,"outcome":..,"outcomeDesc":..` for an HTTP status: 0 success, 4 minor, 8 serious failure."""
    outcome = "0" if status < 400 else "4" if status < 500 else "8"
    return b"," + dumps({"outcome": outcome, "outcomeDesc": f"HTTP {status}"})[1:-1]


def _agents(context: AccessContext, address: str | None) -> list[dict[str, Any]]:
    """The requestor (the user, else the client) with its network address; and the client app
    when a user is acting through it."""
    requestor: dict[str, Any] = {"who": _who(context), "requestor": True}
    if address:
        requestor["network"] = {"address": address, "type": "2"}
    agents = [requestor]
    if context.fhir_user and context.client_id:
        client = {"system": CLIENT_SYSTEM, "value": context.client_id}
        agents.append(
            {"who": {"identifier": client, "display": context.client_id}, "requestor": False}
        )
    return agents


class Auditor:
    def __init__(
        self, service: FhirService, flush_interval: float = 1.0, max_buffer: int = 10_000
    ) -> None:
        self.service = service
        self.flush_interval = flush_interval
        self.max_buffer = max_buffer
        self._pending: list[bytes] = []  # serialized events, each with its id
        # the serialized agents of a token calling from an address (contexts are cached per token)
        self._agents: dict[tuple[AccessContext, str | None], bytes] = {}
        self._task: asyncio.Task[None] | None = None
        self._trickle: asyncio.Task[None] | None = None
        self._flushing: asyncio.Lock | None = None

    # ---- building -----------------------------------------------------------------------------
    def event(
        self,
        context: AccessContext,
        interaction: Interaction,
        status: int,
        scope: MutableMapping[str, Any],
        state: dict[str, Any],
        headers: dict[str, str] | None = None,
    ) -> bytes:
        """The request's AuditEvent, its id included, as the JSON its log segment holds."""
        client = scope.get("client")
        address = str(client[0]) if client else None
        agents = self._agents.get((context, address))
        if agents is None:
            if len(self._agents) >= _AGENTS_KEPT:
                self._agents.clear()
            agents = self._agents[(context, address)] = dumps(_agents(context, address))
        entities: list[dict[str, Any]] = []
        what = None
        if headers and interaction.writes and status < 300:
            what = _written(headers, interaction)
        if what is None and interaction.resource_type and interaction.resource_id:
            what = f"{interaction.resource_type}/{interaction.resource_id}"
        if what:
            entities.append({"what": {"reference": what}})
        if interaction.query:
            entities.append(
                {"type": _QUERY_TYPE, "query": base64.b64encode(interaction.query).decode()}
            )
        for patient in self._patients(context, interaction, state):
            entities.append({"what": {"reference": patient}, "role": _PATIENT_ROLE})
        return b"".join(
            (
                _head(interaction.subtype, interaction.action),
                f',"id":"{_ID_PREFIX}-{next(_ID_SEQUENCE):x}","recorded":"{now_text()}"'.encode(),
                _outcome(status),
                b',"agent":',
                agents,
                b',"entity":' + dumps(entities) if entities else b"",
                b"}",
            )
        )

    @staticmethod
    def _patients(
        context: AccessContext, interaction: Interaction, state: dict[str, Any]
    ) -> list[str]:
        found: set[str] = set()
        if context.patient:
            found.add(f"Patient/{context.patient}")
        if interaction.compartment and interaction.compartment.startswith("Patient/"):
            found.add(interaction.compartment)
        if interaction.resource_type == "Patient" and interaction.resource_id:
            found.add(f"Patient/{interaction.resource_id}")
        found.update(state.get("patients", ()))
        return sorted(found)

    def provenance(
        self, context: AccessContext, interaction: Interaction, target: str
    ) -> dict[str, Any]:
        return {
            "resourceType": "Provenance",
            "target": [{"reference": target}],
            "recorded": instant_text(now()),
            "activity": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/v3-DataOperation",
                        "code": _ACTIVITY[interaction.action],
                    }
                ]
            },
            "agent": [
                {
                    "type": {
                        "coding": [
                            {
                                "system": "http://terminology.hl7.org/CodeSystem/provenance-participant-type",
                                "code": "author",
                            }
                        ]
                    },
                    "who": _who(context),
                }
            ],
        }

    # ---- storing ------------------------------------------------------------------------------
    async def _store(self, resource: dict[str, Any]) -> None:
        version, index = self.service.first_version(resource, now())
        await self.service.repo.insert(UNRESTRICTED, version, index)

    async def store_write(
        self,
        event: bytes,
        context: AccessContext,
        interaction: Interaction,
        status: int,
        headers: dict[str, str],
    ) -> None:
        """Store a write's AuditEvent (and Provenance when it succeeded) before it is answered."""
        stores = [self.service.audit_log.append([event])]
        target = _written(headers, interaction) if status < 300 else None
        if target and interaction.resource_type not in _NOT_TRACED:
            stores.append(self._store(self.provenance(context, interaction, target)))
        await asyncio.gather(*stores)

    @property
    def full(self) -> bool:
        """Whether a request should wait for a flush before its event is buffered: the buffer
        is bounded, and under a database slower than the load, requests slow down rather than
        events being dropped."""
        return len(self._pending) >= self.max_buffer

    def buffer(self, event: bytes) -> None:
        """Keep a read's event (`event()`) until the next flush; a full segment is flushed at
        once rather than at the next tick, so the buffer stays small and the database sees a
        steady trickle of writes instead of one large one a second."""
        if len(self._pending) >= 2 * self.max_buffer:  # only when the database keeps failing
            log.error("audit buffer overflow: event dropped", size=len(self._pending))
            return
        self._pending.append(event)
        self.service.audit_log.announce()
        if len(self._pending) >= SEGMENT and self._trickle is None:
            self._trickle = asyncio.get_running_loop().create_task(self._flush_quietly())

    async def _flush_quietly(self) -> None:
        try:
            await self.flush()
        except Exception:
            log.exception("audit flush failed; retrying at the next interval")
        finally:
            self._trickle = None

    async def flush(self) -> None:
        """Store every buffered event, one call at a time."""
        if self._flushing is None:
            self._flushing = asyncio.Lock()
        async with self._flushing:
            while self._pending:
                batch, self._pending = self._pending[:SEGMENT_MAX], self._pending[SEGMENT_MAX:]
                try:
                    await self.service.audit_log.append(batch, announced=True)
                except Exception:
                    # kept for the next flush rather than lost; if the database stored them after
                    # all, their fixed ids keep the resent copies from being indexed twice
                    self._pending[:0] = batch
                    raise

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.flush_interval)
            try:
                await self.flush()
            except Exception:
                log.exception("audit flush failed; retrying")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        for task in (self._task, self._trickle):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.flush()
