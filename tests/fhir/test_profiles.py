"""Profile rules on write (fhir/profiles.py) and the built-in catalog (profiles/), over HTTP."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from fhirgoal.clinical.codes import GAS_EXTENSION, GAS_WEIGHT_EXTENSION
from fhirgoal.clinical.resources import gas_goal, gas_rating
from tests.conftest import RunningServer
from tests.helpers import diagnostics, expressions, put

LEVELS = ["Stays home", "Leaves home once a week", "Walks 20 minutes twice a week",
          "Walks 20 minutes four times a week", "Walks daily"]  # fmt: skip


def goal(**overrides: Any) -> dict[str, Any]:
    built = gas_goal("g1", "p1", "Walk outdoors", LEVELS, start="2026-08-03", importance=2,
                     difficulty=3, expressed_by="Patient/p1")  # fmt: skip
    built.update(overrides)
    return built


def rating(**overrides: Any) -> dict[str, Any]:
    built = gas_rating("r1", "p1", "g1", -1, "2026-08-03T10:00:00Z", baseline=True,
                       performer="Practitioner/t1")  # fmt: skip
    built.update(overrides)
    return built


async def test_a_gas_goal_built_to_the_profile_is_accepted(fhir: RunningServer) -> None:
    response = await put(fhir.client, goal())
    assert response.status_code == 201, response.text


@pytest.mark.parametrize(
    ("change", "rule"),
    [
        (lambda g: g["extension"].pop(0), "gas-1"),  # four described levels
        (lambda g: g["extension"][1]["extension"].pop(1), "gas-2"),  # a level without its text
        (
            lambda g: g["extension"][1]["extension"][0]["valueCoding"].update(code="LA34479-8"),
            "gas-3",
        ),
        (lambda g: g["extension"][5]["extension"][0].update(valueInteger=4), "gas-4"),
        (lambda g: g["extension"][6].update(valueCode="seven-level"), "gas-6"),
        (lambda g: g["target"][0]["measure"]["coding"][0].update(code="44261-6"), "gas-7"),
    ],
)
async def test_a_gas_goal_that_breaks_a_profile_rule_is_rejected_and_not_stored(
    fhir: RunningServer, change: Any, rule: str
) -> None:
    bad = goal()
    change(bad)
    response = await put(fhir.client, bad)
    assert response.status_code == 400, response.text
    assert rule in diagnostics(response.json())
    assert (await fhir.client.get("/Goal/g1")).status_code == 404


async def test_a_goal_without_gas_extensions_or_measure_is_not_held_to_the_gas_profile(
    fhir: RunningServer,
) -> None:
    plain = {"resourceType": "Goal", "id": "plain", "lifecycleStatus": "active",
             "description": {"text": "Sleep better"}, "subject": {"reference": "Patient/p1"}}  # fmt: skip
    assert (await put(fhir.client, plain)).status_code == 201


async def test_a_gas_rating_needs_focus_performer_and_an_LL6900_6_answer(
    fhir: RunningServer,
) -> None:
    assert (await put(fhir.client, goal())).status_code == 201
    assert (await put(fhir.client, rating())).status_code == 201
    no_focus = rating(id="r2")
    del no_focus["focus"]
    response = await put(fhir.client, no_focus)
    assert response.status_code == 400
    assert "Observation.focus" in expressions(response.json())

    other_answer = rating(id="r3", valueCodeableConcept={
        "coding": [{"system": "http://loinc.org", "code": "LA6568-5"}]})  # fmt: skip
    response = await put(fhir.client, other_answer)
    assert response.status_code == 400
    assert "LL6900-6" in diagnostics(response.json())

    as_quantity = rating(id="r4")
    del as_quantity["valueCodeableConcept"]
    as_quantity["valueQuantity"] = {"value": -1}
    response = await put(fhir.client, as_quantity)
    assert response.status_code == 400
    assert "Observation.value[x]" in expressions(response.json())


async def test_variant_levels_carry_their_LL6900_6_answer(fhir: RunningServer) -> None:
    assert (await put(fhir.client, goal())).status_code == 201
    partial = rating(id="r5", valueCodeableConcept=copy.deepcopy(
        gas_rating("x", "p1", "g1", "-0.5", "2026-08-03", performer="Patient/p1")["valueCodeableConcept"]))  # fmt: skip
    assert (await put(fhir.client, partial)).status_code == 201
    mismatched = rating(id="r6")
    mismatched["valueCodeableConcept"]["coding"].append(
        {"system": "https://fhirgoal.org/fhir/CodeSystem/gas-level", "code": "-3"}
    )  # -3 reported as -1: inconsistent
    response = await put(fhir.client, mismatched)
    assert response.status_code == 400
    assert "gasr-4" in diagnostics(response.json())


async def test_session_rating_items_stay_within_zero_to_ten(fhir: RunningServer) -> None:
    measures = "https://fhirgoal.org/fhir/CodeSystem/fhirgoal-measures"

    def item(code: str, value: str) -> dict[str, Any]:
        return {"code": {"coding": [{"system": measures, "code": code}]},
                "valueQuantity": {"value": float(value)}}  # fmt: skip

    ors = {
        "resourceType": "Observation", "id": "ors1", "status": "final",
        "code": {"coding": [{"system": measures, "code": "ors-total"}]},
        "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2026-08-03",
        "valueQuantity": {"value": 41},
        "component": [item("ors-individually", "10"), item("ors-interpersonally", "10"),
                      item("ors-socially", "10"), item("ors-overall", "11")],
    }  # fmt: skip
    response = await put(fhir.client, ors)
    assert response.status_code == 400
    assert set(expressions(response.json())) == {
        "Observation.value[x]",
        "Observation.component.value[x]",
    }
    assert "not 41" in diagnostics(response.json()) and "not 11" in diagnostics(response.json())


async def test_a_claimed_profile_applies_even_without_its_selector(fhir: RunningServer) -> None:
    claimed = {"resourceType": "Goal", "id": "claims", "lifecycleStatus": "active",
               "meta": {"profile": ["https://fhirgoal.org/fhir/StructureDefinition/gas-goal"]},
               "description": {"text": "x"}, "subject": {"reference": "Patient/p1"}}  # fmt: skip
    response = await put(fhir.client, claimed)
    assert response.status_code == 400
    assert "gas-1" in diagnostics(response.json())


async def test_built_in_definitions_are_served_and_searchable_by_url(fhir: RunningServer) -> None:
    url = "https://fhirgoal.org/fhir/StructureDefinition/gas-goal"
    bundle = (await fhir.client.get("/StructureDefinition", params={"url": url})).json()
    assert [e["resource"]["id"] for e in bundle["entry"]] == ["gas-goal"]
    value_set = (await fhir.client.get("/ValueSet/loinc-LL6900-6")).json()
    assert value_set["url"] == "http://loinc.org/vs/LL6900-6"
    bundle = (await fhir.client.get("/CodeSystem", params={"name": "GasLevel"})).json()
    assert bundle["total"] == 1


async def test_gas_weight_extension_is_documented_in_the_profile(fhir: RunningServer) -> None:
    definition = (await fhir.client.get("/StructureDefinition/gas-goal")).json()
    text = str(definition["differential"])
    assert GAS_WEIGHT_EXTENSION in text and GAS_EXTENSION in text


async def test_capability_statement_lists_operations_and_supported_profiles(
    fhir: RunningServer,
) -> None:
    statement = (await fhir.client.get("/metadata")).json()
    rest = statement["rest"][0]
    assert {o["name"] for o in rest["operation"]} == {"gas-tscore", "export"}
    by_type = {r["type"]: r for r in rest["resource"]}
    assert {o["name"] for o in by_type["Patient"]["operation"]} == {
        "gas-tscore",
        "progress",
        "validate",
        "everything",
        "export",
        "medical-necessity",
        "submit-to-payer",
    }
    extract = next(
        o for o in by_type["QuestionnaireResponse"]["operation"] if o["name"] == "extract"
    )
    assert extract["definition"].endswith("QuestionnaireResponse-extract")
    assert (
        "https://fhirgoal.org/fhir/StructureDefinition/gas-goal"
        in by_type["Goal"]["supportedProfile"]
    )
    operations = [*rest["operation"], *by_type["Patient"]["operation"]]
    for op in [*operations, *by_type["Group"]["operation"]]:  # each definition is served
        found = (
            await fhir.client.get("/OperationDefinition", params={"url": op["definition"]})
        ).json()
        assert found["total"] == 1, op


async def test_phq9_and_gad7_totals_stay_in_their_ranges(fhir: RunningServer) -> None:
    def total(oid: str, code: str, value: Any) -> dict[str, Any]:
        return {"resourceType": "Observation", "id": oid, "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": code}]},
                "subject": {"reference": "Patient/p1"}, "effectiveDateTime": "2026-08-03",
                "valueQuantity": {"value": value}}  # fmt: skip

    assert (await put(fhir.client, total("phq", "44261-6", 27))).status_code == 201
    assert (await put(fhir.client, total("phq2", "44261-6", 28))).status_code == 400
    assert (await put(fhir.client, total("gad", "70274-6", 22))).status_code == 400
    assert (await put(fhir.client, total("gad2", "70274-6", 12.5))).status_code == 400
