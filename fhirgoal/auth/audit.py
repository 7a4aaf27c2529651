"""The audit trail: an AuditEvent for every FHIR API request, a Provenance for every write.

What the records say is auth/audit_events.py (https://hl7.org/fhir/R4/auditevent.html,
https://hl7.org/fhir/R4/provenance.html); this module decides when they are built and stored.

Durability: a write's AuditEvent and Provenance are stored before the write is acknowledged (the
middleware holds the response until `store_write` returns). Reads go through a bounded in-memory
buffer, stored as soon as `SEGMENT` events wait and the rest every `flush_interval` seconds
(default 1 s): if the process dies, the read events of at most that last interval are lost. When
the buffer is full, requests wait for a flush rather than drop events.

Buffered events wait as the JSON their segment will hold (built by auth/audit_events.py), with
their ids fixed: one bytes object each, which the garbage collector never walks, and a batch
resent after a failed flush is the same batch.

AuditEvents are stored through the append log (store/append_log.py): a flush is one database
write whatever its size, and the events get their search index later, off the request path; every
reader of AuditEvent catches the log up first, so a search always sees every stored event.
Provenance is stored as an ordinary resource at once (clinical views read it).

AuditEvents are written by the server only (core/access.py SERVER_WRITTEN) and are reached only by
a scope that names them, granted only to a client registered with a scope that names them too
(auth/scopes.py NOT_IN_WILDCARD).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, MutableMapping
from typing import Any

import structlog

from fhirgoal.auth.audit_events import (
    EventWriter,
    Interaction,
    SecurityEvent,
    classify,
    of_bundle,
    provenance,
    security_event,
    written,
)
from fhirgoal.core.access import UNRESTRICTED, AccessContext
from fhirgoal.core.jsonio import dumps
from fhirgoal.core.tasks import stop_task
from fhirgoal.fhir.hooks import EntryRecord
from fhirgoal.fhir.instants import clock_text, now
from fhirgoal.fhir.service import FhirService
from fhirgoal.store.append_log import SEGMENT_MAX

log = structlog.get_logger(__name__)

_NOT_TRACED = frozenset({"AuditEvent", "Provenance"})  # no Provenance of the audit trail itself
SEGMENT = 500  # buffered read events that are stored at once rather than at the next interval


def _address(scope: MutableMapping[str, Any]) -> str | None:
    client = scope.get("client")
    return str(client[0]) if client else None


class Auditor:
    def __init__(
        self, service: FhirService, flush_interval: float = 1.0, max_buffer: int = 10_000
    ) -> None:
        self.service = service
        self.flush_interval = flush_interval
        self.max_buffer = max_buffer
        self.events = EventWriter()
        self._pending: list[bytes] = []  # serialized events, each with its id
        self._task: asyncio.Task[None] | None = None
        self._trickle: asyncio.Task[None] | None = None
        self._flushing: asyncio.Lock | None = None
        self.security: SecurityTrail | None = None

    # ---- writes: stored before the response -----------------------------------------------------
    async def store_write(
        self,
        context: AccessContext,
        interaction: Interaction,
        status: int,
        scope: MutableMapping[str, Any],
        state: dict[str, Any],
        headers: dict[str, str],
    ) -> None:
        """Store the AuditEvent of a request that may change data (and the Provenance of the
        version it wrote, if any) before it is answered."""
        interaction = of_bundle(interaction, state.get("bundle_type"))
        target = written(headers, interaction) if interaction.writes and status < 300 else None
        recorded = clock_text(time.time_ns())
        patients = state.get("patients")
        event = self.events.event(
            context, _address(scope), interaction, status, recorded, patients, target
        )
        stores = [self.service.audit_log.append([event])]
        if target and interaction.resource_type not in _NOT_TRACED:
            stores.append(self._store(provenance(context, interaction, target, recorded)))
        await asyncio.gather(*stores)

    async def _store(self, resource: dict[str, Any]) -> None:
        version, index = self.service.first_version(resource, now())
        await self.service.store_first_version(UNRESTRICTED, version, index)

    async def store_entries(
        self, context: AccessContext, address: str | None, records: list[EntryRecord]
    ) -> None:
        """The AuditEvents of a batch or transaction's entries, each the interaction it names,
        and the Provenance of each version they wrote (fhir/hooks.py EntryAudit). In a
        transaction this runs inside its unit of work: the records commit with the entries. The
        events go as one segment of the log and the Provenances in one insert."""
        recorded = clock_text(time.time_ns())
        moment = now()
        events: list[bytes] = []
        provenances = []
        for record in records:
            interaction = classify(record.method, record.path, record.query)
            version = record.version
            target = None
            if interaction.writes and record.status < 300 and version is not None:
                target = f"{version.resource_type}/{version.id}/_history/{version.version}"
            patients = version.comp if version is not None else None
            events.append(
                self.events.event(
                    context, address, interaction, record.status, recorded, patients, target
                )
            )
            if target and interaction.resource_type not in _NOT_TRACED:
                trace = provenance(context, interaction, target, recorded)
                provenances.append(self.service.first_version(trace, moment))
        await self.service.audit_log.append(events)
        if provenances:
            await self.service.store_first_versions(provenances)

    # ---- reads: buffered ------------------------------------------------------------------------
    @property
    def full(self) -> bool:
        """Whether a request should wait for a flush before it is noted: the buffer is bounded,
        and under a database slower than the load, requests slow down rather than events being
        dropped."""
        return len(self._pending) >= self.max_buffer

    def note(
        self,
        context: AccessContext,
        scope: MutableMapping[str, Any],
        state: dict[str, Any],
        status: int,
    ) -> None:
        """Buffer a request's AuditEvent until the next flush."""
        interaction = classify(scope["method"], scope["path"], scope.get("query_string", b""))
        recorded = clock_text(time.time_ns())
        patients = state.get("patients")
        self.buffer(
            self.events.event(context, _address(scope), interaction, status, recorded, patients)
        )

    def buffer(self, event: bytes) -> None:
        """Keep a serialized event until the next flush; a full segment is flushed at once rather
        than at the next tick, so the buffer stays small and the database sees a steady trickle
        of writes instead of one large one a second."""
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
        """Store every buffered event, one database call per SEGMENT_MAX."""
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
            if self.security is not None:
                self.security.summarize()
            try:
                await self.flush()
            except Exception:
                log.exception("audit flush failed; retrying")

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        for task in (self._task, self._trickle):
            await stop_task(task)
        await self.flush()


