"""Reading a Subscription resource into what the server runs: classic R4 or topic-based.

Two forms share `Subscription` (https://hl7.org/fhir/R4/subscription.html):

- **Classic R4** (subscription.html#2.46.6.1): `criteria` is a search, `Observation?code=...`.
  `channel.payload` absent means a notification without body; a MIME type means the resource.
- **Topic-based**, Subscriptions R5 Backport IG STU 1.1
  (http://hl7.org/fhir/uv/subscriptions-backport/STU1.1/StructureDefinition-backport-subscription.html):
  `criteria` is the canonical URL of a topic this server offers (exchange/topics.py);
  `criteria`'s `backport-filter-criteria` extensions narrow it with search-style filters
  (`Observation?patient=Patient/1`, `patient=Patient/1` or `Observation.patient=Patient/1`;
  several are ANDed) on the parameters the topic's `canFilterBy` lists;
  `channel.payload` is the notification Bundle's MIME type and its `backport-payload-content`
  extension says how much of the resource goes in it (`empty | id-only | full-resource`);
  `channel` extensions `backport-heartbeat-period`, `backport-timeout` and `backport-max-count`
  (the latter always holds: each notification carries one event).

Both compile to one filter per resource type, built by the search compiler (the same filter the
database would run, so a notification follows exactly a search's semantics) and matched in
memory against each write (fhir/search/matching.py). What cannot be matched that way (chains,
`_has`, `:in`) or what the server would not honour is refused when the Subscription is written,
with an OperationOutcome naming the element (specification.html#accepting-subscription-requests
lists what a server SHOULD check).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from fhirgoal.config import Settings
from fhirgoal.core.errors import FhirError
from fhirgoal.exchange.topics import INTERACTIONS, Topic
from fhirgoal.fhir.search.query import SERVER_SEARCH_LIMITS
from fhirgoal.fhir.service import FhirService

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
BACKPORT_PROFILE = f"{BACKPORT}/backport-subscription"
FILTER_CRITERIA = f"{BACKPORT}/backport-filter-criteria"
PAYLOAD_CONTENT = f"{BACKPORT}/backport-payload-content"
HEARTBEAT_PERIOD = f"{BACKPORT}/backport-heartbeat-period"
TIMEOUT = f"{BACKPORT}/backport-timeout"
MAX_COUNT = f"{BACKPORT}/backport-max-count"
TOPIC_CANONICAL = f"{BACKPORT}/capabilitystatement-subscriptiontopic-canonical"

PAYLOAD_TYPES = ("application/fhir+json", "application/json")
# backport-content-code-system, least to most content
CONTENTS = ("empty", "id-only", "full-resource")


@dataclass(frozen=True)
class Trigger:
    """What writes of one resource type notify: a compiled search filter and the interactions."""

    resource_type: str
    filter: dict[str, Any]
    interactions: frozenset[str]


@dataclass(frozen=True)
class Subscription:
    id: str
    version: int
    status: str
    triggers: dict[str, Trigger]  # by resource type
    endpoint: str
    headers: dict[str, str]
    payload: str | None  # the MIME type; classic: None for a notification without body
    topic: str | None = None  # topic-based: the topic's canonical URL
    content: str = "id-only"  # topic-based: empty | id-only | full-resource
    heartbeat: int | None = None  # seconds
    timeout: float | None = None  # seconds
    max_count: int | None = None

    @property
    def dest(self) -> str:
        return f"Subscription/{self.id}"


def _extensions(element: Any, url: str) -> list[dict[str, Any]]:
    if not isinstance(element, dict):
        return []
    found = element.get("extension") or []
    return [e for e in found if isinstance(e, dict) and e.get("url") == url]


def _one_value(element: Any, url: str, key: str, where: str) -> Any:
    found = _extensions(element, url)
    if len(found) > 1:
        raise FhirError("processing", f"{url.rsplit('/', 1)[1]} may be given once", where)
    return found[0].get(key) if found else None


class SubscriptionReader:
    def __init__(self, service: FhirService, settings: Settings, topics: dict[str, Topic]):
        self.service = service
        self.settings = settings
        self.topics = topics

    def read(self, resource: dict[str, Any]) -> Subscription:
        """The Subscription as the server runs it; FhirError (422) when it cannot be run."""
        criteria = resource.get("criteria")
        if not isinstance(criteria, str) or not criteria:
            raise FhirError("processing", "criteria is required", "Subscription.criteria")
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
        headers = self._headers(channel)
        meta = resource.get("meta") or {}
        common = {
            "id": resource["id"],
            "version": int(meta.get("versionId", "1")),
            "status": resource.get("status", ""),
            "endpoint": endpoint.rstrip("/"),
            "headers": headers,
        }
        if urlsplit(criteria).scheme in ("http", "https"):
            return self._topic_based(resource, criteria, channel, common)
        return self._classic(criteria, channel, common)

    # ---- classic R4 ----------------------------------------------------------------------------
    def _classic(
        self, criteria: str, channel: dict[str, Any], common: dict[str, Any]
    ) -> Subscription:
        rt, _, query = criteria.partition("?")
        if not self.service.conformance.is_stored(rt):
            raise FhirError(
                "processing",
                f"criteria must start with a resource type this server holds, not {rt!r} "
                "(or be the canonical URL of a topic it offers)",
                "Subscription.criteria",
            )
        compiled = self._compile(rt, parse_qsl(query, keep_blank_values=True), "criteria")
        payload = channel.get("payload") or None
        if payload is not None and payload not in PAYLOAD_TYPES:
            raise FhirError(
                "processing",
                f"channel.payload {payload!r} is not supported ({', '.join(PAYLOAD_TYPES)})",
                "Subscription.channel.payload",
            )
        return Subscription(
            triggers={rt: Trigger(rt, compiled, INTERACTIONS)}, payload=payload, **common
        )

    # ---- topic-based (Backport IG) ------------------------------------------------------------
    def _topic_based(
        self,
        resource: dict[str, Any],
        url: str,
        channel: dict[str, Any],
        common: dict[str, Any],
    ) -> Subscription:
        topic = self.topics.get(url)
        if topic is None:
            raise FhirError(
                "processing",
                f"criteria: {url} is not a topic this server offers "
                f"(offered: {', '.join(sorted(self.topics))})",
                "Subscription.criteria",
            )
        params = self._filters(topic, resource.get("_criteria"))
        triggers = {
            rt: Trigger(
                rt,
                self._compile(rt, [*trigger.criteria, *params.get(rt, [])], "filter criteria"),
                trigger.interactions,
            )
            for rt, trigger in topic.triggers.items()
        }
        payload = channel.get("payload")
        mime, _, version = str(payload or "").partition(";")
        if mime.strip() not in PAYLOAD_TYPES:
            raise FhirError(
                "processing",
                f"channel.payload must be the notification's MIME type, one of "
                f"{', '.join(PAYLOAD_TYPES)} (not {payload!r})",
                "Subscription.channel.payload",
            )
        wanted = dict(parse_qsl(version.strip().replace(";", "&")))
        if wanted.get("fhirVersion", "4.0") not in ("4.0", "4.0.1"):
            raise FhirError(
                "processing",
                f"notifications are R4 (fhirVersion=4.0), not {wanted['fhirVersion']}",
                "Subscription.channel.payload",
            )
        content = _one_value(
            channel.get("_payload"),
            PAYLOAD_CONTENT,
            "valueCode",
            "Subscription.channel.payload.extension",
        )
        if content not in CONTENTS:
            raise FhirError(
                "processing",
                "channel.payload needs the backport-payload-content extension, one of "
                f"{', '.join(CONTENTS)} (not {content!r})",
                "Subscription.channel.payload.extension",
            )
        where = "Subscription.channel.extension"
        heartbeat = _one_value(channel, HEARTBEAT_PERIOD, "valueUnsignedInt", where)
        timeout = _one_value(channel, TIMEOUT, "valueUnsignedInt", where)
        max_count = _one_value(channel, MAX_COUNT, "valuePositiveInt", where)
        for name, value, least in (
            ("heartbeat-period", heartbeat, 1),
            ("timeout", timeout, 1),
            ("max-count", max_count, 1),
        ):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < least
            ):
                raise FhirError(
                    "processing", f"backport-{name} must be a whole number >= {least}", where
                )
        return Subscription(
            triggers=triggers,
            payload=mime.strip(),
            topic=url,
            content=content,
            heartbeat=heartbeat,
            timeout=float(timeout) if timeout else None,
            max_count=max_count,
            **common,
        )

    def _filters(self, topic: Topic, criteria_element: Any) -> dict[str, list[tuple[str, str]]]:
        """The `backport-filter-criteria` values as search parameters, by resource type."""
        where = "Subscription.criteria.extension"
        by_type: dict[str, list[tuple[str, str]]] = {}
        for extension in _extensions(criteria_element, FILTER_CRITERIA):
            text = extension.get("valueString")
            if not isinstance(text, str) or not text:
                raise FhirError("processing", "a filter criteria needs a valueString", where)
            named_type, question, query = text.partition("?")
            if not question:
                named_type, query = "", text
            for name, value in parse_qsl(query, keep_blank_values=True):
                rt, dot, param = name.partition(".")
                if not dot or rt not in topic.triggers:
                    rt, param = named_type, name
                base = param.partition(":")[0]
                types = (
                    [rt] if rt else [t for t in topic.triggers if base in topic.filters.get(t, ())]
                )
                if rt and rt not in topic.triggers:
                    raise FhirError(
                        "processing",
                        f"filter {text!r}: topic {topic.url} has no {rt} trigger",
                        where,
                    )
                if not types or any(base not in topic.filters.get(t, ()) for t in types):
                    offered = sorted({f"{t}.{p}" for t, ps in topic.filters.items() for p in ps})
                    raise FhirError(
                        "processing",
                        f"filter {text!r}: {base!r} is not a filter of topic {topic.url} "
                        f"(canFilterBy: {', '.join(offered) or 'none'})",
                        where,
                    )
                for t in types:
                    by_type.setdefault(t, []).append((param, value))
        return by_type

    # ---- shared -------------------------------------------------------------------------------
    def _compile(self, rt: str, params: list[tuple[str, str]], what: str) -> dict[str, Any]:
        try:
            compiled = self.service.engine.compiler(rt, SERVER_SEARCH_LIMITS).compile(
                params, self.settings.public_fhir_base()
            )
        except FhirError as error:
            raise FhirError(
                "processing",
                f"{what}: {error.issues[0].diagnostics}",
                "Subscription.criteria",
            ) from None
        if compiled.deferred:
            raise FhirError(
                "processing",
                f"{what} with chains, _has or :in/:not-in cannot be matched as writes happen",
                "Subscription.criteria",
            )
        return compiled.filter

    @staticmethod
    def _headers(channel: dict[str, Any]) -> dict[str, str]:
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
        return headers
