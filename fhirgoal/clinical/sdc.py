"""A Questionnaire's SDC metadata, compiled once: items, extensions, expressions, answer weights.

Structured Data Capture STU4 (http://hl7.org/fhir/uv/sdc/STU4/): calculatedExpression
(expressions.html#calculatedExpression) and `variable` (expressions.html#variables, the extension
http://hl7.org/fhir/StructureDefinition/variable) compiled by clinical/expressions.py,
observationExtract (extraction.html#obs-extract), and the R4 core / extensions-pack item extensions
minValue, maxValue, maxDecimalPlaces, questionnaire-unit, ordinalValue and its successor
itemWeight (http://hl7.org/fhir/extensions/). An answer's weight (SDC `weight()`) is looked up
here, in the order clinical/weights.py gives: the answer's Coding, the item's answerOption, its
answerValueSet (contained, or held by the server and passed in as `Terminology`), the CodeSystem.

Variables: a Questionnaire-level variable is evaluated with `%context` = the response; an
item-level one with `%context` = that item's node in the response (a group's instance, evaluated
once per repeat), and is visible to that item's expressions and its descendants'. An expression
that cannot be compiled (a parse error, a language other than FHIRPath) does not make the
Questionnaire unusable: it fails when evaluated, and the write says so in a warning.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from bson.decimal128 import Decimal128

from fhirgoal.clinical.expressions import FHIRPATH, Environment, Expression, Variable
from fhirgoal.clinical.weights import (
    Key,
    Terminology,
    code_system_weights,
    coding_weight,
    value_set_weights,
)
from fhirgoal.core.errors import FhirError

EXT_MIN = "http://hl7.org/fhir/StructureDefinition/minValue"
EXT_MAX = "http://hl7.org/fhir/StructureDefinition/maxValue"
EXT_MAX_PLACES = "http://hl7.org/fhir/StructureDefinition/maxDecimalPlaces"
EXT_UNIT = "http://hl7.org/fhir/StructureDefinition/questionnaire-unit"
EXT_VARIABLE = "http://hl7.org/fhir/StructureDefinition/variable"
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
    answer_value_set: str | None = None  # canonical, or "#id" of a contained ValueSet
    calculated: Expression | None = None
    variables: list[Variable] = field(default_factory=list)
    extract: bool | str | None = None  # observationExtract, declared here or inherited
    declares_extract: bool = False
    category: list[dict[str, Any]] | None = None  # observation-extract-category, inherited
    children: list[ItemDef] = field(default_factory=list)
    has_calculated: bool = False  # it or a descendant has a calculatedExpression

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
    variables: list[Variable] = field(default_factory=list)  # Questionnaire-level
    contained: dict[str, dict[str, Any]] = field(default_factory=dict)  # id -> resource
    uses_weights: bool = False  # some expression calls weight() / ordinal()
    # weight tables of contained ValueSets (by id) and CodeSystems (by url), built when first used
    _value_set_weights: dict[str, dict[Key, Decimal]] = field(default_factory=dict)
    _code_system_weights: dict[str, dict[str, Decimal]] = field(default_factory=dict)

    def walk(self) -> Iterator[ItemDef]:
        stack = list(reversed(self.items))
        while stack:
            item = stack.pop()
            yield item
            stack.extend(reversed(item.children))

    def environment(
        self, response: dict[str, Any], terminology: Terminology | None = None
    ) -> Environment:
        """What expressions on `response` see, before any variable is evaluated."""
        held = terminology or Terminology()
        return Environment(
            response, self.resource, lambda link, value: self.weight(link, value, held), {}
        )

    def weight(self, link_id: str | None, value: Any, held: Terminology) -> Decimal | None:
        """SDC weight() of an answer value to item `link_id` (order: clinical/weights.py)."""
        if not isinstance(value, dict):
            return None
        own = coding_weight(value)
        if own is not None:
            return own
        definition = self.by_link.get(link_id) if link_id is not None else None
        key = (value.get("system"), value.get("code"))
        if definition is not None:
            option = definition.options.get(key) if definition.options else None
            if option is not None and option.weight is not None:
                return option.weight
            table = self._value_set_table(definition.answer_value_set, held)
            if table is not None and key in table:
                return table[key]
        system = value.get("system")
        if isinstance(system, str):
            codes = self._code_system_table(system, held)
            if codes is not None:
                return codes.get(value.get("code", ""))
        return None

    def unresolved(self, response: dict[str, Any], held: Terminology) -> tuple[set[str], set[str]]:
        """The ValueSet canonicals, then the CodeSystem urls, that the server may hold and that
        coded answers still without a weight need; empty unless some expression uses weights.
        A CodeSystem is wanted only once the answer's ValueSet is known to give no weight."""
        value_sets: set[str] = set()
        systems: set[str] = set()
        if not self.uses_weights:
            return value_sets, systems
        for link_id, coding in _coded_answers(response.get("item", ())):
            if self.weight(link_id, coding, held) is not None:
                continue
            definition = self.by_link.get(link_id) if link_id is not None else None
            canonical = definition.answer_value_set if definition is not None else None
            if canonical and not canonical.startswith("#") and not held.tried(canonical):
                value_sets.add(canonical)
                continue
            system = coding.get("system")
            if (
                isinstance(system, str)
                and not held.tried(system)
                and not any(self._contained_code_system(system))
            ):
                systems.add(system)
        return value_sets, systems

    def _value_set_table(
        self, canonical: str | None, held: Terminology
    ) -> dict[Key, Decimal] | None:
        if not canonical:
            return None
        if not canonical.startswith("#"):
            return held.value_set_weights(canonical)
        table = self._value_set_weights.get(canonical)
        if table is None:
            value_set = self.contained.get(canonical[1:])
            if value_set is None or value_set.get("resourceType") != "ValueSet":
                return None
            table = self._value_set_weights[canonical] = value_set_weights(value_set)
        return table

    def _code_system_table(self, system: str, held: Terminology) -> dict[str, Decimal] | None:
        table = self._code_system_weights.get(system)
        if table is None:
            contained = next(self._contained_code_system(system), None)
            if contained is None:
                return held.code_system_weights(system)
            table = self._code_system_weights[system] = code_system_weights(contained)
        return table

    def _contained_code_system(self, system: str) -> Iterator[dict[str, Any]]:
        for resource in self.contained.values():
            if resource.get("resourceType") == "CodeSystem" and resource.get("url") == system:
                yield resource


