"""The session screen's form and the one transaction Bundle it becomes (issue 14, screen 3).

What one session records, as standard FHIR R4 (https://hl7.org/fhir/R4/http.html#transaction):
- the ORS and SRS as administered: one QuestionnaireResponse each, answering the server's own
  Questionnaire (read from the server by its canonical URL, so the items, their range and their
  one-decimal precision are data, not code: https://hl7.org/fhir/R4/questionnaireresponse.html).
  The totals are left out: the server scores the responses and extracts the Observations;
- a GAS rating per goal rated: an Observation in the HL7 PCO GAS score shape (LOINC 107333-7
  practitioner follow-up, or 112296-9 baseline for a goal's first rating; `focus` the Goal; the
  LOINC LL6900-6 answer, with the gas-level coding beside it for the -3 and -0.5 variants);
- the session itself: the launch's Encounter when the EHR gave one (SMART `encounter` context),
  otherwise a new finished Encounter that every entry references through its `urn:uuid`
  fullUrl (the server rewrites the placeholder: http.html#trules), so the session's measures
  stay together ("the golden thread").

All of it goes in ONE `transaction`: the server stores everything or nothing, so a refused
entry never leaves half a session behind. Each entry carries an identifier made from the form's
random token, and is created `ifNoneExist` that identifier: a form posted twice (a double
click, a retried request) records the session once.

The app checks nothing itself: the server validates, and each issue of its OperationOutcome
(`Bundle.entry[i].resource.item[k]...`) is put on the item or goal it names.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from fhirgoal.webapp.fhir_api import Issue
from fhirgoal.webapp.summary import goal_levels

LOINC = "http://loinc.org"
FHIRGOAL = "https://fhirgoal.org/fhir"
GAS_LEVEL_SYSTEM = f"{FHIRGOAL}/CodeSystem/gas-level"
GAS_RATING_PROFILE = f"{FHIRGOAL}/StructureDefinition/gas-rating"
GAS_VARIANT = f"{FHIRGOAL}/StructureDefinition/gas-scale-variant"
GAS_BASELINE = ("112296-9", "Goal attainment scale GAS baseline")
GAS_FOLLOW_UP = ("107333-7", "Practitioner follow-up goal attainment scaling score")
# every code a server may have used for a rating (PCO STU1 and IG source baselines, follow-ups)
GAS_RATING_CODES = ("112296-9", "107332-9", "107333-7", "107334-5", "107331-1")
OBSERVATION_CATEGORY = "http://terminology.hl7.org/CodeSystem/observation-category"
ACT_CODE = "http://terminology.hl7.org/CodeSystem/v3-ActCode"
URI_SYSTEM = "urn:ietf:rfc:3986"  # identifiers that are URIs (here urn:uuid)
MIN_VALUE = "http://hl7.org/fhir/StructureDefinition/minValue"
MAX_VALUE = "http://hl7.org/fhir/StructureDefinition/maxValue"
MAX_DECIMALS = "http://hl7.org/fhir/StructureDefinition/maxDecimalPlaces"
CALCULATED = "http://hl7.org/fhir/uv/sdc/StructureDefinition/sdc-questionnaire-calculatedExpression"

# The instruments of a session, in the order they are administered (ORS opens the session, SRS
# closes it), by the canonical URL of the server's built-in Questionnaire.
INSTRUMENTS = {
    "ors": f"{FHIRGOAL}/Questionnaire/ors",
    "srs": f"{FHIRGOAL}/Questionnaire/srs",
}

# LOINC LL6900-6 answers by level; -3 and -0.5 (scale variants) are reported as the LL6900-6
# answer they fall under, with a gas-level coding saying the exact level (the server's rule).
LEVEL_ANSWERS = {
    "2": ("LA34479-8", "Much better than expected"),
    "1": ("LA34480-6", "Better than expected"),
    "0": ("LA34481-4", "Expected outcome"),
    "-1": ("LA34483-0", "Less than expected"),
    "-2": ("LA34484-8", "Much less than expected"),
}
VARIANT_LEVELS = {"-3": ("-2", "Worse than baseline"), "-0.5": ("-1", "Partially achieved")}
LEVELS_OF_VARIANT = {
    "five-level": ["2", "1", "0", "-1", "-2"],
    "six-level": ["2", "1", "0", "-1", "-2", "-3"],
    "partial": ["2", "1", "0", "-0.5", "-1", "-2"],
}


@dataclass(frozen=True)
class ScaleItem:
    """One visual-analogue item: a mark on a line from `low` to `high`, read to `decimals`."""

    link_id: str
    text: str
    low: Decimal
    high: Decimal
    decimals: int


@dataclass(frozen=True)
class Instrument:
    key: str  # "ors" | "srs"
    url: str  # the Questionnaire's canonical URL, as QuestionnaireResponse.questionnaire
    title: str
    items: tuple[ScaleItem, ...]


def _extension(element: dict[str, Any], url: str) -> Any:
    for extension in element.get("extension") or []:
        if extension.get("url") == url:
            return next((v for k, v in extension.items() if k.startswith("value")), None)
    return None


def instrument_from(key: str, questionnaire: dict[str, Any]) -> Instrument | None:
    """The answerable decimal items of a visual-analogue Questionnaire (its calculated or
    read-only total is the server's to compute); None when it has none."""
    items = []
    for item in questionnaire.get("item") or []:
        if item.get("type") != "decimal" or item.get("readOnly"):
            continue
        if _extension(item, CALCULATED) is not None:
            continue
        low, high = _extension(item, MIN_VALUE), _extension(item, MAX_VALUE)
        decimals = _extension(item, MAX_DECIMALS)
        items.append(
            ScaleItem(
                link_id=str(item["linkId"]),
                text=str(item.get("text") or item["linkId"]),
                low=Decimal(str(low if low is not None else 0)),
                high=Decimal(str(high if high is not None else 10)),
                decimals=int(decimals) if isinstance(decimals, int) else 1,
            )
        )
    if not items:
        return None
    title = str(questionnaire.get("title") or questionnaire.get("name") or key.upper())
    return Instrument(key, str(questionnaire.get("url") or INSTRUMENTS[key]), title, tuple(items))


@dataclass(frozen=True)
class LevelChoice:
    value: str  # "-2", "-0.5", "+1" as posted (no sign on 0)
    name: str  # "-1 Less than expected"
    described: str  # the goal's own words for the level ("" when the goal has none)


@dataclass(frozen=True)
class GoalChoice:
    """A GAS goal as the session screen offers it for rating."""

    id: str
    text: str
    baseline: bool  # not rated yet: this rating is its baseline
    levels: tuple[LevelChoice, ...]


def _shown(value: str) -> str:
    return f"+{value}" if not value.startswith("-") and value != "0" else value


def goal_choice(goal: dict[str, Any], rated: bool) -> GoalChoice | None:
    """The goal's levels, best first, each with its description; None for a goal that does
    not describe its GAS levels (only GAS goals are rated)."""
    described = goal_levels(goal)
    if not described:
        return None
    variant = next(
        (
            str(e.get("valueCode"))
            for e in goal.get("extension") or []
            if e.get("url") == GAS_VARIANT and e.get("valueCode") in LEVELS_OF_VARIANT
        ),
        "five-level",
    )
    levels = []
    for value in LEVELS_OF_VARIANT[variant]:
        display = VARIANT_LEVELS[value][1] if value in VARIANT_LEVELS else LEVEL_ANSWERS[value][1]
        levels.append(
            LevelChoice(
                value=value,
                name=f"{_shown(value)} {display}",
                described=described.get(_shown(value), ""),
            )
        )
    text = str((goal.get("description") or {}).get("text") or goal.get("id"))
    return GoalChoice(str(goal["id"]), text, not rated, tuple(levels))


@dataclass
class SessionForm:
    token: str = field(default_factory=lambda: str(uuid.uuid4()))
    marks: dict[str, str] = field(default_factory=dict)  # linkId -> the mark as sent
    ratings: dict[str, str] = field(default_factory=dict)  # goal id -> level ("" = not rated)
    errors: dict[str, list[str]] = field(default_factory=dict)  # linkId or goal-<id> -> messages
    general: list[str] = field(default_factory=list)

    @classmethod
    def from_post(cls, form: dict[str, list[str]]) -> SessionForm:
        def one(name: str) -> str:
            return (form.get(name) or [""])[0].strip()

        token = one("token")
        try:
            token = str(uuid.UUID(token))
        except ValueError:
            token = str(uuid.uuid4())
        return cls(
            token=token,
            marks={k.removeprefix("mark-"): one(k) for k in form if k.startswith("mark-")},
            ratings={k.removeprefix("gas-"): one(k) for k in form if k.startswith("gas-")},
        )

    def place(self, issues: list[Issue], roles: list[EntryRole]) -> None:
        """Each OperationOutcome issue on the item or goal its `Bundle.entry[i]` expression
        names (see the module docstring); the others above the form."""
        for issue in issues:
            where = _field_of(issue, roles)
            if where is None:
                self.general.append(issue.text)
            else:  # on its field, the entry's name says nothing more
                self.errors.setdefault(where, []).append(_ENTRY_NAME.sub("", issue.text))


@dataclass(frozen=True)
class EntryRole:
    """What a transaction entry records, to place the server's issues back on the form."""

    kind: str  # "encounter" | "instrument" | "rating"
    key: str  # instrument key or goal id
    link_ids: tuple[str, ...] = ()  # the response's items, in order


_ENTRY_NAME = re.compile(r"^Bundle\.entry\[\d+\](?: \([^)]*\))?: ")
_ENTRY = re.compile(r"^Bundle\.entry\[(\d+)\](?:\.resource\.item\[(\d+)\])?")


def _field_of(issue: Issue, roles: list[EntryRole]) -> str | None:
    for expression in issue.expression:
        match = _ENTRY.match(expression)
        if not match or int(match.group(1)) >= len(roles):
            continue
        role = roles[int(match.group(1))]
        if role.kind == "rating":
            return f"goal-{role.key}"
        if role.kind == "instrument":
            item = match.group(2)
            if item is not None and int(item) < len(role.link_ids):
                return role.link_ids[int(item)]
            return role.key
    return None


def _mark(text: str) -> float | str:
    """A mark as a number when it is one (a JSON number: 7.5, 7.55 as typed); anything else as
    sent, for the server to refuse by name."""
    try:
        number = Decimal(text)
    except InvalidOperation:
        return text
    return float(number) if number.is_finite() else text


def _identifier(form: SessionForm, part: str) -> dict[str, str]:
    """The entry's identifier: stable for one form and part, unique otherwise."""
    return {"system": URI_SYSTEM, "value": f"urn:uuid:{uuid.uuid5(uuid.UUID(form.token), part)}"}


def _entry(
    resource: dict[str, Any], identifier: dict[str, str], placeholder: str | None = None
) -> dict[str, Any]:
    rt = resource["resourceType"]
    return {
        "fullUrl": placeholder or f"urn:uuid:{uuid.uuid4()}",
        "resource": resource,
        "request": {
            "method": "POST",
            "url": rt,
            "ifNoneExist": f"identifier={identifier['system']}|{identifier['value']}",
        },
    }


def rating_value(level: str) -> dict[str, Any]:
    """Observation.valueCodeableConcept of a GAS rating at `level` (see LEVEL_ANSWERS)."""
    if level in VARIANT_LEVELS:
        reported, display = VARIANT_LEVELS[level]
        code, answer = LEVEL_ANSWERS[reported]
        return {
            "coding": [
                {"system": LOINC, "code": code, "display": answer},
                {"system": GAS_LEVEL_SYSTEM, "code": level, "display": display},
            ],
            "text": display,
        }
    # a level the form never offered goes as sent, for the server to refuse by name
    code, display = LEVEL_ANSWERS.get(level, (level, level))
    return {"coding": [{"system": LOINC, "code": code, "display": display}], "text": display}


@dataclass(frozen=True)
class SessionContext:
    patient: str  # Patient id
    performer: str | None  # the clinician's fhirUser ("Practitioner/x")
    encounter: str | None  # the launch's Encounter id, when the EHR gave one
    when: str  # the session's dateTime
    # without the launch's Encounter: record the session as a new one (the clinician's session
    # screen), or leave the responses without (the client's self-report, which has no session
    # of its own to describe)
    new_encounter: bool = True


def session_bundle(
    form: SessionForm,
    instruments: list[Instrument],
    goals: list[GoalChoice],
    context: SessionContext,
) -> tuple[dict[str, Any], list[EntryRole]]:
    """The session's transaction Bundle and what each of its entries records. Instruments with
    no mark at all and goals not rated are left out; a partly marked instrument is sent as it
    is (the server refuses the missing items by name)."""
    entries: list[dict[str, Any]] = []
    roles: list[EntryRole] = []
    subject = {"reference": f"Patient/{context.patient}"}
    encounter: dict[str, str] | None = None
    if context.encounter:
        encounter = {"reference": f"Encounter/{context.encounter}"}
    elif context.new_encounter:
        placeholder = f"urn:uuid:{uuid.uuid4()}"
        encounter = {"reference": placeholder}
        identifier = _identifier(form, "encounter")
        resource: dict[str, Any] = {
            "resourceType": "Encounter",
            "identifier": [identifier],
            "status": "finished",
            "class": {"system": ACT_CODE, "code": "AMB", "display": "ambulatory"},
            "subject": subject,
            "period": {"start": context.when, "end": context.when},
        }
        if context.performer:
            resource["participant"] = [{"individual": {"reference": context.performer}}]
        entries.append(_entry(resource, identifier, placeholder))
        roles.append(EntryRole("encounter", "session"))
    for instrument in instruments:
        marked = [(i, form.marks.get(i.link_id, "")) for i in instrument.items]
        if not any(text for _, text in marked):
            continue
        identifier = _identifier(form, instrument.key)
        response: dict[str, Any] = {
            "resourceType": "QuestionnaireResponse",
            "identifier": identifier,
            "questionnaire": instrument.url,
            "status": "completed",
            "subject": subject,
            "authored": context.when,
            "item": [
                {"linkId": item.link_id, **({"answer": [{"valueDecimal": _mark(text)}]} if text else {})}
                for item, text in marked
            ],
        }  # fmt: skip
        if encounter:
            response["encounter"] = encounter
        # R4: `source` answered the questions (the client marks the lines), `author` received
        # and recorded the answers (the clinician, when the sign-in names one)
        response["author"] = {"reference": context.performer} if context.performer else subject
        response["source"] = subject
        entries.append(_entry(response, identifier))
        roles.append(EntryRole("instrument", instrument.key, tuple(i.link_id for i, _ in marked)))
    for goal in goals:
        level = form.ratings.get(goal.id, "")
        if not level:
            continue
        code, display = GAS_BASELINE if goal.baseline else GAS_FOLLOW_UP
        identifier = _identifier(form, f"goal/{goal.id}")
        rating: dict[str, Any] = {
            "resourceType": "Observation",
            "meta": {"profile": [GAS_RATING_PROFILE]},
            "identifier": [identifier],
            "status": "final",
            "category": [
                {
                    "coding": [
                        {"system": OBSERVATION_CATEGORY, "code": "survey", "display": "Survey"}
                    ]
                }
            ],
            "code": {"coding": [{"system": LOINC, "code": code, "display": display}]},
            "subject": subject,
            "focus": [{"reference": f"Goal/{goal.id}"}],
            "effectiveDateTime": context.when,
            "valueCodeableConcept": rating_value(level),
        }
        if encounter:
            rating["encounter"] = encounter
        if context.performer:
            rating["performer"] = [{"reference": context.performer}]
        entries.append(_entry(rating, identifier))
        roles.append(EntryRole("rating", goal.id))
    bundle = {"resourceType": "Bundle", "type": "transaction", "entry": entries}
    return bundle, roles


def records_something(roles: list[EntryRole]) -> bool:
    return any(role.kind != "encounter" for role in roles)
