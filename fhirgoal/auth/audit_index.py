"""The search index of the server's own AuditEvents and Provenances, without FHIRPath.

The index format is the search registry's (fhir/search/registry.py, index.py; search parameters
from https://hl7.org/fhir/R4/auditevent.html#search and provenance.html#search). Evaluating the
27 AuditEvent search expressions with fhirpathpy costs ~165 us per event, more than the rest of an
audited read. Almost all of them are plain paths (`AuditEvent.agent.network.address`), which a
dict walk evaluates identically; this module swaps in such walkers (and the `where(resolve() is
Patient)` unions as prefix filters) and keeps the registry's own code for everything else, so
the entries are produced by the same normalization. `fast_table` checks itself against the
registry on a sample and falls back to the registry's table if they ever differ.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import structlog

from fhirgoal.fhir.search.registry import SearchRegistry, TypeParams
from fhirgoal.fhir.selectors import values

log = structlog.get_logger(__name__)

Extractor = Callable[[dict[str, Any]], list[Any]]
_PLAIN = re.compile(r"^(?:[A-Z][A-Za-z]+)(?:\.[a-z][A-Za-z]*)+$")
_PATIENT_UNION = re.compile(
    r"^(?:[A-Z][A-Za-z]+)((?:\.[a-z][A-Za-z]*)+)\.where\(resolve\(\) is Patient\)$"
)


def _walker(steps: list[str]) -> Extractor:
    return lambda resource: values(resource, steps)


def _patient_refs(walkers: list[Extractor]) -> Extractor:
    def extract(resource: dict[str, Any]) -> list[Any]:
        found: list[Any] = []
        for walk in walkers:
            for item in walk(resource):
                reference = item.get("reference", "") if isinstance(item, dict) else ""
                if reference.startswith("Patient/") and item not in found:
                    found.append(item)
        return found

    return extract


def _fast(expression: str, resource_type: str) -> Extractor | None:
    parts = [p.strip() for p in expression.split("|")]
    if len(parts) == 1 and _PLAIN.match(parts[0]):
        head, *steps = parts[0].split(".")
        return _walker(steps) if head in (resource_type, "Resource") else None
    walkers = []
    for part in parts:
        m = _PATIENT_UNION.match(part)
        if not m or not part.startswith(resource_type + "."):
            return None
        walkers.append(_walker(m.group(1).strip(".").split(".")))
    return _patient_refs(walkers)


def fast_table(registry: SearchRegistry, resource_type: str, sample: dict[str, Any]) -> TypeParams:
    """The registry's table for `resource_type` with plain-path extractors swapped in."""
    table = registry.for_type(resource_type)
    params = {}
    for code, param in table.params.items():
        fast = _fast(param.expression, resource_type) if param.extractor is not None else None
        params[code] = replace(param, extractor=fast) if fast is not None else param
    quick = replace(table, params=params)
    if quick.index_fields(sample) != table.index_fields(sample):
        log.warning("fast audit index differs from the registry's; using the registry")
        return table
    return quick
