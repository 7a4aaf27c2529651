"""Returning part of a resource: `_summary` and `_elements` (https://hl7.org/fhir/R4/search.html#summary,
#elements). Which elements are "summary" or mandatory comes from the R4 StructureDefinitions
(conformance/structure.json). A subsetted resource is tagged SUBSETTED so that no client mistakes
it for the whole resource (https://hl7.org/fhir/R4/resource.html#tag).
"""

from __future__ import annotations

from functools import cache
from typing import Any

from fhirgoal.fhir.search.paths import CHOICE_TYPE_SUFFIXES

SUBSETTED = {
    "system": "http://terminology.hl7.org/CodeSystem/v3-ObservationValue",
    "code": "SUBSETTED",
    "display": "subsetted",
}
_ALWAYS = {"resourceType", "id", "meta"}


def _element_name(key: str, known: set[str]) -> str:
    """JSON key -> element name: '_status' -> 'status', 'valueQuantity' -> 'value'."""
    key = key.lstrip("_")
    if key in known:
        return key
    for name in known:
        if key.startswith(name) and key[len(name) :] in CHOICE_TYPE_SUFFIXES:
            return name
    return key


class Subsetter:
    def __init__(self, structure: dict[str, Any]) -> None:
        self.structure = structure

    @cache  # noqa: B019 (one per conformance set, lives for the process)
    def top_level(
        self, resource_type: str
    ) -> tuple[frozenset[str], frozenset[str], frozenset[str]]:
        """(all, summary, mandatory) top-level element names of a type."""
        elements = self.structure.get(resource_type, {}).get("elements", {})
        top = {path: e for path, e in elements.items() if "." not in path}
        summary = {p for p, e in top.items() if e.get("summary")}
        mandatory = {p for p, e in top.items() if int(e.get("min", 0)) >= 1}
        return frozenset(top), frozenset(summary), frozenset(mandatory)

    def element(self, resource_type: str, name: str) -> str | None:
        """The top-level element `name` names on the type ('valueQuantity' -> 'value'), or None
        when the type has no such element."""
        known = self.top_level(resource_type)[0]
        found = _element_name(name, set(known))
        return found if found in known else None

    def subset(
        self, resource: dict[str, Any], summary: str | None, elements: list[str] | None
    ) -> dict[str, Any]:
        """The resource reduced per `_summary` (true|text|data) and/or `_elements`."""
        rt = resource["resourceType"]
        known, summary_elements, mandatory = self.top_level(rt)
        if summary == "data":
            kept = {k: v for k, v in resource.items() if k != "text"}
        else:
            if summary == "true":
                wanted = set(summary_elements) | mandatory
            elif summary == "text":
                wanted = {"text"} | mandatory
            else:
                wanted = set(elements or []) | mandatory
            kept = {
                k: v
                for k, v in resource.items()
                if k in _ALWAYS or _element_name(k, set(known)) in wanted
            }
        if len(kept) == len(resource):
            return resource
        meta = dict(kept.get("meta") or {})
        meta["tag"] = [*meta.get("tag", []), SUBSETTED]
        kept["meta"] = meta
        return kept
