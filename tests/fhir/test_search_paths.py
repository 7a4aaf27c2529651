"""SearchParameter expressions compiled to fast extractors (fhirgoal.fhir.search.paths)."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest
from fhirpathpy import compile as fhirpath_compile
from fhirpathpy.models import models as fhirpath_models

from fhirgoal.config import Settings
from fhirgoal.fhir.conformance import load_conformance
from fhirgoal.fhir.search.paths import (
    _compile_steps,
    _run_steps,
    branches_for_type,
    compile_expression,
    reference_type,
    split_top_level,
    strip_parens,
    top_level_has_space,
)
from fhirgoal.fhir.search.registry import SearchRegistry

SHARED_PATIENT = (
    "AllergyIntolerance.patient | CarePlan.subject.where(resolve() is Patient) | "
    "Observation.subject.where(resolve() is Patient)"
)


def extract(expression: str, resource: dict[str, Any]) -> list[Any]:
    extractor = compile_expression(expression, resource["resourceType"])
    assert extractor is not None
    return extractor(resource)


# --- split_top_level ----------------------------------------------------------------------------


def test_split_on_pipe_trims_whitespace() -> None:
    assert split_top_level("A.b | A.c|A.d") == ["A.b", "A.c", "A.d"]


def test_split_ignores_pipe_inside_parentheses_and_quotes() -> None:
    expression = "A.where(x = 1 | 2) | A.where(y='a|b') | A.c"
    assert split_top_level(expression) == ["A.where(x = 1 | 2)", "A.where(y='a|b')", "A.c"]


def test_split_on_multi_character_separator() -> None:
    expression = "A.b or A.where(c or d) or A.e = 'x or y'"
    assert split_top_level(expression, " or ") == ["A.b", "A.where(c or d)", "A.e = 'x or y'"]


def test_multi_character_separator_is_not_matched_inside_words() -> None:
    assert split_top_level("A.color or A.order", " or ") == ["A.color", "A.order"]


def test_split_on_dot_keeps_function_arguments_whole() -> None:
    assert split_top_level("Patient.extension('http://x.org/a.b').value", ".") == [
        "Patient",
        "extension('http://x.org/a.b')",
        "value",
    ]


def test_split_drops_empty_parts() -> None:
    assert split_top_level(" | A.b | ") == ["A.b"]


def test_top_level_has_space_only_outside_parentheses() -> None:
    assert top_level_has_space("Patient.deceased.exists() and Patient.deceased != false")
    assert not top_level_has_space("Patient.telecom.where(system = 'phone')")


def test_strip_parens_removes_only_enclosing_pairs() -> None:
    assert (
        strip_parens("((Observation.effective as dateTime))") == "Observation.effective as dateTime"
    )
    assert strip_parens("(A.b) | (A.c)") == "(A.b) | (A.c)"


# --- branches_for_type --------------------------------------------------------------------------


def test_branches_for_type_picks_only_that_types_branch() -> None:
    assert branches_for_type(SHARED_PATIENT, "CarePlan") == [
        "CarePlan.subject.where(resolve() is Patient)"
    ]
    assert branches_for_type(SHARED_PATIENT, "AllergyIntolerance") == ["AllergyIntolerance.patient"]


def test_branches_for_type_does_not_match_a_type_name_prefix() -> None:
    assert branches_for_type("CarePlan.subject | Care.x", "Care") == ["Care.x"]
    assert branches_for_type(SHARED_PATIENT, "Care") == []


def test_branches_for_type_is_empty_for_unrelated_type() -> None:
    assert branches_for_type(SHARED_PATIENT, "Goal") == []
    assert compile_expression(SHARED_PATIENT, "Goal") is None


def test_resource_and_domain_resource_branches_map_to_the_type() -> None:
    assert branches_for_type("Resource.meta.lastUpdated", "Goal") == ["Goal.meta.lastUpdated"]
    assert branches_for_type("DomainResource.text", "Patient") == ["Patient.text"]


def test_parenthesized_branch_is_unwrapped() -> None:
    expression = "(Observation.effective as dateTime) | (Condition.onset as dateTime)"
    assert branches_for_type(expression, "Condition") == ["Condition.onset as dateTime"]


# --- compile_expression on realistic resources --------------------------------------------------

QUANTITY_OBS = {
    "resourceType": "Observation",
    "status": "final",
    "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]},
    "subject": {"reference": "Patient/p1"},
    "effectiveDateTime": "2026-03-15T10:00:00Z",
    "valueQuantity": {"value": 72.5, "unit": "kg"},
}
CONCEPT_OBS = {
    "resourceType": "Observation",
    "status": "final",
    "code": {"text": "mood"},
    "subject": {"reference": "Group/g1"},
    "effectivePeriod": {"start": "2026-03-01", "end": "2026-03-31"},
    "valueCodeableConcept": {"coding": [{"system": "http://snomed.info/sct", "code": "1"}]},
}
PATIENT = {
    "resourceType": "Patient",
    "name": [{"family": "Doe", "given": ["Jane", "Q"]}, {"family": "Roe", "given": ["J"]}],
    "telecom": [
        {"system": "phone", "value": "555-1"},
        {"system": "email", "value": "jane@example.org"},
        {"system": "phone", "value": "555-2", "use": "work"},
    ],
    "extension": [
        {"url": "http://example.org/ext/race", "valueString": "x"},
        {"url": "http://example.org/ext/birthsex", "valueCode": "F"},
    ],
}


def test_choice_element_as_quantity_keeps_only_quantity_values() -> None:
    assert extract("Observation.value as Quantity", QUANTITY_OBS) == [{"value": 72.5, "unit": "kg"}]
    assert extract("Observation.value as Quantity", CONCEPT_OBS) == []


def test_choice_element_as_function_keeps_only_that_type() -> None:
    expression = "Observation.value.as(CodeableConcept)"
    assert extract(expression, CONCEPT_OBS) == [CONCEPT_OBS["valueCodeableConcept"]]
    assert extract(expression, QUANTITY_OBS) == []


def test_parenthesized_trailing_cast_with_lower_case_type() -> None:
    expression = "(Observation.effective as dateTime)"
    assert extract(expression, QUANTITY_OBS) == ["2026-03-15T10:00:00Z"]
    assert extract(expression, CONCEPT_OBS) == []


def test_uncast_choice_element_returns_whichever_variant_is_present() -> None:
    assert extract("Observation.effective", CONCEPT_OBS) == [CONCEPT_OBS["effectivePeriod"]]


def test_union_of_casts_returns_each_matching_branch() -> None:
    expression = "Observation.value as Quantity | Observation.value as CodeableConcept"
    assert extract(expression, QUANTITY_OBS) == [QUANTITY_OBS["valueQuantity"]]
    assert extract(expression, CONCEPT_OBS) == [CONCEPT_OBS["valueCodeableConcept"]]


def test_resolve_is_patient_filters_out_group_references() -> None:
    assert extract(SHARED_PATIENT, QUANTITY_OBS) == [{"reference": "Patient/p1"}]
    assert extract(SHARED_PATIENT, CONCEPT_OBS) == []


def test_resolve_is_patient_accepts_absolute_and_versioned_references() -> None:
    resource = {
        "resourceType": "CarePlan",
        "subject": {"reference": "http://other.org/fhir/Patient/9/_history/3"},
    }
    assert extract(SHARED_PATIENT, resource) == [resource["subject"]]


def test_resolve_is_patient_skips_identifier_only_references() -> None:
    resource = {"resourceType": "CarePlan", "subject": {"identifier": {"value": "123"}}}
    assert extract(SHARED_PATIENT, resource) == []


def test_where_system_phone_keeps_only_phone_contact_points() -> None:
    assert extract("Patient.telecom.where(system='phone')", PATIENT) == [
        {"system": "phone", "value": "555-1"},
        {"system": "phone", "value": "555-2", "use": "work"},
    ]


def test_where_with_spaces_around_equals_is_compiled_the_same() -> None:
    assert extract("Patient.telecom.where(system = 'email')", PATIENT) == [
        {"system": "email", "value": "jane@example.org"}
    ]


def test_extension_by_url_selects_one_extension_and_its_value() -> None:
    url = "http://example.org/ext/birthsex"
    assert extract(f"Patient.extension('{url}')", PATIENT) == [{"url": url, "valueCode": "F"}]
    assert extract(f"Patient.extension('{url}').value", PATIENT) == ["F"]
    assert extract("Patient.extension('http://example.org/none')", PATIENT) == []


def test_nested_arrays_are_flattened() -> None:
    assert extract("Patient.name.given", PATIENT) == ["Jane", "Q", "J"]
    assert extract("Patient.name.family", PATIENT) == ["Doe", "Roe"]


def test_missing_element_yields_nothing() -> None:
    assert extract("Patient.birthDate", PATIENT) == []
    assert extract("Patient.name.prefix", PATIENT) == []


def test_navigating_through_a_primitive_yields_nothing() -> None:
    assert extract("Observation.status.code", QUANTITY_OBS) == []


@pytest.mark.parametrize(
    ("deceased", "expected"),
    [
        ({"deceasedBoolean": True}, [True]),
        ({"deceasedBoolean": False}, [False]),
        ({"deceasedDateTime": "2020-01-01"}, [True]),
        ({}, [False]),
    ],
)
def test_fallback_expression_is_evaluated_by_fhirpathpy(
    deceased: dict[str, Any], expected: list[bool]
) -> None:
    resource = {"resourceType": "Patient", **deceased}
    expression = "Patient.deceased.exists() and Patient.deceased != false"
    assert extract(expression, resource) == expected


def test_fallback_is_combined_with_compiled_branches_in_a_union() -> None:
    expression = "Patient.name.family | Patient.telecom.where(value.startsWith('555')).value"
    assert extract(expression, PATIENT) == ["Doe", "Roe", "555-1", "555-2"]


def test_absent_element_does_not_pick_up_a_sibling_with_a_longer_name() -> None:
    device = {"resourceType": "Device", "statusReason": [{"coding": [{"code": "online"}]}]}
    assert extract("Device.status", device) == []


# --- reference_type -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reference", "expected"),
    [
        ("Patient/123", "Patient"),
        ("Patient/123/_history/4", "Patient"),
        ("http://example.org/fhir/Practitioner/7", "Practitioner"),
        ("https://example.org/fhir/Group/g1/_history/2", "Group"),
        ("123", None),
        ("#contained", None),
        ("", None),
    ],
)
def test_reference_type(reference: str, expected: str | None) -> None:
    assert reference_type(reference) == expected


# --- every compiled search expression evaluates as fhirpathpy does ------------------------------
MODEL = fhirpath_models["r4"]
_PRIMITIVES = {
    "boolean": True, "integer": 2, "positiveInt": 3, "unsignedInt": 0, "decimal": 1.5,
    "date": "2026-03-01", "dateTime": "2026-03-01T10:00:00Z", "instant": "2026-03-01T10:00:00.000Z",
    "time": "10:00:00", "code": "final",
}  # fmt: skip


def _element_index() -> dict[str, list[tuple[str, str | None, list[str] | None]]]:
    """owner -> (name, type, choice types) of the elements the model defines directly on it."""
    found: dict[str, dict[str, tuple[str | None, list[str] | None]]] = {}
    for path, types in MODEL["choiceTypePaths"].items():
        owner, name = path.rsplit(".", 1)
        found.setdefault(owner, {})[name] = (None, types)
    for path, kind in MODEL["path2Type"].items():
        owner, name = path.rsplit(".", 1)
        choices = found.get(owner, {})
        expanded = any(
            name.startswith(choice) and name[len(choice) :] in (types or [])
            for choice, (_, types) in choices.items()
        )
        if not expanded:
            choices.setdefault(name, (kind, None))
            found[owner] = choices
        parts = path.split(".")
        if len(parts) > 2:  # a backbone element: a path with children of its own
            found.setdefault(".".join(parts[:-2]), {}).setdefault(
                parts[-2], (".".join(parts[:-1]), None)
            )
    return {
        owner: [(name, kind, types) for name, (kind, types) in sorted(elements.items())]
        for owner, elements in found.items()
    }


ELEMENTS = _element_index()


def _sample(context: str, depth: int, variant: int, arrays: bool) -> dict[str, Any]:
    """A resource or element with every element the model gives `context` (and its base types),
    choice elements in their `variant`-th type, with `arrays` every other element repeated."""
    out: dict[str, Any] = {}
    owners, owner = [context], context
    while "." not in owner and MODEL["type2Parent"].get(owner):
        owner = MODEL["type2Parent"][owner]
        owners.append(owner)
    for i, (name, kind, types) in enumerate(c for o in owners for c in ELEMENTS.get(o, [])):
        if name in out or name in ("contained", "resourceType") or kind == "Resource":
            continue
        if types:
            kind = types[(variant + i) % len(types)]
            name += kind[0].upper() + kind[1:]
            kind = (
                kind if kind in MODEL["type2Parent"] or "." in kind else kind[0].lower() + kind[1:]
            )
        value: Any
        if kind in _PRIMITIVES:
            value = _PRIMITIVES[kind]
        elif kind is None or kind[:1].islower() or kind == "System.String":
            value = "Patient/p1" if name == "reference" else f"{name}-{variant}"
        elif depth == 0:
            continue
        else:
            value = _sample(kind, depth - 1, variant + i, arrays)
            if not value:
                continue
        repeated = name in ("extension", "modifierExtension") or (arrays and i % 2)
        out[name] = [value, value] if repeated and isinstance(value, dict) else value
    return out


def _normal(values: list[Any]) -> list[str]:
    return sorted(json.dumps(v, sort_keys=True, default=float) for v in values)


@pytest.mark.parametrize(
    ("variant", "arrays"), [(0, False), (1, False), (2, False), (0, True), (1, True)]
)
def test_compiled_search_paths_equal_fhirpathpy_on_every_stored_type(
    variant: int, arrays: bool
) -> None:
    """Sample resources of every stored type, built from fhirpathpy's R4 model, give the same
    values natively (paths.py) as through fhirpathpy for every search expression compiled."""
    conformance = load_conformance(Settings().conformance_dir)
    registry = SearchRegistry(conformance)
    compared, differing = 0, []
    for resource_type, table in registry.types.items():
        resource = {"resourceType": resource_type, **_sample(resource_type, 3, variant, arrays)}
        for param in table.params.values():
            for branch in branches_for_type(param.expression, resource_type):
                steps = _compile_steps(branch, resource_type)
                if steps is None or "resolve()" in branch:  # fhirpathpy has no resolve()
                    continue
                native = _run_steps(steps)(copy.deepcopy(resource))
                try:
                    reference = fhirpath_compile(branch, MODEL)(copy.deepcopy(resource), None)
                except ValueError:  # `x as T` on several values: FHIRPath errs, search filters
                    continue
                compared += 1
                if _normal(native) != _normal(list(reference)):
                    differing.append(branch)
    assert compared > 500 and differing == [], differing
