"""Deletions both ways between two real fhirgoal servers (exchange/ehr_deletions.py): what
fhirgoal sent and then deleted is deleted in the EHR, once; what the EHR deletes is deleted in
fhirgoal, unless fhirgoal owns content in it (a GAS scale, ratings): then a Flag, nothing lost.
Pulls and deliveries are driven one at a time (no background worker)."""

from __future__ import annotations

from typing import Any

from fhirgoal.clinical.codes import GAS_EXTENSION
from fhirgoal.clinical.resources import gas_goal, gas_rating
from fhirgoal.exchange.conflicts import conflict_flag_id
from fhirgoal.store.outbox import OUTBOX
from tests.exchange.ehr_pair import Pair, ehr_pair, patient, phq9_total
from tests.exchange.test_ehr_conflicts import deliver, flags
from tests.helpers import FHIR_JSON, create, store

SETTINGS = {"outbox_worker": False, "sync_pull_seconds": 0}


async def linked_patient(pair: Pair, mrn: str = "MRN-1") -> tuple[dict[str, Any], dict[str, Any]]:
    """A client in both systems, linked by a pull: (the EHR's Patient, fhirgoal's)."""
    theirs = await pair.ehr_create(patient(mrn))
    ours = await create(pair.fhirgoal.client, patient(mrn))
    await pair.pull()
    return theirs, ours


async def items(pair: Pair, ref: str) -> list[dict[str, Any]]:
    cursor = pair.service.database[OUTBOX].find({"dest": pair.connection.dest, "ref": ref})
    return [doc async for doc in cursor]


async def test_what_fhirgoal_sent_and_then_deleted_is_deleted_in_the_ehr_once(
    mongo_uri: str,
) -> None:
    async with ehr_pair(mongo_uri, **SETTINGS) as pair:
        _, ours = await linked_patient(pair)
        total = await create(pair.fhirgoal.client, phq9_total(ours["id"], 12))
        await deliver(pair)
        [copy] = await pair.in_ehr("Observation", total["id"])

        # a DELETE in fhirgoal deletes the EHR's copy
        response = await pair.fhirgoal.client.delete(f"/Observation/{total['id']}")
        assert response.status_code == 204, response.text
        assert await deliver(pair) == 1
        assert await pair.in_ehr("Observation", total["id"]) == []
        assert (await pair.ehr_http.get(f"/Observation/{copy['id']}")).status_code == 410
        link = await pair.links.by_local("clinic", f"Observation/{total['id']}")
        assert link is not None and link.deleted == "fhirgoal"
        # exactly once: the copy's history is its creation and one deletion
        assert await pair.ehr_history("Observation", copy["id"]) == 2

        # delivered again (a crash after the DELETE, before the outcome was recorded): the
        # EHR's "gone already" counts as done, nothing is deleted twice
        await pair.links.links.update_one(
            {"_id": pair.links.key("clinic", f"Observation/{total['id']}")},
            {"$unset": {"deleted": ""}},
        )
        [deletion] = [i for i in await items(pair, f"Observation/{total['id']}") if i["vid"] == 2]
        await pair.service.database[OUTBOX].update_one(
            {"_id": deletion["_id"]}, {"$set": {"state": "pending"}}
        )
        assert await deliver(pair) == 1
        [again] = [i for i in await items(pair, f"Observation/{total['id']}") if i["vid"] == 2]
        assert again["state"] == "delivered", again
        assert await pair.ehr_history("Observation", copy["id"]) == 2

        # a transaction's DELETE entry goes the same way
        second = await create(
            pair.fhirgoal.client, phq9_total(ours["id"], 9, "2026-09-08T10:00:00Z")
        )
        await deliver(pair)
        assert len(await pair.in_ehr("Observation", second["id"])) == 1
        bundle = {
            "resourceType": "Bundle",
            "type": "transaction",
            "entry": [{"request": {"method": "DELETE", "url": f"Observation/{second['id']}"}}],
        }
        response = await pair.fhirgoal.client.post("/", json=bundle, headers=FHIR_JSON)
        assert response.status_code == 200, response.text
        await deliver(pair)
        assert await pair.in_ehr("Observation", second["id"]) == []

        # its link lost (the answer to the create never recorded): a conditional delete on
        # fhirgoal's identifier finds the copy
        third = await create(
            pair.fhirgoal.client, phq9_total(ours["id"], 7, "2026-09-15T10:00:00Z")
        )
        await deliver(pair)
        assert len(await pair.in_ehr("Observation", third["id"])) == 1
        await pair.links.links.delete_one(
            {"_id": pair.links.key("clinic", f"Observation/{third['id']}")}
        )
        await pair.fhirgoal.client.delete(f"/Observation/{third['id']}")
        await deliver(pair)
        assert await pair.in_ehr("Observation", third["id"]) == []

        # made and deleted before any delivery: no copy is ever made in the EHR
        fourth = await create(
            pair.fhirgoal.client, phq9_total(ours["id"], 5, "2026-09-22T10:00:00Z")
        )
        await pair.fhirgoal.client.delete(f"/Observation/{fourth['id']}")
        await deliver(pair)
        assert await pair.in_ehr("Observation", fourth["id"]) == []
        states = {i["vid"]: i["state"] for i in await items(pair, f"Observation/{fourth['id']}")}
        assert states == {1: "void", 2: "delivered"}, states


