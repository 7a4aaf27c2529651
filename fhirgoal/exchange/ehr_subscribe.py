"""Push in, the EHR side: fhirgoal's Subscriptions at an EHR, so that it notifies fhirgoal of
changes instead of waiting for the next pull.

Issue 15 ("an EHR may ... notify it (a Subscription notification endpoint)"). For a connection
marked `subscribe` (`fhirgoal ehr add --subscribe`, `fhirgoal ehr subscribe NAME`), `ensure`
makes the EHR's Subscriptions match what the connection needs, as a Backend Services client
(exchange/backend_auth.py; the connection's scopes include `system/Subscription.cruds`):

1. **Topics offered**: the EHR's CapabilityStatement (`GET [base]/metadata`), the
   `capabilitystatement-subscriptiontopic-canonical` extensions of its Subscription entry
   (Subscriptions R5 Backport IG STU 1.1, components.html#subscription-topics-in-r4).
2. **What each topic covers**: R4 has no SubscriptionTopic resource and STU 1.1 leaves topic
   definitions out of band, so fhirgoal reads them from data: its own topics
   (exchange/topics/*.json, what a fhirgoal EHR offers) and the connection's mapping folder's
   `topics/*.json` (R4B SubscriptionTopic definitions of the EHR's topics, written by whoever
   writes the dialect). A topic covers a pulled type when it has a trigger for it on create and
   update with no narrowing `queryCriteria` (a narrower one would miss changes a pull sees).
   For each type the connection pulls, the covering topic with the fewest other types is
   chosen; types no topic covers are left to pulls (the report names them).
3. **Filters**: per type, `<Type>?patient=Patient/a,Patient/b,...` with the EHR ids of the
   followed patients when the topic can filter that type by `patient` (`canFilterBy`; a comma
   is OR, search.html#combining), `Patient?_id=...` for Patient by `_id`; else the type
   unfiltered (a notification about a patient fhirgoal does not follow is then ignored,
   exchange/ehr_push.py). More followed patients than `PATIENTS_PER_FILTER`: unfiltered too.
   New patients are linked first (exchange/ehr_identity.py), as a pull would.
4. **The Subscriptions** (`backport-subscription` profile, one per chosen topic): channel
   `rest-hook` to `<sync_notify_base_url or public origin>/sync/notify/<connection>`, payload
   `application/fhir+json` with `backport-payload-content` `id-only` (fhirgoal reads each focus
   from the EHR anyway), `backport-heartbeat-period` `FHIRGOAL_SYNC_PUSH_HEARTBEAT_SECONDS`,
   and the channel header `Authorization: Bearer <secret>`. A recorded Subscription the EHR no
   longer has (404/410) or has turned `off` is made again; one whose filters or endpoint are no
   longer right is updated (PUT, its status kept); one for a topic no longer chosen is deleted.
   Whenever anything is written, the secret is new (random, 256 bits; only its hash is kept,
   exchange/ehr_push_store.py, stored before the EHR can send it), and every Subscription of
   the connection gets it.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import structlog

from fhirgoal.core.errors import FhirError, FhirgoalError
from fhirgoal.core.jsonio import dumps, loads
from fhirgoal.exchange.backend_auth import BackendServicesClient
from fhirgoal.exchange.connections import PULL_TYPES, EhrConnection
from fhirgoal.exchange.ehr_identity import PatientMatcher
from fhirgoal.exchange.ehr_push_store import EhrSubscription, PushStore
from fhirgoal.exchange.ehr_sync import EhrSync
from fhirgoal.exchange.mapping import resolve_directory
from fhirgoal.exchange.subscription_rules import (
    BACKPORT_PROFILE,
    FILTER_CRITERIA,
    HEARTBEAT_PERIOD,
    PAYLOAD_CONTENT,
    TOPIC_CANONICAL,
)
from fhirgoal.exchange.topics import Topic, TopicError, load_topics, parse_topic

log = structlog.get_logger(__name__)

FHIR_JSON = "application/fhir+json"
NOTIFY_PATH = "/sync/notify"
# Followed patients named in one filter; beyond, the Subscription is for the whole type.
PATIENTS_PER_FILTER = 200
WANTED_INTERACTIONS = frozenset({"create", "update"})


class SubscribeError(FhirgoalError, RuntimeError):
    """The EHR's Subscriptions could not be made as needed; the message says why."""


@dataclass
class SubscribeReport:
    connection: str
    followed: int = 0
    linked: int = 0  # patients linked by this pass
    covered: dict[str, str] = field(default_factory=dict)  # type -> topic
    uncovered: list[str] = field(default_factory=list)  # types left to pulls
    actions: list[str] = field(default_factory=list)  # "created Subscription/1 (topic)"
    fresh_patients: bool = False  # followed patients not pulled yet: a pull is needed


def notify_url(sync: EhrSync, connection: EhrConnection) -> str:
    origin = sync.settings.sync_notify_base_url or sync.settings.public_origin()
    return f"{origin.rstrip('/')}{NOTIFY_PATH}/{connection.name}"


