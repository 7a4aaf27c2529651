"""Topic-based Subscriptions (Subscriptions Backport IG STU 1.1) against real HTTP receivers:
topics advertised, handshake, id-only / full-resource / empty notifications checked against the
IG's profiles and by the server's own R4 validation, event numbers, deletions, heartbeats,
`$status` and `$events`, refusals; and deletions notified to classic Subscriptions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from fhirgoal.core.jsonio import loads
from fhirgoal.exchange.topics import TopicError, parse_topic
from tests.conftest import RunningServer, fresh_settings, running
from tests.exchange.backport import check_notification, status_of
from tests.exchange.receiver import Answer, Receiver, receiver
from tests.exchange.test_subscriptions import FAST, active_subscription
from tests.exchange.test_subscriptions import status_of as stored_status
from tests.helpers import create, diagnostics, patient, store, wait_until

BACKPORT = "http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition"
TOPICS = "https://fhirgoal.org/fhir/SubscriptionTopic"


@pytest.fixture
async def server(mongo_uri: str) -> AsyncIterator[RunningServer]:
    async with running(fresh_settings(mongo_uri, **FAST)) as running_server:
        yield running_server


def topic_subscription(
    endpoint: str,
    topic: str,
    content: str = "id-only",
    filters: tuple[str, ...] = (),
    heartbeat: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    channel: dict[str, Any] = {
        "type": "rest-hook",
        "endpoint": endpoint,
        "payload": "application/fhir+json",
        "_payload": {
            "extension": [{"url": f"{BACKPORT}/backport-payload-content", "valueCode": content}]
        },
    }
    if heartbeat is not None:
        channel["extension"] = [
            {"url": f"{BACKPORT}/backport-heartbeat-period", "valueUnsignedInt": heartbeat}
        ]
    sub: dict[str, Any] = {
        "resourceType": "Subscription",
        "meta": {"profile": [f"{BACKPORT}/backport-subscription"]},
        "status": "requested",
        "reason": "topic test",
        "criteria": f"{TOPICS}/{topic}",
        "channel": channel,
        **extra,
    }
    if filters:
        sub["_criteria"] = {
            "extension": [
                {"url": f"{BACKPORT}/backport-filter-criteria", "valueString": f} for f in filters
            ]
        }
    return sub


def goal(pid: str, text: str = "Sleep 7 hours a night") -> dict[str, Any]:
    return {
        "resourceType": "Goal",
        "lifecycleStatus": "active",
        "description": {"text": text},
        "subject": {"reference": f"Patient/{pid}"},
    }


def encounter(pid: str, status: str = "in-progress") -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "status": status,
        "class": {
            "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
            "code": "AMB",
        },
        "subject": {"reference": f"Patient/{pid}"},
    }


def bundles(hook: Receiver) -> list[dict[str, Any]]:
    return [loads(r.body) for r in hook.accepted]


def events_of(hook: Receiver, content: str) -> list[tuple[int, dict[str, Any]]]:
    """(event number, notification Bundle) of every accepted event notification, checked."""
    found = []
    for bundle in bundles(hook):
        status = check_notification(bundle, content)
        if status["type"] == "event-notification":
            (event,) = status["notification-event"]
            assert status["events-since-subscription-start"] == event["event-number"]
            found.append((int(event["event-number"]), bundle))
    return found


async def r4_valid(server: RunningServer, resource: dict[str, Any]) -> None:
    """The server's own R4 validation ($validate) finds no error in `resource`."""
    response = await server.client.post(
        f"/{resource['resourceType']}/$validate",
        json=resource,
        headers={"Content-Type": "application/fhir+json"},
    )
    assert response.status_code == 200, response.text
    errors = [i for i in response.json().get("issue", []) if i["severity"] in ("error", "fatal")]
    assert errors == [], errors


async def test_capability_statement_advertises_the_topics_profile_and_operations(
    server: RunningServer,
) -> None:
    statement = (await server.client.get("/metadata")).json()
    entry = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Subscription")
    topics = {
        e["valueCanonical"]
        for e in entry["extension"]
        if e["url"] == f"{BACKPORT}/capabilitystatement-subscriptiontopic-canonical"
    }
    assert topics == {
        f"{TOPICS}/{name}"
        for name in ("goal-change", "gas-rating", "outcome-measure", "alert", "encounter", "task")
    }
    assert f"{BACKPORT}/backport-subscription" in entry["supportedProfile"]
    operations = {o["name"]: o["definition"] for o in entry["operation"]}
    assert operations["status"].endswith("/backport-subscription-status")
    assert operations["events"].endswith("/backport-subscription-events")


