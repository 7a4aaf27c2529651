"""EHR sync between two real fhirgoal servers over HTTP (exchange/ehr_*.py): one plays the EHR
(SMART on, fhirgoal a Backend Services client of it), the other is fhirgoal with a connection.
A plan made in the EHR appears in fhirgoal; ratings and totals made in fhirgoal appear in the
EHR, once; nothing comes back as an echo; a re-pull changes nothing."""

from __future__ import annotations

import asyncio
from typing import Any

from fhirgoal.clinical.resources import gas_rating
from fhirgoal.exchange.ehr_audit import DCM
from tests.exchange.ehr_pair import MRN, Pair, ehr_pair, patient, phq9_total
from tests.helpers import create, store, wait_until


async def _plan_in_ehr(pair: Pair, mrn: str = "MRN-1") -> dict[str, Any]:
    """A patient known on both sides by MRN; in the EHR a condition, an encounter, a goal and
    the care plan holding them."""
    ehr_patient = await pair.ehr_create(patient(mrn))
    local = await create(pair.fhirgoal.client, patient(mrn))
    pid = ehr_patient["id"]
    condition = await pair.ehr_create(
        {
            "resourceType": "Condition",
            "clinicalStatus": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                        "code": "active",
                    }
                ]
            },
            "code": {"text": "Generalized anxiety disorder"},
            "subject": {"reference": f"Patient/{pid}"},
        }
    )
    encounter = await pair.ehr_create(
        {
            "resourceType": "Encounter",
            "status": "finished",
            "class": {
                "system": "http://terminology.hl7.org/CodeSystem/v3-ActCode",
                "code": "AMB",
            },
            "subject": {"reference": f"Patient/{pid}"},
        }
    )
    goal = await pair.ehr_create(
        {
            "resourceType": "Goal",
            "lifecycleStatus": "active",
            "description": {"text": "Sleep through the night four nights a week"},
            "subject": {"reference": f"Patient/{pid}"},
            "addresses": [{"reference": f"Condition/{condition['id']}"}],
        }
    )
    plan = await pair.ehr_create(
        {
            "resourceType": "CarePlan",
            "status": "active",
            "intent": "plan",
            "subject": {"reference": f"Patient/{pid}"},
            "encounter": {"reference": f"Encounter/{encounter['id']}"},
            "addresses": [{"reference": f"Condition/{condition['id']}"}],
            "goal": [{"reference": f"Goal/{goal['id']}"}],
        }
    )
    return {"patient": ehr_patient, "local": local, "goal": goal, "plan": plan}


async def test_a_plan_made_in_the_ehr_appears_in_fhirgoal_and_ratings_go_back(
    mongo_uri: str,
) -> None:
    async with ehr_pair(mongo_uri, sync_pull_seconds=0.3) as pair:
        made = await _plan_in_ehr(pair)
        plan_id, goal_id = made["plan"]["id"], made["goal"]["id"]

        async def plan_arrived() -> bool:
            return len(await pair.in_fhirgoal("CarePlan", plan_id)) == 1

        await wait_until(plan_arrived, within=30, what="the EHR's CarePlan in fhirgoal")
        [plan] = await pair.in_fhirgoal("CarePlan", plan_id)
        [goal] = await pair.in_fhirgoal("Goal", goal_id)
        local_pid = made["local"]["id"]
        # references now name fhirgoal's resources: its patient, its copy of the goal
        assert plan["subject"] == {"reference": f"Patient/{local_pid}"}
        assert plan["goal"] == [{"reference": f"Goal/{goal['id']}"}]
        assert goal["subject"] == {"reference": f"Patient/{local_pid}"}
        assert goal["description"]["text"] == "Sleep through the night four nights a week"
        [condition_ref] = goal["addresses"]
        assert condition_ref["reference"].startswith("Condition/")
        assert goal["meta"]["source"].endswith(f"/Goal/{goal_id}/_history/1")

        # a rating and a PHQ-9 total made in fhirgoal go to the EHR, in its ids
        rating = gas_rating(
            "r1", local_pid, goal["id"], 0, "2026-09-01", performer="Practitioner/t1"
        )
        await store(pair.fhirgoal.client, rating)
        total = await create(pair.fhirgoal.client, phq9_total(local_pid, 11))

        async def delivered() -> bool:
            return bool(await pair.in_ehr("Observation", "r1")) and bool(
                await pair.in_ehr("Observation", total["id"])
            )

        await wait_until(delivered, within=30, what="the rating and the total in the EHR")
        [their_rating] = await pair.in_ehr("Observation", "r1")
        assert their_rating["focus"] == [{"reference": f"Goal/{goal_id}"}]
        assert their_rating["subject"] == {"reference": f"Patient/{made['patient']['id']}"}
        assert their_rating["valueCodeableConcept"] == rating["valueCodeableConcept"]
        [their_total] = await pair.in_ehr("Observation", total["id"])
        assert their_total["valueInteger"] == 11

        # nothing went back as an echo: the EHR's goal and plan are as the EHR wrote them
        assert await pair.ehr_history("Goal", goal_id) == 1
        assert await pair.ehr_history("CarePlan", plan_id) == 1
        assert not await pair.in_ehr("Goal", goal["id"])

        # a pull again changes nothing
        report = await pair.pull()
        assert report.written == 0 and report.held == 0 and report.conflicts == 0
        assert (await pair.fhirgoal.client.get(f"/CarePlan/{plan['id']}")).json()["meta"][
            "versionId"
        ] == "1"

        # each delivery is an AuditEvent
        events = await pair.fhirgoal.client.get(
            "/AuditEvent", params={"type": f"{DCM}|110106", "_count": "50"}
        )
        assert events.status_code == 200, events.text
        described = {
            entity["what"]["reference"]
            for entry in events.json().get("entry", [])
            for entity in entry["resource"].get("entity", [])
        }
        assert "Observation/r1/_history/1" in described


