"""A payer subscribes to its own Tasks (issue 16: "the payer polls the Task or subscribes"): a
Subscription tells only of what its writer may search (exchange/subscription_reach.py).

Real HTTP throughout: two payers with their own Backend Services keys get their tokens from the
token endpoint; the clinician approves their requests; real receivers hear the notifications.
Whether a payer heard of the other's Task is decided once the outbox has nothing left to do for
its Subscriptions (`$status`): a notification is recorded with the write that causes it, so none
can still be on its way."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from fhirgoal.core.jsonio import loads
from fhirgoal.demo import write_demo
from fhirgoal.exchange.subscription_set import SubscriptionSet
from fhirgoal.store.mongo import connect
from tests.auth.conftest import SmartServer, run_smart
from tests.exchange.backport import check_notification, status_of
from tests.exchange.receiver import Receiver, receiver
from tests.exchange.test_subscriptions import FAST, subscription
from tests.exchange.test_topic_subscriptions import topic_subscription
from tests.helpers import FHIR_JSON, JSON_PATCH, wait_until
from tests.payer.conftest import (
    Payer,
    attachment_request,
    by_mrn,
    clinician,
    members_group,
    register_payer,
)

FULL = {"payload": "application/fhir+json"}  # classic: a PUT of the resource


def classic(endpoint: str, criteria: str, **resource: Any) -> dict[str, Any]:
    return {**subscription(endpoint, criteria, **FULL), "reason": "my requests", **resource}


@pytest.fixture
async def clinic(mongo_uri: str) -> AsyncIterator[SmartServer]:
    async with run_smart(mongo_uri, **FAST) as server:
        await write_demo(server.service)
        yield server


async def subscribe(client: httpx.AsyncClient, body: dict[str, Any]) -> dict[str, Any]:
    created = await client.post("/Subscription", json=body, headers=FHIR_JSON)
    assert created.status_code == 201, created.text
    sub: dict[str, Any] = created.json()
    return sub


async def delivery(client: httpx.AsyncClient, sid: str) -> dict[str, Any]:
    """`$status` of one Subscription: its status values, and its outbox counts by state."""
    found = await client.get(f"/Subscription/{sid}/$status")
    assert found.status_code == 200, found.text
    (entry,) = found.json()["entry"]
    values = status_of(entry["resource"])
    values["delivery"] = {p["name"]: p.get("valueInteger") for p in values["fhirgoal-delivery"]}
    return values


async def settled(client: httpx.AsyncClient, *sids: str) -> None:
    """Every Subscription active, and nothing of theirs left in the outbox to deliver."""

    async def done() -> bool:
        for sid in sids:
            values = await delivery(client, sid)
            counts = values["delivery"]
            if values["status"] != "active" or any(
                counts[state] for state in ("pending", "failing", "delivering")
            ):
                return False
        return True

    await wait_until(done, within=30, what="the Subscriptions' outbox settled")


async def request(payer: Payer, mrn: str) -> str:
    async with await payer.client() as client:
        created = await client.post("/Task", json=attachment_request(payer.org, mrn))
        assert created.status_code == 201, created.text
        return str(created.json()["id"])


async def approve(smart: SmartServer, *task_ids: str) -> None:
    async with await clinician(smart) as therapist:
        for task_id in task_ids:
            approved = await therapist.post(
                f"/Task/{task_id}/$approve", json={"resourceType": "Parameters"}
            )
            assert approved.status_code == 200, approved.text


def put_ids(hook: Receiver) -> set[str]:
    """The Task ids a classic full-payload receiver got PUTs of, each checked completed."""
    found = set()
    for received in hook.accepted:
        if received.method == "PUT":
            task = loads(received.body)
            assert task["resourceType"] == "Task" and task["status"] == "completed"
            found.add(task["id"])
    return found


def heard_of(hook: Receiver, task_id: str) -> bool:
    return any(task_id.encode() in r.body or task_id in r.path for r in hook.requests)


def running_set(smart: SmartServer) -> SubscriptionSet:
    """The server's live Subscriptions (its write hook on Subscription)."""
    (found,) = [
        h for h in smart.service.hooks.for_type("Subscription") if isinstance(h, SubscriptionSet)
    ]
    return found


async def payers(smart: SmartServer) -> tuple[Payer, Payer]:
    acme = await register_payer(smart, "acme")
    other = await register_payer(smart, "other")
    for payer, mrn in ((acme, "DEMO-ALEX"), (other, "DEMO-BLAIR")):
        async with await payer.client() as client:
            group = await client.post("/Group", json=members_group(payer.org, by_mrn(mrn)))
            assert group.status_code == 201, group.text
    return acme, other


