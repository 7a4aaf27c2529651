"""R4 Subscriptions, classic and topic-based, delivered through the outbox: the wiring.

https://hl7.org/fhir/R4/subscription.html and the Subscriptions R5 Backport IG STU 1.1
(http://hl7.org/fhir/uv/subscriptions-backport/STU1.1/). The parts, one job each:

- exchange/topics.py and exchange/topics/*.json: the topics offered, as data;
- exchange/subscription_rules.py: a Subscription resource read into what runs (criteria or
  topic and filters, channel, payload content, heartbeat, timeout), or refused (422);
- exchange/subscription_set.py: the live set, its write hook, and the outbox source that
  matches each write (creates, updates and deletions) in memory;
- exchange/subscription_reach.py: the writer's search reach, kept with each Subscription
  version and ANDed into its triggers, so that it only tells of what its writer may search;
- exchange/subscription_delivery.py: the delivery handler (classic rest-hook requests, topic
  notification Bundles, handshake, heartbeat, status changes);
- exchange/notifications.py: the IG's notification Bundle and subscription-status Parameters;
- exchange/subscription_operations.py: `$status` and `$events`;
- store/events.py: per-Subscription event numbers, persisted without gaps or duplicates.

The CapabilityStatement's Subscription entry advertises the IG profile, and each topic with the
`capabilitystatement-subscriptiontopic-canonical` extension (components.html#subscription-topics-in-r4).
"""

from __future__ import annotations

from fhirgoal.config import Settings
from fhirgoal.exchange.subscription_delivery import SubscriptionDelivery
from fhirgoal.exchange.subscription_operations import SubscriptionOperations
from fhirgoal.exchange.subscription_rules import BACKPORT_PROFILE, TOPIC_CANONICAL
from fhirgoal.exchange.subscription_set import HANDSHAKE, HEARTBEAT, NOTIFY, SubscriptionSet
from fhirgoal.exchange.topics import load_topics
from fhirgoal.fhir.service import FhirService
from fhirgoal.store.events import EventCounters


def install(service: FhirService, settings: Settings) -> SubscriptionSet:
    """Plug Subscriptions into the service: its write hook, outbox source, delivery handler,
    operations and what the CapabilityStatement says of them."""
    topics = load_topics()
    subscriptions = SubscriptionSet(service, settings, topics)
    service.hooks.register(subscriptions)
    service.outbox.add_source(subscriptions)
    counters = EventCounters(service.database)
    delivery = SubscriptionDelivery(subscriptions, counters, settings)
    for kind in (NOTIFY, HANDSHAKE, HEARTBEAT):
        service.outbox.handlers[kind] = delivery
    SubscriptionOperations(subscriptions, counters).register(service.operations)
    capability = service.resource_capabilities.setdefault("Subscription", {})
    capability.setdefault("supportedProfile", []).append(BACKPORT_PROFILE)
    capability.setdefault("extension", []).extend(
        {"url": TOPIC_CANONICAL, "valueCanonical": url} for url in sorted(topics)
    )
    return subscriptions
