"""Fill a QuestionnaireResponse's calculated items from their SDC calculatedExpressions.

http://hl7.org/fhir/uv/sdc/STU4/expressions.html#calculatedExpression. Each calculated item is
evaluated against the response with `%resource` = the response and `%context` = the item's parent
(the response, or the group instance it sits in), in Questionnaire order, with the `variable`s in
its scope (the Questionnaire's, then its groups', then its own; clinical/sdc.py); a result becomes
the item's answer, typed by the item (decimal -> valueDecimal kept exact, integer -> valueInteger,
...). A calculated item whose expression gives nothing loses its answer. A later calculated item
can use an earlier one; if one uses a later one, the pass repeats (at most once per calculated
item) until nothing changes.

A calculated item whose value cannot be computed - its expression fails on this response, uses a
variable that is undefined or failed itself, or gives a value the item cannot hold - is left as
the response has it (empty, or the answer the client sent, unchecked) and reported in
`ScoreReport.problems`: the write path returns them as warnings (clinical/questionnaires.py),
`score_response` raises them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from fhirgoal.clinical.expressions import Environment, ExpressionFailed, evaluate_variables
from fhirgoal.clinical.sdc import CompiledQuestionnaire, ItemDef, compile_questionnaire, plain_json
from fhirgoal.clinical.weights import Terminology
from fhirgoal.core.errors import FhirError, Issue

copy_json = plain_json
ROOT = "QuestionnaireResponse"


@dataclass
class ScoreReport:
    """What scoring could not do, and which calculated items came out empty."""

    problems: list[Issue] = field(default_factory=list)  # one warning per failed item
    kept: set[int] = field(default_factory=set)  # id() of response items left as sent
    # calculated items whose expression gave nothing: (definition, where, its node if any)
    empty: list[tuple[ItemDef, str, dict[str, Any] | None]] = field(default_factory=list)


def score_response(
    questionnaire: dict[str, Any],
    response: dict[str, Any],
    terminology: Terminology | None = None,
) -> dict[str, Any]:
    """A copy of the response with every calculated item (the totals) computed exactly.

    Raises FhirError("processing") when an expression cannot be evaluated on this response or
    gives a value the item cannot hold (several values for a non-repeating item, 2.5 for an
    integer item).
    """
    scored = plain_json(response)
    report = score_in_place(compile_questionnaire(questionnaire), scored, terminology)
    if report.problems:
        raise FhirError(
            "processing",
            issues=[Issue(p.diagnostics, p.expression, p.code) for p in report.problems],
        )
    return scored


def score_compiled(
    cq: CompiledQuestionnaire, response: dict[str, Any], terminology: Terminology | None = None
) -> dict[str, Any]:
    """A scored copy; what cannot be computed is left as it is (see the module docstring)."""
    scored = plain_json(response)
    score_in_place(cq, scored, terminology)
    return scored


def score_in_place(
    cq: CompiledQuestionnaire, scored: dict[str, Any], terminology: Terminology | None = None
) -> ScoreReport:
    """Score a response the caller already owns (a plain_json copy); the last pass's report."""
    report = ScoreReport()
    if not cq.calculated:
        return report
    base = cq.environment(scored, terminology)
    for _ in range(len(cq.calculated)):
        report = ScoreReport()
        env = evaluate_variables(cq.variables, base, scored)
        if not _apply(cq, env, cq.items, scored, ROOT, report):
            break
    return report


def _apply(
    cq: CompiledQuestionnaire,
    env: Environment,
    definitions: list[ItemDef],
    holder: dict[str, Any],
    path: str,
    report: ScoreReport,
) -> bool:
    changed = False
    for definition in definitions:
        if definition.calculated is None:
            continue
        where = f"{path}.item.where(linkId='{definition.link_id}')"
        node = next(
            (n for n in holder.get("item", ()) if n.get("linkId") == definition.link_id), None
        )
        scope = env
        if definition.variables:
            own = node if node is not None else {"linkId": definition.link_id}
            scope = evaluate_variables(definition.variables, env, own, definition.definition)
        try:
            result = definition.calculated.evaluate(scope, holder, definition.definition)
            answers = _answers(definition, result)
        except ExpressionFailed as failed:
            _failed(definition, node, where, str(failed), report)
            continue
        if not answers:
            report.empty.append((definition, where, node))
        changed |= _set(holder, definition, answers, definitions)
    for node in holder.get("item", ()):
        group = cq.by_link.get(node.get("linkId", ""))
        if group is not None and group.type == "group" and group.has_calculated:
            scope = evaluate_variables(group.variables, env, node, group.definition)
            inner = f"{path}.item.where(linkId='{group.link_id}')"
            changed |= _apply(cq, scope, group.children, node, inner, report)
    return changed


