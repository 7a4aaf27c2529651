"""Bulk pulls (exchange/ehr_bulk.py) between two real fhirgoal servers: the EHR exports, fhirgoal
reads the NDJSON files and writes what it follows, exactly as a pull by searches would."""

from __future__ import annotations

from typing import Any

import pytest

from fhirgoal.exchange.connections import DEFAULT_SCOPES
from fhirgoal.exchange.ehr_search import PullError
from fhirgoal.store.exports import JOBS
from tests.exchange.ehr_pair import Pair, ehr_pair, patient
from tests.helpers import create

BULK = {"sync_bulk_min_patients": 2, "sync_pull_seconds": 0}


async def _client_with_plan(pair: Pair, mrn: str, followed: bool = True) -> dict[str, Any]:
    """A patient in the EHR with a condition and a plan; known to fhirgoal by MRN if `followed`."""
    ehr_patient = await pair.ehr_create(patient(mrn))
    if followed:
        await create(pair.fhirgoal.client, patient(mrn))
    pid = ehr_patient["id"]
    condition = await pair.ehr_create(
        {
            "resourceType": "Condition",
            "code": {"text": "Generalized anxiety disorder"},
            "subject": {"reference": f"Patient/{pid}"},
        }
    )
    plan = await pair.ehr_create(
        {
            "resourceType": "CarePlan",
            "status": "active",
            "intent": "plan",
            "subject": {"reference": f"Patient/{pid}"},
            "addresses": [{"reference": f"Condition/{condition['id']}"}],
        }
    )
    return {"patient": ehr_patient, "condition": condition, "plan": plan}


async def _export_jobs(pair: Pair) -> list[dict[str, Any]]:
    """The export jobs the EHR holds (a finished pull deletes its own)."""
    return [job async for job in pair.ehr.service.database[JOBS].find({})]


async def test_a_first_pull_of_many_patients_comes_through_the_ehrs_patient_export(
    mongo_uri: str,
) -> None:
    async with ehr_pair(mongo_uri, bulk_export="patient", **BULK) as pair:
        made = [await _client_with_plan(pair, f"MRN-{n}") for n in range(3)]
        await _client_with_plan(pair, "MRN-X", followed=False)  # in the EHR only

        report = await pair.pull()
        # 3 patients, their conditions and plans: read from the export's files, not searched
        assert report.linked == 3
        assert report.exported == 9, report
        assert report.written == 9 and report.held == 0, report
        for one in made:
            [plan] = await pair.in_fhirgoal("CarePlan", one["plan"]["id"])
            [condition] = await pair.in_fhirgoal("Condition", one["condition"]["id"])
            assert plan["addresses"] == [{"reference": f"Condition/{condition['id']}"}]
        assert await _export_jobs(pair) == []

        # the next pull: the same patients, known now, through an export `_since` the last pull
        # (less the overlap, what it reads again changes nothing)
        again = await pair.pull()
        assert again.written == 0 and again.unchanged == again.fetched, again
        # an edit in the EHR arrives through the next export
        plan = {**made[0]["plan"], "description": "Weekly CBT-I"}
        answer = await pair.ehr_http.put(f"/CarePlan/{plan['id']}", json=plan)
        assert answer.status_code == 200, answer.text
        edited = await pair.pull()
        assert edited.exported >= 1 and edited.written == 1, edited
        [ours] = await pair.in_fhirgoal("CarePlan", plan["id"])
        assert ours["description"] == "Weekly CBT-I"


async def test_a_group_export_keeps_only_the_patients_fhirgoal_follows(mongo_uri: str) -> None:
    scopes = f"{DEFAULT_SCOPES} system/Group.rs"
    async with ehr_pair(mongo_uri, **BULK, scopes=scopes) as setup:
        followed = [await _client_with_plan(setup, f"MRN-{n}") for n in range(2)]
        stranger = await _client_with_plan(setup, "MRN-X", followed=False)
        group = await setup.ehr_create(
            {
                "resourceType": "Group",
                "type": "person",
                "actual": True,
                "member": [
                    {"entity": {"reference": f"Patient/{c['patient']['id']}"}}
                    for c in [*followed, stranger]
                ],
            }
        )
        await setup.sync.store.collection.update_one(
            {"_id": setup.connection.name}, {"$set": {"bulk_export": f"Group/{group['id']}"}}
        )
        await setup.sync.refresh()
        connection = setup.sync.get(setup.connection.name)
        assert connection is not None and connection.bulk_export == f"Group/{group['id']}"
        setup.connection = connection

        report = await setup.pull()
        assert report.exported == 9, report  # the stranger's three were read, and left out
        assert report.written == 6, report
        assert not await setup.in_fhirgoal("CarePlan", stranger["plan"]["id"])
        for one in followed:
            assert await setup.in_fhirgoal("CarePlan", one["plan"]["id"])
        assert await _export_jobs(setup) == []


async def test_few_patients_are_searched_and_a_refused_export_fails_the_pull_clearly(
    mongo_uri: str,
) -> None:
    async with ehr_pair(mongo_uri, bulk_export="Group/nowhere", **BULK) as pair:
        one = await _client_with_plan(pair, "MRN-1")
        report = await pair.pull()  # one patient: under sync_bulk_min_patients, searched
        assert report.exported == 0 and report.written == 3, report
        assert await pair.in_fhirgoal("CarePlan", one["plan"]["id"])

        await _client_with_plan(pair, "MRN-2")
        await _client_with_plan(pair, "MRN-3")
        with pytest.raises(PullError, match=r"Group/nowhere/\$export: HTTP 40[34]"):
            await pair.pull()
        status = await pair.sync.store.pull_report(pair.connection.name)
        assert "Group/nowhere" in status["pull_error"]
