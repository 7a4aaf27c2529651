"""Every R4 resource type is served (https://hl7.org/fhir/R4/resourcelist.html): the generic types
get the whole interaction set and their R4 search parameters, any type may be contained, Bundle is
stored as a resource under its own rules, and Parameters and OperationOutcome have no endpoint."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from fhirgoal.store.mongo import connect
from tests.conftest import RunningServer

FHIR_JSON = "application/fhir+json"


def medication_request(rid: str, patient: str, status: str = "active") -> dict[str, Any]:
    return {
        "resourceType": "MedicationRequest",
        "id": rid,
        "status": status,
        "intent": "order",
        "medicationCodeableConcept": {
            "coding": [{"system": "http://www.nlm.nih.gov/research/umls/rxnorm", "code": "197361"}]
        },
        "subject": {"reference": f"Patient/{patient}"},
        "dosageInstruction": [{"doseAndRate": [{"doseQuantity": {"value": 2.5, "unit": "mg"}}]}],
    }


async def test_a_generic_type_has_every_interaction(fhir: RunningServer) -> None:
    client = fhir.client
    created = await client.put("/MedicationRequest/mr1", json=medication_request("mr1", "p1"))
    assert created.status_code == 201, created.text
    # as sent on the wire, so that the decimal keeps its trailing zero (json= would drop it)
    completed = json.dumps(medication_request("mr1", "p1", "completed")).replace("2.5", "2.50")
    updated = await client.put(
        "/MedicationRequest/mr1", content=completed, headers={"Content-Type": FHIR_JSON}
    )
    assert updated.status_code == 200
    assert (await client.get("/MedicationRequest/mr1/_history/1")).json()["status"] == "active"
    history = await client.get("/MedicationRequest/mr1/_history")
    assert history.json()["total"] == 2
    posted = await client.post(
        "/MedicationRequest",
        json=medication_request("ignored", "p2"),
        headers={"Accept": FHIR_JSON},
    )
    assert posted.status_code == 201

    # R4 search parameters of the type, and the patient compartment (compartmentdefinition-patient)
    by_status = await client.get("/MedicationRequest", params={"status": "completed"})
    assert [e["resource"]["id"] for e in by_status.json()["entry"]] == ["mr1"]
    by_code = await client.get(
        "/MedicationRequest",
        params={
            "code": "http://www.nlm.nih.gov/research/umls/rxnorm|197361",
            "subject": "Patient/p2",
        },
    )
    assert [e["resource"]["id"] for e in by_code.json()["entry"]] == [posted.json()["id"]]
    in_compartment = await client.get("/Patient/p1/MedicationRequest")
    assert [e["resource"]["id"] for e in in_compartment.json()["entry"]] == ["mr1"]

    # lossless, like every type
    text = (await client.get("/MedicationRequest/mr1")).text
    assert '"value":2.50' in text.replace(" ", "")

    assert (await client.delete("/MedicationRequest/mr1")).status_code in (200, 204)
    assert (await client.get("/MedicationRequest/mr1")).status_code == 410


async def test_contained_resources_of_any_type_are_accepted(fhir: RunningServer) -> None:
    encounter = {
        "resourceType": "Encounter",
        "id": "e1",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "contained": [{"resourceType": "Location", "id": "room", "status": "active"}],
        "location": [{"location": {"reference": "#room"}}],
    }
    assert (await fhir.client.put("/Encounter/e1", json=encounter)).status_code == 201
    encounter["contained"] = [{"resourceType": "Location", "id": "room", "status": "open"}]
    refused = await fhir.client.put("/Encounter/e1", json=encounter)
    assert refused.status_code == 400
    assert (await fhir.client.get("/Encounter/e1/_history")).json()["total"] == 1


async def test_parameters_and_operation_outcome_have_no_endpoint(fhir: RunningServer) -> None:
    for rt in ("Parameters", "OperationOutcome"):
        answer = await fhir.client.post(f"/{rt}", json={"resourceType": rt})
        assert answer.status_code == 404
        assert "no RESTful endpoint" in answer.json()["issue"][0]["diagnostics"]
        assert (await fhir.client.get(f"/{rt}")).status_code == 404


async def test_a_bundle_is_stored_as_a_resource_under_the_bundle_rules(
    fhir: RunningServer,
) -> None:
    collection = {
        "resourceType": "Bundle",
        "id": "c1",
        "type": "collection",
        "entry": [
            {"fullUrl": "urn:uuid:0b0b0b0b-0000-4000-8000-000000000001",
             "resource": {"resourceType": "Parameters", "parameter": [{"name": "n", "valueDecimal": 1.50}]}},
            {"fullUrl": "urn:uuid:0b0b0b0b-0000-4000-8000-000000000002",
             "resource": {"resourceType": "OperationOutcome", "issue": [{"severity": "information", "code": "informational"}]}},
        ],
    }  # fmt: skip
    assert (await fhir.client.put("/Bundle/c1", json=collection)).status_code == 201
    found = await fhir.client.get("/Bundle", params={"type": "collection"})
    assert [e["resource"]["id"] for e in found.json()["entry"]] == ["c1"]
    # bdl-9: a document must have an identifier with a system and a value
    document = {"resourceType": "Bundle", "id": "d1", "type": "document"}
    refused = await fhir.client.put("/Bundle/d1", json=document)
    assert refused.status_code == 400
    assert "bdl-9" in refused.text


async def test_searching_a_type_never_written_creates_nothing(fhir: RunningServer) -> None:
    empty = await fhir.client.get("/Specimen", params={"type": "x"})
    assert empty.status_code == 200
    assert empty.json()["total"] == 0
    assert (await fhir.client.get("/Specimen/s1")).status_code == 404
    assert (await fhir.client.get("/Specimen/_history")).json()["total"] == 0
    mongo = connect(fhir.settings.mongodb_uri or "")
    try:
        names = await mongo[fhir.settings.db].list_collection_names()
    finally:
        await mongo.close()
    assert "Specimen" not in names
    assert "Specimen_history" not in names


async def test_first_writes_of_a_type_at_once_all_succeed(fhir: RunningServer) -> None:
    locations = [{"resourceType": "Location", "name": f"room {i}"} for i in range(8)]
    answers = await asyncio.gather(*(fhir.client.post("/Location", json=r) for r in locations))
    assert [a.status_code for a in answers] == [201] * 8
    found = await fhir.client.get("/Location", params={"name": "room", "_summary": "count"})
    assert found.json()["total"] == 8


async def test_the_capability_statement_lists_every_stored_type(fhir: RunningServer) -> None:
    statement = (await fhir.client.get("/metadata")).json()
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    assert len(resources) == 144
    assert {"Bundle", "Binary", "Location", "Medication", "MedicationRequest"} <= set(resources)
    assert not {"Parameters", "OperationOutcome"} & set(resources)
    request = resources["MedicationRequest"]
    assert {"read", "vread", "create", "update", "delete", "search-type"} <= {
        i["code"] for i in request["interaction"]
    }
    params = {p["name"]: p for p in request["searchParam"]}
    assert {"intent", "status", "subject", "code"} <= set(params)
    # a parameter R4 shares between types is documented for this one
    assert params["code"]["documentation"] == "Return prescriptions of this medication code"


async def test_an_element_rule_fails_on_false_not_on_empty(fhir: RunningServer) -> None:
    """ras-2 on each prediction: `probability is decimal implies (probability as decimal) <=
    100`. Without a probability the rule is empty, not false (R4's own example has none)."""
    risk: dict[str, Any] = {
        "resourceType": "RiskAssessment",
        "id": "r1",
        "status": "final",
        "subject": {"reference": "Patient/p1"},
        "prediction": [{"qualitativeRisk": {"text": "moderate"}}],
    }
    assert (await fhir.client.put("/RiskAssessment/r1", json=risk)).status_code == 201
    risk["prediction"].append({"probabilityDecimal": 101})
    refused = await fhir.client.put("/RiskAssessment/r1", json=risk)
    assert refused.status_code == 400
    assert "ras-2" in refused.text
