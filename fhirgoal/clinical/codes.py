"""The codes and URLs the clinical rules read and write, in one place.

Sources, checked for this module (see profiles/README.md for the evidence):
- HL7 Person-Centered Outcomes IG STU1, http://hl7.org/fhir/us/pco : GAS extension
  `pco-goal-attainment-scaling` (sub-extensions `level` Coding from LL6900-6, `progressText`
  string), GAS score Observation codes (ValueSet goal-attainment-scaling-score: 112296-9 baseline
  in the published STU1, 107332-9 in the IG source's baseline example; 107333-7 / 107334-5 /
  107331-1 practitioner / patient / caregiver follow-up), GAS Goal `target.measure` 107332-9.
- LOINC answer list LL6900-6 (LA34479-8 .. LA34484-8). It has no answers for the -3 and -0.5
  variants: those are carried by a second coding from the project's gas-level CodeSystem.
- http://terminology.hl7.org/CodeSystem/goal-achievement and flag-category.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
FHIRGOAL = "https://fhirgoal.org/fhir"
MEASURES = f"{FHIRGOAL}/CodeSystem/fhirgoal-measures"
GAS_LEVEL_SYSTEM = f"{FHIRGOAL}/CodeSystem/gas-level"
ALERTS = f"{FHIRGOAL}/CodeSystem/fhirgoal-alerts"
FLAG_CATEGORY = "http://terminology.hl7.org/CodeSystem/flag-category"
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
PROVENANCE_ACTIVITY = "http://terminology.hl7.org/CodeSystem/v3-DataOperation"
PROVENANCE_AGENT_TYPE = "http://terminology.hl7.org/CodeSystem/provenance-participant-type"

# ---- PCO GAS -------------------------------------------------------------------------------
PCO = "http://hl7.org/fhir/us/pco"
GAS_EXTENSION = f"{PCO}/StructureDefinition/pco-goal-attainment-scaling"
GAS_GOAL_MEASURE = "107332-9"  # Goal.target.measure of a PCO GAS goal
GAS_BASELINE = "112296-9"  # what the server writes: the published STU1 baseline code
# The baselines it reads: the IG source (HL7/pco-ig main, 1.0.0) codes its baseline example with
# the measure code 107332-9 "Goal attainment scale - Reported"; the published STU1 pages with
# 112296-9 (tests/clinical/fixtures/pco/README.md).
GAS_BASELINE_CODES = frozenset({GAS_BASELINE, GAS_GOAL_MEASURE})
GAS_FOLLOW_UP = {"107333-7": "practitioner", "107334-5": "patient", "107331-1": "caregiver"}
GAS_RATING_CODES = frozenset({*GAS_BASELINE_CODES, *GAS_FOLLOW_UP})
GAS_CODE_DISPLAY = {
    GAS_BASELINE: "Goal attainment scale GAS baseline",
    "107333-7": "Practitioner follow-up goal attainment scaling score",
    "107334-5": "Patient follow-up goal attainment scaling score",
    "107331-1": "Caregiver follow-up goal attainment scaling score",
}

# LOINC answer list LL6900-6, level -> (answer code, display)
GAS_ANSWERS: dict[int, tuple[str, str]] = {
    2: ("LA34479-8", "Much better than expected"),
    1: ("LA34480-6", "Better than expected"),
    0: ("LA34481-4", "Expected outcome"),
    -1: ("LA34483-0", "Less than expected"),
    -2: ("LA34484-8", "Much less than expected"),
}
GAS_LEVEL_OF_ANSWER = {code: Decimal(level) for level, (code, _) in GAS_ANSWERS.items()}
# Variant levels outside LL6900-6 (Turner-Stokes & Williams 2010), with the LL6900-6 answer each
# is reported as, so that a PCO consumer still reads a valid rating.
GAS_VARIANT_LEVELS: dict[str, tuple[Decimal, int, str]] = {
    "-3": (Decimal(-3), -2, "Worse than baseline"),
    "-0.5": (Decimal("-0.5"), -1, "Partially achieved"),
}

# ---- project extensions ------------------------------------------------------------------------
GAS_WEIGHT_EXTENSION = f"{FHIRGOAL}/StructureDefinition/gas-weight"  # importance, difficulty
GAS_VARIANT_EXTENSION = f"{FHIRGOAL}/StructureDefinition/gas-scale-variant"
GAS_GOAL_COMPONENT_EXTENSION = f"{FHIRGOAL}/StructureDefinition/gas-goal"
DERIVED_STATUS_EXTENSION = f"{FHIRGOAL}/StructureDefinition/derived-achievement-status"
FLAG_DETAIL = "http://hl7.org/fhir/StructureDefinition/flag-detail"

# ---- measures ----------------------------------------------------------------------------------
ORS_TOTAL, SRS_TOTAL = "ors-total", "srs-total"
CORS_TOTAL, CSRS_TOTAL = "cors-total", "csrs-total"
OUTCOME_TOTALS = frozenset({ORS_TOTAL, CORS_TOTAL})
ALLIANCE_TOTALS = frozenset({SRS_TOTAL, CSRS_TOTAL})
GAS_TSCORE = "gas-tscore"
PHQ9_TOTAL, GAD7_TOTAL = "44261-6", "70274-6"


def gas_level_of(codeable: Any) -> Decimal | None:
    """The raw GAS level a rating's valueCodeableConcept states (variant coding first)."""
    if not isinstance(codeable, dict):
        return None
    codings = [c for c in codeable.get("coding") or [] if isinstance(c, dict)]
    for coding in codings:
        if coding.get("system") == GAS_LEVEL_SYSTEM and coding.get("code") in GAS_VARIANT_LEVELS:
            return GAS_VARIANT_LEVELS[str(coding["code"])][0]
    for coding in codings:
        if coding.get("system") == LOINC and coding.get("code") in GAS_LEVEL_OF_ANSWER:
            return GAS_LEVEL_OF_ANSWER[str(coding["code"])]
    return None


def gas_value(level: Decimal) -> dict[str, object]:
    """The valueCodeableConcept of a rating at `level` (LL6900-6 answer, plus the variant)."""
    key = format(level.normalize(), "f")
    if key in GAS_VARIANT_LEVELS:
        _, reported, display = GAS_VARIANT_LEVELS[key]
        code, answer_display = GAS_ANSWERS[reported]
        return {
            "coding": [
                {"system": LOINC, "code": code, "display": answer_display},
                {"system": GAS_LEVEL_SYSTEM, "code": key, "display": display},
            ],
            "text": display,
        }
    code, display = GAS_ANSWERS[int(level)]
    return {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display}
