"""The reach of a Subscription's writer, kept with the Subscription: what it may be told of.

A Subscription's notifications are matched against every write, whoever made it
(https://hl7.org/fhir/R4/subscription.html), and tell of what matched: the resource itself (a
classic payload, a topic's `full-resource` content), its id (`id-only`, and `$events`), or at
least that something happened and how often (`empty` content, the event counts of handshakes,
heartbeats and `$status`). So each trigger's filter is ANDed with what the writer could *search*
of that resource type (`AccessContext.condition(type, "s")`, core/access.py; search rather than
read because a notification tells of resources whose ids the subscriber did not know, as a
search does). A client that may search every resource of the type (`system/Task.rs`) hears of
them all; a Da Vinci CDex payer registered for `system/Task.crus?requester=Organization/X` of
its own requests only; a patient-scoped app of its patient's; a practitioner under the caseload
policy of the patients in the caseload.

A snapshot, kept with the version: the conditions are those of the writer's token when the
Subscription version is written, stored as a server field of that version (fhir/hooks.py
`WriteEvent.server_fields`, core/fields.py SERVER) in the same document as the version, so the
two are written atomically, and every replica and every restart rebuilds the very same filters
from it. The snapshot is not brought up to date: scopes narrowed since, a client revoked, a
patient who joined or left a caseload change nothing until the Subscription is written again.

Recomputed on every write: a create, update, PATCH, or transaction entry of a Subscription keeps
the reach of whoever wrote it (an administrator's update widens a payer's Subscription to the
administrator's reach, a payer's update narrows one to the payer's). Nothing in the resource (a
meta tag, an extension) is read for it, so nothing a client sends can forge or widen it. The
server's own status changes (the handshake answered, deliveries failing: subscription_delivery.py)
write with `KEEPS_REACH`, which carries the replaced version's reach forward unchanged.

Failing closed: a reach that would not be matchable in memory (fhir/search/matching.py) is
refused when the Subscription is written (422 on Subscription.criteria), and a client that may
not search a triggered type at all is refused (403). A stored reach that cannot be read, that
lacks a type the Subscription triggers on (a topic that gained a trigger since), or that can no
longer be matched means the Subscription is not run (logged; `$status` says why), never run
unrestricted. A version with no reach at all was stored before this rule, when only a writer who
could search every resource of the types could write one: it goes on running unrestricted.

Stored as BSON bytes: the conditions are MongoDB filters, with `$in` and `$and` as keys (which
the field names of a stored document should not be) and decimals and instants as values, which
BSON keeps exactly. Judged against the alternative, a content-addressed side record: that costs
a second write per Subscription version, ordered before it, and a collector for the records no
version names any more, and the version would still need a server-owned field to name its
record; what it would save is one copy of a large caseload condition shared by several
Subscriptions of one user (measured: 2.7 kB packed for 50 patients, 27 kB for 500, 274 kB for
5,000; read back in 0.05, 0.1 and 0.6 ms, once per version loaded), small beside the 16 MB a
document may hold. What it costs per write: the writer's condition matched after the criteria,
8 -> 19 us for a payer's `requester` on a Task; a 500-patient caseload's `$in` is tested by
hashing (fhir/search/matching.py), 15-20 us.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from decimal import Decimal
from typing import Any

import bson
from bson.codec_options import CodecOptions, TypeDecoder, TypeRegistry
from bson.decimal128 import Decimal128
from bson.errors import BSONError

from fhirgoal.core.access import AccessContext
from fhirgoal.core.errors import FhirError
from fhirgoal.exchange.subscription_rules import Trigger
from fhirgoal.fhir.search.matching import UnsupportedFilter, check
from fhirgoal.store.mongo import CODEC_OPTIONS

# The server field (Version.server) that holds the packed reach.
REACH = "subscription-reach"
# The server's own status changes of a Subscription write with this context: they keep the reach
# of the version they replace (its identity is what says so; no token can produce it).
KEEPS_REACH = AccessContext(subject="subscription-status", unrestricted=True)

# resource type -> the writer's search condition on it ({}: every resource of the type)
Reach = dict[str, dict[str, Any]]


class Unestablished(ValueError):
    """The reach kept with a Subscription version cannot be established: it is not run."""


class _DecimalDecoder(TypeDecoder):
    """Decimals come back as the Decimal they were (the search index holds Decimals, and a
    Decimal128 equals none of them)."""

    bson_type = Decimal128

    def transform_bson(self, value: Any) -> Decimal:
        return Decimal(str(value.to_decimal()))


_EXACT: CodecOptions[dict[str, Any]] = CodecOptions(
    tz_aware=True,
    type_registry=TypeRegistry([*CODEC_OPTIONS.type_registry.codecs, _DecimalDecoder()]),
)


def writer_reach(access: AccessContext, resource_types: Iterable[str]) -> Reach:
    """What the writer may search of each type; FhirError when it may search none of one (403)
    or its condition could not be matched as writes happen (422)."""
    reach: Reach = {}
    for rt in sorted(resource_types):
        condition = access.condition(rt, "s")
        if condition is None:
            raise FhirError(
                "forbidden",
                f"a Subscription tells of the {rt} resources its writer may search, and this "
                f"client may not search {rt} (e.g. system/{rt}.rs, or a narrower search scope)",
                "Subscription.criteria",
            )
        try:
            check(condition)
        except UnsupportedFilter as error:
            raise FhirError(
                "processing",
                f"this client's access to {rt} (its '{error}' test) cannot be checked as writes "
                "happen, so a Subscription cannot be kept within it",
                "Subscription.criteria",
            ) from None
        reach[rt] = condition
    return reach


def pack(reach: Reach) -> bytes:
    return bson.encode({"reach": reach}, codec_options=CODEC_OPTIONS)


def stored_reach(server: Mapping[str, Any]) -> Reach | None:
    """The reach kept with a version (its server fields); None when it has none (stored before
    reaches were kept). Unestablished when it cannot be read back whole."""
    if REACH not in server:
        return None
    data = server[REACH]
    try:
        if not isinstance(data, bytes):
            raise Unestablished(f"it is stored as {type(data).__name__}, not BSON")
        reach = bson.decode(data, codec_options=_EXACT).get("reach")
    except (BSONError, ValueError, TypeError) as error:
        raise Unestablished(f"it cannot be read: {error}") from None
    if not isinstance(reach, dict) or not all(
        isinstance(rt, str) and isinstance(condition, dict) for rt, condition in reach.items()
    ):
        raise Unestablished("it is not a condition per resource type")
    for rt, condition in reach.items():
        try:
            check(condition)
        except UnsupportedFilter as error:
            raise Unestablished(f"its {rt} condition ('{error}') cannot be matched") from None
    return reach


def within(triggers: Mapping[str, Trigger], reach: Reach) -> dict[str, Trigger]:
    """Each trigger's filter ANDed with the writer's condition on its type."""
    kept = {}
    for rt, trigger in triggers.items():
        if rt not in reach:
            raise Unestablished(f"none was kept for {rt}, which it now triggers on")
        condition = reach[rt]
        if condition:
            trigger = replace(trigger, filter={"$and": [trigger.filter, condition]})
        kept[rt] = trigger
    return kept
