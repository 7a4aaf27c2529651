"""FHIRPath invariants (ElementDefinition.constraint) of the R4 resource definitions.

https://hl7.org/fhir/R4/conformance-rules.html#constraints . Each error-severity constraint of a
resource's StructureDefinition is compiled once with fhirpathpy; an element-level constraint on path
`p` is evaluated as `p.all(<expression>)` from the resource root, which is its meaning for every
occurrence. `ele-1` and `ext-1` are left to the structural check (they state "has a value or
children" and "extension or value", which it enforces faster). The dom-2..dom-5 rules concern
contained resources and use descendants(), so they run only when `contained` is present.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

import structlog
from fhirpathpy import compile as fhirpath_compile  # type: ignore[import-untyped]
from fhirpathpy.models import models as fhirpath_models  # type: ignore[import-untyped]

from fhirgoal.fhir.errors import Issue

log = structlog.get_logger(__name__)
_SKIPPED = {"ele-1", "ext-1"}


@dataclass(frozen=True)
class Invariant:
    key: str
    human: str
    path: str
    needs: str | None  # top-level element that must be present for the rule to matter
    evaluate: Callable[[dict[str, Any]], list[Any]]


class InvariantChecker:
    def __init__(self, structure: dict[str, Any]) -> None:
        self.structure = structure

    @cache  # noqa: B019 (one checker per conformance set, lives for the process)
    def invariants(self, type_name: str) -> tuple[Invariant, ...]:
        compiled = []
        for constraint in self.structure.get(type_name, {}).get("constraints", []):
            if constraint.get("severity") != "error" or constraint["key"] in _SKIPPED:
                continue
            path, expression = constraint.get("path", ""), constraint["expression"]
            text = f"{path}.all({expression})" if path else expression
            try:
                evaluate = fhirpath_compile(text, fhirpath_models["r4"])
            except Exception as exc:  # an expression fhirpathpy cannot parse is reported, not fatal
                log.warning("invariant not compiled", key=constraint["key"], error=str(exc))
                continue
            needs = path.split(".")[0] if path else ("contained" if "contained" in expression else None)
            compiled.append(
                Invariant(constraint["key"], constraint.get("human", ""), path, needs, evaluate)
            )
        return tuple(compiled)

    def check(self, resource: dict[str, Any]) -> list[Issue]:
        rt = resource["resourceType"]
        issues = []
        for inv in self.invariants(rt):
            if inv.needs and not _present(resource, inv.needs):
                continue
            try:
                result = inv.evaluate(resource)
            except Exception as exc:
                log.warning("invariant failed to evaluate", key=inv.key, error=str(exc))
                continue
            if result == [False]:
                where = f"{rt}.{inv.path}" if inv.path else rt
                issues.append(Issue(f"{inv.key}: {inv.human}", where, "invariant"))
        return issues


def _present(resource: dict[str, Any], name: str) -> bool:
    if name in resource or f"_{name}" in resource:
        return True
    # choice elements: value -> valueQuantity
    return any(k.startswith(name) and k[len(name) : len(name) + 1].isupper() for k in resource)
