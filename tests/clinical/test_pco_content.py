"""The HL7 PCO IG's own examples (tests/clinical/fixtures/pco/) are accepted and interpreted.

PCO STU1 (http://hl7.org/fhir/us/pco): GAS goals with or without `target.measure` (0..1 in PCO),
PCO goals without GAS levels (stored, searchable, not scored), ratings with several categories.
What our profiles expect beyond PCO comes back as warnings, not refusals.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import RunningServer

FIXTURES = Path(__file__).parent / "fixtures" / "pco"
IN_SCOPE = ("Patient", "Practitioner", "Goal", "CarePlan", "Questionnaire", "Observation")
PREFER_OUTCOME = {"Prefer": "return=OperationOutcome"}


def load(folder: str) -> list[dict[str, Any]]:
    resources = [
        json.loads(p.read_text("utf-8")) for p in sorted((FIXTURES / folder).glob("*.json"))
    ]
    return sorted(
        (r for r in resources if r["resourceType"] in IN_SCOPE),
        key=lambda r: IN_SCOPE.index(r["resourceType"]),
    )


def example(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / "examples" / name).read_text("utf-8"))


async def put(fhir: RunningServer, resource: dict[str, Any]) -> Any:
    url = f"/{resource['resourceType']}/{resource['id']}"
    return await fhir.client.put(url, json=resource, headers=PREFER_OUTCOME)


def warnings(response: Any) -> str:
    return " ".join(
        i.get("diagnostics", "") for i in response.json()["issue"] if i["severity"] == "warning"
    )


async def status_code(fhir: RunningServer, gid: str) -> str | None:
    goal = (await fhir.client.get(f"/Goal/{gid}")).json()
    codings = (goal.get("achievementStatus") or {}).get("coding") or [{}]
    return codings[0].get("code")


async def test_every_pco_example_goal_observation_careplan_and_questionnaire_is_accepted(
    fhir: RunningServer,
) -> None:
    stored = 0
    for folder in ("examples", "questionnaires", "test-case"):
        for resource in load(folder):
            response = await put(fhir, resource)
            assert response.status_code in (200, 201), (resource["id"], response.text)
            stored += 1
    assert stored >= 50
    # stored as sent: a GAS goal reads back with its five levels and the IG's category pair
    goal = (await fhir.client.get("/Goal/pcoGoalSocialConnectionsWithGAS")).json()
    assert len(goal["extension"]) == 5 and len(goal["category"]) == 2


async def test_a_gas_goal_without_target_measure_is_accepted_with_a_warning_and_scored(
    fhir: RunningServer,
) -> None:
    assert (await put(fhir, example("Patient-pcoPatientJones.json"))).status_code == 201
    response = await put(fhir, example("Goal-pcoGoalSocialConnectionsWithGAS.json"))
    assert response.status_code == 201, response.text
    assert "gas-7" in warnings(response) and "target.measure optional" in warnings(response)
    for name in ("Baseline", "PatientFollowup", "PractitionerFollowup"):
        rating = example(f"Observation-pcoGASScore{name}Example.json")
        assert (await put(fhir, rating)).status_code == 201
    tscore = await fhir.client.get("/Patient/pcoPatientJones/$gas-tscore?date=2025-05-01")
    assert tscore.status_code == 200, tscore.text
    goals = [p for p in tscore.json()["parameter"] if p["name"] == "goal"]
    assert len(goals) == 1  # the practitioner's follow-up at 0: T = 50
    assert (
        next(p for p in tscore.json()["parameter"] if p["name"] == "tscore")["valueDecimal"] == 50
    )


async def test_a_follow_up_with_a_us_core_category_is_interpreted_and_the_goal_follows(
    fhir: RunningServer,
) -> None:
    """The IG's practitioner follow-up has only US Core `functional-status`: no `survey`. The goal
    was created `in-progress` (a starting value), so the rating decides it."""
    await put(fhir, example("Patient-pcoPatientJones.json"))
    await put(fhir, example("Goal-pcoGoalSocialConnectionsWithGAS.json"))
    await put(fhir, example("Observation-pcoGASScoreBaselineExample.json"))
    assert await status_code(fhir, "pcoGoalSocialConnectionsWithGAS") == "in-progress"
    response = await put(fhir, example("Observation-pcoGASScorePractitionerFollowupExample.json"))
    assert response.status_code == 201, response.text
    said = warnings(response)
    assert "gasr-5" in said and "functional-status, may sit beside it" in said
    assert "must contain" not in said
    assert await status_code(fhir, "pcoGoalSocialConnectionsWithGAS") == "achieved"
    progress = (await fhir.client.get("/Patient/pcoPatientJones/$progress?date=2025-05-01")).json()
    goal = next(p for p in progress["parameter"] if p["name"] == "goal")
    parts = {p["name"]: p for p in goal["part"]}
    assert parts["statusSetBy"]["valueCode"] == "server"
    assert any(p["name"] == "statusRule" for p in progress["parameter"])


async def test_the_published_stu1_baseline_code_is_read_too(fhir: RunningServer) -> None:
    """Published STU1 codes the baseline 112296-9 where the IG source has 107332-9: only that
    code is changed here."""
    await put(fhir, example("Patient-pcoPatientJones.json"))
    await put(fhir, example("Goal-pcoGoalSocialConnectionsWithGAS.json"))
    baseline = example("Observation-pcoGASScoreBaselineExample.json")
    baseline["code"]["coding"][0]["code"] = "112296-9"
    assert (await put(fhir, baseline)).status_code == 201
    progress = (await fhir.client.get("/Patient/pcoPatientJones/$progress?date=2025-05-01")).json()
    goal = next(p for p in progress["parameter"] if p["name"] == "goal")
    ratings = [p for p in goal["part"] if p["name"] == "rating"]
    assert [r["part"][3]["valueCode"] for r in ratings] == ["baseline"]


async def test_a_pco_goal_without_gas_levels_is_stored_searchable_and_not_scored(
    fhir: RunningServer,
) -> None:
    await put(fhir, example("Patient-pcoPatientJones.json"))
    response = await put(fhir, example("Goal-pcoGoalSocialConnectionsWithoutExtensions.json"))
    assert response.status_code == 201, response.text
    assert "gas-1" in warnings(response) and "all five levels" in warnings(response)
    found = (await fhir.client.get("/Goal?patient=Patient/pcoPatientJones")).json()
    assert [e["resource"]["id"] for e in found.get("entry", [])] == [
        "pcoGoalSocialConnectionsWithoutExtensions"
    ]
    progress = (await fhir.client.get("/Patient/pcoPatientJones/$progress")).json()
    assert not [p for p in progress["parameter"] if p["name"] == "goal"]


async def test_ratings_of_goals_without_gas_levels_raise_no_flag(fhir: RunningServer) -> None:
    """The IG's CQL test patient: goals claiming pco-gas-goal-profile with no levels and no
    measure, rated by the patient. Nothing to score: no status change, no review Flag."""
    for resource in load("test-case"):
        response = await put(fhir, resource)
        assert response.status_code in (200, 201), (resource["id"], response.text)
    patient = next(r for r in load("test-case") if r["resourceType"] == "Patient")["id"]
    flags = (await fhir.client.get(f"/Flag?patient=Patient/{patient}")).json()
    assert flags.get("total", len(flags.get("entry", []))) == 0 and not flags.get("entry")
    for goal in (r for r in load("test-case") if r["resourceType"] == "Goal"):
        stored = (await fhir.client.get(f"/Goal/{goal['id']}")).json()
        assert stored.get("achievementStatus") == goal.get("achievementStatus")


async def test_a_resource_claiming_our_profile_is_still_refused(fhir: RunningServer) -> None:
    goal = example("Goal-pcoGoalSocialConnectionsWithoutExtensions.json")
    goal["meta"]["profile"].append("https://fhirgoal.org/fhir/StructureDefinition/gas-goal")
    response = await put(fhir, goal)
    assert response.status_code == 400
    assert "gas-1" in response.text
    assert (await fhir.client.get(f"/Goal/{goal['id']}")).status_code == 404
