"""Write-time search index: SearchParameter values normalized into indexable strings.

Field by field (each has one multikey index; keys.py explains the orderings):
  str        "name|eric" (folded, for the default starts-with match) and "name=Éric" (:exact)
  dtlo/dthi  "date|2026-03-01T00:00:00.000000Z": the low and high ends of each date range, and
  dt         [{p, lo, hi}]: the same ranges paired, for the exact check after the index narrows
  num        "value-quantity|<number key>", with "|system|code|" and "||unit|" variants
  srt        {param: smallest key}: what `_sort` orders by
  strx/numx  unindexed copies of `str` / `num`: a bare range on the indexed field lets any index
             drive the query, the same range as $elemMatch on the copy makes it exact
  miss       the supported parameters a resource has no value for (`:missing=true`; `false` is a
             range over the parameter's own keys)

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
from decimal import Decimal
from typing import Any

from fhirgoal.fhir.errors import FhirError
from fhirgoal.fhir.search.dates import parse_range
from fhirgoal.fhir.search.keys import NEG_INFINITY, POS_INFINITY, fold, instant_key, number_key
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
        entries |= {f"{code}{key}" for key in _token_keys(value)}
        entries |= {f"{code}@{system}" for system, _ in token_pairs(value) if system}
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


# ---- string, date, number, quantity ----------------------------------------------------------
_NAME_PARTS = ("text", "family", "given", "prefix", "suffix")
_ADDRESS_PARTS = ("text", "line", "city", "district", "state", "postalCode", "country")


def string_values(value: Any) -> Iterable[str]:
    """The strings a string parameter matches: HumanName and Address parts, or the string itself."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        parts = _NAME_PARTS if ("family" in value or "given" in value) else _ADDRESS_PARTS
        for part in parts:
            item = value.get(part)
            for text in item if isinstance(item, list) else [item]:
                if isinstance(text, str):
                    yield text


def string_entries(code: str, values: Iterable[Any]) -> set[str]:
    """'code|folded' for the default starts-with match, 'code=text' for :exact."""
    entries: set[str] = set()
    for value in values:
        for text in string_values(value):
            entries.add(f"{code}|{fold(text)}")
            entries.add(f"{code}={text}")
    return entries


def date_ranges(value: Any) -> Iterable[tuple[str, str]]:
    """[low, high) instant keys of a date, dateTime, instant, Period or Timing value."""
    if isinstance(value, str):
        try:
            lo, hi = parse_range(value)
        except FhirError:
            return
        yield instant_key(lo), instant_key(hi)
    elif isinstance(value, dict):
        if "start" in value or "end" in value:  # Period: an open end is unbounded
            yield (
                _bound(value.get("start"), 0, NEG_INFINITY),
                _bound(value.get("end"), 1, POS_INFINITY),
            )
        for event in value.get("event", []):  # Timing
            yield from date_ranges(event)


def _bound(text: Any, side: int, default: str) -> str:
    if not isinstance(text, str):
        return default
    try:
        return instant_key(parse_range(text)[side])
    except FhirError:
        return default


def date_entries(
    code: str, values: Iterable[Any]
) -> tuple[set[str], set[str], list[dict[str, str]]]:
    lows, highs, ranges = set(), set(), []
    for value in values:
        for lo, hi in date_ranges(value):
            lows.add(f"{code}|{lo}")
            highs.add(f"{code}|{hi}")
            ranges.append({"p": code, "lo": lo, "hi": hi})
    return lows, highs, ranges


def number_entries(code: str, values: Iterable[Any]) -> set[str]:
    return {
        f"{code}|#{number_key(v)}"
        for v in values
        if isinstance(v, int | float | Decimal) and not isinstance(v, bool)
    }


def quantity_entries(code: str, values: Iterable[Any]) -> set[str]:
    """'code|#n', 'code|system|unitcode|#n' and 'code||unit|#n' per Quantity (n = number key).

    The '#' keeps number keys apart from system URLs in range scans ('#' sorts before them).
    """
    return {f"{code}|{key}" for value in values for key in _quantity_keys(value)}


