"""The delivery worker: takes due outbox items (store/outbox.py) and sends them over HTTP.

One per serving process; replicas share the work through leases, and a worker killed mid-delivery
(kill -9) leaves its items to be taken again once their lease lapses: delivery is at least once,
with the item's key as the receiver's idempotency key, so the effect is once.

Retries (the rules of https://hl7.org/fhir/R4/subscription.html leave them to the server; these
follow RFC 9110 and the usual practice for webhooks):
- exponential backoff with full jitter: the n-th retry waits uniformly up to base * 2**n seconds,
  at most `outbox_backoff_max_seconds`;
- a 429 or 503 with `Retry-After` (seconds or an HTTP-date, RFC 9110 section 10.2.3) waits what
  it says, up to the same maximum;
- each request is bounded by `outbox_timeout_seconds`; a timeout is a failed attempt;
- an item still failing `outbox_dead_after_seconds` after it was recorded (default 7 days, not
  the minute some servers give up after), or put back (`fhirgoal sync retry`), is parked as
  `dead`, for `fhirgoal outbox status`;
- a failure its handler calls `final` (fhir/outbox.py Sent: the receiver rejected the content,
  a mapping cannot express it) or an item whose destination was removed (`Skip(dead=True)`) is
  parked as `dead` at once: retrying for 7 days would change nothing, and the item is visible to
  a human the same minute.

The worker knows nothing of Subscriptions or EHRs: each item kind has its handler
(fhir/outbox.py DeliveryHandler), which builds the request and hears the outcome, or carries a
delivery of several requests out itself (SelfDelivery: EHR sync), bounded by the same timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import uuid
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime

import httpx
import structlog
from pymongo.errors import PyMongoError

from fhirgoal.config import Settings
from fhirgoal.core.errors import FhirError
from fhirgoal.core.tasks import stop_task
from fhirgoal.fhir.outbox import Delivery, DeliveryHandler, Outbox, SelfDelivery, Sent, Skip
from fhirgoal.store.outbox import DEAD, VOID, OutboxItem

log = structlog.get_logger(__name__)

# Items leased at once, per delivery in flight: enough to keep every slot busy through a batch
# (each lease costs the database a query and an update for the whole batch), few enough that a
# batch is delivered well within its lease.
BATCH_PER_DELIVERY = 4
# How often handlers reread shared state and old items are purged, at most.
_UPKEEP_SECONDS = 60.0


def retry_after(value: str | None, at: datetime) -> float | None:
    """Seconds a `Retry-After` header asks to wait (delta-seconds or an HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - at).total_seconds())


