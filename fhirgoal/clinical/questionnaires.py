"""Built-in measures as Questionnaires: validate, score and extract QuestionnaireResponses.

Pure functions over parsed FHIR JSON (numbers as `decimal.Decimal`, see fhirgoal.core.jsonio; the
BSON Decimal128 of documents read back from MongoDB is accepted too); no I/O, inputs are never
modified. The server calls them on write and for `$extract`:

    scored = validate_and_score(questionnaire, response)  # FhirError(processing) on bad answers
    assessed = assess(questionnaire, response, terminology)  # the same, with warnings
    observations = extract_observations(questionnaire, scored, id_for=observation_ids(qr_id))

Specifications: R4 Questionnaire / QuestionnaireResponse (https://hl7.org/fhir/R4/questionnaire.html,
questionnaireresponse.html), SDC STU4 calculatedExpression and observation-based extraction
(http://hl7.org/fhir/uv/sdc/STU4/expressions.html, extraction.html#obs-extract).

Validation (`validate_response`) reports every problem at once, as OperationOutcome issues whose
`expression` points at the offending node (`QuestionnaireResponse.item[0].answer[0].valueDecimal`,
or `QuestionnaireResponse.item.where(linkId='ors-overall')` for a missing one). It rejects with 422
(`processing`: the resource is valid FHIR but breaks its Questionnaire): a linkId that is not in
the Questionnaire (or not at that level), an answer of the wrong type, a value outside
minValue/maxValue, more decimal places than maxDecimalPlaces (precision is part of an R4 decimal,
so 7.50 has two), a Coding that is not one of the item's answerOptions (codes only; answerValueSet
bindings are not expanded here), text longer than maxLength, several answers to an item that does
not repeat, the same item twice, an answer on a group or display item, and the
`questionnaire` naming another Questionnaire (it may be `url`, `url|version` or, as some clients
send, `Questionnaire/{id}`; a version, when given, must match). Required items
are enforced only once the response is `completed` or `amended` (an `in-progress` one may be
partial), and not for items with enableWhen (whether they were shown depends on other answers) or
calculated ones. A calculated item (the totals) is recomputed by the server, so a client may omit
it; if a client sends one that disagrees with the recomputed value (a value where the answers give
none included), that is rejected rather than silently replaced, because the client showed the
patient or clinician a different number; the message says what the answers give. (That check runs
only when the answers themselves are valid: a total of invalid inputs means nothing.) A
calculation the server cannot do (clinical/scoring.py: the expression fails, a variable it uses
is undefined or failed, its value does not fit the item) refuses nothing: the item stays as sent,
unchecked, and `assess` returns a warning saying why; so does a completed response whose
calculated item comes out empty (an answer it needs is missing). The write path returns these
warnings in the response's OperationOutcome (`Prefer: return=OperationOutcome`).

Scoring: see fhirgoal.clinical.scoring and fhirgoal.clinical.sdc (exact Decimal sums; 7.5 + 8.2 +
7.6 + 8.1 is Decimal("31.4"); the built-in `sum()` shape runs natively, anything else on fhirpathpy).

Extraction (details and the SDC basis in fhirgoal.clinical.extraction): SDC observation-based
extraction, with one convention of ours for "one Observation per administration". The root (or a
group) carries `observationExtract = true`, each rated item `observationExtract = component`, and
the calculated total - the child whose `code` is also in `Questionnaire.code` - carries
`observationExtract = false`. That yields one Observation: `code` = the total's code (ors-total,
LOINC 44261-6 ...), `valueQuantity` = the total in UCUM `{score}`, one `component` per answered
item (`valueQuantity` for ratings, `valueCodeableConcept` with the ordinalValue for PHQ/GAD
answers). Items whose own observationExtract is `true` follow plain SDC: one Observation each.
Only completed / amended responses extract (amended -> Observation status amended); ids come
from `id_for(key)`, key = the linkId of the total or item, so re-extraction updates.

Licensed text: ORS, SRS, CORS and CSRS are copyrighted (Miller & Duncan et al.; free for individual
practitioners, licensed for organisations), so the built-in Questionnaires carry item labels
("Individually") and scoring only. `apply_licensed_text` returns a copy with an organisation's
licensed item texts, for the server to load from a configured directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from html import escape
from typing import Any

from fhirgoal.clinical.extraction import extract_observations, observation_ids
from fhirgoal.clinical.scoring import ScoreReport, copy_json, score_in_place, score_response
from fhirgoal.clinical.sdc import (
    CompiledQuestionnaire,
    ItemDef,
    answer_value,
    compile_questionnaire,
)
from fhirgoal.clinical.weights import Terminology
from fhirgoal.core.errors import FhirError, Issue

__all__ = [
    "Assessment",
    "apply_licensed_text",
    "assess",
    "compile_questionnaire",
    "extract_observations",
    "narrative",
    "observation_ids",
    "score_response",
    "validate_and_score",
    "validate_response",
]

MAX_ISSUES = 50
COMPLETE = frozenset({"completed", "amended"})


def validate_response(questionnaire: dict[str, Any], response: dict[str, Any]) -> None:
    """Raise FhirError("processing") carrying every way the response breaks its Questionnaire."""
    validate_and_score(questionnaire, response)


def validate_and_score(
    questionnaire: dict[str, Any],
    response: dict[str, Any],
    terminology: Terminology | None = None,
) -> dict[str, Any]:
    """validate_response, then return score_response's copy (one evaluation for both)."""
    return assess(questionnaire, response, terminology).response


