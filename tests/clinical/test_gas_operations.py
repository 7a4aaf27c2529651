"""$gas-tscore over HTTP: from given levels, and from a patient's stored goals and ratings."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from fhirgoal.clinical.resources import gas_goal, gas_rating
from fhirgoal.core.jsonio import loads
from tests.conftest import RunningServer
from tests.helpers import store

LEVELS = ["much less", "less", "expected", "more", "much more"]


def goal_part(level: Any, weight: Any = None) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [{"name": "level", "valueDecimal": level}]
    if weight is not None:
        parts.append({"name": "weight", "valueDecimal": weight})
    return {"name": "goal", "part": parts}


def parameters(*params: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(params)}


def value(body: dict[str, Any], name: str) -> Any:
    return next(p for p in body["parameter"] if p["name"] == name)


async def tscore(fhir: RunningServer, body: dict[str, Any]) -> Any:
    return await fhir.client.post("/$gas-tscore", json=body)


@pytest.mark.parametrize(
    ("levels", "expected"),
    [([-1], "40.00"), ([-1, -1], "37.60"), ([0, 0, 0], "50.00"), ([-2], "30.00"), ([2], "70.00"),
     ([-0.5], "40.00")],
)  # fmt: skip
async def test_tscore_of_unweighted_levels(
    fhir: RunningServer, levels: list[Any], expected: str
) -> None:
    body = parameters(*(goal_part(level) for level in levels))
    response = await tscore(fhir, body)
    assert response.status_code == 200, response.text
    result = loads(response.content)  # decimals as sent: 40.00 stays 40.00
    assert value(result, "tscore")["valueDecimal"] == Decimal(expected)
    assert response.text.count('"tscore","valueDecimal":' + expected) == 1


async def test_partial_achievement_is_reported_raw_beside_the_level_used(
    fhir: RunningServer,
) -> None:
    response = await tscore(fhir, parameters(goal_part(-0.5), goal_part(1, 6)))
    result = response.json()
    first = {p["name"]: p for p in result["parameter"] if p["name"] == "goal"}["goal"]
    goals = [g for g in result["parameter"] if g["name"] == "goal"]
    parts = {p["name"]: p["valueDecimal"] for p in goals[0]["part"]}
    assert parts == {"level": -0.5, "levelUsed": -1, "weight": 1}
    assert first is goals[1] or first  # both goals are listed, in input order
    assert {p["name"]: p["valueDecimal"] for p in goals[1]["part"]}["weight"] == 6
    assert any(p["name"] == "variant" and p["valueCode"] == "partial"
               for p in result["parameter"])  # fmt: skip
    # 50 + 10 * (-1 + 6) / sqrt(0.7 * 37 + 0.3 * 49) = 50 + 50 / sqrt(40.6) = 57.85
    assert value(result, "tscore")["valueDecimal"] == 57.85


@pytest.mark.parametrize(
    ("body", "expression"),
    [
        (parameters(), "Parameters"),
        (parameters(goal_part(3)), "Parameters.parameter[0].part[0]"),
        (parameters(goal_part(-1), goal_part(1, -2)), "Parameters.parameter[1].part[1]"),
        (parameters(goal_part(-1), {"name": "rho", "valueDecimal": 1}), "Parameters.parameter[1]"),
        (parameters(goal_part("high")), "Parameters.parameter[0].part[0]"),
        (parameters({"name": "goals", "valueString": "x"}), "Parameters.parameter[0]"),
        (parameters({"name": "goal", "part": [{"name": "weight", "valueDecimal": 1}]}),
         "Parameters.parameter[0]"),
    ],
)  # fmt: skip
async def test_invalid_tscore_input_is_a_400_naming_the_parameter(
    fhir: RunningServer, body: dict[str, Any], expression: str
) -> None:
    response = await tscore(fhir, body)
    assert response.status_code == 400, response.text
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert expression in [e for i in outcome["issue"] for e in i.get("expression", [])]


async def test_an_operation_body_must_be_parameters(fhir: RunningServer) -> None:
    response = await tscore(fhir, {"resourceType": "Patient"})
    assert response.status_code == 400
    assert (await fhir.client.post("/$no-such-op", json=parameters())).status_code == 400


# ---- from stored goals ---------------------------------------------------------------------------
async def seed(fhir: RunningServer) -> None:
    await store(fhir.client, {"resourceType": "Patient", "id": "p1"})
    await store(fhir.client, {"resourceType": "Practitioner", "id": "t1"})
    await store(fhir.client, gas_goal("g1", "p1", "Walk", LEVELS, start="2026-08-01", importance=2,
                             difficulty=3))  # fmt: skip
    await store(fhir.client, gas_goal("g2", "p1", "Sleep", LEVELS, start="2026-08-01"))
    await store(fhir.client, gas_goal("g3", "p1", "Unrated", LEVELS, start="2026-08-01"))
    await store(fhir.client, {"resourceType": "CarePlan", "id": "plan1", "status": "active", "intent": "plan",
                     "subject": {"reference": "Patient/p1"}, "goal": [{"reference": "Goal/g2"}]})  # fmt: skip
    ratings = [
        gas_rating("b1", "p1", "g1", -1, "2026-08-03", baseline=True, performer="Practitioner/t1"),
        gas_rating("b2", "p1", "g2", -2, "2026-08-03", baseline=True, performer="Practitioner/t1"),
        gas_rating("f1", "p1", "g1", 1, "2026-09-01", performer="Practitioner/t1"),
        gas_rating("f2", "p1", "g2", -1, "2026-09-01", performer="Practitioner/t1"),
        gas_rating("f3", "p1", "g2", 2, "2026-09-02", rater="patient", performer="Patient/p1"),
    ]
    for rating in ratings:
        await store(fhir.client, rating)


async def test_patient_tscore_uses_each_goals_latest_rating_on_or_before_the_date(
    fhir: RunningServer,
) -> None:
    await seed(fhir)
    at_baseline = (
        await fhir.client.get("/Patient/p1/$gas-tscore", params={"date": "2026-08-10"})
    ).json()
    # g1 weight 6 at -1, g2 weight 1 at -2: 50 + 10 * (-6 - 2) / sqrt(0.7 * 37 + 0.3 * 49) = 37.44
    assert value(at_baseline, "tscore")["valueDecimal"] == 37.44
    later = (await fhir.client.get("/Patient/p1/$gas-tscore", params={"date": "2026-09-30"})).json()
    # practitioner follow-ups: g1 +1 (w 6), g2 -1: 50 + 10 * 5 / sqrt(40.6) = 57.85
    assert value(later, "tscore")["valueDecimal"] == 57.85
    goals = [p for p in later["parameter"] if p["name"] == "goal"]
    ratings = [next(x for x in g["part"] if x["name"] == "rating")["valueReference"]["reference"]
               for g in goals]  # fmt: skip
    assert ratings == ["Observation/f1", "Observation/f2"]
    assert value(later, "unrated")["valueReference"]["reference"] == "Goal/g3"


async def test_patient_tscore_follows_the_requested_rater_and_care_plan(
    fhir: RunningServer,
) -> None:
    await seed(fhir)
    by_patient = (await fhir.client.get("/Patient/p1/$gas-tscore",
                                        params={"date": "2026-09-30", "rater": "patient",
                                                "carePlan": "CarePlan/plan1"})).json()  # fmt: skip
    goals = [p for p in by_patient["parameter"] if p["name"] == "goal"]
    assert len(goals) == 1
    assert value(by_patient, "tscore")["valueDecimal"] == 70.00  # one goal at +2


async def test_storing_the_tscore_writes_one_observation_per_date_and_rater(
    fhir: RunningServer,
) -> None:
    await seed(fhir)
    body = parameters(
        {"name": "date", "valueDate": "2026-09-30"}, {"name": "store", "valueBoolean": True}
    )
    first = await fhir.client.post("/Patient/p1/$gas-tscore", json=body)
    assert first.status_code == 200, first.text
    stored = value(first.json(), "observation")["resource"]
    assert stored["valueQuantity"]["value"] == 57.85
    assert [d["reference"] for d in stored["derivedFrom"]] == ["Observation/f1", "Observation/f2"]
    again = await fhir.client.post("/Patient/p1/$gas-tscore", json=body)
    assert value(again.json(), "observation")["resource"]["id"] == stored["id"]
    search = (await fhir.client.get("/Observation", params={
        "subject": "Patient/p1", "code": "https://fhirgoal.org/fhir/CodeSystem/fhirgoal-measures|gas-tscore"})).json()  # fmt: skip
    assert search["total"] == 1
    assert (await fhir.client.get(f"/Observation/{stored['id']}")).json()["meta"][
        "versionId"
    ] == "2"


async def test_patient_tscore_refusals(fhir: RunningServer) -> None:
    assert (await fhir.client.get("/Patient/nobody/$gas-tscore")).status_code == 404
    await store(fhir.client, {"resourceType": "Patient", "id": "p2"})
    response = await fhir.client.get("/Patient/p2/$gas-tscore")
    assert response.status_code == 422
    response = await fhir.client.get("/Patient/p2/$gas-tscore", params={"store": "true"})
    assert response.status_code == 405
    response = await fhir.client.get("/Patient/p2/$gas-tscore", params={"date": "yesterday"})
    assert response.status_code == 400
    response = await fhir.client.get("/Patient/p2/$gas-tscore", params={"rater": "robot"})
    assert response.status_code == 400
    bad_rho = {"resourceType": "Parameters", "parameter": [{"name": "rho", "valueDecimal": 2}]}
    response = await fhir.client.post("/Patient/p2/$gas-tscore", json=bad_rho)
    assert response.status_code == 400  # refused before looking for goals (none here)
    assert response.json()["issue"][0]["expression"] == ["Parameters.parameter[0]"]
