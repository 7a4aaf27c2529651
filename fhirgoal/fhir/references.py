"""Rewriting the links of a resource: where a transaction's placeholders and conditional
references can stand.

https://hl7.org/fhir/R4/bundle.html#references and https://hl7.org/fhir/R4/http.html#trules :
when a transaction assigns ids, the server "SHALL replace all matching links in the bundle,
whether they are found in the resource ids, resource references, elements of type uri, url, oid,
uuid, and <a href="" > & <img src="" > in the narrative. Elements of type canonical are not
replaced." Conditional references (`Patient?identifier=...`) stand in `Reference.reference` only.

Where those elements are is read from the R4 structure tables (conformance/structure.json, through
fhir/structure.py), so nested elements, contained resources and extensions (`valueReference`,
`valueUri`) are found for every type without naming any. A resource of a type the tables do not
describe is walked for `reference` keys alone.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from enum import Enum
from typing import Any

from fhirgoal.fhir.structure import StructureChecker


class LinkKind(Enum):
    REFERENCE = "reference"  # Reference.reference
    URI = "uri"  # an element of type uri, url, oid or uuid
    NARRATIVE = "narrative"  # an href or src attribute in Narrative.div


# A new value for a link, or None to keep it (may raise FhirError: an unresolvable link).
Replace = Callable[[str, LinkKind], str | None]

LINK_TYPES = frozenset({"uri", "url", "oid", "uuid"})  # canonical is deliberately absent
_NARRATIVE_LINK = re.compile(r'(\b(?:href|src)\s*=\s*)(["\'])(.*?)\2', re.IGNORECASE | re.DOTALL)


class LinkRewriter:
    def __init__(self, structure: StructureChecker) -> None:
        self.structure = structure

    def rewrite(self, resource: dict[str, Any], replace: Replace) -> dict[str, Any]:
        """A copy of `resource` (shared where nothing changed) with its links replaced."""
        rt = resource.get("resourceType")
        if isinstance(rt, str) and rt in self.structure.structure:
            return self._walk(resource, rt, "", replace)
        return _references_only(resource, replace)

    def _walk(
        self, node: dict[str, Any], type_name: str, parent: str, replace: Replace
    ) -> dict[str, Any]:
        children = self.structure.table(type_name).children.get(parent, {})
        out: dict[str, Any] = {}
        for key, value in node.items():
            child = children.get(key)
            if child is None:  # resourceType, `_name` parts, unknown keys (validation's concern)
                out[key] = value
                continue
            kind: LinkKind | None = None
            if type_name == "Reference" and child.path == "reference":
                kind = LinkKind.REFERENCE
            elif child.type_code in LINK_TYPES:
                kind = LinkKind.URI
            elif type_name == "Narrative" and child.path == "div":
                kind = LinkKind.NARRATIVE
            if isinstance(value, list):
                out[key] = [self._value(child, item, type_name, kind, replace) for item in value]
            else:
                out[key] = self._value(child, value, type_name, kind, replace)
        return out

    def _value(
        self, child: Any, value: Any, type_name: str, kind: LinkKind | None, replace: Replace
    ) -> Any:
        if isinstance(value, str):
            if kind is LinkKind.NARRATIVE:
                return _narrative(value, replace)
            if kind is not None:
                new = replace(value, kind)
                return value if new is None else new
            return value
        if isinstance(value, dict):
            scope = self.structure.inner_scope(child, value, type_name)
            if scope is not None:
                inner, parent, _ = scope
                return self._walk(value, inner, parent, replace)
            if child.type_code == "Resource":  # a contained resource of a type not described
                return _references_only(value, replace)
        return value


def _narrative(div: str, replace: Replace) -> str:
    def swap(match: re.Match[str]) -> str:
        new = replace(match.group(3), LinkKind.NARRATIVE)
        if new is None:
            return match.group(0)
        return f"{match.group(1)}{match.group(2)}{new}{match.group(2)}"

    return _NARRATIVE_LINK.sub(swap, div)


def _references_only(node: Any, replace: Replace) -> Any:
    if isinstance(node, list):
        return [_references_only(item, replace) for item in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "reference" and isinstance(value, str):
            new = replace(value, LinkKind.REFERENCE)
            out[key] = value if new is None else new
        else:
            out[key] = _references_only(value, replace)
    return out
