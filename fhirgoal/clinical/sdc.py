"""A Questionnaire's SDC metadata compiled once, and its calculatedExpressions evaluated exactly.

Structured Data Capture STU4 (http://hl7.org/fhir/uv/sdc/STU4/): calculatedExpression
(expressions.html#calculatedExpression), observationExtract (extraction.html#obs-extract), and the
R4 core / extensions-pack item extensions minValue, maxValue, maxDecimalPlaces, questionnaire-unit,
ordinalValue and its successor itemWeight (http://hl7.org/fhir/extensions/).

Why expressions are not all handed to fhirpathpy: measured on this machine, fhirpathpy 2.2.4 spends
~700 us on `%resource.item.where(linkId in (...)).answer.value.sum()` for a 4-item response (each
`where()` is ~170 us), its `sum()` fails on answer values (`int + ResourceNode`), and it has no
`weight()` / `ordinal()`. Decimals it does keep (Decimal in, Decimal out). So the scoring shape that
every built-in Questionnaire uses,

    %resource.item.where(linkId in ('a' | 'b' | ...)).answer.value[.weight()|.ordinal()].sum()

(also with `%resource.repeat(item)`), is recognised when the Questionnaire is compiled and summed
natively with Decimal arithmetic (a few microseconds); any other expression, e.g. one a clinician
writes, runs on fhirpathpy with an exact Decimal `sum()` and an SDC `weight()` registered. Both
paths give the same answer (a test checks it). A sum over no answers is no answer (empty), not 0:
an unanswered form must not score 0.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from bson.decimal128 import Decimal128
from fhirpathpy import compile as fhirpath_compile
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models as fhirpath_models

from fhirgoal.core.errors import FhirError

EXT_MIN = "http://hl7.org/fhir/StructureDefinition/minValue"
EXT_MAX = "http://hl7.org/fhir/StructureDefinition/maxValue"
EXT_MAX_PLACES = "http://hl7.org/fhir/StructureDefinition/maxDecimalPlaces"
EXT_UNIT = "http://hl7.org/fhir/StructureDefinition/questionnaire-unit"
EXT_ORDINAL = "http://hl7.org/fhir/StructureDefinition/ordinalValue"
EXT_ITEM_WEIGHT = "http://hl7.org/fhir/StructureDefinition/itemWeight"
SDC = "http://hl7.org/fhir/uv/sdc/StructureDefinition/"
EXT_CALCULATED = SDC + "sdc-questionnaire-calculatedExpression"
EXT_OBS_EXTRACT = SDC + "sdc-questionnaire-observationExtract"
EXT_OBS_CATEGORY = SDC + "sdc-questionnaire-observation-extract-category"

# Questionnaire.item.type -> the QuestionnaireResponse answer value[x] it takes (R4 item-type).
ANSWER_KEYS: dict[str, tuple[str, ...]] = {
    "boolean": ("valueBoolean",),
    "decimal": ("valueDecimal",),
    "integer": ("valueInteger",),
    "date": ("valueDate",),
    "dateTime": ("valueDateTime",),
    "time": ("valueTime",),
    "string": ("valueString",),
    "text": ("valueString",),
    "url": ("valueUri",),
    "choice": ("valueCoding",),
    "open-choice": ("valueCoding", "valueString"),
    "attachment": ("valueAttachment",),
    "reference": ("valueReference",),
    "quantity": ("valueQuantity",),
}
CACHE_SIZE = 256


def plain_json(value: Any) -> Any:
    """A deep copy of parsed JSON, several times faster than deepcopy, with BSON Decimal128 (how
    MongoDB hands decimals back) turned into Decimal, so stored resources score like posted ones."""
    if isinstance(value, dict):
        return {k: plain_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [plain_json(v) for v in value]
    if isinstance(value, Decimal128):
        return value.to_decimal()
    return value


def _ext(element: dict[str, Any], url: str) -> dict[str, Any] | None:
    for ext in element.get("extension", ()):
        if ext.get("url") == url:
            return ext
    return None


def ext_value(element: dict[str, Any], url: str) -> Any:
    """The value[x] of the first extension with this url on the element, or None."""
    ext = _ext(element, url)
    if ext is None:
        return None
    for key, value in ext.items():
        if key.startswith("value"):
            return value
    return None


def answer_value(answer: dict[str, Any]) -> tuple[str, Any] | None:
    for key, value in answer.items():
        if key.startswith("value"):
            return key, value
    return None


def coding_weight(coding: dict[str, Any]) -> Decimal | None:
    weight = ext_value(coding, EXT_ITEM_WEIGHT)
    if weight is None:
        weight = ext_value(coding, EXT_ORDINAL)
    return None if weight is None or isinstance(weight, bool) else Decimal(weight)


@dataclass(slots=True)
class Option:
    coding: dict[str, Any]
    weight: Decimal | None


@dataclass(slots=True, eq=False)
class ItemDef:
    """One Questionnaire.item, with its extensions read once."""

    link_id: str
    type: str
    path: str  # FHIRPath to the item in the Questionnaire, for messages about the Questionnaire
    definition: dict[str, Any]
    codes: list[dict[str, Any]]
    required: bool
    repeats: bool
    read_only: bool
    conditional: bool  # has enableWhen: whether it is shown depends on other answers
    answer_keys: tuple[str, ...]
    min_value: Any = None
    max_value: Any = None
    max_places: int | None = None
    max_length: int | None = None
    unit: dict[str, Any] | None = None
    options: dict[tuple[str | None, str | None], Option] | None = None  # coded answerOptions
    other_options: list[tuple[str, Any]] | None = None  # non-Coding answerOptions
    calculated: Expression | None = None
    extract: bool | str | None = None  # observationExtract, declared here or inherited
    declares_extract: bool = False
    category: list[dict[str, Any]] | None = None  # observation-extract-category, inherited
    children: list[ItemDef] = field(default_factory=list)

    def option_for(self, coding: dict[str, Any]) -> Option | None:
        if self.options is None:
            return None
        return self.options.get((coding.get("system"), coding.get("code")))


@dataclass(slots=True, eq=False)
class CompiledQuestionnaire:
    url: str | None
    version: str | None
    resource: dict[str, Any]
    items: list[ItemDef]
    by_link: dict[str, ItemDef]
    root_extract: bool | str | None
    root_category: list[dict[str, Any]] | None
    calculated: list[ItemDef]

    def walk(self) -> Iterator[ItemDef]:
        stack = list(reversed(self.items))
        while stack:
            item = stack.pop()
            yield item
            stack.extend(reversed(item.children))


# --- expressions ---------------------------------------------------------------------------------

_SUM = re.compile(
    r"^\s*%resource\s*\.\s*(item|repeat\(\s*item\s*\))\s*\.\s*where\(\s*linkId\s+in\s*\(\s*"
    r"('[^'\\]*'(?:\s*\|\s*'[^'\\]*')*)\s*\)\s*\)\s*\.\s*answer\s*\.\s*value\s*"
    r"(?:\.\s*(weight|ordinal)\(\s*\)\s*)?\.\s*sum\(\s*\)\s*$"
)
_MODEL = fhirpath_models["r4"]


def _exact_sum(values: list[Any]) -> Any:
    total = Decimal(0)
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | Decimal):
            raise TypeError(f"sum() of a non-number: {value!r}")
        total += value
    return total if values else []


def _weights(values: list[Any]) -> list[Decimal]:
    # Answers reach fhirpathpy with their item's weight already attached (see _annotate).
    out = []
    for value in values:
        if isinstance(value, dict):
            weight = coding_weight(value)
            if weight is not None:
                out.append(weight)
    return out


_FHIRPATH_FUNCTIONS = {
    "sum": {"fn": _exact_sum},
    "weight": {"fn": _weights},
    "ordinal": {"fn": _weights},
}


class Expression:
    """A compiled calculatedExpression: native for the scoring shape, fhirpathpy otherwise."""

    __slots__ = ("_fallback", "_link_ids", "_nested", "_weighted", "native", "text")

    def __init__(self, text: str) -> None:
        self.text = text
        match = _SUM.match(text)
        self.native = match is not None
        self._fallback: Callable[..., list[Any]] | None = None
        if match:
            self._nested = match.group(1) != "item"
            self._link_ids = frozenset(s.strip()[1:-1] for s in match.group(2).split("|"))
            self._weighted = match.group(3) is not None
        else:
            self._fallback = fhirpath_compile(
                text, _MODEL, options={"userInvocationTable": _FHIRPATH_FUNCTIONS}
            )

    def evaluate(
        self, cq: CompiledQuestionnaire, response: dict[str, Any], context: dict[str, Any]
    ) -> list[Any]:
        if self._fallback is not None:
            if self._uses_weights():
                copies: dict[int, dict[str, Any]] = {}
                response, context = (
                    _annotate(cq, response, copies),
                    copies.get(id(context), context),
                )
            env: dict[str, Any] = {"resource": response, "questionnaire": cq.resource}
            # fhirpathpy resolves `answer.value` (a choice type) only on nodes that know their
            # FHIR path; a bare group item as %context would yield nothing.
            env["context"] = (
                context
                if context is response
                else ResourceNode.create_node(context, "QuestionnaireResponse.item")
            )
            return list(self._fallback(response, env))
        values: list[Any] = []
        for item in _response_items(response, self._nested):
            if item.get("linkId") not in self._link_ids:
                continue
            definition = cq.by_link.get(item["linkId"])
            for answer in item.get("answer", ()):
                found = answer_value(answer)
                if found is None:
                    continue
                if self._weighted:
                    weight = _answer_weight(definition, found[1])
                    if weight is not None:
                        values.append(weight)
                else:
                    values.append(found[1])
        result = _exact_sum(values)
        return [result] if values else []

    def _uses_weights(self) -> bool:
        return "weight(" in self.text or "ordinal(" in self.text


def _answer_weight(definition: ItemDef | None, value: Any) -> Decimal | None:
    if not isinstance(value, dict):
        return None
    own = coding_weight(value)  # SDC: a weight on the answer itself wins
    if own is not None or definition is None:
        return own
    option = definition.option_for(value)
    return option.weight if option else None


def _response_items(response: dict[str, Any], nested: bool) -> Iterator[dict[str, Any]]:
    if not nested:
        yield from response.get("item", ())
        return
    stack = list(reversed(response.get("item", ())))
    while stack:
        item = stack.pop()
        yield item
        stack.extend(reversed(item.get("item", ())))


def _annotate(
    cq: CompiledQuestionnaire, response: dict[str, Any], copies: dict[int, dict[str, Any]]
) -> dict[str, Any]:
    """A copy whose coded answers carry their answerOption's weight, for fhirpathpy's weight();
    `copies` maps id(original item) to its copy, to find %context in it."""

    def items(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for original in nodes:
            node = copies[id(original)] = dict(original)
            definition = cq.by_link.get(node.get("linkId", ""))
            if "item" in node:
                node["item"] = items(node["item"])
            if "answer" in node:
                answers = []
                for answer in node["answer"]:
                    answer = dict(answer)
                    coding = answer.get("valueCoding")
                    weight = _answer_weight(definition, coding)
                    if isinstance(coding, dict) and weight is not None:
                        answer["valueCoding"] = {
                            **coding,
                            "extension": [{"url": EXT_ITEM_WEIGHT, "valueDecimal": weight}],
                        }
                    if "item" in answer:
                        answer["item"] = items(answer["item"])
                    answers.append(answer)
                node["answer"] = answers
            out.append(node)
        return out

    return {**response, "item": items(response.get("item", []))}


# --- compiling -----------------------------------------------------------------------------------

_cache: OrderedDict[tuple[Any, ...], CompiledQuestionnaire] = OrderedDict()


def _cache_key(questionnaire: dict[str, Any]) -> tuple[Any, ...] | None:
    # A stored Questionnaire gets a new meta.versionId on every update, so url|version plus the
    # meta pair identifies its content; one with neither url nor id is compiled each time.
    ident = questionnaire.get("url") or questionnaire.get("id")
    if not ident:
        return None
    meta = questionnaire.get("meta") or {}
    return (ident, questionnaire.get("version"), meta.get("versionId"), meta.get("lastUpdated"))


def compile_questionnaire(questionnaire: dict[str, Any]) -> CompiledQuestionnaire:
    """Read a Questionnaire's items and extensions once; cached by url|version (LRU)."""
    key = _cache_key(questionnaire)
    if key is not None:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    compiled = _compile(questionnaire)
    if key is not None:
        _cache[key] = compiled
        if len(_cache) > CACHE_SIZE:
            _cache.popitem(last=False)
    return compiled


