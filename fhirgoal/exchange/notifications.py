"""Topic-based notifications as the Subscriptions Backport IG shapes them for R4.

http://hl7.org/fhir/uv/subscriptions-backport/STU1.1/notifications.html and payloads.html:
every notification is a Bundle of type `history` (profile backport-subscription-notification-r4)
whose first entry is a `Parameters` (profile backport-subscription-status-r4) with

  subscription                     a reference to the Subscription
  topic                            its topic's canonical (not for `empty` payloads: SHOULD NOT)
  status                           the Subscription's status when this was sent
  type                             handshake | heartbeat | event-notification | query-status |
                                   query-event
  events-since-subscription-start  events numbered so far (store/events.py); for an event
                                   notification, its own number (this event included)
  notification-event               per event: event-number, timestamp, focus (not for `empty`)
  error                            (query-status) what went wrong, when the Subscription is in error

A history Bundle wants `request` and `response` on every entry (bdl-3, bdl-4): the status
entry's request is a GET of the Subscription's `$status`, as the IG says. After it, for `id-only`
and `full-resource`, one entry per event's focus: its fullUrl, and the request and response that
made the version (a POST, PUT, PATCH or DELETE), with the resource itself for `full-resource`.
A deletion has no resource to include; payloads.html: "If a server cannot include the resource
contents ... the server SHALL populate the entry.request and/or entry.response elements", so a
deleted focus is told by its DELETE request and its 204 response.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from fhirgoal.exchange.subscription_rules import CONTENTS, Subscription
from fhirgoal.fhir.bundles import history_entry
from fhirgoal.fhir.instants import instant_text, now
from fhirgoal.store.repository import Version

STATUS_PROFILE = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription-status-r4"
NOTIFICATION_PROFILE = (
    "http://hl7.org/fhir/uv/subscriptions-backport/"
    "StructureDefinition/backport-subscription-notification-r4"
)


@dataclass(frozen=True)
class Event:
    """One numbered event: the version that caused it."""

    number: int
    version: Version


def least_content(*contents: str) -> str:
    """The smallest of payload contents (a client's `$events` wish never exceeds its
    Subscription's)."""
    return min(contents, key=CONTENTS.index)


def status_parameters(
    base: str,
    sub: Subscription,
    kind: str,
    events_since_start: int,
    events: Sequence[Event] = (),
    content: str | None = None,
    error: str | None = None,
    extra: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """The subscription-status Parameters (backport-subscription-status-r4)."""
    content = content or sub.content
    parameters: list[dict[str, Any]] = [
        {"name": "subscription", "valueReference": {"reference": f"{base}/{sub.dest}"}}
    ]
    if sub.topic and content != "empty":
        parameters.append({"name": "topic", "valueCanonical": sub.topic})
    parameters += [
        {"name": "status", "valueCode": sub.status},
        {"name": "type", "valueCode": kind},
        {"name": "events-since-subscription-start", "valueString": str(events_since_start)},
    ]
    for event in events:
        parts: list[dict[str, Any]] = [
            {"name": "event-number", "valueString": str(event.number)},
            {"name": "timestamp", "valueInstant": instant_text(event.version.last_updated)},
        ]
        if content != "empty":
            ref = f"{base}/{event.version.resource_type}/{event.version.id}"
            parts.append({"name": "focus", "valueReference": {"reference": ref}})
        parameters.append({"name": "notification-event", "part": parts})
    if error:
        parameters.append({"name": "error", "valueCodeableConcept": {"text": error}})
    parameters += extra or []
    return {
        "resourceType": "Parameters",
        "id": str(uuid.uuid4()),
        "meta": {"profile": [STATUS_PROFILE]},
        "parameter": parameters,
    }


def notification(
    base: str,
    sub: Subscription,
    kind: str,
    events_since_start: int,
    events: Sequence[Event] = (),
    content: str | None = None,
) -> dict[str, Any]:
    """A notification Bundle (backport-subscription-notification-r4): `kind` handshake,
    heartbeat, event-notification or query-event."""
    content = content or sub.content
    status = status_parameters(base, sub, kind, events_since_start, events, content)
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": f"urn:uuid:{status['id']}",
            "resource": status,
            "request": {"method": "GET", "url": f"{base}/{sub.dest}/$status"},
            "response": {"status": "200"},
        }
    ]
    if content != "empty":
        full = content == "full-resource"
        entries += [history_entry(base, event.version, full) for event in events]
    return {
        "resourceType": "Bundle",
        "id": str(uuid.uuid4()),
        "meta": {"profile": [NOTIFICATION_PROFILE]},
        "type": "history",
        "timestamp": instant_text(now()),
        "entry": entries,
    }
