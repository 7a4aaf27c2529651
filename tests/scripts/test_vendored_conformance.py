"""The vendored R4 definitions (fhirgoal/conformance/, written by scripts/vendor_conformance.py)
cover every R4 resource type (https://hl7.org/fhir/R4/resourcelist.html) and have the shape the
server reads."""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema_rs

CONFORMANCE = Path(__file__).resolve().parents[2] / "fhirgoal" / "conformance"
GENERIC_BASES = {"Resource", "DomainResource"}
# Types for which R4 defines only the Resource-level parameters (_id, _lastUpdated, ...).
NO_OWN_PARAMETERS = {
    "Binary",
    "BiologicallyDerivedProduct",
    "CatalogEntry",
    "MedicinalProductIngredient",
    "MedicinalProductManufactured",
    "ObservationDefinition",
    "SubstanceNucleicAcid",
    "SubstancePolymer",
    "SubstanceProtein",
    "SubstanceReferenceInformation",
    "SubstanceSourceMaterial",
}
# R4 has 146 concrete resource types (resourcelist.html; Resource and DomainResource are abstract).
R4_RESOURCE_TYPE_COUNT = 146


@cache
def load(name: str) -> Any:
    return json.loads((CONFORMANCE / name).read_text(encoding="utf-8"))


def stored_types() -> list[str]:
    return list(load("resource-types.json")["stored"])


def all_types() -> list[str]:
    types = load("resource-types.json")
    return [*types["stored"], *types["other"]]


def search_parameters() -> list[dict[str, Any]]:
    return [entry["resource"] for entry in load("search-parameters.json")["entry"]]


def test_every_r4_resource_type_is_listed_once() -> None:
    types = all_types()
    assert len(types) == len(set(types)) == R4_RESOURCE_TYPE_COUNT
    assert {"Bundle", "Binary", "Location", "Medication", "MedicationRequest"} <= set(types)
    # no RESTful endpoint in R4 (parameters.html, operationoutcome.html)
    assert load("resource-types.json")["other"] == ["OperationOutcome", "Parameters"]


def validator_for(resource_type: str) -> Any:
    definitions = load("fhir.schema.json")["definitions"]
    return jsonschema_rs.Draft6Validator(
        {"definitions": definitions, "$ref": f"#/definitions/{resource_type}"}
    )


def test_every_type_has_a_schema_definition() -> None:
    definitions = load("fhir.schema.json")["definitions"]
    assert [t for t in all_types() if t not in definitions] == []


def test_schema_resource_list_is_exactly_the_listed_types() -> None:
    schema = load("fhir.schema.json")
    listed = {
        alt["$ref"].rsplit("/", 1)[-1] for alt in schema["definitions"]["ResourceList"]["oneOf"]
    }
    assert listed == set(all_types())
    assert set(schema["discriminator"]["mapping"]) == set(all_types())


def test_schema_refs_all_resolve() -> None:
    schema = load("fhir.schema.json")
    text = json.dumps(schema["definitions"])
    refs = {part.split('"', 1)[0] for part in text.split('"$ref": "#/definitions/')[1:]}
    assert refs - set(schema["definitions"]) == set()


def test_every_type_has_a_structure_entry() -> None:
    structure = load("structure.json")
    assert [t for t in all_types() if "elements" not in structure.get(t, {})] == []


def test_structure_types_are_all_described() -> None:
    structure = load("structure.json")
    used = {
        code
        for entry in structure.values()
        for element in entry.get("elements", {}).values()
        for code in element["types"]
    }
    assert used - set(structure) == set()


def test_every_stored_type_has_search_parameters() -> None:
    bases = {base for sp in search_parameters() for base in sp["base"]}
    assert {t for t in stored_types() if t not in bases} <= NO_OWN_PARAMETERS
    generic = {sp["code"] for sp in search_parameters() if "Resource" in sp["base"]}
    assert {"_id", "_lastUpdated", "_tag", "_profile", "_security", "_source"} <= generic


