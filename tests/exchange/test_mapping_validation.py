"""Every resource a shipped mapping produces in its examples is valid R4, as the server judges it:
`$validate` (https://hl7.org/fhir/R4/resource-operation-validate.html) over real HTTP, which runs
the R4 schema, the structural model, the invariants and fhirgoal's own profiles (those that apply
by content, so a GAS rating or an ORS total coming in from an EHR is held to them)."""

from __future__ import annotations

from typing import Any

from fhirgoal.config import BUILTIN_MAPPINGS_DIR
from fhirgoal.core import jsonio
from tests.conftest import RunningServer

# Profiles of other guides, which the server does not hold: a claim of one is reported as a
# warning or information at most, never as an error.
FOREIGN = ("http://hl7.org/fhir/us/core/", "http://hl7.org/fhir/us/pco/")


def produced_resources() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(BUILTIN_MAPPINGS_DIR.glob("*/examples/*/*.output.json")):
        name = str(path.relative_to(BUILTIN_MAPPINGS_DIR))
        for index, resource in enumerate(jsonio.loads(path.read_bytes())):
            found.append((f"{name}[{index}]", resource))
    return found


async def test_every_mapped_example_output_validates_as_r4(fhir: RunningServer) -> None:
    produced = produced_resources()
    assert len(produced) > 60  # all three mappings, both directions
    errors = {}
    for name, resource in produced:
        response = await fhir.client.post(
            f"/{resource['resourceType']}/$validate",
            content=jsonio.dumps(resource),
            headers={"Content-Type": "application/fhir+json"},
        )
        assert response.status_code == 200, (name, response.text)
        issues = [i for i in response.json()["issue"] if i["severity"] in ("error", "fatal")]
        if issues:
            errors[name] = [(i.get("expression"), i.get("diagnostics")) for i in issues]
    assert errors == {}


async def test_the_validation_above_can_fail(fhir: RunningServer) -> None:
    """A check on the check: outputs the EHR dialect would never give are refused."""
    path = BUILTIN_MAPPINGS_DIR / "example-ehr" / "examples" / "inbound" / "phq9-total.output.json"
    (phq9,) = jsonio.loads(path.read_bytes())
    phq9["valueQuantity"]["value"] = 28  # a PHQ-9 total is 0-27 (fhirgoal's phq-9-total profile)
    response = await fhir.client.post("/Observation/$validate", json=phq9)
    assert [i["severity"] for i in response.json()["issue"]] == ["error"]
    phq9["valueQuantity"]["value"] = 14
    phq9["status"] = "done"  # not an R4 observation-status
    response = await fhir.client.post("/Observation/$validate", json=phq9)
    assert "error" in [i["severity"] for i in response.json()["issue"]]


def test_mapped_profiles_are_only_claimed_from_the_guides_the_mappings_target() -> None:
    for name, resource in produced_resources():
        for claimed in resource.get("meta", {}).get("profile", []):
            assert claimed.startswith(FOREIGN), (name, claimed)
