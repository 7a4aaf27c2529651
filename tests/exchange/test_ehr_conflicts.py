"""A goal edited in fhirgoal and in the EHR since they were last in step (exchange/conflicts.py):
neither side is overwritten, a Flag names the goal and both versions, and the next edit in
fhirgoal settles it. Pulls and deliveries are driven one at a time (no background worker), so
each side's edit lands exactly where the test puts it."""

from __future__ import annotations

from typing import Any

from fhirgoal.exchange.conflicts import conflict_flag_id
from fhirgoal.exchange.delivery import DeliveryWorker
from fhirgoal.store.outbox import OUTBOX
from tests.exchange.ehr_pair import Pair, ehr_pair, patient
from tests.helpers import create

SETTINGS = {"outbox_worker": False, "sync_pull_seconds": 0}
FLAG_DETAIL = "http://hl7.org/fhir/StructureDefinition/flag-detail"


async def deliver(pair: Pair) -> int:
    worker = DeliveryWorker(pair.service.outbox, pair.fhirgoal.settings)
    try:
        return await worker.run_once(pair.connection.dest)
    finally:
        await worker.stop()


async def shared_goal(pair: Pair) -> tuple[dict[str, Any], dict[str, Any]]:
    """A goal made in the EHR and pulled into fhirgoal: (the EHR's, fhirgoal's)."""
    ehr_patient = await pair.ehr_create(patient("MRN-7"))
    await create(pair.fhirgoal.client, patient("MRN-7"))
    goal = await pair.ehr_create(
        {
            "resourceType": "Goal",
            "lifecycleStatus": "active",
            "description": {"text": "Walk daily"},
            "subject": {"reference": f"Patient/{ehr_patient['id']}"},
        }
    )
    report = await pair.pull()
    assert report.written == 2, report  # the patient and the goal
    [local] = await pair.in_fhirgoal("Goal", goal["id"])
    return goal, local


async def edit_in_ehr(pair: Pair, goal: dict[str, Any], text: str) -> dict[str, Any]:
    response = await pair.ehr_http.put(
        f"/Goal/{goal['id']}", json={**goal, "description": {"text": text}}
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


async def edit_in_fhirgoal(pair: Pair, goal: dict[str, Any], text: str) -> dict[str, Any]:
    current = (await pair.fhirgoal.client.get(f"/Goal/{goal['id']}")).json()
    response = await pair.fhirgoal.client.put(
        f"/Goal/{goal['id']}", json={**current, "description": {"text": text}}
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


async def flags(pair: Pair) -> list[dict[str, Any]]:
    bundle = (await pair.fhirgoal.client.get("/Flag")).json()
    return [entry["resource"] for entry in bundle.get("entry", [])]


async def description(pair: Pair, base: str, rt_id: str) -> tuple[str, str]:
    client = pair.ehr_http if base == "ehr" else pair.fhirgoal.client
    body = (await client.get(f"/{rt_id}")).json()
    return body["description"]["text"], body["meta"]["versionId"]


async def outbox_errors(pair: Pair) -> list[str]:
    items = pair.service.database[OUTBOX].find({"dest": pair.connection.dest})
    return [doc.get("error", "") async for doc in items if doc["state"] == "void"]


async def test_a_goal_edited_on_both_sides_is_flagged_on_delivery_and_not_overwritten(
    mongo_uri: str,
) -> None:
    async with ehr_pair(mongo_uri, **SETTINGS) as pair:
        theirs, ours = await shared_goal(pair)
        await edit_in_ehr(pair, theirs, "Walk daily, 20 minutes")
        await edit_in_fhirgoal(pair, ours, "Walk three times a week")
        assert await deliver(pair) == 1
        # neither side overwritten
        assert await description(pair, "ehr", f"Goal/{theirs['id']}") == (
            "Walk daily, 20 minutes",
            "2",
        )
        assert await description(pair, "fhirgoal", f"Goal/{ours['id']}") == (
            "Walk three times a week",
            "2",
        )
        [flag] = await flags(pair)
        assert flag["id"] == conflict_flag_id("clinic", f"Goal/{ours['id']}")
        assert flag["status"] == "active"
        assert flag["subject"] == ours["subject"]
        assert flag["code"]["coding"][0]["code"] == "sync-conflict"
        ehr_version = f"{pair.connection.base}/Goal/{theirs['id']}/_history/2"
        details = [e["valueReference"]["reference"] for e in flag["extension"]]
        assert details == [f"Goal/{ours['id']}/_history/2", ehr_version]
        text = flag["code"]["text"]
        assert "'Walk three times a week'" in text and "'Walk daily, 20 minutes'" in text
        assert any("conflict" in error for error in await outbox_errors(pair))

        # a pull of the EHR's version is the same conflict: nothing written, one Flag
        report = await pair.pull()
        assert (report.written, report.conflicts) == (0, 1)
        assert await description(pair, "fhirgoal", f"Goal/{ours['id']}") == (
            "Walk three times a week",
            "2",
        )
        assert len(await flags(pair)) == 1

        # the next edit in fhirgoal settles it: it goes over the EHR's version, the Flag closes
        await edit_in_fhirgoal(pair, ours, "Walk three times a week, 30 minutes")
        assert await deliver(pair) >= 1
        assert await description(pair, "ehr", f"Goal/{theirs['id']}") == (
            "Walk three times a week, 30 minutes",
            "3",
        )
        [flag] = await flags(pair)
        assert flag["status"] == "inactive"


async def test_a_goal_edited_on_both_sides_is_flagged_on_pull_and_not_overwritten(
    mongo_uri: str,
) -> None:
    async with ehr_pair(mongo_uri, **SETTINGS) as pair:
        theirs, ours = await shared_goal(pair)
        await edit_in_fhirgoal(pair, ours, "Walk with a friend")  # not delivered yet
        await edit_in_ehr(pair, theirs, "Walk after lunch")
        report = await pair.pull()
        assert (report.written, report.conflicts) == (0, 1)
        assert await description(pair, "fhirgoal", f"Goal/{ours['id']}") == (
            "Walk with a friend",
            "2",
        )
        [flag] = await flags(pair)
        assert flag["status"] == "active"
        # fhirgoal's pending version does not go over the EHR's either
        await deliver(pair)
        assert await description(pair, "ehr", f"Goal/{theirs['id']}") == ("Walk after lunch", "2")
        assert await pair.ehr_history("Goal", theirs["id"]) == 2