class DeliveryWorker:
    def __init__(self, outbox: Outbox, settings: Settings) -> None:
        self.outbox = outbox
        self.store = outbox.store
        self.settings = settings
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None
        self._upkeep_at = 0.0
        self._refreshed_at = 0.0
        outbox.listeners.append(self._wake.set)

    # ---- running --------------------------------------------------------------------------
    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _run(self) -> None:
        while True:
            try:
                await self._upkeep()
                await self.run_once()
            except (PyMongoError, FhirError) as error:
                log.error("outbox pass failed; trying again", error=repr(error))
            except Exception as error:  # the loop must outlive any one pass: nothing else retries
                log.error("outbox pass failed unexpectedly; trying again", exc_info=error)
            await self._sleep()

    async def _sleep(self) -> None:
        poll = self.settings.outbox_poll_seconds
        # asyncio.timeout, not wait_for: Python 3.11's wait_for loses a cancellation that
        # arrives as the wake-up does (gh-86296), and stop() then waits on this loop forever.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(poll):
                await self._wake.wait()
        self._wake.clear()

    async def _upkeep(self) -> None:
        clock = asyncio.get_running_loop().time()
        if clock - self._refreshed_at >= self.settings.subscription_refresh_seconds:
            self._refreshed_at = clock
            for handler in set(self.outbox.handlers.values()):
                await handler.refresh()
        if clock - self._upkeep_at >= _UPKEEP_SECONDS:
            self._upkeep_at = clock
            retention = timedelta(seconds=self.settings.outbox_retention_seconds)
            await self.store.purge(datetime.now(UTC) - retention)

    async def run_once(self, dest: str | None = None) -> int:
        """Deliver every item due now (of destination `dest` only, when given), as many at once
        as `outbox_concurrency`; how many attempts were made."""
        attempts = 0
        concurrency = self.settings.outbox_concurrency
        in_flight = asyncio.Semaphore(concurrency)

        async def deliver(item: OutboxItem) -> None:
            async with in_flight:
                await self._deliver(item)

        while True:
            taken = await self.store.take(
                self.owner,
                self.settings.outbox_lease_seconds,
                datetime.now(UTC),
                concurrency * BATCH_PER_DELIVERY,
                dest,
            )
            if not taken:
                return attempts
            await asyncio.gather(*(deliver(item) for item in taken))
            attempts += len(taken)

    # ---- one item -------------------------------------------------------------------------
    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.settings.outbox_timeout_seconds, follow_redirects=False
            )
        return self._client

    async def _deliver(self, item: OutboxItem) -> None:
        try:
            now = datetime.now(UTC)
            timeout = timedelta(seconds=self.settings.outbox_timeout_seconds)
            if item.lease is not None and item.lease - now < timeout:
                # its turn in the batch came late: a request started now could outlast the
                # lease and run beside another worker's; give it back instead
                await self.store.retry(item, self.owner, now, "lease ran out", counts=False)
                return
            await self._attempt(item)
        except (PyMongoError, FhirError) as error:
            # the lease lapses and the item is taken again
            log.error("outbox item not settled", key=item.key, error=repr(error))

    async def _attempt(self, item: OutboxItem) -> None:
        handler = self.outbox.handlers.get(item.kind)
        if handler is None:
            # an item of a kind this version of the server does not deliver: leave it for one
            # that does (retried, never lost)
            await self._failed(item, f"no handler for {item.kind!r} items", None)
            return
        prepared = await handler.prepare(item)
        if isinstance(prepared, Skip):
            if prepared.dead:
                await self._dead(item, prepared.reason, "its destination is gone")
                await self._settled(handler, item, prepared.reason, True)
            elif prepared.retry_in is None:
                await self.store.finish(item, self.owner, VOID, prepared.reason)
            else:
                at = datetime.now(UTC) + timedelta(seconds=prepared.retry_in)
                await self.store.retry(item, self.owner, at, prepared.reason, counts=False)
            return
        final = False
        if isinstance(prepared, SelfDelivery):
            sent = await self._carry_out(prepared)
            if sent.void is not None:
                await self.store.finish(item, self.owner, VOID, sent.void)
                return
            error, wait, final = sent.error, sent.retry_after, sent.final
        else:
            error, wait = await self._send(prepared)
        if error is None:
            if await self.store.delivered(item, self.owner, datetime.now(UTC)):
                await self._settled(handler, item, None, False)
            return
        if final:
            await self._dead(item, error, "retrying cannot help")
            gave_up = True
        else:
            gave_up = await self._failed(item, error, wait)
        await self._settled(handler, item, error, gave_up)

    async def _send(self, delivery: Delivery) -> tuple[str | None, float | None]:
        """(None, None) when the receiver took it; else the error and any Retry-After wait."""
        try:
            response = await self.client.request(
                delivery.method,
                delivery.url,
                headers=delivery.headers,
                content=delivery.body,
                timeout=delivery.timeout or self.settings.outbox_timeout_seconds,
            )
        except httpx.TimeoutException:
            return f"{delivery.method} {delivery.url}: no answer in time", None
        except httpx.HTTPError as error:
            return f"{delivery.method} {delivery.url}: {type(error).__name__}: {error}", None
        if 200 <= response.status_code < 300:
            return None, None
        wait = None
        if response.status_code in (429, 503):
            wait = retry_after(response.headers.get("retry-after"), datetime.now(UTC))
        return f"{delivery.method} {delivery.url}: HTTP {response.status_code}", wait

    async def _carry_out(self, delivery: SelfDelivery) -> Sent:
        """A handler's own delivery, within the timeout of one request (so within the lease)."""
        try:
            async with asyncio.timeout(self.settings.outbox_timeout_seconds):
                return await delivery.run()
        except TimeoutError:
            return Sent(error="no answer in time")
        except httpx.HTTPError as error:
            return Sent(error=f"{type(error).__name__}: {error}")

    async def _dead(self, item: OutboxItem, error: str, why: str = "past the horizon") -> None:
        await self.store.finish(item, self.owner, DEAD, error)
        log.warning(
            "outbox item dead", key=item.key, attempts=item.attempts + 1, error=error, why=why
        )

    async def _failed(self, item: OutboxItem, error: str, wait: float | None) -> bool:
        """Schedule the next attempt, or park the item as dead; whether it is dead."""
        now = datetime.now(UTC)
        if (now - item.since).total_seconds() >= self.settings.outbox_dead_after_seconds:
            await self._dead(item, error)
            return True
        ceiling = self.settings.outbox_backoff_max_seconds
        if wait is None:
            wait = random.uniform(0, min(ceiling, self.settings.outbox_backoff_base_seconds * 2**item.attempts))  # fmt: skip
        await self.store.retry(item, self.owner, now + timedelta(seconds=min(wait, ceiling)), error)
        return False

    @staticmethod
    async def _settled(
        handler: DeliveryHandler, item: OutboxItem, error: str | None, dead: bool
    ) -> None:
        try:
            await handler.settled(item, error, dead)
        except (PyMongoError, FhirError) as failure:
            log.error("outbox outcome not recorded", key=item.key, error=repr(failure))
