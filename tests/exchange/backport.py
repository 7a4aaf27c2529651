"""The Subscriptions Backport IG STU 1.1 notification profiles, as checks on what a receiver got.

Transcribed from the IG's definitions (input/fsh/BackportNotificationR4.fsh of
HL7/fhir-subscription-backport-ig at v1.1.0) and its payloads page:

- backport-subscription-notification-r4: a Bundle of type `history`; entry[0] is the
  subscription-status Parameters (backport-notification-bundle-r4-1); R4's history Bundle wants
  `request` and `response` on every entry (bdl-3, bdl-4);
- backport-subscription-status-r4: parameter slices by name, `subscription` 1..1
  valueReference, `topic` 0..1 valueCanonical, `status` 1..1 valueCode (subscription-status),
  `type` 1..1 valueCode (subscription-notification-type), `events-since-subscription-start`
  0..1 valueString, `notification-event` 0..* with parts `event-number` 1..1 valueString,
  `timestamp` 0..1 valueInstant, `focus` 0..1 valueReference, `error` 0..* valueCodeableConcept;
- payloads.html: `empty` has no focus and no entry but the status; `id-only` has a focus per
  event and no resource; `full-resource` has a focus and the resource (a deletion's entry has
  its request and response instead).
"""

from __future__ import annotations

from typing import Any

SUBSCRIPTION_STATUS = {"requested", "active", "error", "off"}
NOTIFICATION_TYPES = {"handshake", "heartbeat", "event-notification", "query-status", "query-event"}
STATUS_SLICES = {
    # name: (min, max, value key)
    "subscription": (1, 1, "valueReference"),
    "topic": (0, 1, "valueCanonical"),
    "status": (1, 1, "valueCode"),
    "type": (1, 1, "valueCode"),
    "events-since-subscription-start": (0, 1, "valueString"),
    "notification-event": (0, None, None),
    "error": (0, None, "valueCodeableConcept"),
}
EVENT_PARTS = {
    "event-number": (1, 1, "valueString"),
    "timestamp": (0, 1, "valueInstant"),
    "focus": (0, 1, "valueReference"),
    "additional-context": (0, None, "valueReference"),
}


def _slices(items: list[dict[str, Any]], rules: dict[str, Any], where: str) -> None:
    for name, (least, most, key) in rules.items():
        found = [p for p in items if p.get("name") == name]
        assert len(found) >= least, f"{where}: {name} is required"
        assert most is None or len(found) <= most, f"{where}: {name} at most {most}"
        for p in found:
            if key is not None:
                assert key in p, f"{where}: {name} needs {key}"


def status_of(parameters: dict[str, Any]) -> dict[str, Any]:
    """The status Parameters' values by name (notification events as a list of part dicts)."""
    assert parameters["resourceType"] == "Parameters"
    params = parameters["parameter"]
    _slices(params, STATUS_SLICES, "Parameters")
    values: dict[str, Any] = {"notification-event": []}
    for p in params:
        if p["name"] == "notification-event":
            _slices(p.get("part", []), EVENT_PARTS, "notification-event")
            values["notification-event"].append(
                {part["name"]: _value(part) for part in p.get("part", [])}
            )
        else:
            values[p["name"]] = _value(p)
    assert values["status"] in SUBSCRIPTION_STATUS
    assert values["type"] in NOTIFICATION_TYPES
    return values


def _value(element: dict[str, Any]) -> Any:
    for key, value in element.items():
        if key.startswith("value"):
            return value
    return element.get("part")


def check_notification(bundle: dict[str, Any], content: str) -> dict[str, Any]:
    """Assert `bundle` is a notification as the profiles and `content` say; its status values."""
    assert bundle["resourceType"] == "Bundle" and bundle["type"] == "history"
    entries = bundle["entry"]
    for entry in entries:
        assert "request" in entry and "response" in entry, "bdl-3/bdl-4"
        assert entry["request"]["method"] in {"GET", "POST", "PUT", "PATCH", "DELETE"}
        assert entry["response"]["status"][:3].isdigit()
    status = status_of(entries[0]["resource"])
    assert entries[0]["request"]["method"] == "GET"
    assert entries[0]["request"]["url"].endswith("/$status")
    events = status["notification-event"]
    focus_entries = entries[1:]
    if content == "empty":
        assert "topic" not in status
        assert all("focus" not in e for e in events)
        assert focus_entries == []
    else:
        assert all("focus" in e for e in events)
        assert len(focus_entries) == len(events)
        for event, entry in zip(events, focus_entries, strict=True):
            assert entry["fullUrl"] == event["focus"]["reference"]
            deleted = entry["request"]["method"] == "DELETE"
            if content == "id-only" or deleted:
                assert "resource" not in entry
            else:
                assert (
                    entry["resource"]["resourceType"] + "/" + entry["resource"]["id"]
                    in (entry["fullUrl"])
                )
    return status
