"""The subscription topics fhirgoal offers, as data (exchange/topics/*.json).

Subscriptions R5 Backport IG STU 1.1 (http://hl7.org/fhir/uv/subscriptions-backport/STU1.1/),
components.html#subscription-topics-in-r4: R4 has no SubscriptionTopic resource; topic
definitions are out of scope there, a topic is known by its canonical URL, and a server
advertises the topics it offers with the `capabilitystatement-subscriptiontopic-canonical`
extension on the CapabilityStatement's Subscription entry. The IG encourages servers to use the
R4B definition internally: each file here is an R4B SubscriptionTopic
(https://hl7.org/fhir/R4B/subscriptiontopic.html), read for

- `resourceTrigger`: the resource type (a name, as R4B allows), its `supportedInteraction`
  (create | update | delete) and `queryCriteria.current`, a search the changed version must
  match (for a deletion: the version deleted);
- `canFilterBy`: the search parameters a Subscription may filter on (its
  `backport-filter-criteria`), per resource type.

Anything else a topic could say that this server would not honour (`queryCriteria.previous`,
`fhirPathCriteria`, `eventTrigger`) makes the topic refuse to load: a topic never promises more
than the server does. Adding a topic is adding a file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from typing import Any
from urllib.parse import parse_qsl

INTERACTIONS = frozenset({"create", "update", "delete"})
UNSUPPORTED_TRIGGER_KEYS = ("fhirPathCriteria",)
UNSUPPORTED_QUERY_KEYS = ("previous", "resultForCreate", "resultForDelete", "requireBoth")


class TopicError(ValueError):
    """A topic definition this server cannot honour."""


@dataclass(frozen=True)
class TopicTrigger:
    resource_type: str
    interactions: frozenset[str]
    criteria: tuple[tuple[str, str], ...]  # queryCriteria.current, as search parameters


@dataclass(frozen=True)
class Topic:
    url: str
    title: str
    triggers: dict[str, TopicTrigger]  # by resource type
    filters: dict[str, frozenset[str]]  # canFilterBy: parameters by resource type
    definition: dict[str, Any]


def _type_name(resource: Any, where: str) -> str:
    if not isinstance(resource, str) or not resource:
        raise TopicError(f"{where}: resource is required")
    return resource.removeprefix("http://hl7.org/fhir/StructureDefinition/")


def parse_topic(definition: dict[str, Any]) -> Topic:
    url = definition.get("url")
    if definition.get("resourceType") != "SubscriptionTopic" or not isinstance(url, str):
        raise TopicError("a topic is a SubscriptionTopic with a url")
    if definition.get("eventTrigger"):
        raise TopicError(f"{url}: eventTrigger is not supported")
    triggers: dict[str, TopicTrigger] = {}
    for i, trigger in enumerate(definition.get("resourceTrigger") or []):
        where = f"{url} resourceTrigger[{i}]"
        rt = _type_name(trigger.get("resource"), where)
        for key in UNSUPPORTED_TRIGGER_KEYS:
            if key in trigger:
                raise TopicError(f"{where}: {key} is not supported")
        query = trigger.get("queryCriteria") or {}
        for key in UNSUPPORTED_QUERY_KEYS:
            if key in query:
                raise TopicError(f"{where}: queryCriteria.{key} is not supported")
        interactions = frozenset(trigger.get("supportedInteraction") or INTERACTIONS)
        if not interactions <= INTERACTIONS:
            raise TopicError(f"{where}: supportedInteraction {sorted(interactions)}")
        current = query.get("current") or ""
        criteria_type, _, criteria = current.partition("?")
        if current and criteria_type != rt:
            raise TopicError(f"{where}: queryCriteria.current must search {rt}")
        if rt in triggers:
            raise TopicError(f"{where}: a second trigger for {rt}")
        triggers[rt] = TopicTrigger(
            rt, interactions, tuple(parse_qsl(criteria, keep_blank_values=True))
        )
    if not triggers:
        raise TopicError(f"{url}: a topic needs a resourceTrigger")
    filters: dict[str, set[str]] = {}
    for entry in definition.get("canFilterBy") or []:
        rt = _type_name(entry.get("resource"), f"{url} canFilterBy")
        if rt not in triggers:
            raise TopicError(f"{url}: canFilterBy names {rt}, which no trigger has")
        filters.setdefault(rt, set()).add(str(entry.get("filterParameter")))
    return Topic(
        url,
        str(definition.get("title") or url),
        triggers,
        {rt: frozenset(params) for rt, params in filters.items()},
        definition,
    )


def load_topics() -> dict[str, Topic]:
    """Every topic of exchange/topics/, by canonical URL."""
    folder = resources.files("fhirgoal.exchange").joinpath("topics")
    topics: dict[str, Topic] = {}
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".json"):
            topic = parse_topic(json.loads(entry.read_text(encoding="utf-8")))
            if topic.url in topics:
                raise TopicError(f"two topics have the url {topic.url}")
            topics[topic.url] = topic
    return topics