def _failed(
    definition: ItemDef,
    node: dict[str, Any] | None,
    where: str,
    reason: str,
    report: ScoreReport,
) -> None:
    rule = definition.calculated.text if definition.calculated is not None else ""
    if node is not None and node.get("answer"):
        report.kept.add(id(node))
        outcome = "the answer sent is kept as it is, unchecked"
    else:
        outcome = "the item is left empty"
    report.problems.append(
        Issue(
            f"'{definition.link_id}' could not be calculated: {reason} "
            f"(calculatedExpression `{rule}`); {outcome}",
            where,
            "processing",
            severity="warning",
        )
    )


def _answers(definition: ItemDef, result: list[Any]) -> list[dict[str, Any]]:
    if len(result) > 1 and not definition.repeats:
        raise ExpressionFailed(f"it gave {len(result)} values for an item that does not repeat")
    return [_answer(definition, value) for value in result]


def _answer(definition: ItemDef, value: Any) -> dict[str, Any]:
    kind = definition.type
    number = isinstance(value, int | Decimal) and not isinstance(value, bool)
    if kind == "decimal" and number:
        return {"valueDecimal": Decimal(value)}
    if kind == "integer" and number and Decimal(value) == Decimal(value).to_integral_value():
        return {"valueInteger": int(value)}
    if kind == "quantity" and number:
        quantity: dict[str, Any] = {"value": Decimal(value)}
        if definition.unit:
            quantity.update(_unit_fields(definition.unit))
        return {"valueQuantity": quantity}
    if kind == "boolean" and isinstance(value, bool):
        return {"valueBoolean": value}
    if kind in ("string", "text") and isinstance(value, str):
        return {"valueString": value}
    if kind in ("date", "dateTime", "time") and value is not None and not number:
        return {definition.answer_keys[0]: str(value)}
    if kind in ("choice", "open-choice") and isinstance(value, dict):
        return {"valueCoding": value}
    raise ExpressionFailed(f"it gave {_shown(value)}, which a {kind} item cannot hold")


def _shown(value: Any) -> str:
    return str(value) if isinstance(value, int | Decimal | str) else repr(value)


def _unit_fields(unit: dict[str, Any]) -> dict[str, Any]:
    fields = {"unit": unit.get("display") or unit.get("code")}
    if unit.get("system"):
        fields["system"] = unit["system"]
    if unit.get("code"):
        fields["code"] = unit["code"]
    return {k: v for k, v in fields.items() if v}


def _set(
    holder: dict[str, Any],
    definition: ItemDef,
    answers: list[dict[str, Any]],
    siblings: list[ItemDef],
) -> bool:
    items: list[dict[str, Any]] = holder.setdefault("item", [])
    for index, node in enumerate(items):
        if node.get("linkId") != definition.link_id:
            continue
        if node.get("answer") == answers:
            node["answer"] = answers  # same value; keep the computed text (31.4, not 31.40)
            return False
        if answers:
            node["answer"] = answers
        else:
            node.pop("answer", None)  # validation reads what was sent from its saved list
            if not node.get("item"):
                del items[index]
        return True
    if not answers:
        if not items:
            del holder["item"]
        return False
    order = {d.link_id: i for i, d in enumerate(siblings)}
    mine = order[definition.link_id]
    position = next(
        (i for i, node in enumerate(items) if order.get(node.get("linkId", ""), -1) > mine),
        len(items),
    )
    items.insert(position, {"linkId": definition.link_id, "answer": answers})
    return True