async def test_id_only_goal_topic_handshake_events_numbered_update_and_delete(
    server: RunningServer,
) -> None:
    pid = (await create(server.client, patient()))["id"]
    other = (await create(server.client, patient("Other")))["id"]
    async with receiver() as hook:
        sub = await create(
            server.client,
            topic_subscription(hook.url, "goal-change", filters=(f"Goal?patient=Patient/{pid}",)),
        )
        await wait_until(lambda: len(hook.accepted) == 1, what="handshake")
        handshake = hook.accepted[0]
        assert handshake.method == "POST" and handshake.path == "/hook"
        assert handshake.headers["content-type"] == "application/fhir+json"
        shake = status_of(loads(handshake.body)["entry"][0]["resource"])
        assert (shake["type"], shake["status"]) == ("handshake", "requested")
        assert shake["events-since-subscription-start"] == "0"
        assert shake["topic"] == f"{TOPICS}/goal-change"

        async def active() -> bool:
            return await stored_status(server, sub["id"]) == "active"

        await wait_until(active, what="active after the handshake")

        await create(server.client, goal(other))  # filtered out: another patient
        created = await create(server.client, goal(pid))
        # each notification awaited before the next write: numbers follow the order items are
        # taken in, and this makes that the order of the writes
        await wait_until(lambda: len(hook.accepted) == 2, what="the create's notification")
        created["lifecycleStatus"] = "completed"
        await store(server.client, created)
        await wait_until(lambda: len(hook.accepted) == 3, what="the update's notification")
        assert (await server.client.delete(f"/Goal/{created['id']}")).status_code in (200, 204)
        await wait_until(lambda: len(hook.accepted) == 4, what="three event notifications")

        events = sorted(events_of(hook, "id-only"), key=lambda e: e[0])
        assert [n for n, _ in events] == [1, 2, 3]
        methods = [b["entry"][1]["request"]["method"] for _, b in events]
        assert methods == ["POST", "PUT", "DELETE"]
        for _, bundle in events:
            focus = bundle["entry"][1]["fullUrl"]
            assert focus.endswith(f"/Goal/{created['id']}")
            status = status_of(bundle["entry"][0]["resource"])
            assert status["subscription"]["reference"].endswith(f"/Subscription/{sub['id']}")
            await r4_valid(server, bundle)
        assert events[2][1]["entry"][1]["response"]["status"].startswith("204")


async def test_full_resource_carries_the_stored_resource_and_a_deletion_its_request(
    server: RunningServer,
) -> None:
    pid = (await create(server.client, patient()))["id"]
    async with receiver() as hook:
        await active_topic(server, hook, "encounter", "full-resource")
        stored = await create(server.client, encounter(pid))
        await wait_until(lambda: len(hook.accepted) == 2, what="notification")
        assert (await server.client.delete(f"/Encounter/{stored['id']}")).status_code in (200, 204)
        await wait_until(lambda: len(hook.accepted) == 3, what="deletion notification")
        (first, created), (second, deleted) = sorted(events_of(hook, "full-resource"))
        assert (first, second) == (1, 2)
        assert created["entry"][1]["resource"] == stored
        assert created["entry"][1]["request"] == {"method": "POST", "url": "Encounter"}
        assert "resource" not in deleted["entry"][1]
        assert deleted["entry"][1]["request"] == {
            "method": "DELETE",
            "url": f"Encounter/{stored['id']}",
        }
        for _, bundle in ((first, created), (second, deleted)):
            await r4_valid(server, bundle)


async def test_empty_content_names_no_resource(server: RunningServer) -> None:
    pid = (await create(server.client, patient()))["id"]
    async with receiver() as hook:
        await active_topic(server, hook, "alert", "empty")
        await create(
            server.client,
            {
                "resourceType": "Flag",
                "status": "active",
                "code": {"text": "ORS deterioration"},
                "subject": {"reference": f"Patient/{pid}"},
            },
        )
        await wait_until(lambda: len(hook.accepted) == 2, what="notification")
        ((number, bundle),) = events_of(hook, "empty")
        assert number == 1 and len(bundle["entry"]) == 1


async def test_outcome_measure_topic_matches_its_codes_only(server: RunningServer) -> None:
    pid = (await create(server.client, patient()))["id"]
    async with receiver() as hook:
        await active_topic(server, hook, "outcome-measure", "id-only")
        weight = await create(server.client, _observation(pid, "http://loinc.org", "29463-7"))
        phq9 = await create(server.client, _observation(pid, "http://loinc.org", "44261-6"))
        await wait_until(lambda: len(hook.accepted) == 2, what="the PHQ-9 notification")
        ((_, bundle),) = events_of(hook, "id-only")
        assert bundle["entry"][1]["fullUrl"].endswith(f"/Observation/{phq9['id']}")
        assert weight["id"] not in str(bundle)


