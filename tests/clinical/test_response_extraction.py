"""QuestionnaireResponses yield Observations on write and on $extract, over HTTP."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from fhirgoal.clinical.resources import rating_scale_response
from fhirgoal.core.jsonio import dumps, loads
from tests.conftest import RunningServer
from tests.helpers import put

MEASURES = "https://fhirgoal.org/fhir/CodeSystem/fhirgoal-measures"


def ors(
    rid: str = "qr1", scores: tuple[str, ...] = ("7.5", "8.2", "7.6", "8.1"), **kw: Any
) -> dict[str, Any]:
    return rating_scale_response(rid, "ors", "p1", [Decimal(s) for s in scores],
                                 "2026-09-01T15:00:00Z", **kw)  # fmt: skip


async def derived(fhir: RunningServer, rid: str = "qr1") -> list[dict[str, Any]]:
    response = await fhir.client.get(
        "/Observation", params={"derived-from": f"QuestionnaireResponse/{rid}"}
    )
    return [e["resource"] for e in loads(response.content).get("entry", [])]


async def test_a_completed_ors_yields_one_observation_with_total_and_items(
    fhir: RunningServer,
) -> None:
    await put(fhir.client, {"resourceType": "Patient", "id": "p1"})
    response = await put(fhir.client, ors())
    assert response.status_code == 201, response.text
    [observation] = await derived(fhir)
    assert observation["code"]["coding"][0] == {"system": MEASURES, "code": "ors-total",
                                                "display": observation["code"]["coding"][0].get("display")}  # fmt: skip
    assert observation["valueQuantity"]["value"] == Decimal("31.4")  # exact, not 31.399999
    assert [c["valueQuantity"]["value"] for c in observation["component"]] == [
        Decimal("7.5"), Decimal("8.2"), Decimal("7.6"), Decimal("8.1")]  # fmt: skip
    assert observation["subject"] == {"reference": "Patient/p1"}
    assert observation["effectiveDateTime"] == "2026-09-01T15:00:00Z"
    assert observation["derivedFrom"] == [{"reference": "QuestionnaireResponse/qr1"}]
    # The response is stored as sent: the server does not write the total into it.
    stored = loads((await fhir.client.get("/QuestionnaireResponse/qr1")).content)
    assert [i["linkId"] for i in stored["item"]] == [i["linkId"] for i in ors()["item"]]


@pytest.mark.parametrize(
    ("scores", "where"),
    [(("7.5", "11", "7.6", "8.1"), "QuestionnaireResponse.item[1].answer[0].valueDecimal"),
     (("7.5", "-1", "7.6", "8.1"), "QuestionnaireResponse.item[1].answer[0].valueDecimal"),
     (("7.55", "8", "7.6", "8.1"), "QuestionnaireResponse.item[0].answer[0].valueDecimal")],
)  # fmt: skip
async def test_out_of_range_answers_are_rejected_and_nothing_is_stored(
    fhir: RunningServer, scores: tuple[str, ...], where: str
) -> None:
    response = await put(fhir.client, ors(scores=scores))
    assert response.status_code == 422, response.text
    assert where in [e for i in response.json()["issue"] for e in i.get("expression", [])]
    assert (await fhir.client.get("/QuestionnaireResponse/qr1")).status_code == 404
    assert await derived(fhir) == []


async def test_a_missing_required_item_is_rejected_only_once_completed(fhir: RunningServer) -> None:
    partial = ors()
    partial["item"].pop()
    response = await put(fhir.client, partial)
    assert response.status_code == 422
    assert "ors-overall" in response.text
    partial["status"] = "in-progress"
    assert (await put(fhir.client, partial)).status_code == 201
    assert await derived(fhir) == []  # an unfinished response yields nothing


async def test_amending_updates_and_entered_in_error_retracts_what_was_derived(
    fhir: RunningServer,
) -> None:
    await put(fhir.client, {"resourceType": "Patient", "id": "p1"})
    await put(fhir.client, ors())
    amended = ors(scores=("5", "5", "5", "5"), status="amended")
    assert (await put(fhir.client, amended)).status_code == 200
    [observation] = await derived(fhir)
    assert observation["status"] == "amended"
    assert observation["valueQuantity"]["value"] == 20
    assert observation["meta"]["versionId"] == "2"
    wrong = ors(scores=("5", "5", "5", "5"), status="entered-in-error")
    assert (await put(fhir.client, wrong)).status_code == 200
    [observation] = await derived(fhir)
    assert observation["status"] == "entered-in-error"
    assert (await fhir.client.delete("/QuestionnaireResponse/qr1")).status_code == 204


async def test_a_response_to_an_unknown_questionnaire_is_stored_and_yields_nothing(
    fhir: RunningServer,
) -> None:
    other = ors()
    other["questionnaire"] = "https://example.org/Questionnaire/unknown"
    assert (await put(fhir.client, other)).status_code == 201
    assert await derived(fhir) == []


async def test_extract_operation_returns_a_transaction_without_storing(fhir: RunningServer) -> None:
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "questionnaire-response", "resource": {k: v for k, v in ors().items() if k != "id"}}]}  # fmt: skip
    response = await fhir.client.post("/QuestionnaireResponse/$extract", content=dumps(body),
                                      headers={"Content-Type": "application/fhir+json"})  # fmt: skip
    assert response.status_code == 200, response.text
    bundle = loads(response.content)["parameter"][0]["resource"]
    assert bundle["type"] == "transaction"
    assert bundle["entry"][0]["resource"]["valueQuantity"]["value"] == Decimal("31.4")
    assert (await fhir.client.get("/Observation")).json()["total"] == 0
    await put(fhir.client, ors())
    instance = await fhir.client.get("/QuestionnaireResponse/qr1/$extract")
    assert instance.status_code == 200
    assert (
        loads(instance.content)["parameter"][0]["resource"]["entry"][0]["request"]["method"]
        == "PUT"
    )
