"""FHIRPath is parsed strictly before fhirpathpy compiles it (fhir/fhirpath_syntax.py): a broken
rule in a profile stops the server at load, one in the vendored R4 definitions is never run as
the shorter expression fhirpathpy would make of it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fhirpathpy import compile as fhirpath_compile
from fhirpathpy.models import models

from fhirgoal.config import Settings
from fhirgoal.fhir.conformance import load_conformance
from fhirgoal.fhir.fhirpath_syntax import syntax_error
from fhirgoal.fhir.invariants import InvariantChecker
from fhirgoal.fhir.profiles import parse_profile

# each compiles in fhirpathpy without a complaint, as a shorter expression than written
BROKEN = ["status = 'final' and", "code.coding.where(system = 'x'", "status 'final'", "count() ="]


@pytest.mark.parametrize("text", BROKEN)
def test_fhirpathpy_alone_accepts_what_does_not_parse(text: str) -> None:
    fhirpath_compile(text, models["r4"])  # no error: why the strict parse exists
    assert syntax_error(text) is not None


def test_the_message_says_where() -> None:
    assert (
        syntax_error("status 'final'")
        == "it does not parse (at character 8: unexpected \"'final'\")"
    )
    assert syntax_error("status = 'final'") is None


def profile(expression: str) -> dict[str, Any]:
    return {
        "resourceType": "StructureDefinition",
        "url": "https://example.org/StructureDefinition/broken",
        "type": "Goal",
        "derivation": "constraint",
        "differential": {"element": [{"path": "Goal", "constraint": [
            {"key": "b-1", "severity": "error", "human": "h", "expression": expression}]}]},
    }  # fmt: skip


def test_a_profile_with_a_broken_rule_is_refused_at_load() -> None:
    with pytest.raises(ValueError, match=r"b-1.*does not parse"):
        parse_profile(profile("lifecycleStatus = 'active' and"))
    assert parse_profile(profile("lifecycleStatus = 'active'")).constraints


def test_a_broken_r4_invariant_is_skipped_not_run_shortened() -> None:
    rule = {"key": "x-1", "severity": "error", "human": "h", "path": "",
            "expression": "status = 'final' and"}  # fmt: skip
    checker = InvariantChecker({"Observation": {"constraints": [rule]}})
    assert checker.invariants("Observation") == ()
    # run as `status = 'final'` it would refuse every other status
    assert checker.check({"resourceType": "Observation", "status": "amended"}) == []


def test_every_vendored_invariant_and_profile_rule_parses() -> None:
    settings = Settings()
    structure = load_conformance(settings.conformance_dir).structure
    broken = [
        (rt, c["key"])
        for rt, definition in structure.items()
        for c in definition.get("constraints", [])
        if c.get("severity") == "error" and syntax_error(c["expression"]) is not None
    ]
    assert broken == []
    checked = 0
    for path in sorted(Path(settings.profiles_dir, "structuredefinitions").glob("*.json")):
        for element in json.loads(path.read_text())["differential"]["element"]:
            for constraint in element.get("constraint", []):
                assert syntax_error(constraint["expression"]) is None, (path.name, constraint)
                checked += 1
    assert checked >= 10
