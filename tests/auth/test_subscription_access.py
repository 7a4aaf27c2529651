"""Whom a Subscription tells: only of what its writer may search (exchange/subscription_reach.py).
A practitioner under the caseload policy hears of the caseload's patients, a patient-scoped app
of its patient, a client that may search every resource of the type of all of them; a client
that may not search the type at all cannot subscribe to it. Real tokens, real HTTP, real
receivers; whether a Subscription heard of something is decided once the outbox has nothing
left to deliver for it."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from fhirgoal.core.jsonio import loads
from tests.auth.conftest import SmartServer, run_smart
from tests.exchange.backport import check_notification
from tests.exchange.receiver import Receiver, receiver
from tests.exchange.test_subscriptions import FAST
from tests.exchange.test_topic_subscriptions import topic_subscription
from tests.helpers import FHIR_JSON, finished_encounter, wait_until
from tests.payer.test_subscription_reach import classic, settled, subscribe

SUBSCRIPTION = {
    "resourceType": "Subscription",
    "status": "requested",
    "reason": "ratings to the EHR",
    "criteria": "Observation?category=survey",
    "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook", "payload": "application/fhir+json"},
}  # fmt: skip


@pytest.fixture
async def fast_smart(mongo_uri: str) -> AsyncIterator[SmartServer]:
    async with run_smart(mongo_uri, **FAST) as server:
        yield server


async def test_a_client_that_may_not_search_the_type_cannot_subscribe(smart: SmartServer) -> None:
    async with await smart.as_scope("system/Subscription.cruds") as blind:
        refused = await blind.post("/Subscription", json=SUBSCRIPTION, headers=FHIR_JSON)
        assert refused.status_code == 403, refused.text
        issue = refused.json()["issue"][0]
        assert "may not search Observation" in issue["diagnostics"]
        assert issue["expression"] == ["Subscription.criteria"]
        assert (await blind.get("/Subscription")).json()["total"] == 0  # nothing stored
    async with await smart.as_scope("system/Subscription.cruds system/Observation.rs") as ehr:
        created = await ehr.post("/Subscription", json=SUBSCRIPTION, headers=FHIR_JSON)
        assert created.status_code == 201, created.text


def heard(hook: Receiver) -> set[str]:
    """The patients of the Encounters a receiver was told of (full resources, either form)."""
    found = set()
    for received in hook.accepted:
        if received.method == "PUT":  # classic, a payload
            found.add(loads(received.body)["subject"]["reference"])
        elif received.body:
            bundle = loads(received.body)
            if check_notification(bundle, "full-resource")["type"] == "event-notification":
                found.add(bundle["entry"][1]["resource"]["subject"]["reference"])
    return found


async def test_caseload_and_patient_scoped_subscriptions_tell_of_their_reach_only(
    fast_smart: SmartServer,
) -> None:
    smart = fast_smart
    await smart.seed({"resourceType": "Practitioner", "id": "doc"})
    for pid in ("pa", "pb"):  # in doc's caseload (FHIRGOAL_USER_ACCESS=caseload, the default)
        await smart.seed({"resourceType": "Patient", "id": pid,
                          "generalPractitioner": [{"reference": "Practitioner/doc"}]})  # fmt: skip
    await smart.seed({"resourceType": "Patient", "id": "stranger"})  # nobody's
    therapist_token = await smart.mint("user/*.cruds", fhir_user="Practitioner/doc")
    app_token = await smart.mint("patient/Encounter.rs system/Subscription.cru", patient="pa")
    async with (
        receiver() as caseload_hook,
        receiver() as patient_hook,
        receiver() as everything,
        smart.client(therapist_token) as therapist,
        smart.client(app_token) as patient_app,
        await smart.as_scope("system/Subscription.cruds system/Encounter.crus") as admin,
    ):
        criteria = "Encounter?status=finished"
        mine = await subscribe(
            therapist, topic_subscription(caseload_hook.url, "encounter", "full-resource")
        )
        theirs = await subscribe(patient_app, classic(patient_hook.url, criteria))
        watcher = await subscribe(admin, classic(everything.url, criteria))
        await settled(admin, mine["id"], theirs["id"], watcher["id"])
        for pid in ("pa", "pb", "stranger"):
            created = await admin.post(
                "/Encounter", json=finished_encounter(pid), headers=FHIR_JSON
            )
            assert created.status_code == 201, created.text

        async def all_heard() -> bool:
            return len(heard(everything)) == 3

        await wait_until(all_heard, within=30, what="every Encounter heard by the watcher")
        await settled(admin, mine["id"], theirs["id"], watcher["id"])
        assert heard(caseload_hook) == {"Patient/pa", "Patient/pb"}
        assert heard(patient_hook) == {"Patient/pa"}
        # each one may read its own Subscription's $status; an out-of-reach event is not counted
        found = await therapist.get(f"/Subscription/{mine['id']}/$status")
        assert found.status_code == 200, found.text
        (entry,) = found.json()["entry"]
        counted = next(
            p
            for p in entry["resource"]["parameter"]
            if p["name"] == "events-since-subscription-start"
        )
        assert counted["valueString"] == "2"
