"""Where an answer's SDC weight comes from: answers, answerOptions, ValueSets and CodeSystems.

SDC STU4 `weight()` (http://hl7.org/fhir/uv/sdc/STU4/expressions.html#fhirpath-supplements, the
R4 successor of `ordinal()`) is the numeric score of a coded answer. In R4 it is carried by the
extension http://hl7.org/fhir/StructureDefinition/itemWeight (extensions pack) or its
predecessor http://hl7.org/fhir/StructureDefinition/ordinalValue
(https://hl7.org/fhir/R4/extension-ordinalvalue.html), and, in terminology, by the concept
property `itemWeight` (http://hl7.org/fhir/concept-properties#itemWeight). An answer's weight is
the first of, in this order:

1. an itemWeight / ordinalValue on the answer's own Coding;
2. one on the item's matching `answerOption` (on the option or on its valueCoding);
3. one in the item's `answerValueSet`, a ValueSet contained in the Questionnaire (`#id`) or held
   by the server (by canonical `url` or `url|version`): its expansion's `contains` entries (the
   R5 `property` backported to R4 as the extension
   http://hl7.org/fhir/5.0/StructureDefinition/extension-ValueSet.expansion.contains.property, or
   an itemWeight / ordinalValue extension directly on the entry), then its
   `compose.include.concept` entries (itemWeight / ordinalValue extensions);
4. the concept property `itemWeight` (or an itemWeight / ordinalValue extension on the concept)
   in the CodeSystem whose `url` is the Coding's system, contained in the Questionnaire or held
   by the server.

A property counts as the item weight when its declaration (`CodeSystem.property` or the
backported `ValueSet.expansion.property`) has the itemWeight uri, or, declared without a uri,
its code is `itemWeight`. Codes match exactly (FHIR codes are case-sensitive unless the
CodeSystem says otherwise), so a ValueSet that spells a code `not-at-all` gives no weight to an
answer coded `Not-at-all`. An answer without a weight has none: `weight()` skips it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

EXT_ORDINAL = "http://hl7.org/fhir/StructureDefinition/ordinalValue"
EXT_ITEM_WEIGHT = "http://hl7.org/fhir/StructureDefinition/itemWeight"
ITEM_WEIGHT_PROPERTY = "http://hl7.org/fhir/concept-properties#itemWeight"
_R5 = "http://hl7.org/fhir/5.0/StructureDefinition/"
EXT_EXPANSION_PROPERTY = _R5 + "extension-ValueSet.expansion.property"
EXT_CONTAINS_PROPERTY = _R5 + "extension-ValueSet.expansion.contains.property"

Key = tuple[str | None, str | None]  # (system, code)


def _number(value: Any) -> Decimal | None:
    if isinstance(value, bool) or not isinstance(value, int | Decimal | float | str):
        return None
    try:
        return Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    except ArithmeticError:
        return None


def _extension_number(element: dict[str, Any], url: str) -> Decimal | None:
    for ext in element.get("extension", ()):
        if isinstance(ext, dict) and ext.get("url") == url:
            return _number(ext.get("valueDecimal", ext.get("valueInteger")))
    return None


def coding_weight(element: dict[str, Any]) -> Decimal | None:
    """The itemWeight (or, failing that, ordinalValue) extension on a Coding or answerOption."""
    weight = _extension_number(element, EXT_ITEM_WEIGHT)
    return weight if weight is not None else _extension_number(element, EXT_ORDINAL)


def value_set_weights(value_set: dict[str, Any]) -> dict[Key, Decimal]:
    """(system, code) -> weight for every concept of a ValueSet that carries one."""
    weights: dict[Key, Decimal] = {}
    expansion = value_set.get("expansion") or {}
    weight_codes = _weight_property_codes(
        (
            {_sub(ext, "code"): _sub(ext, "uri")}
            for ext in expansion.get("extension", ())
            if ext.get("url") == EXT_EXPANSION_PROPERTY
        ),
    )
    for entry in _contains(expansion.get("contains", ())):
        weight = _contains_weight(entry, weight_codes)
        if weight is not None:
            weights.setdefault((entry.get("system"), entry.get("code")), weight)
    for include in (value_set.get("compose") or {}).get("include", ()):
        for concept in include.get("concept", ()):
            weight = coding_weight(concept)
            if weight is not None:
                weights.setdefault((include.get("system"), concept.get("code")), weight)
    return weights


def code_system_weights(code_system: dict[str, Any]) -> dict[str, Decimal]:
    """code -> weight for every concept of a CodeSystem that carries one."""
    weight_codes = _weight_property_codes(
        {p.get("code"): p.get("uri")} for p in code_system.get("property", ())
    )
    weights: dict[str, Decimal] = {}
    stack = list(code_system.get("concept", ()))
    while stack:
        concept = stack.pop()
        stack.extend(concept.get("concept", ()))
        weight = next(
            (
                number
                for prop in concept.get("property", ())
                if prop.get("code") in weight_codes
                for number in [_number(prop.get("valueDecimal", prop.get("valueInteger")))]
                if number is not None
            ),
            None,
        )
        if weight is None:
            weight = coding_weight(concept)
        if weight is not None and isinstance(concept.get("code"), str):
            weights[concept["code"]] = weight
    return weights


def _sub(extension: dict[str, Any], url: str) -> Any:
    for sub in extension.get("extension", ()):
        if sub.get("url") == url:
            return next((v for k, v in sub.items() if k.startswith("value")), None)
    return None


def _weight_property_codes(declarations: Iterator[dict[Any, Any]]) -> frozenset[str]:
    codes = set()
    for declaration in declarations:
        for code, uri in declaration.items():
            if isinstance(code, str) and (
                uri == ITEM_WEIGHT_PROPERTY or (uri is None and code == "itemWeight")
            ):
                codes.add(code)
    return frozenset(codes or {"itemWeight"})


def _contains(entries: Any) -> Iterator[dict[str, Any]]:
    stack = list(entries)
    while stack:
        entry = stack.pop(0)
        if isinstance(entry, dict):
            yield entry
            stack[:0] = entry.get("contains", ())


def _contains_weight(entry: dict[str, Any], weight_codes: frozenset[str]) -> Decimal | None:
    for ext in entry.get("extension", ()):
        if ext.get("url") == EXT_CONTAINS_PROPERTY and _sub(ext, "code") in weight_codes:
            number = _number(_sub(ext, "value[x]"))
            if number is not None:
                return number
    return coding_weight(entry)


@dataclass
class Terminology:
    """ValueSets and CodeSystems the server holds that a response's answers may need, looked up
    for that response (clinical/terminology.py reads them through the service)."""

    value_sets: dict[str, dict[str, Any]] = field(default_factory=dict)  # canonical -> resource
    code_systems: dict[str, dict[str, Any]] = field(default_factory=dict)  # url -> resource
    not_held: set[str] = field(default_factory=set)  # canonicals looked up and not found
    _vs_tables: dict[str, dict[Key, Decimal]] = field(default_factory=dict, repr=False)
    _cs_tables: dict[str, dict[str, Decimal]] = field(default_factory=dict, repr=False)

    def tried(self, canonical: str) -> bool:
        """Whether the canonical (a ValueSet's or a CodeSystem's) was looked up already."""
        return (
            canonical in self.value_sets
            or canonical in self.code_systems
            or canonical in self.not_held
        )

    def value_set_weights(self, canonical: str) -> dict[Key, Decimal] | None:
        if canonical not in self.value_sets:
            return None
        if canonical not in self._vs_tables:
            self._vs_tables[canonical] = value_set_weights(self.value_sets[canonical])
        return self._vs_tables[canonical]

    def code_system_weights(self, url: str) -> dict[str, Decimal] | None:
        if url not in self.code_systems:
            return None
        if url not in self._cs_tables:
            self._cs_tables[url] = code_system_weights(self.code_systems[url])
        return self._cs_tables[url]