async def test_an_edit_in_the_ehr_reaches_fhirgoal_and_an_edit_in_fhirgoal_reaches_the_ehr(
    mongo_uri: str,
) -> None:
    async with ehr_pair(mongo_uri, sync_pull_seconds=0.3) as pair:
        made = await _plan_in_ehr(pair)
        goal_id = made["goal"]["id"]

        async def goal_arrived() -> bool:
            return len(await pair.in_fhirgoal("Goal", goal_id)) == 1

        await wait_until(goal_arrived, within=30, what="the goal in fhirgoal")
        edited = {**made["goal"], "description": {"text": "Sleep through the night"}}
        response = await pair.ehr_http.put(f"/Goal/{goal_id}", json=edited)
        assert response.status_code == 200, response.text

        async def edit_arrived() -> bool:
            [goal] = await pair.in_fhirgoal("Goal", goal_id)
            return bool(goal["description"]["text"] == "Sleep through the night")

        await wait_until(edit_arrived, within=30, what="the EHR's edit in fhirgoal")
        [goal] = await pair.in_fhirgoal("Goal", goal_id)
        goal["description"] = {"text": "Sleep through the night, five nights"}
        response = await pair.fhirgoal.client.put(f"/Goal/{goal['id']}", json=goal)
        assert response.status_code == 200, response.text

        async def back_in_ehr() -> bool:
            current = (await pair.ehr_http.get(f"/Goal/{goal_id}")).json()
            return bool(current["description"]["text"] == "Sleep through the night, five nights")

        await wait_until(back_in_ehr, within=30, what="fhirgoal's edit in the EHR")
        # the EHR's goal: its own two versions and fhirgoal's one, nothing more
        assert await pair.ehr_history("Goal", goal_id) == 3
        flags = (await pair.fhirgoal.client.get("/Flag")).json()
        assert flags.get("total", 0) == 0


async def test_patients_are_matched_by_identifier_only_and_the_rest_waits_for_a_human(
    mongo_uri: str,
) -> None:
    async with ehr_pair(mongo_uri) as pair:
        # one match; one without a counterpart; one whose MRN two EHR records share
        await pair.ehr_create(patient("MRN-1"))
        await pair.ehr_create(patient("MRN-3", family="Kim"))
        await pair.ehr_create(patient("MRN-3", family="Kimm"))
        await pair.ehr_create(patient("MRN-9", family="Rivera"))  # same name, other MRN
        one = await create(pair.fhirgoal.client, patient("MRN-1"))
        lonely = await create(pair.fhirgoal.client, patient("MRN-2", family="Rivera"))
        shared = await create(pair.fhirgoal.client, patient("MRN-3", family="Kim"))
        report = await pair.pull()
        assert report.linked == 1
        links = {link.local for link in await pair.links.patients(pair.connection.name)}
        assert links == {f"Patient/{one['id']}"}
        held = {row["record"]: row for row in await pair.links.held(pair.connection.name)}
        assert set(held) == {f"Patient/{lonely['id']}", f"Patient/{shared['id']}"}
        assert f"{MRN}|MRN-2" in held[f"Patient/{lonely['id']}"]["reason"]
        assert "2 Patients in EHR clinic share" in held[f"Patient/{shared['id']}"]["reason"]
        # the matched patient's record now carries the EHR's identity too
        local = (await pair.fhirgoal.client.get(f"/Patient/{one['id']}")).json()
        systems = {i["system"] for i in local["identifier"]}
        assert systems == {MRN, f"{pair.connection.base}/Patient"}


async def test_a_pull_that_meets_a_local_write_on_its_target_tries_again_and_finishes(
    mongo_uri: str, monkeypatch: Any
) -> None:
    """The EHR's edit of a plan is applied with If-Match on the version the pull read; a local
    write in between makes that a 412, and the pull reads again and applies it. (Once, that second
    try took the per-resource lock the first still held, and the pull waited forever.)"""
    async with ehr_pair(mongo_uri) as pair:
        made = await _plan_in_ehr(pair)
        plan_id = made["plan"]["id"]
        await pair.pull()
        [plan] = await pair.in_fhirgoal("CarePlan", plan_id)
        edited = {**made["plan"], "description": "Weekly sessions, CBT-I"}
        response = await pair.ehr_http.put(f"/CarePlan/{plan_id}", json=edited)
        assert response.status_code == 200, response.text

        service = pair.service
        read_current = service.current
        interfered: list[str] = []

        async def current_then_a_local_write(access: Any, rt: str, rid: str) -> Any:
            version = await read_current(access, rt, rid)
            if rt == "CarePlan" and not interfered:  # a clinician's write, just after the read
                local = {**plan, "title": "Sleep plan"}
                answer = await pair.fhirgoal.client.put(f"/CarePlan/{plan['id']}", json=local)
                interfered.append(answer.text)
                assert answer.status_code == 200, answer.text
            return version

        monkeypatch.setattr(service, "current", current_then_a_local_write)
        async with asyncio.timeout(60):
            report = await pair.pull()
        assert interfered and report.written >= 1
        [plan] = await pair.in_fhirgoal("CarePlan", plan_id)
        assert plan["description"] == "Weekly sessions, CBT-I"
        assert plan["meta"]["versionId"] == "3"