def known_topics(connection: EhrConnection) -> dict[str, Topic]:
    """The topic definitions fhirgoal knows for `connection`: its own, and the mapping folder's
    `topics/*.json` (a SubscribeError names a definition that cannot be read)."""
    topics = dict(load_topics())
    if connection.mapping:
        folder = Path(resolve_directory(connection.mapping)) / "topics"
        if folder.is_dir():
            for path in sorted(folder.glob("*.json")):
                try:
                    topic = parse_topic(json.loads(path.read_text(encoding="utf-8")))
                except (OSError, ValueError) as error:
                    raise SubscribeError(f"topic {path}: {error}") from None
                topics[topic.url] = topic
    return topics


def choose_topics(
    pulled: list[str], offered: list[str], known: dict[str, Topic]
) -> tuple[dict[str, Topic], dict[str, str], list[str]]:
    """(chosen topics by url, the topic of each covered type, the types none covers)."""
    covered: dict[str, str] = {}
    uncovered: list[str] = []
    for rt in pulled:
        fits = []
        for url in offered:
            topic = known.get(url)
            trigger = topic.triggers.get(rt) if topic is not None else None
            if (
                topic is not None
                and trigger is not None
                and not trigger.criteria
                and trigger.interactions >= WANTED_INTERACTIONS
            ):
                fits.append(topic)
        if fits:
            covered[rt] = min(fits, key=lambda t: (len(t.triggers), t.url)).url
        else:
            uncovered.append(rt)
    chosen = {url: known[url] for url in sorted(set(covered.values()))}
    return chosen, covered, uncovered


def filters_for(topic: Topic, types: list[str], followed: list[str]) -> list[str]:
    """The backport-filter-criteria values for `types` of `topic` and the followed patients
    (EHR ids); a type the topic cannot filter by patient is not filtered."""
    if len(followed) > PATIENTS_PER_FILTER:
        return []
    out = []
    for rt in types:
        offered = topic.filters.get(rt, frozenset())
        if rt == "Patient" and "_id" in offered:
            out.append(f"Patient?_id={','.join(followed)}")
        elif "patient" in offered:
            out.append(f"{rt}?patient={','.join(f'Patient/{p}' for p in followed)}")
    return out