async def test_the_ehrs_deletions_reach_fhirgoal_except_what_fhirgoal_owns_content_in(
    mongo_uri: str,
) -> None:
    async with ehr_pair(mongo_uri, **SETTINGS) as pair:
        theirs, ours = await linked_patient(pair)
        subject = {"reference": f"Patient/{theirs['id']}"}

        async def ehr_goal(text: str) -> dict[str, Any]:
            return await pair.ehr_create(
                {
                    "resourceType": "Goal",
                    "lifecycleStatus": "active",
                    "description": {"text": text},
                    "subject": subject,
                }
            )

        plain = await ehr_goal("Walk daily")
        scaled = await ehr_goal("Sleep through the night")
        rated = await ehr_goal("Eat breakfast")
        condition = await pair.ehr_create(
            {"resourceType": "Condition", "code": {"text": "Insomnia"}, "subject": subject}
        )
        report = await pair.pull()
        assert report.written == 4, report
        local = {
            g["id"]: (await pair.in_fhirgoal("Goal", g["id"]))[0] for g in (plain, scaled, rated)
        }
        [local_condition] = await pair.in_fhirgoal("Condition", condition["id"])

        # fhirgoal's content: a GAS scale on one goal, a rating of another
        goal = local[scaled["id"]]
        levels = ["None", "One night", "Two nights", "Three nights", "Four nights"]
        gas = gas_goal(
            goal["id"], ours["id"], "Sleep through the night", levels, start="2026-09-01"
        )
        await store(
            pair.fhirgoal.client, {**goal, "extension": gas["extension"], "target": gas["target"]}
        )
        rating = gas_rating(
            "r1", ours["id"], local[rated["id"]]["id"], 0, "2026-09-01", performer="Practitioner/t1"
        )
        await store(pair.fhirgoal.client, rating)

        # the EHR deletes all four
        for ref in (f"Goal/{plain['id']}", f"Goal/{scaled['id']}", f"Goal/{rated['id']}",
                    f"Condition/{condition['id']}"):  # fmt: skip
            assert (await pair.ehr_http.delete(f"/{ref}")).status_code == 204
        report = await pair.pull()
        assert (report.deleted, report.kept, report.errors) == (2, 2, []), report

        # what fhirgoal only copied is gone here too
        gone = (f"Goal/{local[plain['id']]['id']}", f"Condition/{local_condition['id']}")
        for ref in gone:
            assert (await pair.fhirgoal.client.get(f"/{ref}")).status_code == 410, ref
            link = await pair.links.by_local("clinic", ref)
            assert link is not None and link.deleted == "ehr"
            assert await items(pair, ref) == []  # the EHR's deletion is not sent back to it
        # what holds fhirgoal's content stays, and a Flag says why
        for ehr_goal_id, holds in ((scaled["id"], "GAS scale"), (rated["id"], "1 rating(s)")):
            kept_id = local[ehr_goal_id]["id"]
            kept = (await pair.fhirgoal.client.get(f"/Goal/{kept_id}")).json()
            assert kept["resourceType"] == "Goal", kept
            [flag] = [
                f
                for f in await flags(pair)
                if f["id"] == conflict_flag_id("clinic", f"Goal/{kept_id}")
            ]
            assert flag["status"] == "active" and holds in flag["code"]["text"]
            assert f"{pair.connection.base}/Goal/{ehr_goal_id}" in flag["code"]["text"]
        kept_gas = (await pair.fhirgoal.client.get(f"/Goal/{local[scaled['id']]['id']}")).json()
        assert any(e["url"] == GAS_EXTENSION for e in kept_gas["extension"])

        # a pull again: nothing more, no second Flag
        report = await pair.pull()
        assert (report.deleted, report.kept, report.written) == (0, 0, 0), report
        assert len([f for f in await flags(pair) if f["status"] == "active"]) == 2

        # an edit of a kept goal is not sent to the EHR that deleted it
        kept_id = local[scaled["id"]]["id"]
        await store(pair.fhirgoal.client, {**kept_gas, "description": {"text": "Sleep well"}})
        await deliver(pair)
        assert await pair.ehr_history("Goal", scaled["id"]) == 2  # its creation and deletion
        # deleting it in fhirgoal settles the Flag, and asks the EHR nothing
        assert (await pair.fhirgoal.client.delete(f"/Goal/{kept_id}")).status_code == 204
        await deliver(pair)
        [flag] = [
            f for f in await flags(pair) if f["id"] == conflict_flag_id("clinic", f"Goal/{kept_id}")
        ]
        assert flag["status"] == "inactive"
        assert await pair.ehr_history("Goal", scaled["id"]) == 2
