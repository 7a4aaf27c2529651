"""Fill a QuestionnaireResponse's calculated items from their SDC calculatedExpressions.

http://hl7.org/fhir/uv/sdc/STU4/expressions.html#calculatedExpression. Each calculated item is
evaluated against the response with `%resource` = the response and `%context` = the item's parent
(the response, or the group instance it sits in), in Questionnaire order; a result becomes the
item's answer, typed by the item (decimal -> valueDecimal kept exact, integer -> valueInteger, ...).
A calculated item whose expression gives nothing loses its answer. A later calculated item can use
an earlier one; if one uses a later one, the pass repeats (at most once per calculated item) until
nothing changes.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from fhirgoal.clinical.sdc import CompiledQuestionnaire, ItemDef, compile_questionnaire, plain_json
from fhirgoal.core.errors import FhirError

copy_json = plain_json


def score_response(questionnaire: dict[str, Any], response: dict[str, Any]) -> dict[str, Any]:
    """A copy of the response with every calculated item (the totals) computed exactly.

    Raises FhirError("processing") when an expression cannot be evaluated on this response or
    gives a value the item cannot hold (several values for a non-repeating item, 2.5 for an
    integer item).
    """
    return score_compiled(compile_questionnaire(questionnaire), response)


def score_compiled(cq: CompiledQuestionnaire, response: dict[str, Any]) -> dict[str, Any]:
    return score_in_place(cq, plain_json(response))


def score_in_place(cq: CompiledQuestionnaire, scored: dict[str, Any]) -> dict[str, Any]:
    """score_compiled on a response the caller already owns (a plain_json copy)."""
    for _ in range(max(1, len(cq.calculated))):
        if not cq.calculated or not _apply(cq, scored, cq.items, scored):
            break
    return scored


def _apply(
    cq: CompiledQuestionnaire,
    response: dict[str, Any],
    definitions: list[ItemDef],
    holder: dict[str, Any],
) -> bool:
    changed = False
    for definition in definitions:
        if definition.calculated is None:
            continue
        try:
            result = definition.calculated.evaluate(cq, response, holder)
        except FhirError:
            raise
        except Exception as exc:
            raise FhirError(
                "processing",
                f"calculatedExpression of '{definition.link_id}' failed on this response: {exc}",
                definition.path,
            ) from None
        changed |= _set(holder, definition, _answers(definition, result), definitions)
    for node in holder.get("item", ()):
        group = cq.by_link.get(node.get("linkId", ""))
        if group is not None and group.type == "group" and group.children:
            changed |= _apply(cq, response, group.children, node)
    return changed


def _answers(definition: ItemDef, result: list[Any]) -> list[dict[str, Any]]:
    if len(result) > 1 and not definition.repeats:
        raise FhirError(
            "processing",
            f"calculatedExpression of '{definition.link_id}' gave {len(result)} values "
            "for an item that does not repeat",
            definition.path,
        )
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
    raise FhirError(
        "processing",
        f"calculatedExpression of '{definition.link_id}' gave {value!r}, "
        f"which a {kind} item cannot hold",
        definition.path,
    )


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
