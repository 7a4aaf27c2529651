"""The live Subscriptions of a replica: the write hook that keeps them, and the outbox source
that turns each write into the notifications it causes.

https://hl7.org/fhir/R4/subscription.html and the Subscriptions Backport IG STU 1.1
(http://hl7.org/fhir/uv/subscriptions-backport/STU1.1/). A Subscription is read once when
written (exchange/subscription_rules.py: its criteria or topic and filters compiled into one
filter per resource type) and each write's version is then matched against it in memory
(fhir/search/matching.py) against the version's own search index: no query per write. Every
match is recorded in the outbox before the version is stored (fhir/outbox.py).

Which writes are events:
- a create (version 1), an update and a **deletion**, as far as the trigger's interactions
  allow (a classic Subscription: all three; a topic: its `supportedInteraction`);
- a deletion is matched against the version it deletes (the service hands the outbox that
  version's index): a resource that matched the criteria is notified when it goes, and one that
  did not match is not (R5's `resultForDelete` of a topic trigger whose `current` test is read
  as "the resource as it last was").

Whom it concerns: each trigger's filter is ANDed with what the Subscription's writer could search
of the type, a snapshot kept with the version (exchange/subscription_reach.py), so a Subscription
only ever tells of resources within its writer's reach; one whose reach cannot be established is
not run, and `$status` says why (`standing`).

The set is loaded at start, kept in step by the hook on this replica and reread every
`subscription_refresh_seconds` for changes made on others, each version with the reach kept with
it. A `requested` Subscription's version causes a handshake item; turning a Subscription `off`
(or deleting it) voids what it still had to deliver.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import structlog

from fhirgoal.config import Settings
from fhirgoal.core.access import UNRESTRICTED
from fhirgoal.core.errors import FhirError
from fhirgoal.exchange.subscription_reach import (
    KEEPS_REACH,
    REACH,
    Unestablished,
    pack,
    stored_reach,
    within,
    writer_reach,
)
from fhirgoal.exchange.subscription_rules import Subscription, SubscriptionReader, Trigger
from fhirgoal.exchange.topics import Topic
from fhirgoal.fhir.hooks import WriteEvent
from fhirgoal.fhir.outbox import Target
from fhirgoal.fhir.search.matching import UnsupportedFilter, matches
from fhirgoal.fhir.service import FhirService
from fhirgoal.store.repository import Version

log = structlog.get_logger(__name__)

# Outbox item kinds (fhir/outbox.py Target.kind) the Subscriptions deliver.
NOTIFY, HANDSHAKE, HEARTBEAT = "rest-hook", "handshake", "heartbeat"
LIVE_STATUSES = ("requested", "active", "error")


def interaction(version: Version) -> str:
    """create | update | delete: what the write of `version` was, in topic terms (a version 1
    is a create, whether POSTed or PUT; a resource created again after a deletion is updated)."""
    if version.deleted:
        return "delete"
    return "create" if version.version == 1 else "update"


class SubscriptionSet:
    """The live Subscriptions: the outbox source of notifications and the write hook that keeps
    the set in step."""

    resource_types = frozenset({"Subscription"})

    def __init__(self, service: FhirService, settings: Settings, topics: dict[str, Topic]):
        self.service = service
        self.settings = settings
        self.topics = topics
        self.reader = SubscriptionReader(service, settings, topics)
        self._by_id: dict[str, Subscription] = {}
        self._by_type: dict[str, list[tuple[Subscription, Trigger]]] = {}
        # live-status versions that are not run: id -> (version, why)
        self._not_run: dict[str, tuple[int, str]] = {}

    # ---- the live set ---------------------------------------------------------------------------
    def compile(self, resource: dict[str, Any]) -> Subscription:
        return self.reader.read(resource)

    def _keep(self, sub: Subscription | None, sid: str) -> None:
        old = self._by_id.pop(sid, None)
        if old is not None:
            for rt in old.triggers:
                self._by_type[rt] = [e for e in self._by_type.get(rt, []) if e[0].id != sid]
        if sub is not None and sub.status in LIVE_STATUSES:
            self._by_id[sid] = sub
            for rt, trigger in sub.triggers.items():
                self._by_type.setdefault(rt, []).append((sub, trigger))

    def _run(self, version: Version, resource: dict[str, Any]) -> Subscription:
        """The version as it runs: compiled, and kept within its writer's reach."""
        sub = self.compile(resource)
        if version.server is None:  # read without its server fields: nothing to go by
            raise Unestablished("it was read without the reach kept with it")
        reach = stored_reach(version.server)
        if reach is None:  # stored before reaches were kept, by a writer who saw every one
            return sub
        return replace(sub, triggers=within(sub.triggers, reach))

    def _load_version(self, version: Version) -> None:
        sub, why = None, None
        resource = version.resource
        if resource is not None:
            try:
                sub = self._run(version, resource)
            except FhirError as error:  # stored before a rule changed: leave it alone
                why = f"its criteria cannot be run: {error}"
            except Unestablished as error:
                why = f"the reach of its writer cannot be established ({error})"
        if why is not None and resource is not None and resource.get("status") in LIVE_STATUSES:
            log.warning("Subscription not run", id=version.id, version=version.version, why=why)
            self._not_run[version.id] = (version.version, why)
        else:
            self._not_run.pop(version.id, None)
        self._keep(sub, version.id)

    async def refresh(self) -> None:
        """Reread every live Subscription (start-up, and changes made on other replicas)."""
        found = await self.service.find_where(
            UNRESTRICTED,
            "Subscription",
            {"tok": {"$in": [f"status#{s}" for s in LIVE_STATUSES]}},
            [("_id", 1)],
            10_000,
            server_fields=True,
        )
        seen = {v.id for v in found}
        for version in found:
            known = self._by_id.get(version.id)
            refused = self._not_run.get(version.id)
            if known is not None and known.version == version.version:
                continue
            if refused is not None and refused[0] == version.version:
                continue  # not run, and said so once
            self._load_version(version)
        for sid in [sid for sid in self._by_id if sid not in seen]:
            self._keep(None, sid)
        for sid in [sid for sid in self._not_run if sid not in seen]:
            del self._not_run[sid]

    def get(self, sid: str) -> Subscription | None:
        return self._by_id.get(sid)

    def live(self) -> list[Subscription]:
        return list(self._by_id.values())

    async def fetch(self, sid: str) -> Subscription | None:
        """Take the stored current version of a Subscription, with its reach, into the live set
        (or drop it from there); None when it is not run."""
        stored = await self.service.current(UNRESTRICTED, "Subscription", sid, server_fields=True)
        if stored is None:
            self._keep(None, sid)
            self._not_run.pop(sid, None)
        else:
            self._load_version(stored)
        return self._by_id.get(sid)

    async def standing(self, sid: str, vid: int) -> str | None:
        """Why version `vid` of a live Subscription is not run; None when it is run (or is not
        live, or not current any more)."""
        for attempt in range(2):
            known = self._by_id.get(sid)
            if known is not None and known.version == vid:
                return None
            refused = self._not_run.get(sid)
            if refused is not None and refused[0] == vid:
                return refused[1]
            if attempt == 0:  # written on another replica since this one last looked
                await self.fetch(sid)
        return None

    # ---- the write hook (fhir/hooks.py) -----------------------------------------------------------
    def interested(self, event: WriteEvent) -> bool:
        return True

    async def before_write(self, event: WriteEvent) -> None:
        if event.resource is None:
            return
        subscription = self.compile(event.resource)  # refuses what cannot run, unstored
        if event.access is KEEPS_REACH:
            event.server_fields.update(await self._kept_reach(event))
        else:
            # Whoever writes it, the reach is that writer's, taken now (never from the resource)
            reach = writer_reach(event.access, subscription.triggers)
            event.server_fields[REACH] = pack(reach)
        event.state[REACH] = True  # the new version's server fields are in the event

    async def _kept_reach(self, event: WriteEvent) -> dict[str, Any]:
        """The server fields to carry forward from the version a server status change replaces."""
        previous = event.previous
        stored = None
        if previous is not None and not previous.deleted:
            stored = await self.service.current(
                UNRESTRICTED, "Subscription", event.id, server_fields=True
            )
        if stored is None or previous is None or stored.version != previous.version:
            raise FhirError(
                "conflict", f"Subscription/{event.id} changed while its status was being set"
            )
        assert stored.server is not None
        return {REACH: stored.server[REACH]} if REACH in stored.server else {}

    async def after_write(self, event: WriteEvent) -> None:
        if event.version is None:
            return
        if event.state.get(REACH) or event.version.deleted:
            self._load_version(replace(event.version, server=dict(event.server_fields)))
        else:  # run again after a crash (finish_pending): the reach is in the stored version
            await self.fetch(event.id)
        resource = event.version.resource
        if resource is None or resource.get("status") == "off":
            voided = await self.service.outbox.store.void_for(
                f"Subscription/{event.id}", "the Subscription was turned off or deleted"
            )
            if voided:
                log.info("Subscription off: notifications dropped", id=event.id, count=voided)

    # ---- the outbox source (fhir/outbox.py) ---------------------------------------------------------
    def follows(self, rt: str) -> bool:
        return rt == "Subscription" or bool(self._by_type.get(rt))

    def targets(self, version: Version, index: dict[str, Any]) -> list[Target]:
        rt = version.resource_type
        if rt == "Subscription":
            resource = version.resource
            if resource is not None and resource.get("status") == "requested":
                return [Target(HANDSHAKE, f"Subscription/{version.id}")]
            return []
        entries = self._by_type.get(rt)
        if not entries:
            return []
        happened = interaction(version)
        doc = {"_id": version.id, "v": version.version, "lu": version.last_updated, **index}
        found = []
        for sub, trigger in entries:
            if happened not in trigger.interactions:
                continue
            try:
                if matches(doc, trigger.filter):
                    found.append(Target(NOTIFY, sub.dest))
            except UnsupportedFilter as error:
                log.error("Subscription criteria not matchable", id=sub.id, operator=str(error))
        return found
