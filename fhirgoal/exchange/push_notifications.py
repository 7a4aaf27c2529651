"""Reading a notification an EHR sends: a Subscriptions Backport IG notification Bundle for R4.

http://hl7.org/fhir/uv/subscriptions-backport/STU1.1/notifications.html and payloads.html (the
shape fhirgoal itself sends as a notifier, exchange/notifications.py): a Bundle of type
`history` whose first entry is a `Parameters` (backport-subscription-status-r4) with

  subscription                     reference to the Subscription (at the EHR)
  status                           its status when this was sent (`error`: something was lost)
  type                             handshake | heartbeat | event-notification | query-status |
                                   query-event
  events-since-subscription-start  how many events the EHR has numbered (valueString in STU 1.1;
                                   an integer type is read too)
  notification-event               per event: event-number, focus (absent for `empty` payloads)
  error                            what went wrong, when the Subscription is in error

then, for `id-only` and `full-resource` payloads, one entry per focus (its fullUrl; the resource
too for `full-resource`). The foci are read from the notification-event parts, and from the
entries' fullUrls when an EHR names them only there. Only `Type/id` is taken from a focus: the
resource is always read from the EHR's own base (exchange/ehr_push.py), never from the body.

Anything else (not JSON, not such a Bundle, a missing or malformed status) is a NotificationError,
answered 400 with an OperationOutcome.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from fhirgoal.core.errors import FhirError
from fhirgoal.exchange.translate import parse_reference

KINDS = frozenset({"handshake", "heartbeat", "event-notification", "query-status", "query-event"})
EVENT_KINDS = frozenset({"event-notification", "query-event"})


class NotificationError(FhirError):
    """A body that is not a notification; 400 with the reason."""

    def __init__(self, diagnostics: str, expression: str | None = None) -> None:
        super().__init__("bad-request", diagnostics, expression)


@dataclass(frozen=True)
class Notification:
    subscription: str  # the Subscription's id at the EHR
    kind: str
    status: str
    events_since_start: int | None
    numbers: tuple[int, ...] = ()  # the event numbers it carries
    foci: tuple[tuple[str, str], ...] = ()  # (type, id) of each focus, in order, once each
    error: str | None = None

    @property
    def lost_something(self) -> bool:
        """The EHR says its Subscription is in error (notifications may have been dropped)."""
        return self.status == "error" or self.error is not None


def _reference(text: Any, bases: tuple[str, ...], where: str) -> tuple[str, str] | None:
    """`(type, id)` of a reference relative or on one of the EHR's `bases`; None else."""
    if not isinstance(text, str):
        raise NotificationError("a reference must be a string", where)
    for base in bases:
        found = parse_reference(text, base)
        if found is not None:
            return found
    return None


def _own_base(reference: Any, base: str) -> tuple[str, ...]:
    """The bases the EHR's references may use: the connection's, and the one the EHR names
    itself by in its Subscription's reference (an EHR behind a proxy or a load balancer knows
    itself by another address than the one fhirgoal reaches it at)."""
    if isinstance(reference, str) and "://" in reference:
        head, _, tail = reference.rpartition("/Subscription/")
        if head and tail and "/" not in tail:
            return (base, head)
    return (base,)


def _count(parameter: dict[str, Any], where: str) -> int:
    for key in ("valueString", "valueInteger64", "valueInteger", "valueUnsignedInt"):
        if key in parameter:
            value = parameter[key]
            text = str(value) if not isinstance(value, bool) else ""
            if not text.isdigit():
                raise NotificationError(f"{where} is not a whole number: {value!r}", where)
            return int(text)
    raise NotificationError(f"{where} has no value", where)


def read_notification(bundle: Any, base: str) -> Notification:
    """The notification Bundle `bundle` from the EHR at `base`, read; NotificationError else.
    References are taken relative, on `base`, or on the base the EHR names its Subscription by
    (only `Type/id` is used: what is read is always read from `base`)."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise NotificationError("a notification is a Bundle")
    if bundle.get("type") != "history":
        raise NotificationError(
            f"a notification is a Bundle of type history (R4 backport), not {bundle.get('type')!r}",
            "Bundle.type",
        )
    bases: tuple[str, ...] = (base,)
    entries = bundle.get("entry")
    if not isinstance(entries, list) or not entries or not isinstance(entries[0], dict):
        raise NotificationError("a notification's first entry is its status", "Bundle.entry")
    status = entries[0].get("resource")
    if not isinstance(status, dict) or status.get("resourceType") != "Parameters":
        raise NotificationError(
            "the first entry must be the subscription-status Parameters", "Bundle.entry[0]"
        )
    parameters = status.get("parameter")
    if not isinstance(parameters, list):
        raise NotificationError("the status has no parameters", "Parameters.parameter")
    found: dict[str, Any] = {}
    numbers: list[int] = []
    foci: list[tuple[str, str]] = []
    for parameter in parameters:
        if isinstance(parameter, dict) and parameter.get("name") == "subscription":
            named = (parameter.get("valueReference") or {}).get("reference")
            bases = _own_base(named, base)
            break
    for i, parameter in enumerate(parameters):
        where = f"Parameters.parameter[{i}]"
        if not isinstance(parameter, dict) or not isinstance(parameter.get("name"), str):
            raise NotificationError("a parameter needs a name", where)
        name = parameter["name"]
        if name == "notification-event":
            for part in parameter.get("part") or []:
                if not isinstance(part, dict):
                    raise NotificationError("a part must be an object", f"{where}.part")
                if part.get("name") == "event-number":
                    numbers.append(_count(part, f"{where}.part(event-number)"))
                elif part.get("name") == "focus":
                    ref = (part.get("valueReference") or {}).get("reference")
                    focus = _reference(ref, bases, f"{where}.part(focus)")
                    if focus is not None and focus not in foci:
                        foci.append(focus)
        else:
            found.setdefault(name, parameter)
    if "subscription" not in found:
        raise NotificationError("the status names no subscription", "Parameters.parameter")
    reference = (found["subscription"].get("valueReference") or {}).get("reference")
    subscription = _reference(reference, bases, "Parameters.parameter(subscription)")
    if subscription is None or subscription[0] != "Subscription":
        raise NotificationError(
            f"the subscription {reference!r} is not a Subscription of this EHR ({base})",
            "Parameters.parameter(subscription)",
        )
    kind = found.get("type", {}).get("valueCode")
    if kind not in KINDS:
        raise NotificationError(
            f"the notification type {kind!r} is not one of {', '.join(sorted(KINDS))}",
            "Parameters.parameter(type)",
        )
    since = None
    if "events-since-subscription-start" in found:
        since = _count(
            found["events-since-subscription-start"],
            "Parameters.parameter(events-since-subscription-start)",
        )
    if kind in EVENT_KINDS and not foci:  # an EHR that names the foci only in the entries
        for n, entry in enumerate(entries[1:], start=1):
            url = entry.get("fullUrl") if isinstance(entry, dict) else None
            if url is not None:
                focus = _reference(url, bases, f"Bundle.entry[{n}].fullUrl")
                if focus is not None and focus not in foci:
                    foci.append(focus)
    error = found.get("error")
    error_text = None
    if error is not None:
        concept = error.get("valueCodeableConcept") or {}
        error_text = str(concept.get("text") or "the EHR reports an error")
    return Notification(
        subscription=subscription[1],
        kind=str(kind),
        status=str(found.get("status", {}).get("valueCode") or ""),
        events_since_start=since,
        numbers=tuple(numbers),
        foci=tuple(foci),
        error=error_text,
    )