@dataclass
class Assessment:
    """A response that passed its Questionnaire: scored, and what the client should know."""

    response: dict[str, Any]  # a scored copy
    warnings: list[Issue]  # calculations that could not be done, totals that came out empty


def assess(
    questionnaire: dict[str, Any],
    response: dict[str, Any],
    terminology: Terminology | None = None,
) -> Assessment:
    """Validate and score `response`; FhirError("processing") with every problem if it breaks
    its Questionnaire. `terminology`: ValueSets / CodeSystems the server holds, for weights."""
    cq = compile_questionnaire(questionnaire)
    response = copy_json(response)  # ours to score in place; stored Decimal128s become Decimals
    check = _Check(cq, complete=response.get("status") in COMPLETE)
    check.canonical(response)
    check.items(response.get("item", []), cq.items, "QuestionnaireResponse")
    if not check.issues:  # a total of invalid answers means nothing: check it only on valid ones
        check.calculated(score_in_place(cq, response, terminology))
    if check.issues:
        raise FhirError("processing", issues=check.issues[:MAX_ISSUES])
    return Assessment(response, check.warnings[:MAX_ISSUES])


class _Check:
    def __init__(self, cq: CompiledQuestionnaire, complete: bool) -> None:
        self.cq = cq
        self.complete = complete
        self.issues: list[Issue] = []
        self.warnings: list[Issue] = []
        # calculated items the client sent: (where, item, the node scoring rewrites, what was sent)
        self.sent: list[tuple[str, ItemDef, dict[str, Any], list[Any]]] = []

    def add(self, diagnostics: str, expression: str, code: str) -> None:
        self.issues.append(Issue(diagnostics, expression, code))

    def canonical(self, response: dict[str, Any]) -> None:
        cq, where = self.cq, "QuestionnaireResponse.questionnaire"
        canonical = response.get("questionnaire")
        if not isinstance(canonical, str) or not canonical:
            self.add(f"questionnaire must name {cq.url}", where, "required")
            return
        url, _, version = canonical.partition("|")
        if cq.url is not None and url == cq.url and (not version or version == cq.version):
            return
        local = cq.resource.get("id")
        if local and canonical == f"Questionnaire/{local}":  # a relative reference, as some send
            return
        expected = f"{cq.url}|{cq.version}" if cq.version else cq.url or f"Questionnaire/{local}"
        self.add(f"questionnaire is {canonical}, expected {expected}", where, "value")

    def items(self, nodes: list[dict[str, Any]], siblings: list[ItemDef], path: str) -> None:
        allowed = {d.link_id: d for d in siblings}
        answered: set[str] = set()
        seen: set[str] = set()
        for i, node in enumerate(nodes):
            where = f"{path}.item[{i}]"
            link_id = node.get("linkId")
            definition = allowed.get(link_id) if isinstance(link_id, str) else None
            if definition is None:
                problem = (
                    "is not expected at this level in"
                    if link_id in self.cq.by_link
                    else "is not in"
                )
                self.add(
                    f"item '{link_id}' {problem} Questionnaire {self.cq.url}",
                    f"{where}.linkId",
                    "structure",
                )
                continue
            if definition.link_id in seen and not (
                definition.type == "group" and definition.repeats
            ):
                self.add(f"item '{link_id}' appears more than once", where, "structure")
            seen.add(definition.link_id)
            answers = node.get("answer", [])
            if definition.type in ("group", "display"):
                if answers:
                    self.add(
                        f"{definition.type} item '{link_id}' cannot have answers",
                        f"{where}.answer[0]",
                        "structure",
                    )
                if definition.type == "group":
                    answered.add(definition.link_id)
                    self.items(node.get("item", []), definition.children, where)
                continue
            if node.get("item"):
                self.add(
                    f"items nested in question '{link_id}' belong under its answer",
                    f"{where}.item[0]",
                    "structure",
                )
            if len(answers) > 1 and not definition.repeats:
                self.add(
                    f"item '{link_id}' does not repeat but has {len(answers)} answers",
                    f"{where}.answer[1]",
                    "structure",
                )
            if definition.calculated is not None and answers:
                self.sent.append((f"{where}.answer[0]", definition, node, answers))
            for j, answer in enumerate(answers):
                answer_path = f"{where}.answer[{j}]"
                self.answer(definition, answer, answer_path)
                if answer_value(answer) is not None:
                    answered.add(definition.link_id)
                if definition.children:
                    self.items(answer.get("item", []), definition.children, answer_path)
        if self.complete:
            for definition in siblings:
                if (
                    definition.required
                    and definition.link_id not in answered
                    and not definition.conditional
                    and definition.calculated is None
                    and definition.type != "display"
                ):
                    self.add(
                        f"required item '{definition.link_id}' is not answered",
                        f"{path}.item.where(linkId='{definition.link_id}')",
                        "required",
                    )

    def calculated(self, report: ScoreReport) -> None:
        """After scoring in place: each calculated answer a client sent must equal the result.
        One the server could not compute is kept unchecked, with the report's warning."""
        self.warnings.extend(report.problems)
        sent_nodes = {id(node) for _, _, node, _ in self.sent}
        for where, definition, node, sent in self.sent:
            if id(node) in report.kept:
                continue
            computed = node.get("answer", [])
            if _same([answer_value(a) for a in sent], [answer_value(a) for a in computed]):
                if any(isinstance(v[1], dict) for v in map(answer_value, sent) if v):
                    node["answer"] = sent  # same value: keep the client's unit text, display
                continue
            expected = _shown(computed) or "no value"
            self.add(
                f"'{definition.link_id}' is calculated ({_rule(definition)}): expected "
                f"{expected} from these answers, but {_shown(sent)} was sent{_hint(definition)}",
                where,
                "value",
            )
        if not self.complete:
            return
        for definition, where, found in report.empty:
            if found is None or id(found) not in sent_nodes:
                self.warnings.append(
                    Issue(
                        f"'{definition.link_id}' has no value: {_rule(definition)} gives "
                        "nothing on these answers"
                        + (_hint(definition) or " (an answer it needs may be missing)"),
                        where,
                        "incomplete",
                        severity="warning",
                    )
                )

    def answer(self, definition: ItemDef, answer: dict[str, Any], where: str) -> None:
        link_id = definition.link_id
        found = answer_value(answer)
        if found is None:
            self.add(f"answer to '{link_id}' has no value", where, "required")
            return
        key, value = found
        at = f"{where}.{key}"
        if key not in definition.answer_keys:
            expected = " or ".join(definition.answer_keys) or "no answer"
            self.add(
                f"item '{link_id}' is {definition.type}: expected {expected}, got {key}",
                at,
                "value",
            )
            return
        if key in ("valueDecimal", "valueInteger"):
            if isinstance(value, bool) or not isinstance(
                value, int if key == "valueInteger" else int | Decimal
            ):
                self.add(
                    f"answer to '{link_id}' is not a {key[5:].lower()}: {value!r}", at, "value"
                )
                return
            number = Decimal(value)
            places = _places(number)
            if definition.max_places is not None and places > definition.max_places:
                self.add(
                    f"answer to '{link_id}' has {places} decimal places; "
                    f"at most {definition.max_places} allowed: {value}",
                    at,
                    "value",
                )
            _check_range(definition, number, at, self.issues)
        elif key in ("valueDate", "valueDateTime", "valueTime"):
            _check_range(definition, value, at, self.issues)
        elif key == "valueString" and isinstance(definition.max_length, int):
            if len(str(value)) > definition.max_length:
                self.add(
                    f"answer to '{link_id}' is longer than {definition.max_length} characters",
                    at,
                    "value",
                )
        elif key == "valueCoding":
            if not isinstance(value, dict):
                self.add(f"answer to '{link_id}' is not a Coding", at, "value")
            elif definition.options is not None and definition.option_for(value) is None:
                option = f"{value.get('system')}|{value.get('code')}"
                self.add(f"{option} is not an answer option of '{link_id}'", at, "code-invalid")
        if (
            key != "valueCoding"
            and definition.type == "choice"
            and definition.other_options is not None
            and (key, value) not in definition.other_options
        ):
            self.add(f"{value!r} is not an answer option of '{link_id}'", at, "value")


