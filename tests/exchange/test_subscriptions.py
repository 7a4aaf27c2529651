"""R4 Subscriptions over the outbox, against real HTTP receivers (exchange/subscriptions.py,
exchange/delivery.py): handshake, id-only and full-resource notifications, criteria matching,
`off`, and receivers that fail, throttle, stall and see a notification twice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from fhirgoal.core.jsonio import loads
from fhirgoal.store.mongo import connect
from fhirgoal.store.outbox import OUTBOX
from tests.conftest import RunningServer, fresh_settings, running
from tests.exchange.receiver import Answer, Receiver, receiver
from tests.helpers import create, diagnostics, observation, patient, store, wait_until

FAST = {
    "outbox_backoff_base_seconds": 0.1,
    "outbox_backoff_max_seconds": 2.0,
    "outbox_poll_seconds": 0.1,
    "outbox_timeout_seconds": 2.0,
    "outbox_lease_seconds": 6.0,
    "subscription_refresh_seconds": 0.5,
}


@pytest.fixture
async def server(mongo_uri: str) -> AsyncIterator[RunningServer]:
    async with running(fresh_settings(mongo_uri, **FAST)) as running_server:
        yield running_server


def subscription(
    endpoint: str, criteria: str = "Observation?code=http://loinc.org|29463-7", **channel: Any
) -> dict[str, Any]:
    return {
        "resourceType": "Subscription",
        "status": "requested",
        "reason": "test",
        "criteria": criteria,
        "channel": {"type": "rest-hook", "endpoint": endpoint, **channel},
    }


async def status_of(server: RunningServer, sid: str) -> str:
    body = (await server.client.get(f"/Subscription/{sid}")).json()
    return str(body["status"])


async def active_subscription(
    server: RunningServer, hook: Receiver, criteria: str | None = None, **channel: Any
) -> dict[str, Any]:
    args = {"criteria": criteria} if criteria else {}
    sub = await create(server.client, subscription(hook.url, **args, **channel))

    async def active() -> bool:
        return await status_of(server, sub["id"]) == "active"

    await wait_until(active, what="handshake")
    return sub


async def outbox_states(server: RunningServer) -> dict[str, int]:
    mongo = connect(server.settings.mongodb_uri or "")
    try:
        counts: dict[str, int] = {}
        async for doc in mongo[server.settings.db][OUTBOX].find({}, {"state": 1}):
            counts[doc["state"]] = counts.get(doc["state"], 0) + 1
        return counts
    finally:
        await mongo.close()


async def test_handshake_activates_then_id_only_notifications_for_matching_writes_only(
    server: RunningServer,
) -> None:
    async with receiver() as hook:
        sub = await create(
            server.client, subscription(hook.url, header=["Authorization: Bearer secret-1"])
        )
        assert sub["status"] == "requested"
        await wait_until(lambda: len(hook.requests) == 1, what="handshake")
        handshake = hook.requests[0]
        assert (handshake.method, handshake.body) == ("POST", b"")
        assert handshake.headers["authorization"] == "Bearer secret-1"

        async def active() -> bool:
            return await status_of(server, sub["id"]) == "active"

        await wait_until(active, what="Subscription active after the handshake")

        pid = (await create(server.client, patient()))["id"]
        other = observation(pid)
        other["code"]["coding"][0]["code"] = "8302-2"  # body height: does not match
        await create(server.client, other)
        matched = await create(server.client, observation(pid))
        await wait_until(lambda: len(hook.requests) == 2, what="one notification")
        note = hook.requests[1]
        assert (note.method, note.path, note.body) == ("POST", "/hook", b"")
        assert note.headers["authorization"] == "Bearer secret-1"
        assert f"Observation/{matched['id']}/_history/1" in note.key
        # an update that still matches is notified too, under a new key
        matched["status"] = "amended"
        await store(server.client, matched)
        await wait_until(lambda: len(hook.requests) == 3, what="the update's notification")
        assert len(hook.accepted_keys()) == 3


async def test_full_resource_payload_is_put_to_endpoint_type_id(server: RunningServer) -> None:
    async with receiver() as hook:
        await active_subscription(
            server, hook, "Patient?family=Okafor", payload="application/fhir+json"
        )
        response = await server.client.post(
            "/Patient",
            content=b'{"resourceType":"Patient","name":[{"family":"Okafor"}],"multipleBirthInteger":2}',
            headers={"Content-Type": "application/fhir+json"},
        )
        assert response.status_code == 201
        stored = response.json()
        await wait_until(lambda: len(hook.requests) == 2, what="notification")
        note = hook.requests[1]
        assert (note.method, note.path) == ("PUT", f"/hook/Patient/{stored['id']}")
        assert note.headers["content-type"] == "application/fhir+json"
        assert loads(note.body) == stored


async def test_off_stops_notifications(server: RunningServer) -> None:
    async with receiver() as hook:
        sub = await active_subscription(server, hook, "Patient")
        await create(server.client, patient("First"))
        await wait_until(lambda: len(hook.requests) == 2, what="first notification")
        sub = (await server.client.get(f"/Subscription/{sub['id']}")).json()
        sub["status"] = "off"
        await store(server.client, sub)
        await create(server.client, patient("Second"))
        # a later Subscription's handshake proves the worker ran after the write
        async with receiver() as witness:
            await active_subscription(server, witness, "Patient")
        assert len(hook.requests) == 2


async def test_unrunnable_criteria_are_refused_and_nothing_stored(server: RunningServer) -> None:
    for criteria, says in [
        ("Observation?nonsense=1", "nonsense"),
        ("Nothing?x=1", "resource type"),
        ("Observation?subject.name=x", "chains"),
    ]:
        response = await server.client.post(
            "/Subscription",
            json=subscription("http://127.0.0.1:9/hook", criteria),
            headers={"Content-Type": "application/fhir+json"},
        )
        assert response.status_code == 422, response.text
        assert says in diagnostics(response.json())
    bundle = (await server.client.get("/Subscription")).json()
    assert bundle.get("total", 0) == 0 and not bundle.get("entry")


async def test_hostile_receiver_500_429_and_stall_still_delivers_once_in_effect(
    server: RunningServer,
) -> None:
    plan = [
        Answer(),  # handshake
        Answer(500),
        Answer(429, {"Retry-After": "1"}),
        Answer(200, stall=3.0),  # taken, but answered after the sender's 2 s timeout
    ]
    async with receiver(plan) as hook:
        await active_subscription(server, hook, "Patient")
        await create(server.client, patient())
        await wait_until(lambda: len(hook.accepted) == 3, within=20, what="delivered")
        notes = hook.requests[1:]
        assert [n.status for n in notes] == [500, 429, 200, 200]
        # one notification, one key: the stalled attempt was taken, and then again
        assert len({n.key for n in notes}) == 1
        assert notes[2].at - notes[1].at >= 0.95  # Retry-After honoured

        async def settled() -> bool:
            return set(await outbox_states(server)) == {"delivered"}

        await wait_until(settled, what="outbox settled")


async def test_failing_receiver_sets_error_and_dead_letters_after_the_horizon(
    mongo_uri: str,
) -> None:
    settings = fresh_settings(
        mongo_uri, **{**FAST, "outbox_dead_after_seconds": 2.0, "subscription_error_after": 2}
    )
    async with running(settings) as server, receiver([Answer()]) as hook:
        sub = await active_subscription(server, hook, "Patient")
        hook.plan = [Answer(500)] * 1000
        await create(server.client, patient())

        async def errored() -> bool:
            body = (await server.client.get(f"/Subscription/{sub['id']}")).json()
            return body["status"] == "error" and "HTTP 500" in body.get("error", "")

        await wait_until(errored, within=10, what="Subscription status error")

        async def dead() -> bool:
            return (await outbox_states(server)).get("dead") == 1

        await wait_until(dead, within=15, what="a dead letter")
        failures = len(hook.requests)
        assert failures >= 3
        # once the receiver works again a new notification turns the Subscription active
        hook.plan = []
        await create(server.client, patient("Again"))

        async def active() -> bool:
            return await status_of(server, sub["id"]) == "active"

        await wait_until(active, within=10, what="active again")


async def test_transaction_entries_notify_only_when_the_transaction_commits(
    server: RunningServer,
) -> None:
    async with receiver() as hook:
        await active_subscription(server, hook, "Patient?family=Unit")
        keep = await create(server.client, patient("Keep"))
        failing = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {"resource": patient("Unit"), "request": {"method": "POST", "url": "Patient"}},
                {  # processed after the POST (R4 order), and fails: the unit is rolled back
                    "resource": keep,
                    "request": {
                        "method": "PUT",
                        "url": f"Patient/{keep['id']}",
                        "ifMatch": 'W/"9"',
                    },
                },
            ],
        }
        response = await server.client.post("/", json=failing)
        assert response.status_code == 412, response.text
        committed = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [
                {"resource": patient("Unit"), "request": {"method": "POST", "url": "Patient"}},
                {"resource": patient("Other"), "request": {"method": "POST", "url": "Patient"}},
            ],
        }
        response = await server.client.post("/", json=committed)
        assert response.status_code == 200, response.text
        location = response.json()["entry"][0]["response"]["location"]
        created = location.split("/Patient/")[1].split("/")[0]
        await wait_until(lambda: len(hook.requests) == 2, what="the committed entry's notice")
        assert f"Patient/{created}/_history/1" in hook.requests[1].key
        assert (await outbox_states(server)) == {"delivered": 2}  # handshake + one notice


async def test_a_failed_handshake_sets_error_and_a_later_success_activates(
    server: RunningServer,
) -> None:
    async with receiver([Answer(503)] * 3) as hook:
        sub = await create(server.client, subscription(hook.url, "Patient"))

        async def active() -> bool:
            body = (await server.client.get(f"/Subscription/{sub['id']}")).json()
            return body["status"] == "active" and "error" not in body

        await wait_until(active, what="the fourth handshake activates it")
        history = (await server.client.get(f"/Subscription/{sub['id']}/_history")).json()
        statuses = [e["resource"]["status"] for e in reversed(history["entry"])]
        assert statuses == ["requested", "error", "active"]
        errored = next(
            e["resource"] for e in history["entry"] if e["resource"]["status"] == "error"
        )
        assert "HTTP 503" in errored["error"]
        assert [r.status for r in hook.requests] == [503, 503, 503, 200]
        assert len({r.key for r in hook.requests}) == 1


async def test_items_of_writes_that_lost_their_race_are_voided_and_never_sent(
    server: RunningServer,
) -> None:
    """The void path of the outbox (fhir/outbox.py): an item is recorded before its version is
    stored, so a write that then loses its compare-and-set to a concurrent writer (and is
    retried as the next version) leaves an item naming a version text that was never stored.
    Concurrent updates of one resource make that happen for real; the worker voids those items
    and delivers exactly one notification per stored version."""
    async with receiver() as hook:
        await active_subscription(server, hook, "Patient")
        stored = await create(server.client, patient("Racer"))
        voided = 0
        for _ in range(10):  # rounds until some write has lost a race (the first, usually)
            writes = []
            for n in range(12):
                body = {**stored, "name": [{"family": f"Racer{n}"}]}
                writes.append(
                    server.client.put(
                        f"/Patient/{stored['id']}",
                        json=body,
                        headers={"Content-Type": "application/fhir+json"},
                    )
                )
            responses = await asyncio.gather(*writes)
            # 409: a write that lost its race more often than the server retries (a loaded
            # machine); its items are voided as well
            assert {r.status_code for r in responses} <= {200, 409}, [r.text for r in responses]

            async def settled() -> bool:
                states = await outbox_states(server)
                return set(states) <= {"delivered", "void"}

            await wait_until(settled, within=40, what="every item delivered or voided")
            voided = (await outbox_states(server)).get("void", 0)
            if voided:
                break
        assert voided > 0, "no write lost a race in 10 rounds"
        history = (await server.client.get(f"/Patient/{stored['id']}/_history?_count=500")).json()
        stored_versions = {
            f"Patient/{stored['id']}/_history/{e['resource']['meta']['versionId']}"
            for e in history["entry"]
        }
        notified = [k.split("|")[1] for k in hook.accepted_keys() if "|Patient/" in k]
        # one notification per stored version, none for a version that was never stored
        assert sorted(notified) == sorted(stored_versions)
        mongo = connect(server.settings.mongodb_uri or "")
        try:
            void = await mongo[server.settings.db][OUTBOX].find_one({"state": "void"})
        finally:
            await mongo.close()
        assert void is not None and "never stored" in void["error"]