def _observation(pid: str, system: str, code: str) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": f"Patient/{pid}"},
        "effectiveDateTime": "2026-01-05T10:00:00Z",
        "valueQuantity": {"value": 12},
    }


async def active_topic(
    server: RunningServer, hook: Receiver, topic: str, content: str, **options: Any
) -> dict[str, Any]:
    sub = await create(server.client, topic_subscription(hook.url, topic, content, **options))

    async def active() -> bool:
        return await stored_status(server, sub["id"]) == "active"

    await wait_until(active, what="handshake")
    return sub


async def test_heartbeats_come_when_nothing_else_does(server: RunningServer) -> None:
    async with receiver() as hook:
        sub = await active_topic(server, hook, "goal-change", "id-only", heartbeat=1)
        await wait_until(lambda: len(hook.accepted) >= 3, within=15, what="two heartbeats")
        kinds = [check_notification(b, "id-only")["type"] for b in bundles(hook)]
        assert kinds[0] == "handshake" and set(kinds[1:]) == {"heartbeat"}
        beats = [r.at for r in hook.accepted[1:]]
        assert beats[1] - beats[0] >= 0.9  # one per period, not one per look
        assert len({r.key for r in hook.accepted}) == len(hook.accepted)
        status = status_of(loads(hook.accepted[1].body)["entry"][0]["resource"])
        assert status["status"] == "active"
        assert status["subscription"]["reference"].endswith(sub["id"])


async def test_status_operation_instance_and_type_level(server: RunningServer) -> None:
    pid = (await create(server.client, patient()))["id"]
    async with receiver() as hook:
        sub = await active_topic(server, hook, "goal-change", "id-only")
        await create(server.client, goal(pid))
        await create(server.client, goal(pid, "Walk daily"))
        await wait_until(lambda: len(hook.accepted) == 3, what="two notifications")

        async def delivered_both() -> bool:
            found = await server.client.get(f"/Subscription/{sub['id']}/$status")
            (entry,) = found.json()["entry"]
            parts = {
                p["name"]: p.get("valueInteger")
                for p in _parameter(entry["resource"], "fhirgoal-delivery")["part"]
            }
            return parts["delivered"] == 3  # the handshake and two events

        await wait_until(delivered_both, what="the outbox settled")
        found = (await server.client.get(f"/Subscription/{sub['id']}/$status")).json()
        assert found["type"] == "searchset" and found["total"] == 1
        status = status_of(found["entry"][0]["resource"])
        assert (status["type"], status["status"]) == ("query-status", "active")
        assert status["events-since-subscription-start"] == "2"
        typed = (await server.client.get("/Subscription/$status?status=active")).json()
        assert [status_of(e["resource"])["subscription"]["reference"] for e in typed["entry"]] == [
            status["subscription"]["reference"]
        ]
        none = (await server.client.get("/Subscription/$status?status=off")).json()
        assert none["total"] == 0
        missing = await server.client.get("/Subscription/nope/$status")
        assert missing.status_code == 404

        replay = await server.client.get(
            f"/Subscription/{sub['id']}/$events?eventsSinceNumber=2&eventsUntilNumber=2"
        )
        assert replay.status_code == 200, replay.text
        bundle = replay.json()
        replayed = check_notification(bundle, "id-only")
        assert replayed["type"] == "query-event"
        assert [e["event-number"] for e in replayed["notification-event"]] == ["2"]


def _parameter(parameters: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in parameters["parameter"] if p["name"] == name)


async def test_unrunnable_topic_subscriptions_are_refused_and_nothing_stored(
    server: RunningServer,
) -> None:
    endpoint = "http://127.0.0.1:9/hook"
    cases = [
        (topic_subscription(endpoint, "no-such-topic"), "not a topic this server offers"),
        (
            topic_subscription(endpoint, "goal-change", filters=("Goal?target-date=2026",)),
            "not a filter of topic",
        ),
        (
            topic_subscription(endpoint, "goal-change", filters=("Flag?patient=Patient/1",)),
            "has no Flag trigger",
        ),
        (topic_subscription(endpoint, "goal-change", content="everything"), "payload-content"),
    ]
    no_content = topic_subscription(endpoint, "goal-change")
    del no_content["channel"]["_payload"]
    cases.append((no_content, "payload-content"))
    for body, says in cases:
        response = await server.client.post(
            "/Subscription", json=body, headers={"Content-Type": "application/fhir+json"}
        )
        assert response.status_code == 422, response.text
        assert says in diagnostics(response.json())
    bundle = (await server.client.get("/Subscription")).json()
    assert not bundle.get("entry")