def first_sort_key(param_type: str, values: list[Any]) -> str | None:
    """The value a resource sorts by for one parameter: its smallest key (search.html#sort)."""
    keys: list[str] = []
    for value in values:
        if param_type == "string":
            keys += [fold(text) for text in string_values(value)]
        elif param_type == "date":
            keys += [lo for lo, _ in date_ranges(value)]
        elif param_type in ("number", "quantity"):
            number = value.get("value") if isinstance(value, dict) else value
            if isinstance(number, int | float | Decimal) and not isinstance(number, bool):
                keys.append(number_key(number))
        elif param_type == "token":
            keys += [code for _, code in token_pairs(value)]
        elif param_type == "reference":
            target = value.get("reference") if isinstance(value, dict) else value
            if isinstance(target, str):
                keys.append(local_reference(target) or target)
        elif isinstance(value, str):
            keys.append(value)
    return min(keys) if keys else None


def _token_keys(value: Any) -> set[str]:
    keys = set()
    for system, code in token_pairs(value):
        keys.add(f"#{code}")
        keys.add(f"|{system}|{code}")
    return keys


def _quantity_keys(value: Any) -> set[str]:
    if not isinstance(value, dict) or not isinstance(value.get("value"), int | float | Decimal):
        return set()
    number = "#" + number_key(value["value"])
    keys = {number}
    system, unit_code, unit = value.get("system", ""), value.get("code"), value.get("unit")
    if unit_code:
        keys.add(f"{system}|{unit_code}|{number}")
    for label in {unit_code, unit} - {None}:
        keys.add(f"|{label}|{number}")
    return keys


def composite_entries(
    code: str, nodes: Iterable[Any], components: tuple[tuple[str, Any], ...]
) -> tuple[set[str], set[str]]:
    """'code|<token key>$<second key>' per node, pairing values of the same node only
    (search.html#composite): token+token go to `tok`, token+quantity to `num`."""
    tok: set[str] = set()
    num: set[str] = set()
    (_, first), (second_type, second) = components
    for node in nodes:
        if not isinstance(node, dict):
            continue
        firsts = {k for value in first(node) for k in _token_keys(value)}
        if second_type == "quantity":
            seconds = {k for value in second(node) for k in _quantity_keys(value)}
            num |= {f"{code}|{a}${b}" for a in firsts for b in seconds}
        else:
            seconds = {k for value in second(node) for k in _token_keys(value)}
            tok |= {f"{code}|{a}${b}" for a in firsts for b in seconds}
    return tok, num


def token_text_entries(code: str, values: Iterable[Any]) -> set[str]:
    """'code:text|folded' for CodeableConcept.text and Coding.display (token :text)."""
    entries = set()
    for value in values:
        if not isinstance(value, dict):
            continue
        texts = [value.get("text"), value.get("display")]
        texts += [c.get("display") for c in value.get("coding", []) if isinstance(c, dict)]
        entries |= {f"{code}:text|{fold(t)}" for t in texts if isinstance(t, str)}
    return entries


def identifier_type_entries(code: str, values: Iterable[Any]) -> set[str]:
    """'code:of-type|type-system|type-code|value' for typed Identifiers (token :of-type)."""
    entries = set()
    for value in values:
        if isinstance(value, dict) and isinstance(value.get("value"), str):
            for coding in (value.get("type") or {}).get("coding", []):
                entries.add(
                    f"{code}:of-type|{coding.get('system', '')}|{coding.get('code', '')}|{value['value']}"
                )
    return entries


def reference_identifier_entries(code: str, values: Iterable[Any]) -> set[str]:
    """'code:identifier#value' and 'code:identifier|system|value' (reference :identifier)."""
    entries = set()
    for value in values:
        identifier = value.get("identifier") if isinstance(value, dict) else None
        if isinstance(identifier, dict) and isinstance(identifier.get("value"), str):
            entries.add(f"{code}:identifier#{identifier['value']}")
            entries.add(f"{code}:identifier|{identifier.get('system', '')}|{identifier['value']}")
    return entries
