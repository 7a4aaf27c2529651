"""A clinician's own Questionnaire with SDC scoring rules works as data, with no code change."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from fhirgoal.core.jsonio import loads
from tests.conftest import RunningServer
from tests.helpers import put

SDC = "http://hl7.org/fhir/uv/sdc/StructureDefinition"
CLINIC = "https://clinic.example.org/codes"


def sleep_diary() -> dict[str, Any]:
    """Three nights' hours of sleep (0-14, integers); the score is the weighted mean of the last
    two nights, a rule no built-in instrument has (so it runs on the FHIRPath engine)."""

    def night(n: int) -> dict[str, Any]:
        return {
            "extension": [
                {"url": "http://hl7.org/fhir/StructureDefinition/minValue", "valueInteger": 0},
                {"url": "http://hl7.org/fhir/StructureDefinition/maxValue", "valueInteger": 14},
                {"url": f"{SDC}/sdc-questionnaire-observationExtract", "valueCode": "component"},
            ],
            "linkId": f"night-{n}", "code": [{"system": CLINIC, "code": f"sleep-night-{n}"}],
            "text": f"Hours slept, night {n}", "type": "integer", "required": True,
        }  # fmt: skip

    return {
        "resourceType": "Questionnaire", "id": "sleep-diary", "url": "https://clinic.example.org/Questionnaire/sleep-diary",
        "status": "active", "name": "SleepDiary", "title": "Three-night sleep diary",
        "extension": [{"url": f"{SDC}/sdc-questionnaire-observationExtract", "valueBoolean": True}],
        "code": [{"system": CLINIC, "code": "sleep-score"}],
        "item": [night(1), night(2), night(3), {
            "extension": [
                {"url": f"{SDC}/sdc-questionnaire-calculatedExpression", "valueExpression": {
                    "language": "text/fhirpath",
                    "expression": "(%resource.item.where(linkId = 'night-2').answer.value + 2 * %resource.item.where(linkId = 'night-3').answer.value) / 3"}},
                {"url": f"{SDC}/sdc-questionnaire-observationExtract", "valueBoolean": False},
            ],
            "linkId": "score", "code": [{"system": CLINIC, "code": "sleep-score"}],
            "text": "Sleep score", "type": "decimal", "readOnly": True,
        }],
    }  # fmt: skip


def response(nights: list[int]) -> dict[str, Any]:
    return {
        "resourceType": "QuestionnaireResponse", "id": "diary-1", "status": "completed",
        "questionnaire": "https://clinic.example.org/Questionnaire/sleep-diary",
        "subject": {"reference": "Patient/p1"}, "authored": "2026-09-01T08:00:00Z",
        "item": [{"linkId": f"night-{n + 1}", "answer": [{"valueInteger": h}]} for n, h in enumerate(nights)],
    }  # fmt: skip


async def test_a_clinicians_questionnaire_scores_and_extracts_as_data(fhir: RunningServer) -> None:
    assert (await put(fhir.client, sleep_diary())).status_code == 201
    assert (await put(fhir.client, {"resourceType": "Patient", "id": "p1"})).status_code == 201
    stored = await put(fhir.client, response([5, 6, 9]))
    assert stored.status_code == 201, stored.text
    bundle = loads(
        (
            await fhir.client.get(
                "/Observation", params={"derived-from": "QuestionnaireResponse/diary-1"}
            )
        ).content
    )
    [observation] = [e["resource"] for e in bundle["entry"]]
    assert observation["code"]["coding"][0]["code"] == "sleep-score"
    assert observation["valueQuantity"]["value"] == Decimal(8)  # (6 + 2 * 9) / 3
    assert [c["valueInteger"] for c in observation["component"]] == [5, 6, 9]

    bad = await put(fhir.client, response([5, 15, 9]))  # 15 hours is outside 0-14
    assert bad.status_code == 422
    assert "QuestionnaireResponse.item[1].answer[0].valueInteger" in bad.text
