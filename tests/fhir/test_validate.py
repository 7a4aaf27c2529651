"""`$validate` (https://hl7.org/fhir/R4/resource-operation-validate.html) over HTTP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import RunningServer

PCO = Path(__file__).parent.parent / "clinical" / "fixtures" / "pco" / "examples"
GAS_GOAL = "https://fhirgoal.org/fhir/StructureDefinition/gas-goal"


def pco(name: str) -> dict[str, Any]:
    return json.loads((PCO / name).read_text("utf-8"))


def severities(outcome: dict[str, Any]) -> list[str]:
    return [i["severity"] for i in outcome["issue"]]


def text(outcome: dict[str, Any]) -> str:
    return " ".join(i.get("diagnostics", "") for i in outcome["issue"])


async def test_a_valid_resource_posted_as_is_gets_one_informational_issue(
    fhir: RunningServer,
) -> None:
    patient = {"resourceType": "Patient", "name": [{"family": "Lee"}]}
    response = await fhir.client.post("/Patient/$validate", json=patient)
    assert response.status_code == 200, response.text
    assert response.json()["resourceType"] == "OperationOutcome"
    assert severities(response.json()) == ["information"]
    assert (await fhir.client.get("/Patient")).json().get("total", 0) == 0  # nothing stored


async def test_an_invalid_resource_is_200_with_every_error(fhir: RunningServer) -> None:
    bad = {"resourceType": "Patient", "gender": "robot", "birthDate": "yesterday", "nope": 1}
    response = await fhir.client.post("/Patient/$validate", json=bad)
    assert response.status_code == 200
    outcome = response.json()
    assert severities(outcome).count("error") >= 3
    where = {e for i in outcome["issue"] for e in i.get("expression", [])}
    assert {"Patient.gender", "Patient.birthDate", "Patient.nope"} <= where


async def test_warnings_and_a_profile_parameter(fhir: RunningServer) -> None:
    goal = pco("Goal-pcoGoalSocialConnectionsWithoutExtensions.json")
    lenient = await fhir.client.post("/Goal/$validate", json=goal)
    assert lenient.status_code == 200
    assert set(severities(lenient.json())) == {"warning"} and "gas-1" in text(lenient.json())
    body = {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "resource", "resource": goal},
            {"name": "mode", "valueCode": "create"},
            {"name": "profile", "valueUri": GAS_GOAL},
            {"name": "profile", "valueUri": "http://example.org/StructureDefinition/unknown"},
        ],
    }
    strict = (await fhir.client.post("/Goal/$validate", json=body)).json()
    assert "error" in severities(strict) and "gas-1" in text(strict)
    assert "not held by this server" in text(strict)


async def test_instance_level_get_and_modes(fhir: RunningServer) -> None:
    patient = {"resourceType": "Patient", "id": "p1", "name": [{"family": "Lee"}]}
    assert (await fhir.client.put("/Patient/p1", json=patient)).status_code == 201
    stored = await fhir.client.get("/Patient/p1/$validate")
    assert stored.status_code == 200 and severities(stored.json()) == ["information"]
    deleting = await fhir.client.get("/Patient/p1/$validate", params={"mode": "delete"})
    assert severities(deleting.json()) == ["information"]
    other = {**patient, "id": "p2"}
    update = await fhir.client.post("/Patient/p1/$validate?mode=update", json=other)
    assert update.status_code == 200 and "error" in severities(update.json())
    assert (await fhir.client.get("/Patient/p9/$validate")).status_code == 404
    wrong_mode = await fhir.client.get("/Patient/p1/$validate", params={"mode": "merge"})
    assert wrong_mode.status_code == 400


async def test_a_body_of_another_type_is_an_issue(fhir: RunningServer) -> None:
    response = await fhir.client.post("/Goal/$validate", json={"resourceType": "Patient"})
    assert response.status_code == 200
    assert "is not Goal" in text(response.json())


async def test_capability_statement_advertises_validate(fhir: RunningServer) -> None:
    statement = (await fhir.client.get("/metadata")).json()
    goal = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Goal")
    names = {o["name"]: o["definition"] for o in goal.get("operation", [])}
    assert names["validate"].endswith("/OperationDefinition/Resource-validate")
    found = await fhir.client.get("/OperationDefinition", params={"url": names["validate"]})
    assert found.json()["total"] == 1
