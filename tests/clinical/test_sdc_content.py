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


# --- weights from terminology the server holds, variables, warnings on write ----------------------

PHQ9 = "Questionnaire-questionnaire-sdc-profile-example-PHQ9.json"
PHQ9_RESPONSE = "QuestionnaireResponse-questionnaireresponse-sdc-profile-example-PHQ9.json"
BMI = "Questionnaire-questionnaire-sdc-profile-example-weight-height-tracking-panel.json"
PREFER_OUTCOME = {"Prefer": "return=OperationOutcome"}
HELD_VALUE_SET = "https://example.org/fhir/ValueSet/phq9-frequency"


def diagnostics(response: Any, severity: str) -> str:
    return " ".join(
        i.get("diagnostics", "") for i in response.json()["issue"] if i["severity"] == severity
    )


def phq9_with_held_value_set() -> tuple[dict[str, Any], dict[str, Any]]:
    """The SDC PHQ-9 example changed for the test (the fixtures have no form whose answer list
    the server holds): its contained ValueSet becomes a ValueSet of its own, named by canonical,
    with the expansion spelling `Not-at-all` as the answers do; and its total's expression reads
    the grouped questions (`%resource.repeat(item)`; the published one reads only the top-level
    group, see test_sdc_expressions.py)."""
    questionnaire = fixture(PHQ9)
    value_set = questionnaire.pop("contained")[0]
    value_set.pop("meta")
    value_set.update(id="phq9-frequency", url=HELD_VALUE_SET, version="1")
    value_set["expansion"]["contains"][0]["code"] = "Not-at-all"
    questionnaire.update(id="phq9-held", url=questionnaire["url"] + "-held-value-set")
    group = questionnaire["item"][0]["item"]
    for item in group[:9]:
        item["answerValueSet"] = f"{HELD_VALUE_SET}|1"
    group[-1]["extension"][0]["valueExpression"]["expression"] = (
        "%resource.repeat(item).where(linkId!='H1/TS').answer.value.weight().sum()"
    )
    return questionnaire, value_set


def example_response(questionnaire: dict[str, Any], total: int | None) -> dict[str, Any]:
    response = fixture(PHQ9_RESPONSE)
    response.pop("id")
    response["questionnaire"] = questionnaire["url"]
    response["subject"] = {"reference": "Patient/p1"}
    response.pop("author")
    group = response["item"][0]["item"]
    if total is None:
        group.pop()
    else:
        group[-1]["answer"][0]["valueQuantity"]["value"] = total
    return response


async def test_weights_from_a_value_set_the_server_holds_check_the_total(
    fhir: RunningServer,
) -> None:
    """Weights 0+0+0+1+2+1+4+2+1 = 11 from the held ValueSet's expansion: the example's 13 is
    refused saying 11 was expected; 11 is stored."""
    questionnaire, value_set = phq9_with_held_value_set()
    for resource in (value_set, questionnaire):
        put = await fhir.client.put(f"/{resource['resourceType']}/{resource['id']}", json=resource)
        assert put.status_code == 201, put.text
    refused = await fhir.client.post(
        "/QuestionnaireResponse", json=example_response(questionnaire, 13)
    )
    assert refused.status_code == 422, refused.text
    assert "expected 11 from these answers, but 13 {score} was sent" in diagnostics(
        refused, "error"
    )
    stored = await fhir.client.post(
        "/QuestionnaireResponse", json=example_response(questionnaire, 11), headers=PREFER_OUTCOME
    )
    assert stored.status_code == 201, stored.text
    assert diagnostics(stored, "warning") == ""
    found = await fhir.client.get(
        "/QuestionnaireResponse", params={"questionnaire": questionnaire["url"]}
    )
    assert found.json()["total"] == 1  # the refused one left nothing behind


