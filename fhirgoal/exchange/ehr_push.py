"""Push in, fhirgoal's side: the notifications an EHR sends, applied as a pull applies changes.

Issue 15 ("an EHR may ... notify it (a Subscription notification endpoint)"); the EHR's
Subscriptions are made by exchange/ehr_subscribe.py. The endpoint is
`POST /sync/notify/<connection>` (fhirgoal/push_routes.py), outside the FHIR base: it is no
FHIR interaction, and the EHR authenticates with the connection's secret, not a SMART token.

**Who may notify** (`PushReceiver.authenticate`): the request's `Authorization: Bearer <secret>`
(the channel header fhirgoal gave the EHR's Subscription) must be the connection's current
secret, or the one it replaced within its grace time, compared by hash in constant time
(exchange/ehr_push_store.py). A missing header is 401 (with `WWW-Authenticate: Bearer`), a
wrong secret or a connection that does not subscribe 403, both the same whatever the connection
name, so that the endpoint does not tell which connections exist. Each refusal is an AuditEvent
(DICOM 110113 Security Alert, the source address as agent), rate limited per connection and
address as the security audit is (`FHIRGOAL_SECURITY_AUDIT_BURST`, `..._PER_MINUTE`).

**What a notification does** (`PushReceiver.receive`; exchange/push_notifications.py reads it):

- `event-notification` (and `query-event`): each focus of a type the connection pulls is read
  from the EHR with the connection's Backend Services token (`<Type>?_id=...`, the EHR's own
  base: never what the body says, whatever the payload content), and, if it belongs to a
  followed patient, applied by the Puller's page application (exchange/ehr_inbound.py: the same
  identity, dialect, ownership, conflict and hold rules, and the writes marked `applying`, so
  none is sent back to the EHR). A focus of a patient fhirgoal does not follow is ignored, as a
  pull would never have fetched it. A focus the EHR no longer returns (a deletion: its entry's
  request is a DELETE) asks for a pull, which applies deletions by their rules
  (exchange/ehr_deletions.py).
- `handshake`, `heartbeat`, `query-status`: nothing to apply.
- **Gaps**: per EHR Subscription the highest event number heard is kept. An event whose
  number skips one (`min(numbers) > seen + 1`), or a status whose
  `events-since-subscription-start` is past what was heard, means a notification was lost (or
  is still on its way: a pull too many costs requests, never correctness); so does the
  Subscription's status `error`. Then a full incremental pull of the connection is asked for,
  durably (`pull_due`), before the answer, and run by `PushLoop` at once.
- **The answer**: 200 with an informational OperationOutcome once what was notified is applied
  (journaled writes) and the pull it needs is durably queued; 503 when the EHR could not be read
  or the database failed, so that the EHR retries; 400 for a body that is not a notification
  (nothing changes); 413 past `FHIRGOAL_SYNC_NOTIFY_MAX_BYTES`.

`PushLoop` (in `fhirgoal serve`): runs the pulls asked for, and every
`FHIRGOAL_SYNC_SUBSCRIBE_CHECK_SECONDS` makes each subscribing connection's Subscriptions right
at its EHR (exchange/ehr_subscribe.py), pulling the patients followed since whole.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

import httpx
import structlog
from pymongo.errors import PyMongoError

from fhirgoal.core.errors import FhirError, FhirgoalError
from fhirgoal.core.jsonio import loads
from fhirgoal.core.tasks import stop_task
from fhirgoal.exchange.backend_auth import BackendAuthError
from fhirgoal.exchange.connections import PULL_TYPES, EhrConnection
from fhirgoal.exchange.ehr_audit import SUBTYPE_SYSTEM
from fhirgoal.exchange.ehr_inbound import Puller, PullReport
from fhirgoal.exchange.ehr_push_store import PushStore
from fhirgoal.exchange.ehr_search import PullError, chunks, search_pages
from fhirgoal.exchange.ehr_subscribe import Subscriber
from fhirgoal.exchange.ehr_sync import EhrSync
from fhirgoal.exchange.push_notifications import EVENT_KINDS, Notification, read_notification
from fhirgoal.exchange.translate import parse_reference, patient_of
from fhirgoal.fhir.instants import instant_text, now

log = structlog.get_logger(__name__)

DCM = "http://dicom.nema.org/resources/ontology/DCM"
SECURITY_ALERT = {"system": DCM, "code": "110113", "display": "Security Alert"}
# A connection unknown to this process is looked up again at most this often (a connection
# added or marked `subscribe` by the CLI while the server runs), so that requests naming
# connections that do not exist cannot make every request a database read.
UNKNOWN_REFRESH_SECONDS = 1.0
# A pull asked for that failed is tried again after this long.
PULL_RETRY_SECONDS = 10.0
LATENCIES_KEPT = 1000


@dataclass
class PushOutcome:
    """What one notification did."""

    kind: str
    written: int = 0
    unchanged: int = 0
    held: int = 0
    conflicts: int = 0
    ignored: list[str] = field(default_factory=list)  # foci of patients not followed
    pull_asked: str | None = None  # why a pull was asked for

    def outcome(self) -> dict[str, Any]:
        text = (
            f"{self.kind}: {self.written} written, {self.unchanged} unchanged, {self.held} held "
            f"for a human, {self.conflicts} conflict(s), {len(self.ignored)} ignored (patients "
            "fhirgoal does not follow)"
        )
        if self.pull_asked:
            text += f"; a pull is queued: {self.pull_asked}"
        return {
            "resourceType": "OperationOutcome",
            "issue": [{"severity": "information", "code": "informational", "diagnostics": text}],
        }


class _Bucket:
    """A token bucket: `burst` at once, then `per_minute`; counts what it held back."""

    def __init__(self, burst: float, per_minute: float) -> None:
        self.burst = burst
        self.rate = per_minute / 60.0
        self.tokens = burst
        self.at = time.monotonic()
        self.suppressed = 0

    def take(self) -> bool:
        moment = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (moment - self.at) * self.rate)
        self.at = moment
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.suppressed += 1
        return False


def refusal_event(name: str, address: str | None, reason: str, held_back: int) -> dict[str, Any]:
    """The AuditEvent of a refused notification (a security alert naming the connection)."""
    agent: dict[str, Any] = {"who": {"display": "caller of the EHR notification endpoint"}}
    agent["requestor"] = True
    if address:
        agent["network"] = {"address": address, "type": "2"}
    description = reason
    if held_back:
        description += f" ({held_back} earlier refusal(s) from this address not recorded)"
    return {
        "resourceType": "AuditEvent",
        "id": str(uuid.uuid4()),
        "type": SECURITY_ALERT,
        "subtype": [{"system": SUBTYPE_SYSTEM, "code": name[:64] or "-"}],
        "action": "E",
        "recorded": instant_text(now()),
        "outcome": "4",
        "outcomeDesc": description[:1000],
        "agent": [agent],
        "source": {
            "observer": {"display": "fhirgoal"},
            "type": [
                {
                    "system": "http://terminology.hl7.org/CodeSystem/security-source-type",
                    "code": "4",
                }
            ],
        },
        "entity": [{"what": {"display": f"POST /sync/notify/{name[:64]}"}}],
    }


class PushReceiver:
    def __init__(self, sync: EhrSync, store: PushStore, wake: Any = None) -> None:
        self.sync = sync
        self.store = store
        self.puller = Puller(sync)
        self.wake = wake or (lambda: None)  # PushLoop.wake: run the pulls asked for now
        self._refreshed = 0.0
        self._buckets: dict[tuple[str, str], _Bucket] = {}
        # seconds from a notification's arrival to its changes applied (bench/push.py)
        self.latencies: deque[float] = deque(maxlen=LATENCIES_KEPT)
        self.heard: Counter[str] = Counter()  # notifications applied, by type

    # ---- who may notify -------------------------------------------------------------------------
    async def authenticate(
        self, name: str, authorization: str | None, address: str | None
    ) -> EhrConnection:
        """The subscribing connection `name` whose secret the request carries; FhirError 401
        or 403 (audited) else."""
        scheme, _, secret = (authorization or "").partition(" ")
        if scheme.lower() != "bearer" or not secret.strip():
            await self._refuse(name, address, "no Bearer secret")
            raise FhirError(
                "unauthorized",
                "a notification needs the connection's secret (Authorization: Bearer)",
                headers={"WWW-Authenticate": 'Bearer realm="fhirgoal-ehr-notify"'},
            )
        connection = await self._connection(name)
        state = await self.store.state(name)
        accepted = state.accepts(secret.strip())  # compared whether the connection is or not
        if connection is None or not connection.subscribe or not accepted:
            await self._refuse(name, address, "wrong secret, or no such subscribing connection")
            raise FhirError("forbidden", "the secret is not valid for this endpoint")
        return connection

    async def _connection(self, name: str) -> EhrConnection | None:
        connection = self.sync.get(name)
        if connection is None or not connection.subscribe:
            moment = time.monotonic()
            if moment - self._refreshed >= UNKNOWN_REFRESH_SECONDS:
                self._refreshed = moment
                await self.sync.refresh()
                connection = self.sync.get(name)
        return connection

    async def _refuse(self, name: str, address: str | None, reason: str) -> None:
        log.warning("EHR notification refused", connection=name, address=address, reason=reason)
        settings = self.sync.settings
        key = (name[:64], address or "-")
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= 10_000:  # bounded: forget the oldest
                self._buckets.pop(next(iter(self._buckets)))
            bucket = self._buckets[key] = _Bucket(
                settings.security_audit_burst, settings.security_audit_per_minute
            )
        held_back = bucket.suppressed
        if not bucket.take() or not settings.audit:
            return
        bucket.suppressed = 0
        try:
            await self.sync.service.audit_log.append(
                [refusal_event(name, address, reason, held_back)]
            )
        except PyMongoError as error:  # the refusal stands; its record is best effort
            log.error("refusal not audited", connection=name, error=repr(error))

    # ---- what a notification does ---------------------------------------------------------------
    async def receive(self, connection: EhrConnection, body: bytes) -> PushOutcome:
        arrived = time.monotonic()
        notification = read_notification(
            loads(body, self.sync.settings.max_json_depth), connection.base
        )
        outcome = PushOutcome(notification.kind)
        missing: list[str] = []
        if notification.kind in EVENT_KINDS and notification.foci:
            missing = await self._apply(connection, notification, outcome)
        reason = await self._gap(connection, notification)
        if reason is None and missing:  # deleted at the EHR: pulls apply deletions
            reason = f"{', '.join(missing[:5])} not found at the EHR (deleted?)"
            await self.store.ask_pull(connection.name)
        if reason is not None:
            outcome.pull_asked = reason
            log.info("EHR notification: pull asked for", connection=connection.name, why=reason)
            self.wake()
        if notification.kind in EVENT_KINDS:
            self.latencies.append(time.monotonic() - arrived)
        self.heard[notification.kind] += 1
        return outcome

    async def _apply(
        self, connection: EhrConnection, notification: Notification, outcome: PushOutcome
    ) -> list[str]:
        """Apply the foci; those the EHR did not return (deleted, most likely)."""
        client = self.sync.client(connection)
        followed = {f"Patient/{p.ehr_id}" for p in await self.sync.links.patients(connection.name)}
        wanted: dict[str, list[str]] = {}
        missing: list[str] = []
        for rt, rid in notification.foci:
            if rt in connection.pull:
                wanted.setdefault(rt, []).append(rid)
        for rt in [t for t in PULL_TYPES if t in wanted]:  # referenced types first, as a pull
            found: list[dict[str, Any]] = []
            try:
                for chunk in chunks(wanted[rt]):
                    params = [("_id", ",".join(chunk)), ("_count", str(len(chunk)))]
                    async for page in search_pages(client, connection, rt, params):
                        found += page
            except (PullError, BackendAuthError, httpx.HTTPError) as error:
                log.warning("EHR notification: focus not read", connection=connection.name,
                            error=str(error))  # fmt: skip
                raise FhirError(
                    "unavailable",
                    f"the EHR could not be read ({type(error).__name__}); send it again",
                    headers={"Retry-After": "5"},
                ) from None
            returned = {str(r.get("id")) for r in found}
            missing += [f"{rt}/{rid}" for rid in wanted[rt] if rid not in returned]
            kept = []
            for resource in found:
                owner = parse_reference(patient_of(resource), connection.base)
                if owner is not None and f"{owner[0]}/{owner[1]}" in followed:
                    kept.append(resource)
                else:
                    outcome.ignored.append(f"{rt}/{resource.get('id')}")
            if kept:
                report: PullReport = await self.puller.apply(connection, rt, kept)
                outcome.written += report.written
                outcome.unchanged += report.unchanged
                outcome.held += report.held
                outcome.conflicts += report.conflicts
        return missing

    async def _gap(self, connection: EhrConnection, notification: Notification) -> str | None:
        """Why a pull is needed after `notification` (None: it is not), its numbers noted."""
        sid = notification.subscription
        seen = await self.store.seen(connection.name, sid)
        reason = None
        if notification.lost_something:
            reason = f"the EHR's Subscription/{sid} reports an error: {notification.error or ''}"
        heard = seen
        if notification.kind in EVENT_KINDS and notification.numbers:
            if min(notification.numbers) > seen + 1:
                reason = reason or (
                    f"Subscription/{sid} event {min(notification.numbers)} arrived after "
                    f"event {seen}: {min(notification.numbers) - seen - 1} not heard"
                )
            heard = max(seen, *notification.numbers)
        elif notification.kind not in EVENT_KINDS and notification.events_since_start is not None:
            if notification.events_since_start > seen:
                reason = reason or (
                    f"Subscription/{sid} counts {notification.events_since_start} event(s), "
                    f"{seen} heard"
                )
            heard = max(seen, notification.events_since_start)
        if reason is not None:
            await self.store.ask_pull(connection.name)  # durable before the numbers move on
        if heard > seen:
            await self.store.saw(connection.name, sid, heard)
        return reason


class PushLoop:
    """The pulls asked for by notifications, at once; and every
    `sync_subscribe_check_seconds` the Subscriptions of each subscribing connection made right
    at its EHR. Both are idempotent: replicas doing them at once cost requests, not
    correctness."""

    def __init__(self, sync: EhrSync) -> None:
        self.sync = sync
        self.store = PushStore(sync.service.database)
        self.subscriber = Subscriber(sync, self.store)
        self.receiver = PushReceiver(sync, self.store, self.wake)
        self.puller = Puller(sync)
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def wake(self) -> None:
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None

    async def check(self) -> None:
        """Make every subscribing connection's Subscriptions right (errors logged)."""
        await self.sync.refresh()
        for connection in self.sync.connections:
            if not connection.subscribe:
                continue
            try:
                report = await self.subscriber.ensure(connection)
            except (FhirgoalError, httpx.HTTPError) as error:
                log.error(
                    "EHR subscriptions not made", connection=connection.name, error=str(error)
                )
                continue
            if report.fresh_patients:  # newly followed: their records whole, by a pull
                await self.store.ask_pull(connection.name)

    async def pull_due(self) -> bool:
        """Run the pulls asked for; False when one failed (it stays asked for)."""
        ok = True
        for name in await self.store.due():
            connection = self.sync.get(name)
            if connection is None:
                await self.sync.refresh()
                connection = self.sync.get(name)
            if connection is None:
                continue
            started = now()
            try:
                await self.puller.pull(connection)
            except (FhirgoalError, httpx.HTTPError) as error:
                log.error("EHR pull asked for failed", connection=name, error=repr(error))
                ok = False
                continue
            await self.store.pulled(name, started)
        return ok

    async def _run(self) -> None:
        interval = self.sync.settings.sync_subscribe_check_seconds
        next_check = 0.0
        while True:
            wait = interval
            try:
                if time.monotonic() >= next_check:
                    next_check = time.monotonic() + interval
                    await self.check()
                self._wake.clear()
                if not await self.pull_due():
                    wait = min(wait, PULL_RETRY_SECONDS)
            except PyMongoError as error:
                log.error("EHR push loop failed; trying again", error=repr(error))
                wait = PULL_RETRY_SECONDS
            except Exception as error:  # the loop must outlive any one pass
                log.error("EHR push loop failed unexpectedly; trying again", exc_info=error)
                wait = PULL_RETRY_SECONDS
            wait = min(wait, max(0.0, next_check - time.monotonic()))
            try:
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            except TimeoutError:
                pass
