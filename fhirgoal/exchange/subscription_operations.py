"""`$status` and `$events` of Subscriptions (Subscriptions Backport IG STU 1.1,
http://hl7.org/fhir/uv/subscriptions-backport/STU1.1/OperationDefinition-backport-subscription-status.html
and OperationDefinition-backport-subscription-events.html).

- `GET [base]/Subscription/[id]/$status` and `GET [base]/Subscription/$status?id=..&status=..`:
  a `searchset` Bundle of subscription-status Parameters (type `query-status`), one per
  Subscription the caller may read: its status, `events-since-subscription-start`, its `error`
  while it has one, and fhirgoal's own `fhirgoal-delivery` parameter (the profile's slicing is
  open): counts of its notifications in the outbox by state (pending, failing, delivered, dead,
  void) and the latest error; a live Subscription that is not run says why in `error` (its
  criteria no longer compile, or its writer's reach cannot be established). That is how each delivery's outcome is visible as FHIR: an
  AuditEvent per attempt would cost a journaled write per attempt (more than the attempt's own
  bookkeeping) and bury the one figure a subscriber needs, whether anything is stuck, under
  thousands of records; the counts are one indexed aggregate of the outbox, always current.
- `GET [base]/Subscription/[id]/$events?eventsSinceNumber=&eventsUntilNumber=&content=`: the
  numbered events the outbox still holds (delivered ones are kept `outbox_retention_seconds`),
  as a notification Bundle of type `query-event`; `content` may ask for less than the
  Subscription's payload content, never more. The events are those within the reach of the
  Subscription's writer (exchange/subscription_reach.py) and are read through the caller's
  access as well: what the caller may not read is left out.

Both read through the caller's access (a Subscription out of reach is not known).
"""

from __future__ import annotations

import uuid
from typing import Any

from fhirgoal.core.errors import FhirError
from fhirgoal.exchange.notifications import Event, least_content, notification, status_parameters
from fhirgoal.exchange.subscription_rules import CONTENTS, Subscription
from fhirgoal.exchange.subscription_set import LIVE_STATUSES, SubscriptionSet
from fhirgoal.fhir.operations import Invocation, Operation, OperationRegistry
from fhirgoal.fhir.outbox import digest
from fhirgoal.fhir.outcome import Outcome
from fhirgoal.fhir.service import FhirService
from fhirgoal.store.events import EventCounters
from fhirgoal.store.repository import Version

IG_OPERATIONS = "http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition"
STATUS_DEFINITION = f"{IG_OPERATIONS}/backport-subscription-status"
EVENTS_DEFINITION = f"{IG_OPERATIONS}/backport-subscription-events"
MAX_STATUS = 1000  # Subscriptions in one type-level $status
MAX_EVENTS = 1000  # events in one $events answer


