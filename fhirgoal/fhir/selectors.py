"""Fast evaluation of the FHIRPath selectors that decide which profiles apply to a resource.

Every write of a type is tested against every selector of that type's profiles, so they must be
cheap: fhirpathpy takes about 250 us per selector, which made profile selection alone cost 1 ms per
Observation. Selectors are written in a small subset of FHIRPath
(https://hl7.org/fhirpath/N1/) that is evaluated natively here:

    term ( ' or ' term )*
    term := path '.where(' condition ( ' and ' condition )* ').exists()'  |  path '.exists()'
    condition := name " = '" literal "'"  |  name " in ('" literal "' | '" literal "' ...)"
    path := name ( '.' name )*

Anything else falls back to fhirpathpy, so a selector is never wrong, only slower.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from fhirpathpy import compile as fhirpath_compile
from fhirpathpy.models import models as fhirpath_models

from fhirgoal.fhir.search.paths import split_top_level

Selector = Callable[[dict[str, Any]], bool]

_PATH = r"[A-Za-z][A-Za-z0-9]*(?:\.[A-Za-z][A-Za-z0-9]*)*"
_WHERE = re.compile(rf"^({_PATH})\.where\((.*)\)\.exists\(\)$")
_EXISTS = re.compile(rf"^({_PATH})\.exists\(\)$")
_EQUALS = re.compile(r"^([A-Za-z][A-Za-z0-9]*) = '([^']*)'$")
_IN = re.compile(r"^([A-Za-z][A-Za-z0-9]*) in \(('[^']*'(?: \| '[^']*')*)\)$")


def values(node: Any, path: list[str]) -> list[Any]:
    """FHIRPath navigation: every value at `path` below `node`, arrays flattened."""
    current = [node]
    for name in path:
        found: list[Any] = []
        for item in current:
            if isinstance(item, dict) and name in item:
                value = item[name]
                found.extend(value if isinstance(value, list) else [value])
        current = found
    return current


def _condition(text: str) -> Callable[[Any], bool] | None:
    equals = _EQUALS.match(text)
    if equals:
        name, literal = equals.groups()
        return lambda node: isinstance(node, dict) and node.get(name) == literal
    within = _IN.match(text)
    if within:
        name = within.group(1)
        allowed = frozenset(part.strip().strip("'") for part in within.group(2).split("|"))
        return lambda node: isinstance(node, dict) and node.get(name) in allowed
    return None


def _term(text: str) -> Selector | None:
    where = _WHERE.match(text)
    if where:
        path = where.group(1).split(".")
        conditions = [_condition(c.strip()) for c in split_top_level(where.group(2), " and ")]
        if any(c is None for c in conditions):
            return None
        checks = [c for c in conditions if c is not None]
        return lambda resource: any(
            all(check(node) for check in checks) for node in values(resource, path)
        )
    exists = _EXISTS.match(text)
    if exists:
        path = exists.group(1).split(".")
        return lambda resource: bool(values(resource, path))
    return None


def compile_selector(expression: str) -> Selector:
    """A predicate for `expression`: native for the subset above, fhirpathpy otherwise."""
    terms = [_term(t.strip()) for t in split_top_level(expression, " or ")]
    if terms and all(t is not None for t in terms):
        natives = [t for t in terms if t is not None]
        return lambda resource: any(term(resource) for term in natives)
    evaluate = fhirpath_compile(expression, fhirpath_models["r4"])
    return lambda resource: bool(evaluate(resource, {"resource": resource}) == [True])
