"""Native invariants agree with fhirpathpy on the R4 expression they replace."""

from __future__ import annotations

from typing import Any

import pytest
from fhirpathpy import compile as fhirpath_compile
from fhirpathpy.models import models

from fhirgoal.config import Settings
from fhirgoal.fhir.conformance import load_conformance
from fhirgoal.fhir.invariants import NATIVE

BP = {"system": "http://loinc.org", "code": "85354-9"}
SYS = {"system": "http://loinc.org", "code": "8480-6"}


def observation(value: bool, component_codings: list[dict[str, Any]]) -> dict[str, Any]:
    resource: dict[str, Any] = {"resourceType": "Observation", "status": "final",
                                "code": {"coding": [BP, {"system": "http://snomed.info/sct", "code": "75367002"}]}}  # fmt: skip
    if value:
        resource["valueQuantity"] = {"value": 120}
    if component_codings:
        resource["component"] = [{"code": {"coding": [c]}, "valueQuantity": {"value": 1}}
                                 for c in component_codings]  # fmt: skip
    return resource


CASES = [
    observation(False, []),
    observation(True, []),
    observation(True, [SYS]),
    observation(True, [SYS, BP]),  # a component repeats the code while a value is present
    observation(False, [BP]),  # ... allowed without a value
    observation(True, [{**BP, "display": "Blood pressure"}]),  # not equal: an extra property
    observation(True, [{"system": "http://snomed.info/sct", "code": "75367002"}]),
]


def r4_expression(key: str) -> str:
    structure = load_conformance(Settings().conformance_dir).structure
    for rt in structure:
        for constraint in structure[rt].get("constraints", []):
            if constraint["key"] == key:
                return str(constraint["expression"])
    raise LookupError(key)


@pytest.mark.parametrize("key", sorted(NATIVE))
@pytest.mark.parametrize("resource", CASES)
def test_native_invariant_matches_fhirpath(key: str, resource: dict[str, Any]) -> None:
    reference = fhirpath_compile(r4_expression(key), models["r4"])
    variables = {"resource": resource, "rootResource": resource}
    assert NATIVE[key](resource, variables) == reference(resource, variables)


def test_the_cases_cover_both_outcomes() -> None:
    outcomes = {NATIVE["obs-7"](r)[0] for r in CASES}
    assert outcomes == {True, False}