async def test_classic_subscriptions_hear_of_deletions(server: RunningServer) -> None:
    async with receiver() as bare, receiver() as mirror:
        await active_subscription(server, bare, "Patient?family=Gone")
        await active_subscription(
            server, mirror, "Patient?family=Gone", payload="application/fhir+json"
        )
        kept = await create(server.client, patient("Kept"))
        gone = await create(server.client, patient("Gone"))
        await wait_until(lambda: len(mirror.accepted) == 2, what="the create")
        assert (await server.client.delete(f"/Patient/{kept['id']}")).status_code in (200, 204)
        assert (await server.client.delete(f"/Patient/{gone['id']}")).status_code in (200, 204)
        await wait_until(lambda: len(mirror.accepted) == 3, what="the deletion")
        await wait_until(lambda: len(bare.accepted) == 3, what="the deletion, without payload")
        deletion = mirror.accepted[2]
        assert (deletion.method, deletion.path) == ("DELETE", f"/hook/Patient/{gone['id']}")
        assert f"Patient/{gone['id']}/_history/2" in deletion.key
        assert (bare.accepted[2].method, bare.accepted[2].body) == ("POST", b"")


async def test_receiver_down_for_a_while_then_back_loses_nothing(mongo_uri: str) -> None:
    settings = fresh_settings(mongo_uri, **{**FAST, "subscription_error_after": 2})
    async with running(settings) as server, receiver() as hook:
        pid = (await create(server.client, patient()))["id"]
        sub = await active_topic(server, hook, "goal-change", "id-only")
        hook.plan = [Answer(503)] * 12  # down: every attempt refused for a while
        for n in range(5):
            await create(server.client, goal(pid, f"Goal {n}"))

        async def errored() -> bool:
            return await stored_status(server, sub["id"]) == "error"

        await wait_until(errored, within=20, what="error while the receiver is down")
        await wait_until(lambda: not hook.plan, within=30, what="the receiver's bad spell")
        await wait_until(lambda: len(events_of(hook, "id-only")) == 5, within=30, what="all five")
        numbers = sorted(n for n, _ in events_of(hook, "id-only"))
        assert numbers == [1, 2, 3, 4, 5]

        async def active() -> bool:
            return await stored_status(server, sub["id"]) == "active"

        await wait_until(active, what="active again")


async def test_every_offered_topic_takes_a_subscription_filtered_by_patient(
    server: RunningServer,
) -> None:
    """Each topic's data (its queryCriteria, its canFilterBy) compiles: a topic that could not
    run would otherwise be found out only by its first subscriber."""
    statement = (await server.client.get("/metadata")).json()
    entry = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Subscription")
    for extension in entry["extension"]:
        topic = extension["valueCanonical"].rsplit("/", 1)[1]
        body = topic_subscription(
            "http://127.0.0.1:9/hook", topic, filters=("patient=Patient/1",), status="off"
        )
        response = await server.client.post(
            "/Subscription", json=body, headers={"Content-Type": "application/fhir+json"}
        )
        assert response.status_code == 201, (topic, response.text)


def test_a_topic_asking_what_the_server_does_not_do_refuses_to_load() -> None:
    base = {
        "resourceType": "SubscriptionTopic",
        "url": "https://example.org/topic",
        "resourceTrigger": [{"resource": "Goal", "supportedInteraction": ["create"]}],
    }
    assert parse_topic(base).triggers["Goal"].interactions == {"create"}
    for change, says in [
        ({"queryCriteria": {"previous": "Goal?lifecycle-status=active"}}, "previous"),
        ({"fhirPathCriteria": "%current.status = 'active'"}, "fhirPathCriteria"),
        ({"queryCriteria": {"current": "Flag?status=active"}}, "must search Goal"),
        ({"supportedInteraction": ["read"]}, "supportedInteraction"),
    ]:
        trigger = {**base["resourceTrigger"][0], **change}  # type: ignore[index]
        with pytest.raises(TopicError, match=says):
            parse_topic({**base, "resourceTrigger": [trigger]})
    with pytest.raises(TopicError, match="no trigger"):
        parse_topic({**base, "canFilterBy": [{"resource": "Flag", "filterParameter": "patient"}]})
