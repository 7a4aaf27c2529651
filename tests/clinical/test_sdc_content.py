"""Real SDC content (tests/clinical/fixtures/sdc/, npm hl7.fhir.uv.sdc@4.0.0-ballot) as data."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.conftest import RunningServer

FIXTURES = Path(__file__).parent / "fixtures" / "sdc"
CQF_PHQ9 = "Questionnaire-questionnaire-sdc-profile-example-cqf-PHQ9.json"
ITEMS = ["LittleInterest", "FeelingDown", "TroubleSleeping", "FeelingTired", "BadAppetite",
         "FeelingBadAboutSelf", "TroubleConcentrating", "MovingSpeaking", "Difficulty"]  # fmt: skip


def fixture(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name).read_text("utf-8"))


def phq9_response(status: str, total: int) -> dict[str, Any]:
    several = {"system": "http://loinc.org", "code": "LA6569-3", "display": "Several days"}
    items: list[dict[str, Any]] = [
        {"linkId": i, "answer": [{"valueCoding": several}]} for i in ITEMS
    ]
    items.append({"linkId": "TotalScore", "answer": [{"valueInteger": total}]})
    return {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": fixture(CQF_PHQ9)["url"],
        "status": status,
        "subject": {"reference": "Patient/p1"},
        "authored": "2026-08-03T10:00:00Z",
        "item": items,
    }


async def test_observation_extract_on_item_code_extracts_that_item(fhir: RunningServer) -> None:
    """The SDC cqf-PHQ9 example marks its total for extraction on `item.code` (a context SDC
    allows): `$extract` yields that Observation, coded with the marked coding only."""
    questionnaire = fixture(CQF_PHQ9)
    assert (
        await fhir.client.put(f"/Questionnaire/{questionnaire['id']}", json=questionnaire)
    ).status_code == 201
    body = {"resourceType": "Parameters",
            "parameter": [{"name": "questionnaire-response", "resource": phq9_response("completed", 8)}]}  # fmt: skip
    response = await fhir.client.post("/QuestionnaireResponse/$extract", json=body)
    assert response.status_code == 200, response.text
    bundle = response.json()["parameter"][0]["resource"]
    observations = [e["resource"] for e in bundle["entry"]]
    assert len(observations) == 1
    assert observations[0]["code"]["coding"] == [{"system": "http://loinc.org", "code": "44261-6"}]
    assert observations[0]["valueInteger"] == 8


async def test_extract_says_why_nothing_was_extracted(fhir: RunningServer) -> None:
    questionnaire = fixture(CQF_PHQ9)
    for item in questionnaire["item"]:  # the same form without the extraction mark
        for coding in item.get("code", []):
            coding.pop("extension", None)
    await fhir.client.put(f"/Questionnaire/{questionnaire['id']}", json=questionnaire)
    for status, expected in (("completed", "no answered item"), ("in-progress", "is in-progress")):
        body = {"resourceType": "Parameters",
                "parameter": [{"name": "questionnaire-response", "resource": phq9_response(status, 8)}]}  # fmt: skip
        response = await fhir.client.post("/QuestionnaireResponse/$extract", json=body)
        assert response.status_code == 200, response.text
        issues = next(p for p in response.json()["parameter"] if p["name"] == "issues")
        assert expected in issues["resource"]["issue"][0]["diagnostics"]
