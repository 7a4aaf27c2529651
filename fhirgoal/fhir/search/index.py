"""Write-time search index: SearchParameter values normalized into indexable strings.

https://hl7.org/fhir/R4/search.html#token , #reference , #uri , #string , #date , #number ,
#quantity , #composite . Each supported parameter's values go into one of a few multikey arrays
of the stored document, so one MongoDB index per array serves every parameter of that kind and a
custom SearchParameter needs no new index.

An indexed key costs the database about as much CPU on every write as the rest of the document
(measured on the embedded SecantusDB: ~45 us per key), so each value gets ONE coarse, selective
indexed key, and its exact keys (systems, units, case) live in an unindexed copy of the array
(the field's name + "x"), which also holds the coarse keys. A query drives the index with the
coarse key and checks the exact key on the copy (conditions.py); every exact key implies its
coarse key, so the results are those of the exact keys alone. keys.py explains the orderings.

Indexed (one MongoDB index each, `ref` and `comp` compound with the id: core/fields.py
SEARCH_INDEXES):
  tok   token and uri values "code#1234" (any system); reference identifiers
        "performer:identifier#v"; composite pairs "P|#a$#b" of a composite that cannot drive
        from its first component's own token parameter (registry.py `driver`)
  ref   reference values "subject=Patient/123", or the absolute/canonical URL as written; none
        for a narrowing such as `patient` (registry.py `references_of`: `subject`'s keys hold it)
  comp  patient compartment "Patient/123" (https://hl7.org/fhir/R4/compartmentdefinition-patient.html)
  str   strings folded for the default starts-with match "name|eric"; token text "code:text|..."
  num   numbers and quantities "value-quantity|#<number key>" (any unit); composite pairs
        "P|#a$#<number key>" as for tok
  dtlo/dthi  "date|2026-03-01T00:00:00.000000Z": the low and high ends of each date range

Unindexed:
  refx  ref (a second condition on references is checked there while the first drives), but
        of its paired keys (store/pairs.py) only the dates', for a ranged pair's exact check
  tokx  tok, plus "code|http://loinc.org|1234", "code||1234" (explicitly no system),
        "code@http://loinc.org" (system only), "identifier:of-type|type-system|type-code|value",
        "performer:identifier|system|v", and composite token pairs with systems ("P||s|a$|t|b")
  strx  str, plus "name=Éric" (:exact)
  numx  num, plus "value-quantity|system|code|#n" and "value-quantity||unit|#n", and composite
        quantity pairs with systems and units
  dt    [{p, lo, hi}]: the date ranges paired, for the exact check after dtlo/dthi narrow
  srt   {param: smallest key}: what `_sort` orders by
  miss  the supported parameters a resource has no value for (`:missing=true`, a residual check:
        such a query needs another condition to drive it, or it scans; `false` is a range over
        the parameter's own keys)
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any, NamedTuple

from fhirgoal.core.errors import FhirError
from fhirgoal.fhir.search.dates import parse_range
from fhirgoal.fhir.search.keys import NEG_INFINITY, POS_INFINITY, fold, instant_key, number_key
from fhirgoal.fhir.search.paths import reference_type

_CONTACT_SYSTEMS = {"phone", "fax", "email", "pager", "url", "sms", "other"}


def token_pairs(value: Any) -> list[tuple[str, str]]:
    """(system, code) pairs of a token-typed value: Coding, CodeableConcept, Identifier, primitive.
    (A list, not a generator: this runs for every token value of every write.)"""
    if isinstance(value, bool):
        return [("", "true" if value else "false")]
    if isinstance(value, str):
        return [("", value)]
    if not isinstance(value, dict):
        return []
    if "coding" in value:
        return [pair for coding in value["coding"] for pair in token_pairs(coding)]
    code = value.get("code")
    if isinstance(code, str):
        return [(value.get("system", ""), code)]
    text = value.get("value")
    if isinstance(text, str):
        system = value.get("system", "")
        # ContactPoint.system is a kind of contact ("phone"), not a URI: match on value only.
        return [("" if system in _CONTACT_SYSTEMS else system, text)]
    return []


class Entries(NamedTuple):
    """The keys of one parameter: `coarse` go to the indexed field, `exact` to its copy only."""

    coarse: set[str]
    exact: set[str]


def token_entries(code: str, values: Iterable[Any]) -> Entries:
    coarse: set[str] = set()
    exact: set[str] = set()
    for value in values:
        for system, token in token_pairs(value):
            coarse.add(f"{code}#{token}")
            exact.add(f"{code}|{system}|{token}")
            if system:
                exact.add(f"{code}@{system}")
    return Entries(coarse, exact)


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


def string_entries(code: str, values: Iterable[Any]) -> Entries:
    """'code|folded' for the default starts-with match, 'code=text' for :exact."""
    coarse: set[str] = set()
    exact: set[str] = set()
    for value in values:
        for text in string_values(value):
            coarse.add(f"{code}|{fold(text)}")
            exact.add(f"{code}={text}")
    return Entries(coarse, exact)


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


def quantity_entries(code: str, values: Iterable[Any]) -> Entries:
    """'code|#n' (indexed), 'code|system|unitcode|#n' and 'code||unit|#n' per Quantity
    (n = number key). The '#' keeps number keys apart from system URLs in range scans ('#'
    sorts before them)."""
    coarse: set[str] = set()
    exact: set[str] = set()
    for value in values:
        number, units = _quantity_keys(value)
        if number:
            coarse.add(f"{code}|{number}")
            exact |= {f"{code}|{key}" for key in units}
    return Entries(coarse, exact)


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


def _quantity_keys(value: Any) -> tuple[str | None, set[str]]:
    """('#n', the unit keys 'system|code|#n' and '|unit|#n') of a Quantity; (None, ∅) if no value."""
    if not isinstance(value, dict) or not isinstance(value.get("value"), int | float | Decimal):
        return None, set()
    number = "#" + number_key(value["value"])
    units = set()
    system, unit_code, unit = value.get("system", ""), value.get("code"), value.get("unit")
    if unit_code:
        units.add(f"{system}|{unit_code}|{number}")
    for label in {unit_code, unit} - {None}:
        units.add(f"|{label}|{number}")
    return number, units


def composite_entries(
    code: str, nodes: Iterable[Any], components: tuple[tuple[str, Any], ...]
) -> tuple[Entries, Entries]:
    """'code|<first key>$<second key>' per node, pairing values of the same node only
    (search.html#composite): token+token keys for `tok`, token+quantity keys for `num`. The
    coarse pair is '#a$#b' (no systems, no units); `exact` holds every pair, coarse included."""
    tok, num = Entries(set(), set()), Entries(set(), set())
    (_, first), (second_type, second) = components
    pairs = num if second_type == "quantity" else tok
    for node in nodes:
        if not isinstance(node, dict):
            continue
        first_coarse: set[str] = set()
        first_all: set[str] = set()
        for value in first(node):
            for system, token in token_pairs(value):
                first_coarse.add(f"#{token}")
                first_all.add(f"|{system}|{token}")
        if not first_coarse:
            continue
        first_all |= first_coarse
        second_coarse: set[str] = set()
        second_all: set[str] = set()
        for value in second(node):
            if second_type == "quantity":
                number, units = _quantity_keys(value)
                if number:
                    second_coarse.add(number)
                    second_all |= units
            else:
                for system, token in token_pairs(value):
                    second_coarse.add(f"#{token}")
                    second_all.add(f"|{system}|{token}")
        second_all |= second_coarse
        pairs.coarse.update({f"{code}|{a}${b}" for a in first_coarse for b in second_coarse})
        pairs.exact.update({f"{code}|{a}${b}" for a in first_all for b in second_all})
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
    """'code:of-type|type-system|type-code|value' for typed Identifiers (token :of-type): exact
    keys, whose coarse key is the identifier's own 'code#value'."""
    entries = set()
    for value in values:
        if isinstance(value, dict) and isinstance(value.get("value"), str):
            for coding in (value.get("type") or {}).get("coding", []):
                entries.add(
                    f"{code}:of-type|{coding.get('system', '')}|{coding.get('code', '')}|{value['value']}"
                )
    return entries


def reference_identifier_entries(code: str, values: Iterable[Any]) -> Entries:
    """'code:identifier#value' and 'code:identifier|system|value' (reference :identifier)."""
    coarse, exact = set(), set()
    for value in values:
        identifier = value.get("identifier") if isinstance(value, dict) else None
        if isinstance(identifier, dict) and isinstance(identifier.get("value"), str):
            coarse.add(f"{code}:identifier#{identifier['value']}")
            exact.add(f"{code}:identifier|{identifier.get('system', '')}|{identifier['value']}")
    return Entries(coarse, exact)
