"""Fast evaluation of the FHIRPath subset that R4 SearchParameter expressions use.

https://hl7.org/fhir/R4/searchparameter.html (SearchParameter.expression) and
https://hl7.org/fhirpath/N1/ . Nearly every R4 search expression is a plain path, optionally with
`.where(resolve() is Type)`, a type cast (`as X`, `.as(X)`, `.ofType(X)`) or a simple
`.where(name='literal')` filter. Those compile into a few dictionary look-ups, which keeps index
extraction cheap on every write. Anything else falls back to fhirpathpy, so a custom
SearchParameter still needs no code.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fhirpathpy import compile as fhirpath_compile
from fhirpathpy.models import models as fhirpath_models

# A node is (value, type-hint): the hint is the choice suffix ("Quantity" for valueQuantity).
Node = tuple[Any, str | None]
Step = Callable[[list[Node]], list[Node]]
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


def _navigate(name: str) -> Step:
    def step(nodes: list[Node]) -> list[Node]:
        out: list[Node] = []
        for value, _ in nodes:
            if not isinstance(value, dict):
                continue
            if name in value:
                child = value[name]
                if isinstance(child, list):
                    out.extend((c, None) for c in child)
                else:
                    out.append((child, None))
                continue
            # choice element: valueQuantity, effectiveDateTime, ... (not statusReason for status)
            for key, child in value.items():
                if key.startswith(name) and key[len(name) :] in CHOICE_TYPE_SUFFIXES:
                    hint = key[len(name) :]
                    if isinstance(child, list):
                        out.extend((c, hint) for c in child)
                    else:
                        out.append((child, hint))
        return out

    return step


def _cast(type_name: str) -> Step:
    wanted = type_name[0].upper() + type_name[1:]

    def step(nodes: list[Node]) -> list[Node]:
        return [(v, h) for v, h in nodes if h is None or h == wanted]

    return step


def reference_type(reference: str) -> str | None:
    """'Patient/1', 'http://x/fhir/Patient/1/_history/2' -> 'Patient'."""
    parts = reference.split("/")
    if "_history" in parts:
        parts = parts[: parts.index("_history")]
    return parts[-2] if len(parts) >= 2 else None


def _resolve_is(type_name: str) -> Step:
    def step(nodes: list[Node]) -> list[Node]:
        return [
            (v, h)
            for v, h in nodes
            if isinstance(v, dict)
            and isinstance(v.get("reference"), str)
            and reference_type(v["reference"]) == type_name
        ]

    return step


def _where_equals(name: str, literal: str) -> Step:
    def step(nodes: list[Node]) -> list[Node]:
        return [(v, h) for v, h in nodes if isinstance(v, dict) and v.get(name) == literal]

    return step


def _compile_steps(branch: str, resource_type: str) -> list[Step] | None:
    cast_tail = None
    match = _TRAILING_AS.match(branch)
    if match:
        branch, cast_tail = strip_parens(match.group(1)), match.group(2)
    segments = split_top_level(branch, ".")
    if not segments or segments[0] != resource_type:
        return None
    steps: list[Step] = []
    for segment in segments[1:]:
        if _IDENT.match(segment):
            steps.append(_navigate(segment))
        elif m := _RESOLVE_IS.match(segment):
            steps.append(_resolve_is(m.group(1)))
        elif m := _CAST.match(segment):
            steps.append(_cast(m.group(1)))
        elif m := _WHERE_EQ.match(segment):
            steps.append(_where_equals(m.group(1), m.group(2)))
        elif m := _EXTENSION.match(segment):
            steps += [_navigate("extension"), _where_equals("url", m.group(1))]
        else:
            return None
    if cast_tail:
        steps.append(_cast(cast_tail))
    return steps


def _run_steps(steps: list[Step]) -> Extractor:
    def extract(resource: dict[str, Any]) -> list[Any]:
        nodes: list[Node] = [(resource, None)]
        for step in steps:
            nodes = step(nodes)
            if not nodes:
                return []
        return [v for v, _ in nodes]

    return extract


def _fhirpath_fallback(branch: str) -> Extractor:
    compiled = fhirpath_compile(branch, fhirpath_models["r4"])

    def extract(resource: dict[str, Any]) -> list[Any]:
        try:
            return list(compiled(resource, None))
        except Exception:  # a malformed resource never reaches here; be safe on odd shapes
            return []

    return extract


def compile_expression(expression: str, resource_type: str) -> Extractor | None:
    """Compile the branches of `expression` that apply to `resource_type`; None if none do."""
    extractors: list[Extractor] = []
    for branch in branches_for_type(expression, resource_type):
        steps = _compile_steps(branch, resource_type)
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
    by rooting each union branch at the type name; it then applies to any dict node."""
    rooted = " | ".join(f"{resource_type}.{branch}" for branch in split_top_level(expression))
    extractor = compile_expression(rooted, resource_type)
    return extractor if extractor is not None else (lambda node: [])