def _places(number: Decimal) -> int:
    """Decimal places as written: R4 decimals keep their precision, so 7.50 has two."""
    exponent = number.as_tuple().exponent
    return -exponent if isinstance(exponent, int) and exponent < 0 else 0


def _check_range(definition: ItemDef, value: Any, at: str, issues: list[Issue]) -> None:
    for bound, too in (
        (definition.min_value, "below the minimum"),
        (definition.max_value, "above the maximum"),
    ):
        if bound is None or isinstance(bound, bool | dict):
            continue
        if isinstance(value, Decimal) and isinstance(bound, int | Decimal):
            outside = value < bound if too.startswith("below") else value > bound
        elif isinstance(value, str) and isinstance(bound, str):
            # ISO dates and times of one precision order as text; compare at the coarser one.
            n = min(len(value), len(bound))
            outside = value[:n] < bound[:n] if too.startswith("below") else value[:n] > bound[:n]
        else:
            continue
        if outside:
            issues.append(
                Issue(f"answer to '{definition.link_id}' is {too} ({bound}): {value}", at, "value")
            )


def _rule(definition: ItemDef) -> str:
    return f"calculatedExpression `{definition.calculated.text if definition.calculated else ''}`"


def _hint(definition: ItemDef) -> str:
    """A FHIRPath fact worth saying when an expression reads `%resource.item` for a nested item:
    those are the response's top-level items only (its groups), not the questions inside them."""
    rule = definition.calculated.text if definition.calculated else ""
    if "%resource.item" in rule.replace(" ", "") and definition.path.count(".item[") > 1:
        return (
            " (%resource.item are the response's top-level items only; the questions of a "
            "group are reached with %resource.repeat(item) or %context.item)"
        )
    return ""


