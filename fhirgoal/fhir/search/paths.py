"""Fast evaluation of the FHIRPath subset that R4 SearchParameter expressions use.

https://hl7.org/fhir/R4/searchparameter.html (SearchParameter.expression) and
https://hl7.org/fhirpath/N1/ . Nearly every R4 search expression is a plain path, optionally with
`.where(resolve() is Type)`, a type cast (`as X`, `.as(X)`, `.ofType(X)`, `(X as T).path`) or a
simple `.where(name='literal')` filter. Those compile into a few dictionary look-ups, which keeps
index extraction cheap on every write: each step is placed in the R4 element model (fhirpathpy's),
so a plain element costs one look-up even when absent, and a choice element (value[x]) only the
keys of its types, or of the one type a cast names. Anything else falls back to fhirpathpy, so a
custom SearchParameter still needs no code; tests/fhir/test_search_paths.py checks every compiled
expression against fhirpathpy on resources of every stored type.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fhirpathpy import compile as fhirpath_compile
from fhirpathpy.models import models as fhirpath_models

Step = Callable[[list[Any]], list[Any]]
Extractor = Callable[[dict[str, Any]], list[Any]]

# The data types a choice element ([x]) may take in R4 (https://hl7.org/fhir/R4/datatypes.html),
# as they appear after the element name in JSON.
CHOICE_TYPE_SUFFIXES = frozenset(
    [
        "Base64Binary",
        "Boolean",
        "Canonical",
        "Code",
        "Date",
        "DateTime",
        "Decimal",
        "Id",
        "Instant",
        "Integer",
        "Markdown",
        "Oid",
        "PositiveInt",
        "String",
        "Time",
        "UnsignedInt",
        "Uri",
        "Url",
        "Uuid",
        "Address",
        "Age",
        "Annotation",
        "Attachment",
        "CodeableConcept",
        "Coding",
        "ContactPoint",
        "Count",
        "Distance",
        "Duration",
        "HumanName",
        "Identifier",
        "Money",
        "Period",
        "Quantity",
        "Range",
        "Ratio",
        "Reference",
        "SampledData",
        "Signature",
        "Timing",
        "ContactDetail",
        "Contributor",
        "DataRequirement",
        "Expression",
        "ParameterDefinition",
        "RelatedArtifact",
        "TriggerDefinition",
        "UsageContext",
        "Dosage",
        "Meta",
    ]
)
_IDENT = re.compile(r"^[a-z][A-Za-z0-9]*$")
_RESOLVE_IS = re.compile(r"^where\(resolve\(\) is ([A-Z][A-Za-z]+)\)$")
_CAST = re.compile(r"^(?:as|ofType)\(([A-Za-z]+)\)$")
_WHERE_EQ = re.compile(r"^where\(([a-z][A-Za-z]*)\s*=\s*'([^']*)'\)$")
_EXTENSION = re.compile(r"^extension\('([^']+)'\)$")
_TRAILING_AS = re.compile(r"^(.*\S)\s+as\s+([A-Za-z]+)$")


def split_top_level(expression: str, separator: str = "|") -> list[str]:
    """Split on a separator (one or more characters) that is not inside parentheses or quotes."""
    parts: list[str] = []
    depth, quote, start, i = 0, False, 0, 0
    while i < len(expression):
        ch = expression[i]
        if ch == "'":
            quote = not quote
        elif not quote and ch == "(":
            depth += 1
        elif not quote and ch == ")":
            depth -= 1
        elif depth == 0 and not quote and expression.startswith(separator, i):
            parts.append(expression[start:i].strip())
            i += len(separator)
            start = i
            continue
        i += 1
    parts.append(expression[start:].strip())
    return [p for p in parts if p]


def top_level_has_space(expression: str) -> bool:
    """True when an operator (FHIRPath writes them between spaces) sits outside parentheses."""
    return len(split_top_level(expression, " ")) > 1


def strip_parens(text: str) -> str:
    while text.startswith("(") and text.endswith(")") and _balanced(text[1:-1]):
        text = text[1:-1].strip()
    return text


def _balanced(text: str) -> bool:
    depth = 0
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if depth < 0:
            return False
    return depth == 0


def branches_for_type(expression: str, resource_type: str) -> list[str]:
    """The union branches of a (possibly shared) expression that apply to one resource type."""
    result = []
    for branch in split_top_level(expression):
        branch = strip_parens(branch)
        if (
            branch == resource_type
            or branch.startswith(resource_type + ".")
            or branch.startswith(f"({resource_type}.")
        ):
            result.append(branch)
        elif branch.startswith(("Resource.", "DomainResource.")):
            result.append(resource_type + branch[branch.index(".") :])
    return result


def reference_type(reference: str) -> str | None:
    """'Patient/1', 'http://x/fhir/Patient/1/_history/2' -> 'Patient'."""
    parts = reference.split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    return parts[-2] if len(parts) >= 2 else None


# ---- the element model: which names are choice elements, and of which types ------------------
# fhirpathpy's R4 model (from the R4 StructureDefinitions): element path -> type, the choice
# elements ([x]) with their types, contentReference paths, and each type's base type.
_MODEL = fhirpath_models["r4"]
_PATH_TYPES: dict[str, str] = _MODEL["path2Type"]
_CHOICES: dict[str, list[str]] = _MODEL["choiceTypePaths"]
_ELSEWHERE: dict[str, str] = _MODEL["pathsDefinedElsewhere"]
_BASE_TYPES: dict[str, str] = _MODEL["type2Parent"]
# Paths with child elements of their own (backbone elements such as Observation.component).
_BACKBONES = {path.rsplit(".", 1)[0] for path in (*_PATH_TYPES, *_CHOICES)}


def _lineage(context: str) -> list[str]:
    """Where the elements of `context` (a type, or a backbone element's path) are defined."""
    if "." in context:
        return [context, "BackboneElement", "Element"]
    lineage = []
    while context:
        lineage.append(context)
        context = _BASE_TYPES.get(context, "")
    return lineage


def _element(context: str, name: str) -> tuple[str | None, list[str] | None] | None:
    """(the context below `context`.`name`, or None for a choice; its choice types) per the
    model, or None when the model does not know the element."""
    for owner in _lineage(context):
        path = f"{owner}.{name}"
        if path in _CHOICES:
            return None, _CHOICES[path]
        if path in _ELSEWHERE:
            return _ELSEWHERE[path], None
        if path in _PATH_TYPES:
            return _PATH_TYPES[path], None
        if path in _BACKBONES:
            return path, None
    return None


# ---- steps: each maps the values reached so far to the next ones -------------------------------
def _child(name: str) -> Step:
    """A plain element: one dictionary look-up per value."""

    def step(values: list[Any]) -> list[Any]:
        out: list[Any] = []
        for value in values:
            if isinstance(value, dict):
                child = value.get(name)
                if child is not None:
                    if isinstance(child, list):
                        out.extend(child)
                    else:
                        out.append(child)
        return out

    return step


def _choice(name: str, suffixes: list[str]) -> Step:
    """A choice element: valueQuantity, effectiveDateTime, ... for the given type suffixes."""
    keys = [name + suffix for suffix in suffixes]

    def step(values: list[Any]) -> list[Any]:
        out: list[Any] = []
        for value in values:
            if isinstance(value, dict):
                for key in keys:
                    child = value.get(key)
                    if child is not None:
                        if isinstance(child, list):
                            out.extend(child)
                        else:
                            out.append(child)
        return out

    return step


def _any_child(name: str, cast: str | None = None) -> Step:
    """An element the model cannot place (after an uncast choice, below a composite's node): the
    element itself, else its choice forms (not statusReason for status: the rest must be a type
    name), only the `cast` one when a cast follows."""
    cast_key = name + cast if cast else ""

    def step(values: list[Any]) -> list[Any]:
        out: list[Any] = []
        for value in values:
            if not isinstance(value, dict):
                continue
            if name in value:
                found = [value[name]]
            elif cast_key:
                found = [value[cast_key]] if cast_key in value else []
            else:
                found = [
                    child
                    for key, child in value.items()
                    if key.startswith(name) and key[len(name) :] in CHOICE_TYPE_SUFFIXES
                ]
            for child in found:
                if isinstance(child, list):
                    out.extend(child)
                else:
                    out.append(child)
        return out

    return step


def _resolve_is(type_name: str) -> Step:
    def step(values: list[Any]) -> list[Any]:
        return [
            v
            for v in values
            if isinstance(v, dict)
            and isinstance(v.get("reference"), str)
            and reference_type(v["reference"]) == type_name
        ]

    return step


def _where_equals(name: str, literal: str) -> Step:
    def step(values: list[Any]) -> list[Any]:
        return [v for v in values if isinstance(v, dict) and v.get(name) == literal]

    return step


def _parse(branch: str, resource_type: str) -> list[tuple[str, ...]] | None:
    """The operations of a path branch: ("child", name), ("cast", Type), ("resolve", Type),
    ("where", name, literal); None for anything else."""
    cast_tail = None
    match = _TRAILING_AS.match(branch)
    if match:
        branch, cast_tail = strip_parens(match.group(1)), match.group(2)
    segments = split_top_level(branch, ".")
    if not segments:
        return None
    head = segments[0]
    ops: list[tuple[str, ...]] | None
    if head == resource_type:
        ops = []
    elif head.startswith("(") and strip_parens(head) != head:  # (X.value as T).text
        ops = _parse(strip_parens(head), resource_type)
    else:
        ops = None
    if ops is None:
        return None
    for segment in segments[1:]:
        if _IDENT.match(segment):
            ops.append(("child", segment))
        elif m := _RESOLVE_IS.match(segment):
            ops.append(("resolve", m.group(1)))
        elif m := _CAST.match(segment):
            ops.append(("cast", m.group(1)))
        elif m := _WHERE_EQ.match(segment):
            ops.append(("where", m.group(1), m.group(2)))
        elif m := _EXTENSION.match(segment):
            ops += [("child", "extension"), ("where", "url", m.group(1))]
        else:
            return None
    if cast_tail:
        ops.append(("cast", cast_tail))
    return ops


def _type_suffix(type_name: str) -> str:
    return type_name[0].upper() + type_name[1:]


def _suffixes_of_type(choices: list[str], type_name: str) -> list[str]:
    """The choice suffixes whose type is `type_name` or derives from it: FHIRPath's `as` and
    `ofType` keep values of subtypes too (a `canonical` is a `uri`, an `Age` a `Quantity`)."""
    found = []
    for suffix in choices:
        for name in (suffix, suffix[0].lower() + suffix[1:]):
            if type_name in _lineage(name):
                found.append(suffix)
                break
    return found


def _compile_steps(branch: str, resource_type: str, context: str | None = "") -> list[Step] | None:
    """Steps that evaluate a path branch as FHIRPath does, placing each element in the R4 model
    from `context` on (the resource type unless given; None: unknown), so that a missing element
    costs one look-up and a choice element only its types' keys. None when the branch is not
    such a path, or a cast cannot be decided without the values."""
    ops = _parse(branch, resource_type)
    if ops is None:
        return None
    steps: list[Step] = []
    if context == "":
        context = resource_type  # the model's context of the values reached, if known
    i = 0
    while i < len(ops):
        op = ops[i]
        cast = ops[i + 1] if i + 1 < len(ops) and ops[i + 1][0] == "cast" else None
        if op[0] == "child":
            name = op[1]
            found = _element(context, name) if context else None
            if found is None:  # a cast right after is decided per value, as FHIRPath does
                steps.append(_any_child(name, _type_suffix(cast[1]) if cast else None))
                context = None
                i += 1 if cast else 0
            elif found[1] is None:
                steps.append(_child(name))
                context = found[0]
            else:
                choices = found[1]
                if cast is not None:  # value.as(Quantity): the valueQuantity key (and subtypes')
                    steps.append(_choice(name, _suffixes_of_type(choices, cast[1])))
                    context = cast[1]
                    i += 1
                else:
                    steps.append(_choice(name, choices))
                    context = None
        elif op[0] == "cast":  # on a typed element: it either is of that type or needs values
            if context is None or _type_suffix(context) != _type_suffix(op[1]):
                return None
        elif op[0] == "resolve":
            steps.append(_resolve_is(op[1]))
        else:
            steps.append(_where_equals(op[1], op[2]))
        i += 1
    return steps


def _run_steps(steps: list[Step]) -> Extractor:
    def extract(resource: dict[str, Any]) -> list[Any]:
        values: list[Any] = [resource]
        for step in steps:
            values = step(values)
            if not values:
                return values
        return values

    return extract


def _fhirpath_fallback(branch: str) -> Extractor:
    compiled = fhirpath_compile(branch, fhirpath_models["r4"])

    def extract(resource: dict[str, Any]) -> list[Any]:
        try:
            return list(compiled(resource, None))
        except Exception:  # a malformed resource never reaches here; be safe on odd shapes
            return []

    return extract


def compile_expression(
    expression: str, resource_type: str, context: str | None = ""
) -> Extractor | None:
    """Compile the branches of `expression` that apply to `resource_type`; None if none do."""
    extractors: list[Extractor] = []
    for branch in branches_for_type(expression, resource_type):
        steps = _compile_steps(branch, resource_type, context)
        extractors.append(_run_steps(steps) if steps is not None else _fhirpath_fallback(branch))
    if not extractors:
        return None
    if len(extractors) == 1:
        return extractors[0]

    def union(resource: dict[str, Any]) -> list[Any]:
        out: list[Any] = []
        for extractor in extractors:
            out.extend(extractor(resource))
        return out

    return union


def compile_relative(expression: str, resource_type: str) -> Extractor:
    """Compile an expression relative to a node (a composite component, e.g. 'value.as(Quantity)')
    by rooting each union branch at the type name; it then applies to any dict node (whose
    place in the model is not known: a composite's nodes may be of several kinds)."""
    rooted = " | ".join(f"{resource_type}.{branch}" for branch in split_top_level(expression))
    extractor = compile_expression(rooted, resource_type, context=None)
    return extractor if extractor is not None else (lambda node: [])
