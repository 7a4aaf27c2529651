"""Recording outbound work with the write that causes it (the outbox, store/outbox.py).

Work that leaves the server (https://hl7.org/fhir/R4/subscription.html notifications, EHR sync
pushes) must never be lost once a write is acknowledged, and must cost a write little. The
service asks each registered *source* (exchange/ registers them: Subscriptions, sync
connections) which destinations a new version concerns; the sources answer from memory (a
Subscription's criteria compiled once, matched against the version's search index: no query), so
a write that concerns nobody costs a few dictionary lookups.

Why the items are written *before* the version, and not derived from it afterwards: the version
write carries `j: true`, so once it returns, everything written before it is journaled too, and
the 2xx that follows means the items exist. Written after the version instead, a crash between
the two would lose them unless the version carried a pending mark to be swept (fhir/hooks.py):
that costs a second write per write (clearing the mark) and an index on every resource type. The
price of this order is that an item may outlive a write that then failed (a lost race, a
database error): the item names its version and a digest of its text, and the delivery worker
voids an item whose version is not the one stored. In a unit of work (a transaction Bundle) the
items are part of the unit and commit with it or not at all. The items of a first version stored
outside a unit ride in the repository's insert batch (store/batching.py companions: written
first, in one call for the whole batch of concurrent creates), so they cost a batch one driver
call rather than each write one.

A deletion is matched as the version it deletes (its index extracted again, only when a source
`follows` the type), so that a Subscription hears that a resource it followed is gone.
"""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any, NamedTuple, Protocol

from fhirgoal.fhir.instants import now
from fhirgoal.store.outbox import OutboxItem, OutboxStore
from fhirgoal.store.repository import Version


class Target(NamedTuple):
    kind: str  # what delivers it (exchange/: "rest-hook", "handshake")
    dest: str  # where to ("Subscription/123")


class OutboxSource(Protocol):
    def targets(self, version: Version, index: dict[str, Any]) -> list[Target]:
        """The destinations this version concerns: synchronous, from memory, cheap."""
        ...


def digest(version: Version) -> str:
    """Tells the version the item was recorded for from another one with the same number (a
    concurrent writer's): the text holds meta.lastUpdated and the content."""
    text = version.text if version.text is not None else f"deleted {version.version}"
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def item_key(dest: str, ref: str, vid: int, text_digest: str) -> str:
    return f"{dest}|{ref}/_history/{vid}|{text_digest}"


class Delivery(NamedTuple):
    """One HTTP request that delivers an item."""

    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None = None
    timeout: float | None = None  # seconds; None: the server's outbox_timeout_seconds


class Skip(NamedTuple):
    """No request for this item: void it (`retry_in` None) or look again in `retry_in` seconds
    without counting an attempt (its version is not stored yet); `dead`: nothing can ever deliver
    it (its destination is gone) and a human must hear of it, so it is parked as dead now rather
    than voided."""

    reason: str
    retry_in: float | None = None
    dead: bool = False


class Sent(NamedTuple):
    """How a delivery that its handler carried out went: delivered (no `error`, no `void`),
    failed (`error`, and any wait a Retry-After asked for), or found to be void after all
    (`void`: the reason; nothing is left to deliver). A failure that retrying cannot change
    (the receiver rejected the content for good, the mapping cannot express it, the scope
    forbids it) is `final`: the item is parked as dead at once, for a human, instead of retried
    until the horizon."""

    error: str | None = None
    retry_after: float | None = None
    void: str | None = None
    final: bool = False


class SelfDelivery(NamedTuple):
    """A delivery the handler carries out itself, when one request cannot say it: an EHR sync
    asks for a token, makes a conditional create or an `If-Match` update and reads after a 412.
    The worker bounds it by the delivery timeout, as it bounds a single request."""

    run: Callable[[], Awaitable[Sent]]


class DeliveryHandler(Protocol):
    """Turns an item of one kind into its request, and hears how delivering it went."""

    async def prepare(self, item: OutboxItem) -> Delivery | SelfDelivery | Skip: ...

    async def settled(self, item: OutboxItem, error: str | None, gave_up: bool) -> None:
        """After an attempt: `error` None on success; `gave_up` when the item is dead."""
        ...

    async def refresh(self) -> None:
        """Periodic upkeep (reread what other replicas changed)."""
        ...


class Outbox:
    def __init__(self, store: OutboxStore) -> None:
        self.store = store
        self.sources: list[OutboxSource] = []
        self.handlers: dict[str, DeliveryHandler] = {}  # by item kind
        # called once a write with items is stored (the delivery worker's wake-up)
        self.listeners: list[Callable[[], None]] = []

    def add_source(self, source: OutboxSource) -> None:
        self.sources.append(source)

    def follows(self, rt: str) -> bool:
        """Whether a source may want the writes of `rt`: a source may say so with a
        `follows(rt)` method (no method: it wants every type). Lets a deletion skip extracting
        the deleted version's index when nobody would match it (fhir/service.py)."""
        for source in self.sources:
            follows = getattr(source, "follows", None)
            if follows is None or follows(rt):
                return True
        return False

    def plan(self, version: Version, index: dict[str, Any]) -> list[OutboxItem]:
        """The items `version` causes (asking every source, from memory): nothing stored yet."""
        if not self.sources:
            return []
        targets = [t for source in self.sources for t in source.targets(version, index)]
        if not targets:
            return []
        ref = f"{version.resource_type}/{version.id}"
        text_digest = digest(version)
        created = now()
        return [
            OutboxItem(
                item_key(t.dest, ref, version.version, text_digest),
                t.kind,
                t.dest,
                ref,
                version.version,
                text_digest,
                created,
            )
            for t in dict.fromkeys(targets)
        ]

    async def record(self, version: Version, index: dict[str, Any]) -> bool:
        """Record the items `version` causes, before it is stored; whether there were any."""
        items = self.plan(version, index)
        if items:
            await self.store.record(items)
        return bool(items)

    def written(self) -> None:
        for listener in self.listeners:
            listener()