def test_search_parameter_bases_are_stored_or_generic() -> None:
    allowed = set(stored_types()) | GENERIC_BASES
    assert [sp["id"] for sp in search_parameters() if not set(sp["base"]) <= allowed] == []


def test_search_parameter_codes_are_unique_per_type() -> None:
    seen: set[tuple[str, str]] = set()
    for sp in search_parameters():
        for base in sp["base"]:
            assert (base, sp["code"]) not in seen, (base, sp["code"])
            seen.add((base, sp["code"]))


def test_compartment_params_are_search_parameters_of_their_type() -> None:
    compartment = {k: v for k, v in load("compartment-patient.json").items() if k[0] != "_"}
    assert set(compartment) <= set(stored_types())
    # the whole R4 patient compartment: 66 types link to a patient
    assert len(compartment) == 66
    assert compartment["MedicationRequest"] == ["subject"]
    codes = {(base, sp["code"]) for sp in search_parameters() for base in sp["base"]}
    missing = [(t, p) for t, params in compartment.items() for p in params if (t, p) not in codes]
    assert missing == []


def test_observation_structure() -> None:
    observation = load("structure.json")["Observation"]
    elements = observation["elements"]
    assert elements["value"]["choice"] is True
    assert "Quantity" in elements["value"]["types"]
    assert elements["status"]["min"] == 1
    assert elements["component.value"]["choice"] is True
    assert elements["component.referenceRange"]["contentReference"] == "#Observation.referenceRange"
    keys = {c["key"] for c in observation["constraints"]}
    assert {"dom-2", "obs-6", "obs-7"} <= keys
    assert keys.isdisjoint({"ele-1", "ext-1"})


def test_primitives_carry_their_regex() -> None:
    structure = load("structure.json")
    assert structure["code"] == {"primitive": True, "regex": "[^\\s]+(\\s[^\\s]+)*"}
    assert structure["boolean"]["regex"] == "true|false"


def test_schema_accepts_a_minimal_observation() -> None:
    observation = {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}
    assert validator_for("Observation").is_valid(observation)


def test_schema_rejects_an_unknown_element() -> None:
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "colour": "blue",
    }
    assert not validator_for("Observation").is_valid(observation)


def test_schema_accepts_contained_resources_of_every_type() -> None:
    observation = {
        "resourceType": "Observation",
        "status": "final",
        "code": {"text": "x"},
        "contained": [{"resourceType": "Medication", "id": "m"}],
    }
    assert validator_for("Observation").is_valid(observation)
    observation["contained"] = [{"resourceType": "Location", "id": "l", "status": "active"}]
    assert validator_for("Observation").is_valid(observation)
    observation["contained"] = [{"resourceType": "Location", "id": "l", "status": "open"}]
    assert not validator_for("Observation").is_valid(observation)
    observation["contained"] = [{"resourceType": "Medicine", "id": "m"}]
    assert not validator_for("Observation").is_valid(observation)


def test_schema_reads_whitespace_as_xml_schema_does() -> None:
    """FHIR regexes are XML Schema regexes: a non-breaking space is not whitespace there, so a
    string or code holding one is valid (the R4 examples have them); control characters in a
    code still are not allowed (a tab splits a code)."""
    code_system = {
        "resourceType": "CodeSystem",
        "status": "active",
        "content": "complete",
        "concept": [{"code": "CHEST\u00a0", "display": "Program\u00a0"}],
    }
    assert validator_for("CodeSystem").is_valid(code_system)
    code_system["concept"] = [{"code": "a\tb\t"}]
    assert not validator_for("CodeSystem").is_valid(code_system)


def test_schema_lets_canonical_elements_carry_extensions() -> None:
    definition = {
        "resourceType": "StructureDefinition",
        "url": "http://example.org/sd",
        "name": "Sd",
        "status": "draft",
        "kind": "resource",
        "abstract": True,
        "type": "Sd",
        "baseDefinition": "http://hl7.org/fhir/StructureDefinition/DomainResource",
        "_baseDefinition": {"extension": [{"url": "http://example.org/x", "valueString": "y"}]},
    }
    assert validator_for("StructureDefinition").is_valid(definition)