def _compile(questionnaire: dict[str, Any]) -> CompiledQuestionnaire:
    questionnaire = plain_json(questionnaire)
    if questionnaire.get("resourceType") != "Questionnaire":
        raise FhirError("processing", "not a Questionnaire", "resourceType")
    by_link: dict[str, ItemDef] = {}
    root_extract = _extract_mode(questionnaire)
    root_category = _categories(questionnaire)
    items = [
        _compile_item(raw, f"Questionnaire.item[{i}]", root_extract, root_category, by_link)
        for i, raw in enumerate(questionnaire.get("item", ()))
    ]
    cq = CompiledQuestionnaire(
        url=questionnaire.get("url"),
        version=questionnaire.get("version"),
        resource=questionnaire,
        items=items,
        by_link=by_link,
        root_extract=root_extract,
        root_category=root_category,
        calculated=[],
    )
    cq.calculated = [d for d in cq.walk() if d.calculated is not None]
    return cq


def _extract_mode(element: dict[str, Any]) -> bool | str | None:
    value = ext_value(element, EXT_OBS_EXTRACT)
    return value if isinstance(value, bool | str) else None


def _categories(element: dict[str, Any]) -> list[dict[str, Any]] | None:
    found = [
        ext["valueCodeableConcept"]
        for ext in element.get("extension", ())
        if ext.get("url") == EXT_OBS_CATEGORY and "valueCodeableConcept" in ext
    ]
    return found or None