def _coded_answers(nodes: Any) -> Iterator[tuple[str | None, dict[str, Any]]]:
    for node in nodes:
        if not isinstance(node, dict):
            continue
        for answer in node.get("answer", ()):
            coding = answer.get("valueCoding") if isinstance(answer, dict) else None
            if isinstance(coding, dict):
                yield node.get("linkId"), coding
            if isinstance(answer, dict):
                yield from _coded_answers(answer.get("item", ()))
        yield from _coded_answers(node.get("item", ()))


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
        variables=_variables(questionnaire),
        contained={
            r["id"]: r
            for r in questionnaire.get("contained", ())
            if isinstance(r, dict) and isinstance(r.get("id"), str)
        },
    )
    cq.calculated = [d for d in cq.walk() if d.calculated is not None]
    expressions = [v.expression for v in cq.variables] + [
        e
        for d in cq.walk()
        for e in [d.calculated, *(v.expression for v in d.variables)]
        if e is not None
    ]
    cq.uses_weights = any(e.uses_weights for e in expressions)
    for item in cq.items:
        _mark_calculated(item)
    return cq


def _mark_calculated(item: ItemDef) -> bool:
    below = [_mark_calculated(child) for child in item.children]
    item.has_calculated = item.calculated is not None or any(below)
    return item.has_calculated


def _expression(element: dict[str, Any], url: str, keep_nodes: bool) -> Expression | None:
    value = ext_value(element, url)
    if not isinstance(value, dict) or not isinstance(value.get("expression"), str):
        return None
    return Expression(value["expression"], value.get("language", FHIRPATH), keep_nodes=keep_nodes)


def _variables(element: dict[str, Any]) -> list[Variable]:
    """The element's `variable` extensions, in order; one without a name cannot be referred to."""
    found = []
    for ext in element.get("extension", ()):
        value = ext.get("valueExpression") if ext.get("url") == EXT_VARIABLE else None
        if isinstance(value, dict) and value.get("name") and value.get("expression"):
            language = value.get("language", FHIRPATH)
            expression = Expression(value["expression"], language, keep_nodes=True)
            found.append(Variable(value["name"], expression))
    return found


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
    value_set = raw.get("answerValueSet")
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
        answer_value_set=value_set if isinstance(value_set, str) and value_set else None,
        calculated=_expression(raw, EXT_CALCULATED, keep_nodes=False),
        variables=_variables(raw),
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
