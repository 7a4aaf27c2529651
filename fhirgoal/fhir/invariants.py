"""FHIRPath invariants (ElementDefinition.constraint) of the R4 resource definitions.

https://hl7.org/fhir/R4/conformance-rules.html#constraints . Each error-severity constraint of a
resource's StructureDefinition is compiled once (fhirpath_native.py: natively where it can be,
else with fhirpathpy); an element-level constraint on path `p` is evaluated from the resource
root as "no occurrence of `p` makes it false"; a rule is broken when it evaluates to false
(empty, its value when it cannot be decided, is not false). `ele-1` and `ext-1` are left to the
structural check (they state "has a value or children" and "extension or value", which it
enforces faster). A rule runs only when the elements it can fail on are present (see
`_needed_elements`). Each expression is parsed strictly first (fhirpath_syntax.py): one that does
not parse is reported and skipped, never run as the shorter expression fhirpathpy would make of
it; tests/fhir/test_fhirpath_syntax.py checks that every vendored rule parses, so a regenerated
conformance/ with a broken rule fails there.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import structlog

from fhirgoal.core.errors import Issue
from fhirgoal.fhir.fhirpath_native import compile_expression
from fhirgoal.fhir.search.paths import (
    CHOICE_TYPE_SUFFIXES,
    split_top_level,
    strip_parens,
    top_level_has_space,
)

log = structlog.get_logger(__name__)
_SKIPPED = {"ele-1", "ext-1"}
# `trace()` returns its input unchanged and prints to stdout in fhirpathpy: drop it.
_TRACE = re.compile(r"\.trace\('[^']*'(?:\s*,\s*[A-Za-z_.]+)?\)")


def _has_value(node: dict[str, Any]) -> bool:
    return any(k.startswith("value") and k[5:] in CHOICE_TYPE_SUFFIXES for k in node)


def _obs_7(resource: dict[str, Any], _: Any = None) -> list[bool]:
    """obs-7: `value.empty() or component.code.where(coding.intersect(%resource.code.coding)
    .exists()).empty()`. FHIRPath `intersect` compares Codings by equality of all their
    properties, which is dict equality here."""
    if not _has_value(resource):
        return [True]
    codings = (resource.get("code") or {}).get("coding") or []
    for component in resource.get("component") or []:
        for coding in (component.get("code") or {}).get("coding") or []:
            if coding in codings:
                return [False]
    return [True]


# Native versions of rules that fhirpathpy evaluates slowly on hot paths, keyed by invariant key
# and checked against fhirpathpy in tests/fhir/test_invariants_native.py. obs-7 runs on every
# Observation that has a value and components (every ORS/SRS result): 430 us in fhirpathpy.
NATIVE: dict[str, Callable[..., list[Any]]] = {"obs-7": _obs_7}


@dataclass(frozen=True)
class Invariant:
    key: str
    human: str
    path: str
    # Top-level elements that must all be present for the rule to matter, each as the set of
    # JSON keys that would carry it (see `_keys_of`).
    needs: tuple[frozenset[str], ...]
    evaluate: Callable[..., list[Any]]


class InvariantChecker:
    def __init__(self, structure: dict[str, Any]) -> None:
        self.structure = structure
        self._reported: set[str] = set()

    @cache  # noqa: B019 (one checker per conformance set, lives for the process)
    def invariants(self, type_name: str) -> tuple[Invariant, ...]:
        compiled = []
        for constraint in self.structure.get(type_name, {}).get("constraints", []):
            if constraint.get("severity") != "error" or constraint["key"] in _SKIPPED:
                continue
            path = constraint.get("path", "")
            expression = _TRACE.sub("", constraint["expression"])
            # Each occurrence of `path` must not evaluate the rule to false. Not `all()`, which
            # also fails an occurrence for which the rule is empty (`probability is decimal
            # implies ...` without a probability: ras-2), which a root rule never does either.
            text = f"{path}.where(({expression}) = false).empty()" if path else expression
            try:
                evaluate = NATIVE.get(constraint["key"]) or compile_expression(text)
            except ValueError as exc:  # reported, not fatal: the type's other rules still hold
                log.warning("invariant not compiled", key=constraint["key"], error=str(exc))
                continue
            needs = (path.split(".")[0],) if path else _needed_elements(expression)
            compiled.append(
                Invariant(
                    constraint["key"],
                    constraint.get("human", ""),
                    path,
                    tuple(_keys_of(name) for name in needs),
                    evaluate,
                )
            )
        return tuple(compiled)

    def check(self, resource: dict[str, Any]) -> list[Issue]:
        rt = resource["resourceType"]
        issues = []
        keys = resource.keys()
        for inv in self.invariants(rt):
            if not all(not keys.isdisjoint(carriers) for carriers in inv.needs):
                continue
            try:
                # %resource / %rootResource are the resource being validated (fhirpath.html#vars)
                result = inv.evaluate(resource, {"resource": resource, "rootResource": resource})
            except Exception as exc:
                if inv.key not in self._reported:  # once per rule, not once per request
                    self._reported.add(inv.key)
                    log.warning("invariant failed to evaluate", key=inv.key, error=str(exc)[:300])
                continue
            if result == [False]:
                where = f"{rt}.{inv.path}" if inv.path else rt
                issues.append(Issue(f"{inv.key}: {inv.human}", where, "invariant"))
        return issues


_ROOT_ELEMENT = re.compile(r"^[a-z][A-Za-z0-9]*$")


def _needed_elements(expression: str) -> tuple[str, ...]:
    """Elements without which a root invariant cannot fail.

    Most R4 invariants read `a.empty() or <condition>`: true whenever `a` is absent. A disjunct of
    the form `x...empty()` holds when `x` is missing, so the rule can only fail when every such `x`
    is present; evaluating it otherwise is wasted work (fhirpathpy takes 50-500 us per rule).
    The dom-2..dom-5 rules are all about contained resources.
    """
    if "contained" in expression and expression.lstrip().startswith("contained"):
        return ("contained",)
    needed = []
    for disjunct in split_top_level(expression, " or "):
        disjunct = strip_parens(disjunct)
        chain = split_top_level(disjunct, ".")
        if (
            len(chain) >= 2
            and chain[-1] == "empty()"
            and _ROOT_ELEMENT.match(chain[0])
            and not top_level_has_space(disjunct)
        ):
            needed.append(chain[0])
    return tuple(needed)


def _keys_of(name: str) -> frozenset[str]:
    """The JSON keys that carry element `name`: itself, its primitive's extensions (`_name`) and,
    for a choice element, each typed variant (value -> valueQuantity)."""
    return frozenset({name, f"_{name}", *(name + suffix for suffix in CHOICE_TYPE_SUFFIXES)})