class SubscriptionOperations:
    def __init__(self, subscriptions: SubscriptionSet, counters: EventCounters) -> None:
        self.subscriptions = subscriptions
        self.counters = counters

    def register(self, operations: OperationRegistry) -> None:
        for level in ("instance", "type"):
            operations.register(
                Operation(
                    "status", level, "Subscription", self.status, definition=STATUS_DEFINITION
                )
            )
        operations.register(
            Operation(
                "events", "instance", "Subscription", self.events, definition=EVENTS_DEFINITION
            )
        )

    def _running(self, version: Version) -> Subscription | None:
        """The Subscription as the server runs it (off ones and unrunnable ones included)."""
        assert version.resource is not None
        try:
            return self.subscriptions.compile(version.resource)
        except FhirError:
            return None

    # ---- $status -----------------------------------------------------------------------------------
    async def status(self, svc: FhirService, inv: Invocation) -> Outcome:
        if inv.id is not None:
            inv.parameters.reject_unknown(set())
            read = (await svc.read(inv.access, "Subscription", inv.id)).version
            versions = [read] if read is not None else []
        else:
            inv.parameters.reject_unknown({"id", "status"})
            params = []
            ids = [p.text() for p in inv.parameters.all("id")]
            statuses = [p.text() for p in inv.parameters.all("status")]
            if ids:
                params.append(("_id", ",".join(ids)))
            if statuses:
                params.append(("status", ",".join(statuses)))
            versions = await svc.find_resources(
                inv.access, "Subscription", params, MAX_STATUS, [("_id", 1)], inv.base_url, True
            )
        entries = []
        for version in versions:
            if version.resource is None:
                continue
            parameters = await self._status_of(svc, inv.base_url, version)
            entries.append(
                {
                    "fullUrl": f"urn:uuid:{parameters['id']}",
                    "resource": parameters,
                    "search": {"mode": "match"},
                }
            )
        bundle: dict[str, Any] = {
            "resourceType": "Bundle",
            "id": str(uuid.uuid4()),
            "type": "searchset",
            "total": len(entries),
        }
        if entries:
            bundle["entry"] = entries
        return Outcome(200, body=bundle)

    async def _status_of(self, svc: FhirService, base: str, version: Version) -> dict[str, Any]:
        resource = version.resource
        assert resource is not None
        sub = self._running(version)
        dest = f"Subscription/{version.id}"
        summary = await svc.outbox.store.summary(dest)
        parts = [
            {"name": state, "valueInteger": summary[state]}
            for state in ("pending", "failing", "delivering", "delivered", "dead", "void")
        ]
        if summary["error"]:
            parts.append({"name": "last-error", "valueString": summary["error"][:1000]})
        delivery = {"name": "fhirgoal-delivery", "part": parts}
        if sub is None:  # stored, but not runnable now: report what is stored
            sub = Subscription(
                version.id, version.version, resource.get("status", ""), {}, "", {}, None
            )
        errors = []
        if resource.get("status") in LIVE_STATUSES:
            not_run = await self.subscriptions.standing(version.id, version.version)
            if not_run is not None:
                errors.append(f"not run: {not_run}")
        if resource.get("status") == "error" and resource.get("error"):
            errors.append(str(resource["error"]))
        error = "; ".join(errors) or None
        return status_parameters(
            base,
            sub,
            "query-status",
            await self.counters.events(dest),
            error=error,
            extra=[delivery],
        )

    # ---- $events ------------------------------------------------------------------------------------
    async def events(self, svc: FhirService, inv: Invocation) -> Outcome:
        assert inv.id is not None
        params = inv.parameters
        params.reject_unknown({"eventsSinceNumber", "eventsUntilNumber", "content"})
        stored = (await svc.read(inv.access, "Subscription", inv.id)).version
        assert stored is not None
        sub = self._running(stored)
        if sub is None or sub.topic is None:
            raise FhirError(
                "processing", "$events is for topic-based Subscriptions (its events are numbered)"
            )
        first = _number(params.one("eventsSinceNumber"), 1)
        last = _number(params.one("eventsUntilNumber"), 2**62)
        wanted = params.one("content")
        content = sub.content
        if wanted is not None:
            if wanted.text() not in CONTENTS:
                raise FhirError(
                    "invalid", f"content must be one of {', '.join(CONTENTS)}", wanted.expression
                )
            content = least_content(wanted.text(), sub.content)
        events = []
        for item in await self.counters.numbered(sub.dest, first, last, MAX_EVENTS):
            rt, _, rid = item.ref.partition("/")
            # the events are within the Subscription's writer's reach; read through the
            # caller's too, who need not be that writer
            version = await svc.stored_version(inv.access, rt, rid, item.vid)
            if version is not None and digest(version) == item.digest and item.event:
                events.append(Event(item.event, version))
        bundle = notification(
            inv.base_url, sub, "query-event", await self.counters.events(sub.dest), events, content
        )
        return Outcome(200, body=bundle)


def _number(parameter: Any, default: int) -> int:
    if parameter is None:
        return default
    text = parameter.text()
    if not text.isdigit():
        raise FhirError(
            "invalid", f"'{parameter.name}' must be an event number", parameter.expression
        )
    return int(text)
