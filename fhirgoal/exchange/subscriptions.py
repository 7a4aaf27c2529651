"""R4 Subscriptions (classic, criteria-based), delivered through the outbox.

https://hl7.org/fhir/R4/subscription.html . A client creates a `Subscription` with
`criteria` (a search, `Observation?code=http://loinc.org|44261-6`), `channel.type` `rest-hook`,
`channel.endpoint`, optional `channel.header` lines and `channel.payload` (absent: an id-only
notification; `application/fhir+json`: the resource).

- Lifecycle (subscription.html#2.46.7): created `requested`, the server checks the endpoint with a
  *handshake* (a POST with no body, as a notification without payload) and sets `active` when it
  answers 2xx; `subscription_error_after` failures in a row set `error` with `Subscription.error`
  saying why (deliveries go on being tried: a success sets `active` again); `off` stops it, and
  its undelivered notifications are voided.
- Notifications (subscription.html#2.46.7.1, rest-hook): without payload a POST with no body to
  the endpoint; with a payload a PUT of the resource to `[endpoint]/[type]/[id]`. Every request
  carries the channel's headers and an `Idempotency-Key` (the outbox item's key): a receiver that
  gets one twice (at-least-once delivery) can tell.
- Matching: each Subscription's criteria are compiled once by the search compiler; each write's
  new version is matched against that filter and the version's own search index, in memory
  (fhir/search/matching.py), and every match is recorded in the outbox before the version is
  stored (fhir/outbox.py). Criteria that need other searches (chains, `_has`, `:in`) are refused
  when the Subscription is written: they could not be matched without querying per write.
  Deletions notify nobody (a deleted resource matches no search).

The Subscriptions live in memory on each replica, loaded at start, kept in step by a write hook
on this replica and reread every `subscription_refresh_seconds` for changes made on others.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import structlog

from fhirgoal.config import Settings
from fhirgoal.core.access import UNRESTRICTED
from fhirgoal.core.errors import FhirError
from fhirgoal.fhir.hooks import WriteEvent
from fhirgoal.fhir.instants import now
from fhirgoal.fhir.outbox import Delivery, Skip, Target, digest
from fhirgoal.fhir.search.matching import UnsupportedFilter, matches
from fhirgoal.fhir.search.query import SERVER_SEARCH_LIMITS
from fhirgoal.fhir.service import FhirService
from fhirgoal.store.outbox import OutboxItem
from fhirgoal.store.repository import Version

log = structlog.get_logger(__name__)

NOTIFY, HANDSHAKE = "rest-hook", "handshake"
LIVE_STATUSES = ("requested", "active", "error")
PAYLOAD_TYPES = ("application/fhir+json", "application/json")
# A notification whose version is not stored yet (its write still in flight) is looked at again
# after this long; after `ORPHAN_SECONDS` an item whose version never appeared is void.
NOT_YET_SECONDS = 0.2
ORPHAN_SECONDS = 120.0


@dataclass(frozen=True)
class Subscription:
    id: str
    version: int
    status: str
    resource_type: str
    filter: dict[str, Any]
    endpoint: str
    headers: dict[str, str]
    payload: str | None


class SubscriptionSet:
    """The live Subscriptions: the outbox source of notifications, the handler that delivers
    them and the write hook that keeps the set in step."""

    resource_types = frozenset({"Subscription"})

    def __init__(self, service: FhirService, settings: Settings) -> None:
        self.service = service
        self.settings = settings
        self._by_id: dict[str, Subscription] = {}
        self._by_type: dict[str, list[Subscription]] = {}

    # ---- reading a Subscription ------------------------------------------------------------
    def compile(self, resource: dict[str, Any]) -> Subscription:
        """The Subscription as the server runs it; FhirError (422) when it cannot be run."""
        criteria = resource.get("criteria")
        if not isinstance(criteria, str) or not criteria:
            raise FhirError("processing", "criteria is required", "Subscription.criteria")
        rt, _, query = criteria.partition("?")
        if not self.service.conformance.is_stored(rt):
            raise FhirError(
                "processing",
                f"criteria must start with a resource type this server holds, not {rt!r}",
                "Subscription.criteria",
            )
        params = parse_qsl(query, keep_blank_values=True)
        try:
            compiled = self.service.engine.compiler(rt, SERVER_SEARCH_LIMITS).compile(
                params, self.settings.public_fhir_base()
            )
        except FhirError as error:
            raise FhirError(
                "processing",
                f"criteria: {error.issues[0].diagnostics}",
                "Subscription.criteria",
            ) from None
        if compiled.deferred:
            raise FhirError(
                "processing",
                "criteria with chains, _has or :in/:not-in cannot be matched as writes happen",
                "Subscription.criteria",
            )
        channel = resource.get("channel") or {}
        if channel.get("type") != "rest-hook":
            raise FhirError(
                "processing",
                f"channel.type {channel.get('type')!r} is not supported (rest-hook only)",
                "Subscription.channel.type",
            )
        endpoint = channel.get("endpoint")
        if not isinstance(endpoint, str) or urlsplit(endpoint).scheme not in ("http", "https"):
            raise FhirError(
                "processing",
                "a rest-hook needs an http(s) channel.endpoint",
                "Subscription.channel.endpoint",
            )
        payload = channel.get("payload") or None
        if payload is not None and payload not in PAYLOAD_TYPES:
            raise FhirError(
                "processing",
                f"channel.payload {payload!r} is not supported ({', '.join(PAYLOAD_TYPES)})",
                "Subscription.channel.payload",
            )
        headers: dict[str, str] = {}
        for line in channel.get("header") or []:
            name, colon, value = line.partition(":")
            if not colon or not name.strip():
                raise FhirError(
                    "processing",
                    f"channel.header {line!r} is not 'Name: value'",
                    "Subscription.channel.header",
                )
            headers[name.strip()] = value.strip()
        meta = resource.get("meta") or {}
        return Subscription(
            resource["id"],
            int(meta.get("versionId", "1")),
            resource.get("status", ""),
            rt,
            compiled.filter,
            endpoint.rstrip("/"),
            headers,
            payload,
        )

    def _keep(self, sub: Subscription | None, sid: str) -> None:
        old = self._by_id.pop(sid, None)
        if old is not None:
            self._by_type[old.resource_type] = [
                s for s in self._by_type.get(old.resource_type, []) if s.id != sid
            ]
        if sub is not None and sub.status in LIVE_STATUSES:
            self._by_id[sid] = sub
            self._by_type.setdefault(sub.resource_type, []).append(sub)

    def _load_version(self, version: Version) -> None:
        sub = None
        if version.resource is not None:
            try:
                sub = self.compile(version.resource)
            except FhirError as error:  # stored before a rule changed: leave it alone
                log.warning("Subscription cannot be run", id=version.id, error=str(error))
        self._keep(sub, version.id)

    async def refresh(self) -> None:
        """Reread every live Subscription (start-up, and changes made on other replicas)."""
        found = await self.service.find_where(
            UNRESTRICTED,
            "Subscription",
            {"tok": {"$in": [f"status#{s}" for s in LIVE_STATUSES]}},
            [("_id", 1)],
            10_000,
        )
        seen = {v.id for v in found}
        for version in found:
            known = self._by_id.get(version.id)
            if known is None or known.version != version.version:
                self._load_version(version)
        for sid in [sid for sid in self._by_id if sid not in seen]:
            self._keep(None, sid)

    def get(self, sid: str) -> Subscription | None:
        return self._by_id.get(sid)

    def load(self, version: Version) -> None:
        """Take a stored version of a Subscription into the live set (or drop it from there)."""
        self._load_version(version)

    # ---- the write hook (fhir/hooks.py) ------------------------------------------------------
    def interested(self, event: WriteEvent) -> bool:
        return True

    async def before_write(self, event: WriteEvent) -> None:
        if event.resource is not None:
            subscription = self.compile(event.resource)  # refuses what cannot run, unstored
            # Notifications are matched against every write, whoever made it, and carry the
            # resource (full-resource payloads): only a requester who may search every resource
            # of the type may subscribe to it, or a Subscription would read past the caller's
            # scopes or caseload.
            if not event.access.sees_all(subscription.resource_type, "s"):
                raise FhirError(
                    "forbidden",
                    "a Subscription may only be written by a client that may search every "
                    f"{subscription.resource_type} (e.g. system/{subscription.resource_type}.rs)",
                    "Subscription.criteria",
                )

    async def after_write(self, event: WriteEvent) -> None:
        if event.version is None:
            return
        self._load_version(event.version)
        resource = event.version.resource
        if resource is None or resource.get("status") == "off":
            voided = await self.service.outbox.store.void_for(
                f"Subscription/{event.id}", "the Subscription was turned off or deleted"
            )
            if voided:
                log.info("Subscription off: notifications dropped", id=event.id, count=voided)

    # ---- the outbox source (fhir/outbox.py) --------------------------------------------------
    def targets(self, version: Version, index: dict[str, Any]) -> list[Target]:
        rt = version.resource_type
        if rt == "Subscription":
            resource = version.resource
            if resource is not None and resource.get("status") == "requested":
                return [Target(HANDSHAKE, f"Subscription/{version.id}")]
            return []
        subs = self._by_type.get(rt)
        if not subs or version.deleted:
            return []
        doc = {"_id": version.id, "v": version.version, "lu": version.last_updated, **index}
        found = []
        for sub in subs:
            try:
                if matches(doc, sub.filter):
                    found.append(Target(NOTIFY, f"Subscription/{sub.id}"))
            except UnsupportedFilter as error:
                log.error("Subscription criteria not matchable", id=sub.id, operator=str(error))
        return found


class SubscriptionDelivery:
    """The delivery handler of `rest-hook` and `handshake` items (exchange/delivery.py)."""

    def __init__(self, subscriptions: SubscriptionSet, settings: Settings) -> None:
        self.subscriptions = subscriptions
        self.service = subscriptions.service
        self.settings = settings

    async def refresh(self) -> None:
        await self.subscriptions.refresh()

    async def prepare(self, item: OutboxItem) -> Delivery | Skip:
        sid = item.dest.removeprefix("Subscription/")
        sub = self.subscriptions.get(sid)
        if sub is None:
            # Not in this process's set: the item (written just before its Subscription's
            # version) may be taken before the write's hook or the next refresh loads it. Ask
            # the database before giving the item up.
            stored = await self.service.current(UNRESTRICTED, "Subscription", sid)
            if stored is not None:
                self.subscriptions.load(stored)
                sub = self.subscriptions.get(sid)
            elif (now() - item.created).total_seconds() < ORPHAN_SECONDS:
                return Skip("its Subscription is not stored yet", NOT_YET_SECONDS)
        if sub is None:
            return Skip("the Subscription is off or gone")
        headers = {**sub.headers, "Idempotency-Key": item.key}
        if item.kind == HANDSHAKE:
            # a handshake that failed into `error` goes on being tried: its success activates
            if sub.status not in ("requested", "error"):
                return Skip(f"the Subscription is {sub.status} already")
            return Delivery("POST", sub.endpoint, headers)
        rt, _, rid = item.ref.partition("/")
        version = await self.service.stored_version(UNRESTRICTED, rt, rid, item.vid)
        if version is None or digest(version) != item.digest:
            age = (now() - item.created).total_seconds()
            if version is None and age < ORPHAN_SECONDS:
                return Skip("its version is not stored yet", NOT_YET_SECONDS)
            return Skip("its version was never stored (the write failed)")
        if sub.payload is None or version.text is None:
            return Delivery("POST", sub.endpoint, headers)
        headers["Content-Type"] = sub.payload
        return Delivery("PUT", f"{sub.endpoint}/{rt}/{rid}", headers, version.text.encode())

    async def settled(self, item: OutboxItem, error: str | None, gave_up: bool) -> None:
        sid = item.dest.removeprefix("Subscription/")
        sub = self.subscriptions.get(sid)
        if sub is None:
            return
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
            await self.service.update(
                UNRESTRICTED, "Subscription", sid, resource, f'W/"{current.version}"'
            )
        except FhirError as failure:
            log.warning("Subscription status not changed", id=sid, error=str(failure))


def install(service: FhirService, settings: Settings) -> SubscriptionSet:
    """Plug Subscriptions into the service: its write hook, outbox source and delivery."""
    subscriptions = SubscriptionSet(service, settings)
    service.hooks.register(subscriptions)
    service.outbox.add_source(subscriptions)
    delivery = SubscriptionDelivery(subscriptions, settings)
    service.outbox.handlers[NOTIFY] = delivery
    service.outbox.handlers[HANDSHAKE] = delivery
    return subscriptions