async def test_weights_from_a_code_system_the_server_holds(fhir: RunningServer) -> None:
    """The SDC CSPHQ9 CodeSystem (weights as concept properties), held by the server, and a form
    written for the test whose answer options carry no weights of their own."""
    code_system = fixture("CodeSystem-CSPHQ9.json")
    await fhir.client.put(f"/CodeSystem/{code_system['id']}", json=code_system)
    options = [{"valueCoding": {"system": code_system["url"], "code": c["code"]}} for c in code_system["concept"]]  # fmt: skip
    questionnaire = {
        "resourceType": "Questionnaire",
        "id": "two-items",
        "url": "https://example.org/fhir/Questionnaire/two-items",
        "status": "active",
        "item": [
            {"linkId": "a", "type": "choice", "answerOption": options},
            {"linkId": "b", "type": "choice", "answerOption": options},
            {"linkId": "total", "type": "integer", "readOnly": True, "extension": [{
                "url": "http://hl7.org/fhir/uv/sdc/StructureDefinition/sdc-questionnaire-calculatedExpression",
                "valueExpression": {"language": "text/fhirpath",
                                    "expression": "%resource.item.answer.value.weight().sum()"}}]},
        ],
    }  # fmt: skip
    await fhir.client.put("/Questionnaire/two-items", json=questionnaire)

    def response(total: int) -> dict[str, Any]:
        answers = {"a": "Nearly every day", "b": "More than half the days"}
        items: list[dict[str, Any]] = [
            {"linkId": k, "answer": [{"valueCoding": {"system": code_system["url"], "code": v}}]}
            for k, v in answers.items()
        ]
        items.append({"linkId": "total", "answer": [{"valueInteger": total}]})
        return {"resourceType": "QuestionnaireResponse", "questionnaire": questionnaire["url"],
                "status": "completed", "item": items}  # fmt: skip

    wrong = await fhir.client.post("/QuestionnaireResponse", json=response(5))
    assert wrong.status_code == 422 and "expected 6" in diagnostics(wrong, "error")
    right = await fhir.client.post(
        "/QuestionnaireResponse", json=response(6), headers=PREFER_OUTCOME
    )
    assert right.status_code == 201 and diagnostics(right, "warning") == ""


async def test_a_total_the_server_cannot_compute_is_stored_with_a_warning(
    fhir: RunningServer,
) -> None:
    """The same form without the ValueSet on the server: the weights are nowhere, so the 13 sent
    is kept unchecked and the write says so; `$extract` reports the same warning."""
    questionnaire, _ = phq9_with_held_value_set()
    await fhir.client.put(f"/Questionnaire/{questionnaire['id']}", json=questionnaire)
    stored = await fhir.client.post(
        "/QuestionnaireResponse", json=example_response(questionnaire, 13), headers=PREFER_OUTCOME
    )
    assert stored.status_code == 201, stored.text
    warning = diagnostics(stored, "warning")
    assert "'H1/TS' could not be calculated" in warning and "kept as it is, unchecked" in warning
    assert "http://example.org/CodeSystem/CSPHQ9|Not-at-all" in warning
    body = {"resourceType": "Parameters",
            "parameter": [{"name": "questionnaire-response", "resource": example_response(questionnaire, None)}]}  # fmt: skip
    extracted = await fhir.client.post("/QuestionnaireResponse/$extract", json=body)
    assert extracted.status_code == 200, extracted.text
    issues = next(p for p in extracted.json()["parameter"] if p["name"] == "issues")["resource"]
    assert any("left empty" in i["diagnostics"] for i in issues["issue"])


async def test_the_published_phq9_example_is_refused_and_says_why(fhir: RunningServer) -> None:
    questionnaire = fixture(PHQ9)
    await fhir.client.put(f"/Questionnaire/{questionnaire['id']}", json=questionnaire)
    refused = await fhir.client.post(
        "/QuestionnaireResponse", json=example_response(questionnaire, 13)
    )
    assert refused.status_code == 422, refused.text
    message = diagnostics(refused, "error")
    assert "expected no value" in message and "top-level items only" in message
    stored = await fhir.client.post(
        "/QuestionnaireResponse", json=example_response(questionnaire, None), headers=PREFER_OUTCOME
    )
    assert stored.status_code == 201 and "'H1/TS' has no value" in diagnostics(stored, "warning")


async def test_variables_compute_the_bmi_that_is_extracted(fhir: RunningServer) -> None:
    """The SDC weight & height panel's Questionnaire-level variables; `$extract` of a copy marked
    for extraction (the fixture has no observationExtract) carries the computed BMI."""
    questionnaire = fixture(BMI)
    questionnaire["extension"].append(
        {"url": "http://hl7.org/fhir/uv/sdc/StructureDefinition/sdc-questionnaire-observationExtract",
         "valueBoolean": True})  # fmt: skip
    await fhir.client.put(f"/Questionnaire/{questionnaire['id']}", json=questionnaire)
    response = {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": questionnaire["url"],
        "status": "completed",
        "subject": {"reference": "Patient/p1"},
        "item": [{"linkId": "/29463-7", "answer": [{"valueDecimal": 70}]},
                 {"linkId": "/8302-2", "answer": [{"valueDecimal": 70}]}],
    }  # fmt: skip
    body = {"resourceType": "Parameters", "parameter": [{"name": "questionnaire-response", "resource": response}]}  # fmt: skip
    extracted = await fhir.client.post("/QuestionnaireResponse/$extract", json=body)
    assert extracted.status_code == 200, extracted.text
    bundle = extracted.json()["parameter"][0]["resource"]
    by_code = {e["resource"]["code"]["coding"][0]["code"]: e["resource"] for e in bundle["entry"]}
    assert by_code["39156-5"]["valueQuantity"]["value"] == 22.1
    assert by_code["39156-5"]["valueQuantity"]["code"] == "kg/m2"
