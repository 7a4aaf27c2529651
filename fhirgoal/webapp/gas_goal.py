"""The GAS goal builder's form and the Goal resource it writes, both ways.

The resource is the HL7 Person-Centered Outcomes (PCO) GAS Goal
(http://hl7.org/fhir/us/pco/StructureDefinition/pco-gas-goal-profile) as fhirgoal's GAS Goal
profile checks it: five `pco-goal-attainment-scaling` extensions (a LOINC LL6900-6 level and its
`progressText`), `target.measure` LOINC 107332-9, optionally fhirgoal's `gas-weight` (importance
and difficulty, 0-3 each; weight = importance x difficulty, Turner-Stokes 2009) and
`gas-scale-variant`. The app validates nothing itself: the server does, and each issue of its
OperationOutcome is put on the field it names, by its FHIRPath `expression` or, for a profile
invariant (reported on the whole Goal), by the invariant's key. Issues that name no field are
shown above the form.

Editing keeps everything the form does not show (the server's achievementStatus, other
extensions, identifiers) and is sent with If-Match, so a concurrent change is not overwritten.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from fhirgoal.webapp.fhir_api import Issue

LOINC = "http://loinc.org"
PCO_GAS = "http://hl7.org/fhir/us/pco/StructureDefinition/pco-goal-attainment-scaling"
GAS_WEIGHT = "https://fhirgoal.org/fhir/StructureDefinition/gas-weight"
GAS_VARIANT = "https://fhirgoal.org/fhir/StructureDefinition/gas-scale-variant"
GAS_MEASURE = "107332-9"

# -2..+2: the LOINC LL6900-6 answer, its display, and guidance for the clinician writing it.
LEVELS: list[tuple[str, str, str, str]] = [
    ("-2", "LA34484-8", "Much less than expected",
     "Usually where the client is today if things could get worse, or a clear deterioration."),
    ("-1", "LA34483-0", "Less than expected",
     "Usually the baseline: where the client is now, or some progress short of the goal."),
    ("0", "LA34481-4", "Expected outcome",
     "The realistic goal by the review date: what you both expect if therapy goes as planned."),
    ("+1", "LA34480-6", "Better than expected",
     "A bit more than expected."),
    ("+2", "LA34479-8", "Much better than expected",
     "Much more than expected: the best realistic outcome."),
]  # fmt: skip
VARIANTS = [
    ("five-level", "Five levels (-2 to +2)"),
    ("six-level", "Six levels: adds -3 'worse than baseline' when the baseline is -2"),
    ("partial", "Partial achievement: adds -0.5, counted as -1 in the T-score"),
]
SCALE_0_3 = [
    ("0", "0 - not at all"),
    ("1", "1 - a little"),
    ("2", "2 - moderately"),
    ("3", "3 - very"),
]

GAS_GOAL_PROFILE = "https://fhirgoal.org/fhir/StructureDefinition/gas-goal"
# Profile invariants of fhirgoal's GAS Goal (profiles/structuredefinitions/gas-goal.json) and the
# fields they concern: they are reported on `Goal`, so the key says where they belong.
INVARIANT_FIELDS = {
    "gas-1": "levels", "gas-2": "levels", "gas-3": "levels",
    "gas-4": "weight", "gas-5": "weight", "gas-6": "variant", "gas-7": "levels",
}  # fmt: skip
_INVARIANT = re.compile(r"\b(gas-\d+):")


@dataclass
class GoalForm:
    description: str = ""
    levels: dict[str, str] = field(default_factory=lambda: {lvl[0]: "" for lvl in LEVELS})
    importance: str = ""
    difficulty: str = ""
    variant: str = "five-level"
    start: str = ""
    due: str = ""
    conditions: list[str] = field(default_factory=list)  # "Condition/id"
    care_plan: str = ""  # "CarePlan/id", on create only
    errors: dict[str, list[str]] = field(default_factory=dict)  # field -> messages
    general: list[str] = field(default_factory=list)

    @classmethod
    def from_post(cls, form: dict[str, list[str]]) -> GoalForm:
        def one(name: str) -> str:
            return (form.get(name) or [""])[0].strip()

        return cls(
            description=one("description"),
            levels={lvl[0]: one(f"level{lvl[0]}") for lvl in LEVELS},
            importance=one("importance"),
            difficulty=one("difficulty"),
            variant=one("variant") or "five-level",
            start=one("start"),
            due=one("due"),
            conditions=[c for c in form.get("condition") or [] if c.startswith("Condition/")],
            care_plan=one("careplan"),
        )

    @classmethod
    def from_goal(cls, goal: dict[str, Any]) -> GoalForm:
        form = cls(
            description=str((goal.get("description") or {}).get("text", "")),
            start=str(goal.get("startDate", "")),
            due=str(
                next((t.get("dueDate") for t in goal.get("target") or [] if t.get("dueDate")), "")
            ),
            conditions=[
                str(a.get("reference")) for a in goal.get("addresses") or [] if a.get("reference")
            ],
        )
        by_code = {code: key for key, code, _, _ in LEVELS}
        for extension in goal.get("extension") or []:
            url = extension.get("url")
            parts = {p.get("url"): p for p in extension.get("extension") or []}
            if url == PCO_GAS:
                code = ((parts.get("level") or {}).get("valueCoding") or {}).get("code")
                if code in by_code:
                    form.levels[by_code[code]] = str(
                        (parts.get("progressText") or {}).get("valueString", "")
                    )
            elif url == GAS_WEIGHT:
                form.importance = str((parts.get("importance") or {}).get("valueInteger", ""))
                form.difficulty = str((parts.get("difficulty") or {}).get("valueInteger", ""))
            elif url == GAS_VARIANT:
                form.variant = str(extension.get("valueCode", "five-level"))
        return form

    def place(self, issues: list[Issue]) -> None:
        """Put each OperationOutcome issue on the field it names (see the module docstring)."""
        for issue in issues:
            name = self._field_of(issue)
            if name is None:
                self.general.append(issue.text)
            else:
                self.errors.setdefault(name, []).append(issue.text)

    def _field_of(self, issue: Issue) -> str | None:
        for expression in issue.expression:
            path = re.sub(r"\[\d+\]", "", expression.removeprefix("Goal."))
            if path.startswith("description"):
                return "description"
            if path.startswith("startDate"):
                return "start"
            if path.startswith("target"):
                return "due"
            if path.startswith("addresses"):
                return "conditions"
            if path.startswith("extension"):
                return _extension_field(expression)
        match = _INVARIANT.search(issue.text)
        return INVARIANT_FIELDS.get(match.group(1)) if match else None


def _extension_field(expression: str) -> str:
    """`Goal.extension[i]...`: the app writes the five levels first, then weight, then variant."""
    match = re.match(r"Goal\.extension\[(\d+)\]", expression)
    index = int(match.group(1)) if match else -1
    if 0 <= index < len(LEVELS):
        return "levels"
    return "weight" if index == len(LEVELS) else "variant"


def _int_or_text(value: str) -> int | str:
    """Numbers as numbers; anything else as sent, for the server to refuse by name."""
    try:
        return int(value)
    except ValueError:
        return value


def goal_resource(
    form: GoalForm, patient: str, base: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The GAS Goal the form describes; `base` (an edited goal) keeps what the form does not show."""
    goal: dict[str, Any] = dict(base or {"resourceType": "Goal", "lifecycleStatus": "active"})
    ours = (PCO_GAS, GAS_WEIGHT, GAS_VARIANT)
    others = [e for e in goal.get("extension") or [] if e.get("url") not in ours]
    extensions: list[dict[str, Any]] = []
    for key, code, display, _ in LEVELS:
        parts: list[dict[str, Any]] = [
            {"url": "level", "valueCoding": {"system": LOINC, "code": code, "display": display}}
        ]
        if form.levels.get(key):
            parts.append({"url": "progressText", "valueString": form.levels[key]})
        extensions.append({"url": PCO_GAS, "extension": parts})
    if form.importance or form.difficulty:
        weight = []
        if form.importance:
            weight.append({"url": "importance", "valueInteger": _int_or_text(form.importance)})
        if form.difficulty:
            weight.append({"url": "difficulty", "valueInteger": _int_or_text(form.difficulty)})
        extensions.append({"url": GAS_WEIGHT, "extension": weight})
    extensions.append({"url": GAS_VARIANT, "valueCode": form.variant})
    goal["extension"] = extensions + others
    goal["description"] = {**(goal.get("description") or {}), "text": form.description}
    goal["subject"] = {"reference": f"Patient/{patient}"}
    goal["startDate"] = form.start or date.today().isoformat()
    target: dict[str, Any] = {
        "measure": {
            "coding": [
                {
                    "system": LOINC,
                    "code": GAS_MEASURE,
                    "display": "Goal attainment scale - Reported",
                }
            ]
        }
    }
    if form.due:
        target["dueDate"] = form.due
    goal["target"] = [target]
    goal.setdefault("expressedBy", {"reference": f"Patient/{patient}"})  # the client's words
    if form.conditions:
        goal["addresses"] = [{"reference": c} for c in form.conditions]
    else:
        goal.pop("addresses", None)
    # meta: the server owns versionId and lastUpdated; the goal claims fhirgoal's GAS Goal profile
    # (beside any the EHR gave it), so the server holds it to the profile strictly, where a goal
    # that only looks like a GAS goal gets warnings (an EHR's PCO goal may lack what we require)
    claimed = (goal.get("meta") or {}).get("profile") or []
    kept = {k: v for k, v in (goal.get("meta") or {}).items() if k in ("tag", "security")}
    goal["meta"] = {
        **kept,
        "profile": [*[p for p in claimed if p != GAS_GOAL_PROFILE], GAS_GOAL_PROFILE],
    }
    goal.pop("text", None)  # generated from the old content: it would no longer say the same
    return goal