async def test_a_payer_hears_of_its_own_tasks_only_however_it_subscribes(
    clinic: SmartServer,
) -> None:
    acme, other = await payers(clinic)
    async with (
        receiver() as acme_classic,
        receiver() as acme_patched,
        receiver() as acme_topic,
        receiver() as everything,
        await acme.client() as client,
        await clinic.as_scope("system/Subscription.cruds system/Task.rs") as admin,
    ):
        # classic criteria that name no requester, with a forged "reach" as tag and extension
        forged = classic(
            acme_classic.url,
            "Task?status=completed",
            meta={"tag": [{"system": "https://fhirgoal.org/fhir/subscription-reach",
                           "code": "unrestricted"}]},
            extension=[{"url": "https://fhirgoal.org/fhir/StructureDefinition/subscription-reach",
                        "valueString": "{}"}],
        )  # fmt: skip
        first = await subscribe(client, forged)
        # one written in a transaction naming its own requester, then PATCHed to name none
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{
                "fullUrl": f"urn:uuid:{uuid.uuid4()}",
                "resource": classic(acme_patched.url,
                                    "Task?requester=Organization/acme&status=completed"),
                "request": {"method": "POST", "url": "Subscription"}}],
        }  # fmt: skip
        committed = await client.post("", json=bundle, headers=FHIR_JSON)
        assert committed.status_code == 200, committed.text
        location = committed.json()["entry"][0]["response"]["location"]
        second_id = location.split("Subscription/")[1].split("/")[0]
        widen = [{"op": "replace", "path": "/criteria", "value": "Task?status=completed"}]
        patched = await client.patch(f"/Subscription/{second_id}", json=widen, headers=JSON_PATCH)
        assert patched.status_code == 200, patched.text
        assert patched.json()["criteria"] == "Task?status=completed"
        # topic-based, every Task event, full resources
        topic = await subscribe(client, topic_subscription(acme_topic.url, "task", "full-resource"))
        # a client that may search every Task hears of both payers' requests
        watcher = await subscribe(admin, classic(everything.url, "Task?status=completed"))
        subscriptions = [first["id"], second_id, topic["id"]]
        await settled(client, *subscriptions)  # handshakes answered: the server set `active`
        await settled(admin, watcher["id"])

        theirs = await request(other, "DEMO-BLAIR")
        mine = await request(acme, "DEMO-ALEX")
        await approve(clinic, theirs, mine)

        async def everyone_heard() -> bool:
            return {theirs, mine} <= put_ids(everything) and all(
                mine in put_ids(hook) for hook in (acme_classic, acme_patched)
            )

        await wait_until(everyone_heard, within=30, what="the completions heard")
        await settled(client, *subscriptions)
        for hook in (acme_classic, acme_patched):
            assert put_ids(hook) == {mine}
        assert put_ids(everything) == {theirs, mine}
        # the topic: acme's request and its completion, numbered 1, 2, ... with nothing between
        events = []
        for received in acme_topic.accepted:
            status = check_notification(loads(received.body), "full-resource")
            if status["type"] == "event-notification":
                (event,) = status["notification-event"]
                focus = event["focus"]["reference"].rsplit("/", 1)[1]
                events.append((int(event["event-number"]), focus))
        assert sorted(events) == [(n, mine) for n in range(1, len(events) + 1)]
        assert len(events) >= 2  # requested, then completed
        values = await delivery(client, topic["id"])
        assert values["events-since-subscription-start"] == str(len(events))
        replay = await client.get(f"/Subscription/{topic['id']}/$events")
        assert replay.status_code == 200, replay.text
        replayed = check_notification(replay.json(), "full-resource")
        focuses = {e["focus"]["reference"] for e in replayed["notification-event"]}
        assert focuses == {f"{clinic.base}/Task/{mine}"}
        for hook in (acme_classic, acme_patched, acme_topic):
            assert not heard_of(hook, theirs)
        # the forged tag and extension are kept as the client's data, and widened nothing
        stored = (await client.get(f"/Subscription/{first['id']}")).json()
        assert stored["meta"]["tag"] == forged["meta"]["tag"]


async def test_a_restarted_server_keeps_the_restriction(mongo_uri: str) -> None:
    database = f"reach_{uuid.uuid4().hex[:12]}"
    try:
        async with (
            receiver() as acme_hook,
            receiver() as everything,
        ):
            async with run_smart(mongo_uri, drop_database=False, db=database, **FAST) as first:
                await write_demo(first.service)
                acme, other = await payers(first)
                async with await acme.client() as client:
                    sub = await subscribe(client, classic(acme_hook.url, "Task?status=completed"))
                    await settled(client, sub["id"])
                before = running_set(first).get(sub["id"])
                assert before is not None
            async with run_smart(mongo_uri, db=database, **FAST) as second:
                after = running_set(second).get(sub["id"])
                assert after is not None and after.triggers == before.triggers  # rebuilt alike
                assert "Organization/acme" in repr(after.triggers["Task"].filter)
                acme, other = (Payer(p.org, p.client_id, p.key, second) for p in (acme, other))
                async with await second.as_scope(
                    "system/Subscription.cruds system/Task.rs"
                ) as admin:
                    watcher = await subscribe(
                        admin, classic(everything.url, "Task?status=completed")
                    )
                    await settled(admin, watcher["id"])
                theirs = await request(other, "DEMO-BLAIR")
                mine = await request(acme, "DEMO-ALEX")
                await approve(second, theirs, mine)

                async def heard() -> bool:
                    return put_ids(everything) == {theirs, mine} and mine in put_ids(acme_hook)

                await wait_until(heard, within=30, what="the completions heard")
                async with await acme.client() as client:
                    await settled(client, sub["id"])
                assert put_ids(acme_hook) == {mine}
                assert not heard_of(acme_hook, theirs)
    finally:
        mongo = connect(mongo_uri)
        await mongo.drop_database(database)
        await mongo.close()