class Subscriber:
    def __init__(self, sync: EhrSync, store: PushStore) -> None:
        self.sync = sync
        self.store = store

    async def offered_topics(
        self, client: BackendServicesClient, connection: EhrConnection
    ) -> list[str]:
        url = f"{connection.base}/metadata"
        response = await self._call(client, "GET", url)
        if response.status_code != 200:
            raise SubscribeError(f"GET {url}: HTTP {response.status_code}")
        try:
            statement = loads(response.content)
        except FhirError:
            raise SubscribeError(f"GET {url}: not JSON") from None
        offered: list[str] = []
        for rest in (statement or {}).get("rest") or []:
            for resource in rest.get("resource") or []:
                if resource.get("type") != "Subscription":
                    continue
                for extension in resource.get("extension") or []:
                    value = extension.get("valueCanonical")
                    if extension.get("url") == TOPIC_CANONICAL and isinstance(value, str):
                        offered.append(value)
        return offered

    async def ensure(self, connection: EhrConnection) -> SubscribeReport:
        """The EHR's Subscriptions for `connection` as they should be; what was done."""
        report = SubscribeReport(connection.name)
        client = self.sync.client(connection)
        report.linked = await PatientMatcher(self.sync).match(connection, client)
        patients = await self.sync.links.patients(connection.name)
        followed = sorted(p.ehr_id for p in patients)
        report.followed = len(followed)
        report.fresh_patients = any(not p.pulled for p in patients)
        try:
            known = known_topics(connection)
        except TopicError as error:
            raise SubscribeError(str(error)) from None
        offered = await self.offered_topics(client, connection)
        pulled = [t for t in PULL_TYPES if t in connection.pull]
        chosen, report.covered, report.uncovered = choose_topics(pulled, offered, known)
        if not offered:
            report.actions.append("the EHR offers no subscription topics: pulls only")
        state = await self.store.state(connection.name)
        recorded = {s.topic: s for s in state.subscriptions}
        endpoint = notify_url(self.sync, connection)
        desired: dict[str, tuple[list[str], list[str]]] = {}
        if followed:  # no followed patient: nothing to hear about yet
            for url, topic in chosen.items():
                types = [t for t, u in report.covered.items() if u == url]
                desired[url] = (types, filters_for(topic, types, followed))
        # What the EHR holds of the recorded ones
        present: dict[str, dict[str, Any]] = {}
        for url, sub in recorded.items():
            held = await self._read(client, connection, sub.id)
            if held is not None and held.get("status") != "off":
                present[url] = held
        keep: list[EhrSubscription] = []
        for url, sub in recorded.items():
            if url not in desired and url in present:
                await self._delete(client, connection, sub.id)
                report.actions.append(f"deleted Subscription/{sub.id} ({url})")
        changed = [
            url
            for url, (types, filters) in desired.items()
            if url not in present
            or recorded[url].filters != tuple(filters)
            or recorded[url].types != tuple(types)
            or (present[url].get("channel") or {}).get("endpoint") != endpoint
        ]
        if not changed:
            keep = [recorded[url] for url in desired]
            await self.store.save_subscriptions(connection.name, keep)
            report.actions += [f"unchanged Subscription/{s.id} ({s.topic})" for s in keep]
            return report
        secret = secrets.token_urlsafe(32)
        await self.store.new_secret(connection.name, secret)  # before the EHR can send it
        for url, (types, filters) in desired.items():
            body = self._subscription(connection, url, filters, endpoint, secret)
            if url in present:
                sid = recorded[url].id
                body["id"] = sid
                if present[url].get("status") in ("active", "requested", "error"):
                    body["status"] = present[url]["status"]
                await self._write(client, "PUT", f"{connection.base}/Subscription/{sid}", body)
                report.actions.append(f"updated Subscription/{sid} ({url})")
            else:
                made = await self._write(client, "POST", f"{connection.base}/Subscription", body)
                sid = str(made.get("id") or "")
                if not sid:
                    raise SubscribeError("the EHR created a Subscription but gave no id")
                report.actions.append(f"created Subscription/{sid} ({url})")
            keep.append(EhrSubscription(url, sid, tuple(types), tuple(filters)))
            await self.store.save_subscriptions(connection.name, keep)
        log.info("EHR subscriptions", connection=connection.name, actions=report.actions)
        return report

    async def unsubscribe(self, connection: EhrConnection) -> list[str]:
        """Delete the connection's Subscriptions at the EHR; the ids deleted."""
        client = self.sync.client(connection)
        state = await self.store.state(connection.name)
        gone = []
        for sub in state.subscriptions:
            await self._delete(client, connection, sub.id)
            gone.append(sub.id)
        await self.store.save_subscriptions(connection.name, [])
        return gone

    # ---- the EHR's Subscription resources ---------------------------------------------------------
    def _subscription(
        self, connection: EhrConnection, topic: str, filters: list[str], endpoint: str, secret: str
    ) -> dict[str, Any]:
        channel: dict[str, Any] = {
            "type": "rest-hook",
            "endpoint": endpoint,
            "payload": FHIR_JSON,
            "_payload": {"extension": [{"url": PAYLOAD_CONTENT, "valueCode": "id-only"}]},
            "header": [f"Authorization: Bearer {secret}"],
        }
        heartbeat = self.sync.settings.sync_push_heartbeat_seconds
        if heartbeat:
            channel["extension"] = [{"url": HEARTBEAT_PERIOD, "valueUnsignedInt": heartbeat}]
        resource: dict[str, Any] = {
            "resourceType": "Subscription",
            "meta": {"profile": [BACKPORT_PROFILE]},
            "status": "requested",
            "reason": f"fhirgoal EHR sync ({connection.name}): changes pushed to {self.sync.base}",
            "criteria": topic,
            "channel": channel,
        }
        if filters:
            resource["_criteria"] = {
                "extension": [{"url": FILTER_CRITERIA, "valueString": f} for f in filters]
            }
        return resource

    async def _call(
        self, client: BackendServicesClient, method: str, url: str, body: bytes | None = None
    ) -> httpx.Response:
        headers = {"Accept": FHIR_JSON}
        if body is not None:
            headers["Content-Type"] = FHIR_JSON
        try:
            return await client.request(method, url, headers=headers, content=body)
        except httpx.HTTPError as error:
            raise SubscribeError(f"{method} {url}: {type(error).__name__}: {error}") from None

    async def _read(
        self, client: BackendServicesClient, connection: EhrConnection, sid: str
    ) -> dict[str, Any] | None:
        url = f"{connection.base}/Subscription/{sid}"
        response = await self._call(client, "GET", url)
        if response.status_code in (404, 410):
            return None
        if response.status_code != 200:
            raise SubscribeError(f"GET {url}: HTTP {response.status_code}")
        try:
            found = loads(response.content)
        except FhirError:
            raise SubscribeError(f"GET {url}: not JSON") from None
        return found if isinstance(found, dict) else None

    async def _write(
        self, client: BackendServicesClient, method: str, url: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        response = await self._call(client, method, url, dumps(body))
        if response.status_code not in (200, 201):
            raise SubscribeError(
                f"{method} {url}: HTTP {response.status_code}: {_diagnostics(response)}"
            )
        try:
            written = loads(response.content)
        except FhirError:
            written = {}
        return written if isinstance(written, dict) else {}

    async def _delete(
        self, client: BackendServicesClient, connection: EhrConnection, sid: str
    ) -> None:
        url = f"{connection.base}/Subscription/{sid}"
        response = await self._call(client, "DELETE", url)
        if response.status_code not in (200, 202, 204, 404, 410):
            raise SubscribeError(f"DELETE {url}: HTTP {response.status_code}")


def _diagnostics(response: httpx.Response) -> str:
    """What an EHR's OperationOutcome says (its issues' diagnostics), else the body's start."""
    try:
        outcome = loads(response.content)
        issues = outcome.get("issue") or []
        said = "; ".join(str(i.get("diagnostics") or i.get("code")) for i in issues)
        if said:
            return said[:500]
    except (FhirError, AttributeError):
        pass
    return response.text[:200]