def _shown(answers: list[dict[str, Any]]) -> str:
    shown = []
    for found in map(answer_value, answers):
        if found is None:
            continue
        key, value = found
        if key == "valueQuantity" and isinstance(value, dict):
            unit = value.get("unit") or value.get("code")
            shown.append(f"{value.get('value')} {unit}" if unit else str(value.get("value")))
        elif key == "valueCoding" and isinstance(value, dict):
            shown.append(f"{value.get('system')}|{value.get('code')}")
        else:
            shown.append(str(value))
    return ", ".join(shown)


def _same(sent: list[Any], expected: list[Any]) -> bool:
    if len(sent) != len(expected):
        return False
    for a, b in zip(sent, expected, strict=True):
        if a is None or b is None or a[0] != b[0]:
            return False
        if a[0] == "valueQuantity" and isinstance(a[1], dict) and isinstance(b[1], dict):
            if not _same_quantity(a[1], b[1]):
                return False
        elif isinstance(a[1], dict) and isinstance(b[1], dict):
            if (a[1].get("system"), a[1].get("code")) != (b[1].get("system"), b[1].get("code")):
                return False
        elif a[1] != b[1]:
            return False
    return True


def _same_quantity(sent: dict[str, Any], computed: dict[str, Any]) -> bool:
    """Equal values; the unit counts only where the Questionnaire gives one (questionnaire-unit),
    so a client may label a unitless score `{score}`."""
    value = sent.get("value")
    if isinstance(value, bool) or not isinstance(value, int | Decimal):
        return False
    if value != computed.get("value"):
        return False
    return all(sent.get(k) == computed[k] for k in ("system", "code") if computed.get(k))


