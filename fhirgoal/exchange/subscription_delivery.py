"""Delivering Subscription notifications: the outbox handler of `rest-hook`, `handshake` and
`heartbeat` items (exchange/delivery.py runs it), and the heartbeats themselves.

Classic R4 rest-hook (https://hl7.org/fhir/R4/subscription.html#2.46.7.1), unchanged: without
payload a POST with no body to the endpoint; with a payload a PUT of the resource to
`[endpoint]/[type]/[id]`, and for a deletion a DELETE of that URL (a receiver mirroring the
resources by payload learns of the deletion the way it learns of the change). The handshake is a
POST with no body.

Topic-based (Subscriptions Backport IG STU 1.1, channels.html#rest-hook): every notification is
a POST of a notification Bundle (exchange/notifications.py) with the Subscription's payload MIME
type as Content-Type: the `handshake` while it is `requested` (an `error` that came from a failed
handshake goes on being tried), a `heartbeat` after `backport-heartbeat-period` seconds in
which nothing reached the receiver, and an `event-notification` per event, numbered before its
first attempt (store/events.py says why there and why that leaves no gap or duplicate).
`backport-timeout` bounds each request (at most the server's `outbox_timeout_seconds`, which the
leases are sized for).

Every request carries the channel's headers and an `Idempotency-Key`, the item's key: delivery
is at least once, and a receiver that gets a notification twice can tell (for topic-based ones
by the event number too).

Status (visible as FHIR, on the Subscription and its `$status`), changed by the server as
`KEEPS_REACH` (the Subscription keeps its writer's reach, exchange/subscription_reach.py): the
handshake's success sets `active`; `subscription_error_after` failed attempts of one item in a row, or a dead letter, set
`error` with `Subscription.error` saying why; a later success sets `active` again. The IG
(errors.html) leaves re-activation to the client, for fear that it would miss notifications
unawares; here nothing is dropped while the outbox retries (7 days by default), and what is
given up shows as a gap in the event numbers, so the server recovers on its own.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import structlog

from fhirgoal.config import Settings
from fhirgoal.core.access import UNRESTRICTED
from fhirgoal.core.errors import FhirError
from fhirgoal.core.jsonio import dumps
from fhirgoal.exchange.notifications import Event, notification
from fhirgoal.exchange.subscription_reach import KEEPS_REACH
from fhirgoal.exchange.subscription_rules import Subscription
from fhirgoal.exchange.subscription_set import HANDSHAKE, HEARTBEAT, SubscriptionSet
from fhirgoal.fhir.instants import now
from fhirgoal.fhir.outbox import Delivery, Skip, digest
from fhirgoal.store.events import EventCounters
from fhirgoal.store.outbox import OutboxItem

log = structlog.get_logger(__name__)

# A notification whose version is not stored yet (its write still in flight) is looked at again
# after this long; after `ORPHAN_SECONDS` an item whose version never appeared is void.
NOT_YET_SECONDS = 0.2
ORPHAN_SECONDS = 120.0


class SubscriptionDelivery:
    def __init__(
        self, subscriptions: SubscriptionSet, counters: EventCounters, settings: Settings
    ) -> None:
        self.subscriptions = subscriptions
        self.service = subscriptions.service
        self.counters = counters
        self.settings = settings
        self._numbering: dict[str, asyncio.Lock] = {}  # by destination

    async def refresh(self) -> None:
        await self.subscriptions.refresh()
        await self.heartbeats()

    # ---- building the request ---------------------------------------------------------------------
    async def _subscription(self, item: OutboxItem) -> Subscription | Skip:
        sid = item.dest.removeprefix("Subscription/")
        sub = self.subscriptions.get(sid)
        if sub is None:
            # Not in this process's set: the item (written just before its Subscription's
            # version) may be taken before the write's hook or the next refresh loads it. Ask
            # the database before giving the item up.
            stored = await self.service.current(UNRESTRICTED, "Subscription", sid)
            if stored is not None:
                sub = await self.subscriptions.fetch(sid)
            elif (now() - item.created).total_seconds() < ORPHAN_SECONDS:
                return Skip("its Subscription is not stored yet", NOT_YET_SECONDS)
        return sub if sub is not None else Skip("the Subscription is off or gone")

    async def prepare(self, item: OutboxItem) -> Delivery | Skip:
        sub = await self._subscription(item)
        if isinstance(sub, Skip):
            return sub
        headers = {**sub.headers, "Idempotency-Key": item.key}
        if item.kind == HANDSHAKE:
            # a handshake that failed into `error` goes on being tried: its success activates
            if sub.status not in ("requested", "error"):
                return Skip(f"the Subscription is {sub.status} already")
            if sub.topic is None:
                return Delivery("POST", sub.endpoint, headers)
            return await self._bundle(sub, headers, HANDSHAKE)
        if item.kind == HEARTBEAT:
            if sub.status not in ("active", "error") or not sub.heartbeat:
                return Skip(f"no heartbeat for a Subscription {sub.status}")
            return await self._bundle(sub, headers, HEARTBEAT)
        if sub.topic is None or item.event is not None:
            return await self._event(sub, headers, item)
        # Numbers are given in the order this worker takes the items of a Subscription (the
        # order they fell due: the writes' order, for first attempts): the lock is taken before
        # the item's first pause, and asyncio's locks are first come, first served.
        async with self._numbering.setdefault(item.dest, asyncio.Lock()):
            return await self._event(sub, headers, item)

    async def _event(
        self, sub: Subscription, headers: dict[str, str], item: OutboxItem
    ) -> Delivery | Skip:
        rt, _, rid = item.ref.partition("/")
        version = await self.service.stored_version(UNRESTRICTED, rt, rid, item.vid)
        if version is None or digest(version) != item.digest:
            age = (now() - item.created).total_seconds()
            if version is None and age < ORPHAN_SECONDS:
                return Skip("its version is not stored yet", NOT_YET_SECONDS)
            return Skip("its version was never stored (the write failed)")
        if sub.topic is None:
            return self._classic(sub, headers, version.resource_type, rid, version.text)
        number = item.event or await self.counters.number(item.dest, item.key)
        return await self._bundle(
            sub, headers, "event-notification", [Event(number, version)], number
        )

    @staticmethod
    def _classic(
        sub: Subscription, headers: dict[str, str], rt: str, rid: str, text: str | None
    ) -> Delivery:
        if sub.payload is None:
            return Delivery("POST", sub.endpoint, headers)
        url = f"{sub.endpoint}/{rt}/{rid}"
        if text is None:  # a deletion
            return Delivery("DELETE", url, headers)
        headers["Content-Type"] = sub.payload
        return Delivery("PUT", url, headers, text.encode())

    async def _bundle(
        self,
        sub: Subscription,
        headers: dict[str, str],
        kind: str,
        events: list[Event] | None = None,
        events_since_start: int | None = None,
    ) -> Delivery:
        if events_since_start is None:
            events_since_start = await self.counters.events(sub.dest)
        body = notification(
            self.settings.public_fhir_base(), sub, kind, events_since_start, events or []
        )
        headers["Content-Type"] = sub.payload or "application/fhir+json"
        timeout = self.settings.outbox_timeout_seconds
        if sub.timeout is not None:
            timeout = min(timeout, sub.timeout)
        return Delivery("POST", sub.endpoint, headers, dumps(body), timeout)

    # ---- hearing the outcome ----------------------------------------------------------------------
    async def settled(self, item: OutboxItem, error: str | None, gave_up: bool) -> None:
        sid = item.dest.removeprefix("Subscription/")
        sub = self.subscriptions.get(sid)
        if sub is None:
            return
        if error is None and sub.heartbeat:
            await self.counters.sent(sub.dest, now())
        failing = item.attempts + 1 >= self.settings.subscription_error_after or gave_up
        if error is None and sub.status != "active":
            await self._set_status(sid, "active", None)
        elif error is not None and failing and sub.status != "error":
            await self._set_status(sid, "error", error)

    async def _set_status(self, sid: str, status: str, error: str | None) -> None:
        """A new version of the Subscription with `status` (and `error`), If-Match on what was
        read: a client's concurrent change wins, and the next delivery looks again."""
        current = await self.service.current(UNRESTRICTED, "Subscription", sid)
        if current is None or current.resource is None:
            return
        resource = dict(current.resource)
        if resource.get("status") in ("off", status):
            return
        resource["status"] = status
        if error is None:
            resource.pop("error", None)
        else:
            resource["error"] = error[:1000]
        try:
            # the server's own change: the Subscription keeps its writer's reach
            await self.service.update(
                KEEPS_REACH, "Subscription", sid, resource, f'W/"{current.version}"'
            )
        except FhirError as failure:
            log.warning("Subscription status not changed", id=sid, error=str(failure))

    # ---- heartbeats -------------------------------------------------------------------------------
    async def heartbeats(self) -> int:
        """Record a heartbeat item for each Subscription with a heartbeat period that nothing
        reached for that long; how many. The item's key names the last time something reached
        the receiver, so replicas looking at once record one, and a heartbeat waiting for a
        receiver that is down is not joined by more."""
        subs = [
            s
            for s in self.subscriptions.live()
            if s.topic and s.heartbeat and s.status in ("active", "error")
        ]
        if not subs:
            return 0
        state = await self.counters.state([s.dest for s in subs])
        moment = now()
        due = []
        for sub in subs:
            sent = state.get(sub.dest, {}).get("sent")
            if sent is None:
                sent = await self.counters.start_clock(sub.dest, moment)
            assert sub.heartbeat is not None
            if moment - sent >= timedelta(seconds=sub.heartbeat):
                key = f"{sub.dest}|heartbeat|{sent.isoformat()}"
                due.append(OutboxItem(key, HEARTBEAT, sub.dest, sub.dest, sub.version, "", moment))
        if due:
            await self.service.outbox.store.record(due)
        return len(due)
