"""Code translation for mappings, from FHIR ConceptMaps: https://hl7.org/fhir/R4/conceptmap.html

A mapping folder keeps its code tables as R4 ConceptMap resources (`conceptmaps/*.json`), so the
tables are FHIR data that any terminology tool can read, and the rules translate with them as R4's
`$translate` does (https://hl7.org/fhir/R4/conceptmap-operation-translate.html):

- forward (`$translate` in a rule): a Coding whose system is a group's `source` and whose code is
  one of its `element.code`s becomes the element's first `target` whose `equivalence` is not
  `unmatched` or `disjoint` (those say there is no translation);
- reverse (`$translateBack`, R4's `reverse=true`): a Coding whose system is a group's `target`
  and whose code is a target code becomes the element's source code, but only through targets
  marked `equal` or `equivalent`. A many-to-one or `wider` map cannot be inverted without
  guessing which source was meant, so it is not: the rule gets no translation and says so.

`group.unmapped` (a fallback for codes the map does not list) is refused when the map is loaded:
every code a mapping translates is listed, so a code it does not know is an error, not a default.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

# Equivalences (R4 ConceptMap.group.element.target.equivalence) that give no translation.
_NO_TRANSLATION = frozenset({"unmatched", "disjoint"})
# The only ones a reverse translation may follow: the source is then the one concept meant.
_REVERSIBLE = frozenset({"equal", "equivalent"})


class ConceptMapInvalid(ValueError):
    """A ConceptMap file that cannot be used; the message says which element is wrong."""

    def __init__(self, element: str, message: str) -> None:
        super().__init__(message)
        self.element = element
        self.message = message


@dataclass(frozen=True)
class Translation:
    source_system: str
    source_code: str
    source_display: str | None
    target_system: str
    target_code: str
    target_display: str | None
    equivalence: str


def _text(value: Any, element: str, required: bool = True) -> str | None:
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise ConceptMapInvalid(element, f"{element} must be a non-empty string")
    return value


class ConceptMap:
    """One ConceptMap's translations, looked up by (system, code) either way."""

    def __init__(self, resource: dict[str, Any]) -> None:
        if resource.get("resourceType") != "ConceptMap":
            raise ConceptMapInvalid("resourceType", "not a ConceptMap")
        self.id = str(_text(resource.get("id"), "ConceptMap.id"))
        self.url = _text(resource.get("url"), "ConceptMap.url", required=False)
        self.resource = resource
        forward: dict[tuple[str, str], Translation] = {}
        reverse: dict[tuple[str, str], Translation] = {}
        groups = resource.get("group")
        if not isinstance(groups, list) or not groups:
            raise ConceptMapInvalid("ConceptMap.group", "a ConceptMap needs at least one group")
        for g, group in enumerate(groups):
            where = f"ConceptMap.group[{g}]"
            if "unmapped" in group:
                raise ConceptMapInvalid(
                    f"{where}.unmapped", "group.unmapped is not supported: list every code"
                )
            source = str(_text(group.get("source"), f"{where}.source"))
            target = str(_text(group.get("target"), f"{where}.target"))
            for e, element in enumerate(group.get("element") or []):
                at = f"{where}.element[{e}]"
                code = str(_text(element.get("code"), f"{at}.code"))
                for t, mapped in enumerate(element.get("target") or []):
                    equivalence = str(_text(mapped.get("equivalence"), f"{at}.target[{t}]"))
                    if equivalence in _NO_TRANSLATION:
                        continue
                    translation = Translation(
                        source,
                        code,
                        element.get("display"),
                        target,
                        str(_text(mapped.get("code"), f"{at}.target[{t}].code")),
                        mapped.get("display"),
                        equivalence,
                    )
                    forward.setdefault((source, code), translation)
                    if equivalence in _REVERSIBLE:
                        key = (target, translation.target_code)
                        if key in reverse and reverse[key].source_code != code:
                            raise ConceptMapInvalid(
                                f"{at}.target[{t}]",
                                f"{target}|{translation.target_code} is the equivalent of two "
                                f"codes ({reverse[key].source_code}, {code}): not reversible",
                            )
                        reverse[key] = translation
        self._forward = forward
        self._reverse = reverse

    def translate(self, codings: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
        """The target Coding of the first coding the map translates, or None."""
        for coding in codings:
            found = self._forward.get((coding.get("system"), coding.get("code")))  # type: ignore[arg-type]
            if found is not None:
                return _coding(found.target_system, found.target_code, found.target_display)
        return None

    def translate_back(self, codings: Iterable[dict[str, Any]]) -> dict[str, Any] | None:
        """The source Coding of the first coding the map translates back (equivalents only)."""
        for coding in codings:
            found = self._reverse.get((coding.get("system"), coding.get("code")))  # type: ignore[arg-type]
            if found is not None:
                return _coding(found.source_system, found.source_code, found.source_display)
        return None


def _coding(system: str, code: str, display: str | None) -> dict[str, Any]:
    coding = {"system": system, "code": code}
    if display:
        coding["display"] = display
    return coding


def codings_of(value: Any) -> list[dict[str, Any]]:
    """The Codings a rule passed: a Coding, a CodeableConcept, or a list of either."""
    items = value if isinstance(value, list) else [value]
    found: list[dict[str, Any]] = []
    for item in items:
        if not isinstance(item, dict):
            continue
        if isinstance(item.get("coding"), list):
            found.extend(c for c in item["coding"] if isinstance(c, dict))
        elif "code" in item:
            found.append(item)
    return found
