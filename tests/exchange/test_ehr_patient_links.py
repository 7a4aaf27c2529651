"""A matched Patient says `seealso` the EHR's record (Patient.link); when the EHR replaces that
record by another (its Patient.link `replaced-by`), fhirgoal's link moves, is recorded, and
nothing is merged by guesswork (exchange/ehr_patient_links.py). Two real fhirgoal servers."""

from __future__ import annotations

from typing import Any

from tests.exchange.ehr_pair import Pair, ehr_pair, patient
from tests.helpers import create

SETTINGS = {"outbox_worker": False, "sync_pull_seconds": 0}


async def replace_in_ehr(pair: Pair, old: dict[str, Any], new: dict[str, Any]) -> None:
    """The EHR merges `old` into `new`, as R4 Patient.link describes a merge."""
    retired = {
        **old,
        "active": False,
        "link": [{"other": {"reference": f"Patient/{new['id']}"}, "type": "replaced-by"}],
    }
    assert (await pair.ehr_http.put(f"/Patient/{old['id']}", json=retired)).status_code == 200
    survivor = {
        **new,
        "link": [{"other": {"reference": f"Patient/{old['id']}"}, "type": "replaces"}],
    }
    assert (await pair.ehr_http.put(f"/Patient/{new['id']}", json=survivor)).status_code == 200


async def test_a_matched_patient_links_the_ehr_record_and_follows_the_ehr_merging_it(
    mongo_uri: str,
) -> None:
    async with ehr_pair(mongo_uri, **SETTINGS) as pair:
        first = await pair.ehr_create(patient("MRN-1"))
        ours = await create(pair.fhirgoal.client, patient("MRN-1"))
        await pair.pull()
        base = pair.connection.base
        local = (await pair.fhirgoal.client.get(f"/Patient/{ours['id']}")).json()
        assert local["link"] == [
            {"other": {"reference": f"{base}/Patient/{first['id']}"}, "type": "seealso"}
        ]
        assert (await pair.pull()).written == 0  # and it stays: no churn

        goal = await pair.ehr_create(
            {
                "resourceType": "Goal",
                "lifecycleStatus": "active",
                "description": {"text": "Walk daily"},
                "subject": {"reference": f"Patient/{first['id']}"},
            }
        )
        await pair.pull()

        # the EHR merges the record into a new one (and moves the goal there)
        second = await pair.ehr_create(patient("MRN-1", family="Rivera-Lopez"))
        await replace_in_ehr(pair, first, second)
        moved_goal = {**goal, "subject": {"reference": f"Patient/{second['id']}"}}
        assert (await pair.ehr_http.put(f"/Goal/{goal['id']}", json=moved_goal)).status_code == 200

        report = await pair.pull()
        assert report.moved == 1 and report.held == 0, report
        link = await pair.links.by_local("clinic", f"Patient/{ours['id']}")
        assert link is not None and link.ehr == f"Patient/{second['id']}"
        doc = await pair.links.links.find_one({"_id": pair.links.key("clinic", link.local)})
        assert [m["ehr"] for m in doc["moved"]] == [f"Patient/{first['id']}"]
        local = (await pair.fhirgoal.client.get(f"/Patient/{ours['id']}")).json()
        assert local["link"] == [
            {"other": {"reference": f"{base}/Patient/{second['id']}"}, "type": "seealso"}
        ]
        system = f"{base}/Patient"
        assert {"system": system, "value": first["id"], "use": "old"} in local["identifier"]
        assert {"system": system, "value": second["id"]} in local["identifier"]

        # the next pull takes the new record whole: its demographics, the goal moved there
        report = await pair.pull()
        assert report.held == 0, report
        local = (await pair.fhirgoal.client.get(f"/Patient/{ours['id']}")).json()
        assert local["name"][0]["family"] == "Rivera-Lopez"
        assert local["link"] == [
            {"other": {"reference": f"{base}/Patient/{second['id']}"}, "type": "seealso"}
        ]
        [copy] = await pair.in_fhirgoal("Goal", goal["id"])
        assert copy["subject"] == {"reference": f"Patient/{ours['id']}"}
        assert (await pair.pull()).written == 0


async def test_a_merge_into_a_record_another_patient_follows_waits_for_a_human(
    mongo_uri: str,
) -> None:
    async with ehr_pair(mongo_uri, **SETTINGS) as pair:
        first = await pair.ehr_create(patient("MRN-1"))
        second = await pair.ehr_create(patient("MRN-2", family="Kim"))
        one = await create(pair.fhirgoal.client, patient("MRN-1"))
        two = await create(pair.fhirgoal.client, patient("MRN-2", family="Kim"))
        assert (await pair.pull()).linked == 2
        await replace_in_ehr(pair, first, second)
        report = await pair.pull()
        assert report.moved == 0 and report.held == 1, report
        link = await pair.links.by_local("clinic", f"Patient/{one['id']}")
        assert link is not None and link.ehr == f"Patient/{first['id']}"  # not moved
        [held] = await pair.links.held("clinic")
        assert held["record"] == f"Patient/{one['id']}"
        assert f"Patient/{two['id']}" in held["reason"] and "a human decides" in held["reason"]
        # neither record took the other's data
        local = (await pair.fhirgoal.client.get(f"/Patient/{one['id']}")).json()
        assert local["name"][0]["family"] == "Rivera"
        other = (await pair.fhirgoal.client.get(f"/Patient/{two['id']}")).json()
        assert other["identifier"][0]["value"] == "MRN-2"