# --- licensed text and narrative -------------------------------------------------------------------


def apply_licensed_text(questionnaire: dict[str, Any], texts: dict[str, str]) -> dict[str, Any]:
    """A copy with `item.text` replaced for the given linkIds (an organisation's licensed wording).

    Raises ValueError naming any linkId the Questionnaire does not have, so a mistyped licence
    file fails at start-up instead of silently showing labels.
    """
    cq = compile_questionnaire(questionnaire)
    unknown = sorted(set(texts) - set(cq.by_link))
    if unknown:
        raise ValueError(f"{questionnaire.get('url')} has no item(s) {', '.join(unknown)}")
    licensed: dict[str, Any] = copy_json(questionnaire)

    def walk(items: list[dict[str, Any]]) -> None:
        for item in items:
            if item.get("linkId") in texts:
                item["text"] = texts[item["linkId"]]
            walk(item.get("item", []))

    walk(licensed.get("item", []))
    licensed["text"] = narrative(licensed)
    return licensed


def narrative(questionnaire: dict[str, Any]) -> dict[str, str]:
    """A generated XHTML narrative listing the items (used by the built-ins and licensed copies)."""
    rows = []

    def walk(items: list[dict[str, Any]]) -> None:
        for item in items:
            notes = [item.get("type", "")]
            if item.get("required"):
                notes.append("required")
            if item.get("readOnly"):
                notes.append("calculated")
            label = escape(item.get("text") or item.get("linkId", ""), quote=False)
            kinds = escape(", ".join(n for n in notes if n), quote=False)
            rows.append(f"<li>{label} <i>({kinds})</i></li>")
            walk(item.get("item", []))

    walk(questionnaire.get("item", []))
    title = escape(
        questionnaire.get("title") or questionnaire.get("name") or "Questionnaire", quote=False
    )
    parts = [f"<p><b>{title}</b></p>", f"<ol>{''.join(rows)}</ol>"]
    if questionnaire.get("copyright"):
        parts.append(f"<p>{escape(questionnaire['copyright'], quote=False)}</p>")
    div = f'<div xmlns="http://www.w3.org/1999/xhtml">{"".join(parts)}</div>'
    return {"status": "generated", "div": div}
