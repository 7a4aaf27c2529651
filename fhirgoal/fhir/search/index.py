"""Write-time search index: SearchParameter values normalized into indexable strings.

https://hl7.org/fhir/R4/search.html#token , #reference , #uri . Each supported parameter's values
go into one of a few multikey arrays of the stored document, so one MongoDB index per array serves
every parameter of that kind and a custom SearchParameter needs no new index:

  tok  token and uri values:   "code#1234" (any system), "code|http://loinc.org|1234",
                                "code||1234" (explicitly no system), "code@http://loinc.org" (system only)
  ref  reference values:        "subject=Patient/123", or the absolute/canonical URL as written
  comp patient compartment:     "Patient/123" (https://hl7.org/fhir/R4/compartmentdefinition-patient.html)
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from fhirgoal.fhir.search.paths import reference_type

_CONTACT_SYSTEMS = {"phone", "fax", "email", "pager", "url", "sms", "other"}


def token_pairs(value: Any) -> Iterable[tuple[str, str]]:
    """(system, code) pairs of a token-typed value: Coding, CodeableConcept, Identifier, primitive."""
    if isinstance(value, bool):
        yield "", "true" if value else "false"
    elif isinstance(value, str):
        yield "", value
    elif isinstance(value, dict):
        if "coding" in value:
            for coding in value["coding"]:
                yield from token_pairs(coding)
        elif "code" in value and isinstance(value["code"], str):
            yield value.get("system", ""), value["code"]
        elif "value" in value and isinstance(value["value"], str):
            system = value.get("system", "")
            # ContactPoint.system is a kind of contact ("phone"), not a URI: match on value only.
            yield ("" if system in _CONTACT_SYSTEMS else system), value["value"]


def token_entries(code: str, values: Iterable[Any]) -> set[str]:
    entries: set[str] = set()
    for value in values:
        for system, token in token_pairs(value):
            entries.add(f"{code}#{token}")
            entries.add(f"{code}|{system}|{token}")
            if system:
                entries.add(f"{code}@{system}")
    return entries


def uri_entries(code: str, values: Iterable[Any]) -> set[str]:
    return {f"{code}#{v}" for v in values if isinstance(v, str)}


def local_reference(reference: str) -> str | None:
    """'Patient/1/_history/2' -> 'Patient/1'; contained ('#x') and URNs have no local form."""
    if reference.startswith(("#", "urn:")) or "://" in reference:
        return None
    parts = reference.split("/")
    if len(parts) >= 2 and parts[0][:1].isupper():
        return f"{parts[0]}/{parts[1]}"
    return None


def reference_entries(code: str, values: Iterable[Any]) -> set[str]:
    entries: set[str] = set()
    for value in values:
        if isinstance(value, dict):
            target = value.get("reference")
            if not isinstance(target, str):
                continue
            local = local_reference(target)
            entries.add(f"{code}={local or target}")
        elif isinstance(
            value, str
        ):  # canonical / uri references (e.g. QuestionnaireResponse.questionnaire)
            entries.add(f"{code}={value}")
    return entries


def compartment_members(refs: set[str], params: list[str]) -> list[str]:
    """Patients whose compartment holds the resource, from its indexed reference entries."""
    members = set()
    for param in params:
        prefix = f"{param}="
        for entry in refs:
            if entry.startswith(prefix):
                target = entry[len(prefix) :]
                if reference_type(target) == "Patient":
                    members.add(target)
    return sorted(members)