class _Bucket:
    """A token bucket: `burst` events at once, then `rate` a second; counts what it refused."""

    __slots__ = ("at", "suppressed", "tokens")

    def __init__(self, burst: float, at: float) -> None:
        self.tokens = burst
        self.at = at
        self.suppressed = 0

    def take(self, burst: float, rate: float, at: float) -> bool:
        self.tokens = min(burst, self.tokens + (at - self.at) * rate)
        self.at = at
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class SecurityTrail:
    """Security events (auth/audit_events.py SECURITY_KINDS) into the Auditor's buffer, rate
    limited so that a flood of forged tokens or failed logins cannot fill the disk.

    Each (kind, source address) has a token bucket (`burst` events, then `per_minute`), and each
    kind a bucket for all addresses together (`KIND_FACTOR` times larger), so neither one address
    nor many can store more than the kind's bucket allows: at most `KIND_FACTOR * per_minute`
    events a minute per kind. An event refused by a bucket is counted for its (kind, address);
    the next one recorded for it says how many were held back, and the Auditor's timer records a
    summary (kind `suppressed`) for a (kind, address) that has gone quiet with a count pending.
    The buckets are bounded (`MAX_KEYS`): while they are all in use, events of new addresses share
    one bucket for their kind, and the timer forgets the buckets that have refilled.

    Security events are buffered like reads (stored within the flush interval), not held before
    the response: they are evidence of attempts, and an attacker must not be able to slow the
    token endpoint by making the audit wait.
    """

    KIND_FACTOR = 10
    MAX_KEYS = 10_000

    def __init__(
        self,
        auditor: Auditor,
        burst: int,
        per_minute: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.auditor = auditor
        self.burst = float(burst)
        self.rate = per_minute / 60.0
        self.clock = clock
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        self._kinds: dict[str, _Bucket] = {}
        self._last: dict[tuple[str, str], SecurityEvent] = {}

    def record(self, event: SecurityEvent) -> bool:
        """Buffer the event's AuditEvent unless the rate limit holds it back (False then)."""
        at = self.clock()
        key = self._key(event.kind, event.address or "-")
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = _Bucket(self.burst, at)
        kind = self._kinds.get(event.kind)
        if kind is None:
            kind = self._kinds[event.kind] = _Bucket(self.burst * self.KIND_FACTOR, at)
        if not bucket.take(self.burst, self.rate, at) or not kind.take(
            self.burst * self.KIND_FACTOR, self.rate * self.KIND_FACTOR, at
        ):
            bucket.suppressed += 1
            self._last[key] = event
            return False
        suppressed, bucket.suppressed = bucket.suppressed, 0
        self._last.pop(key, None)
        self._store(event, suppressed)
        return True

    def summarize(self) -> None:
        """Record how many events were held back for each (kind, address) whose bucket has
        room again (called by the Auditor's timer)."""
        at = self.clock()
        summaries = self._kinds.get("suppressed")
        if summaries is None:
            summaries = self._kinds["suppressed"] = _Bucket(self.burst * self.KIND_FACTOR, at)
        for key, bucket in list(self._buckets.items()):
            if not bucket.suppressed or not bucket.take(self.burst, self.rate, at):
                continue
            if not summaries.take(self.burst * self.KIND_FACTOR, self.rate * self.KIND_FACTOR, at):
                break  # summaries too are bounded; the counts wait for the next tick
            last = self._last.pop(key, None)
            count, bucket.suppressed = bucket.suppressed, 0
            summary = SecurityEvent(
                "suppressed",
                "4",
                f"'{key[0]}' events held back by the rate limit"
                + (f"; the last: {last.description}" if last else ""),
                address=None if key[1] in ("-", "*") else key[1],
                client_id=last.client_id if last else None,
                user=last.user if last else None,
            )
            self._store(summary, count)
        if len(self._buckets) >= self.MAX_KEYS // 2:
            self._prune(at)

    def _key(self, kind: str, address: str) -> tuple[str, str]:
        """The bucket of an event: its (kind, address), or while MAX_KEYS buckets are kept, one
        shared by the new addresses of its kind (no scan on the request path: the timer prunes)."""
        key = (kind, address)
        if key in self._buckets or len(self._buckets) < self.MAX_KEYS:
            return key
        return (kind, "*")

    def _prune(self, at: float) -> None:
        """Forget the buckets that are full again and owe no summary."""
        for key, bucket in list(self._buckets.items()):
            refilled = bucket.tokens + (at - bucket.at) * self.rate
            if not bucket.suppressed and refilled >= self.burst:
                del self._buckets[key]

    def _store(self, event: SecurityEvent, suppressed: int) -> None:
        recorded = clock_text(time.time_ns())
        self.auditor.buffer(dumps(security_event(event, recorded, suppressed)))