def _compile_item(
    raw: dict[str, Any],
    path: str,
    inherited_extract: bool | str | None,
    inherited_category: list[dict[str, Any]] | None,
    by_link: dict[str, ItemDef],
) -> ItemDef:
    link_id = raw.get("linkId")
    if not isinstance(link_id, str) or link_id in by_link:
        what = "a duplicate" if isinstance(link_id, str) else "no"
        raise FhirError("processing", f"Questionnaire item has {what} linkId", path)
    item_type = raw.get("type", "")
    declared = _ext(raw, EXT_OBS_EXTRACT) is not None
    extract = _extract_mode(raw) if declared else inherited_extract
    if not declared and any(ext_value(c, EXT_OBS_EXTRACT) is True for c in raw.get("code", ())):
        # SDC allows the extension on item.code too: that coding's item extracts.
        declared, extract = True, True
    category = _categories(raw) or inherited_category
    keys = ANSWER_KEYS.get(item_type, ())
    options: dict[tuple[str | None, str | None], Option] | None = None
    other: list[tuple[str, Any]] | None = None
    for opt in raw.get("answerOption", ()):
        found = answer_value(opt)
        if found is None:
            continue
        if found[0] == "valueCoding":
            coding = found[1]
            weight = coding_weight(opt)
            if weight is None:
                weight = coding_weight(coding)
            options = options if options is not None else {}
            options[(coding.get("system"), coding.get("code"))] = Option(coding, weight)
        else:
            other = other if other is not None else []
            other.append(found)
            if found[0] not in keys:
                keys = (*keys, found[0])
    calculated = ext_value(raw, EXT_CALCULATED)
    expression = None
    if isinstance(calculated, dict) and calculated.get("expression"):
        if calculated.get("language", "text/fhirpath") != "text/fhirpath":
            raise FhirError(
                "processing", f"calculatedExpression of '{link_id}' is not text/fhirpath", path
            )
        try:
            expression = Expression(calculated["expression"])
        except Exception as exc:  # fhirpathpy raises bare Exceptions on syntax errors
            raise FhirError(
                "processing", f"calculatedExpression of '{link_id}' does not parse: {exc}", path
            ) from None
    places = ext_value(raw, EXT_MAX_PLACES)
    definition = ItemDef(
        link_id=link_id,
        type=item_type,
        path=path,
        definition=raw,
        codes=list(raw.get("code", ())),
        required=bool(raw.get("required", False)),
        repeats=bool(raw.get("repeats", False)),
        read_only=bool(raw.get("readOnly", False)),
        conditional=bool(raw.get("enableWhen")),
        answer_keys=keys,
        min_value=ext_value(raw, EXT_MIN),
        max_value=ext_value(raw, EXT_MAX),
        max_places=places if isinstance(places, int) and not isinstance(places, bool) else None,
        max_length=raw.get("maxLength"),
        unit=ext_value(raw, EXT_UNIT),
        options=options,
        other_options=other,
        calculated=expression,
        extract=extract,
        declares_extract=declared,
        category=category,
    )
    by_link[link_id] = definition
    definition.children = [
        _compile_item(child, f"{path}.item[{i}]", extract, category, by_link)
        for i, child in enumerate(raw.get("item", ()))
    ]
    return definition
