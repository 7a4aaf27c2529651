"""Builders for the clinical resources in their profiled shapes (profiles/structuredefinitions).

Used by the demo data, the tests and the benchmarks, so that every producer writes the same
PCO-compatible GAS Goal and rating (http://hl7.org/fhir/us/pco/StructureDefinition/pco-gas-goal-profile,
pco-gas-score-observation) that the profile rules check.
"""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from fhirgoal.clinical.codes import (
    FHIRGOAL,
    GAS_ANSWERS,
    GAS_BASELINE,
    GAS_CODE_DISPLAY,
    GAS_EXTENSION,
    GAS_FOLLOW_UP,
    GAS_GOAL_MEASURE,
    GAS_VARIANT_EXTENSION,
    GAS_WEIGHT_EXTENSION,
    LOINC,
    OBSERVATION_CATEGORY,
    gas_value,
)

GAS_GOAL_PROFILE = f"{FHIRGOAL}/StructureDefinition/gas-goal"
GAS_RATING_PROFILE = f"{FHIRGOAL}/StructureDefinition/gas-rating"
SURVEY = {"coding": [{"system": OBSERVATION_CATEGORY, "code": "survey", "display": "Survey"}]}
_FOLLOW_UP_CODE = {rater: code for code, rater in GAS_FOLLOW_UP.items()}


def ref(resource_type: str, rid: str) -> dict[str, str]:
    return {"reference": f"{resource_type}/{rid}"}


def gas_goal(
    gid: str,
    patient: str,
    description: str,
    levels: Sequence[str],
    *,
    start: str,
    due: str | None = None,
    importance: int | None = None,
    difficulty: int | None = None,
    variant: str = "five-level",
    expressed_by: str | None = None,
    addresses: Sequence[str] = (),
) -> dict[str, Any]:
    """A GAS goal. `levels` describes -2, -1, 0, +1, +2 in that order (five texts).

    No achievementStatus: the server sets it from the ratings (clinical/goal_status.py); a status
    written by a clinician is theirs and is never replaced.
    """
    if len(levels) != 5:
        raise ValueError("a GAS goal describes five levels, -2 to +2")
    extensions: list[dict[str, Any]] = []
    for level, text in zip((-2, -1, 0, 1, 2), levels, strict=True):
        code, display = GAS_ANSWERS[level]
        extensions.append(
            {
                "url": GAS_EXTENSION,
                "extension": [
                    {
                        "url": "level",
                        "valueCoding": {"system": LOINC, "code": code, "display": display},
                    },
                    {"url": "progressText", "valueString": text},
                ],
            }
        )
    if importance is not None and difficulty is not None:
        extensions.append(
            {
                "url": GAS_WEIGHT_EXTENSION,
                "extension": [
                    {"url": "importance", "valueInteger": importance},
                    {"url": "difficulty", "valueInteger": difficulty},
                ],
            }
        )
    extensions.append({"url": GAS_VARIANT_EXTENSION, "valueCode": variant})
    target: dict[str, Any] = {
        "measure": {
            "coding": [
                {
                    "system": LOINC,
                    "code": GAS_GOAL_MEASURE,
                    "display": "Goal attainment scale - Reported",
                }
            ]
        }
    }
    if due:
        target["dueDate"] = due
    goal: dict[str, Any] = {
        "resourceType": "Goal",
        "id": gid,
        # claimed, so the server holds what it builds to its profile (errors, not warnings)
        "meta": {"profile": [GAS_GOAL_PROFILE]},
        "extension": extensions,
        "lifecycleStatus": "active",
        "description": {"text": description},
        "subject": ref("Patient", patient),
        "startDate": start,
        "target": [target],
    }
    if expressed_by:
        goal["expressedBy"] = {"reference": expressed_by}
    if addresses:
        goal["addresses"] = [{"reference": a} for a in addresses]
    return goal


def gas_rating(
    oid: str,
    patient: str,
    goal: str,
    level: Decimal | int | str,
    when: str,
    *,
    baseline: bool = False,
    rater: str = "practitioner",
    performer: str,
    encounter: str | None = None,
) -> dict[str, Any]:
    """One GAS rating of one goal: baseline, or a follow-up by practitioner/patient/caregiver."""
    code = GAS_BASELINE if baseline else _FOLLOW_UP_CODE[rater]
    rating: dict[str, Any] = {
        "resourceType": "Observation",
        "id": oid,
        "meta": {"profile": [GAS_RATING_PROFILE]},
        "status": "final",
        "category": [SURVEY],
        "code": {"coding": [{"system": LOINC, "code": code, "display": GAS_CODE_DISPLAY[code]}]},
        "subject": ref("Patient", patient),
        "focus": [ref("Goal", goal)],
        "effectiveDateTime": when,
        "performer": [{"reference": performer}],
        "valueCodeableConcept": gas_value(Decimal(str(level))),
    }
    if encounter:
        rating["encounter"] = ref("Encounter", encounter)
    return rating


RATING_SCALE_ITEMS = {
    "ors": ("ors-individually", "ors-interpersonally", "ors-socially", "ors-overall"),
    "srs": ("srs-relationship", "srs-goals-and-topics", "srs-approach-or-method", "srs-overall"),
}
QUESTIONNAIRES = f"{FHIRGOAL}/Questionnaire"


def rating_scale_response(
    rid: str,
    instrument: str,
    patient: str,
    scores: Sequence[Decimal],
    authored: str,
    *,
    encounter: str | None = None,
    author: str | None = None,
    status: str = "completed",
) -> dict[str, Any]:
    """A completed ORS or SRS: four marks scored 0-10 (the total is the server's to compute)."""
    items = RATING_SCALE_ITEMS[instrument]
    response: dict[str, Any] = {
        "resourceType": "QuestionnaireResponse",
        "id": rid,
        "questionnaire": f"{QUESTIONNAIRES}/{instrument}",
        "status": status,
        "subject": ref("Patient", patient),
        "authored": authored,
        "author": {"reference": author or f"Patient/{patient}"},
        "item": [
            {"linkId": link, "answer": [{"valueDecimal": score}]}
            for link, score in zip(items, scores, strict=True)
        ],
    }
    if encounter:
        response["encounter"] = ref("Encounter", encounter)
    return response
