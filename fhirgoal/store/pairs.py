"""Paired keys: a patient and a code or a date in ONE indexed key, for the searches clients send
most (https://hl7.org/fhir/R4/search.html#combining): a patient's Observations of one code
(`Observation?subject=Patient/1&code=http://loinc.org|8302-2`, the same in the compartment form
`Patient/1/Observation?code=...`, or under a patient-scoped SMART token) or since a date
(`...&date=ge2026-01-01`).

Each condition alone has an index (`comp`, `ref`, `tok`, `dthi`), but the patient's drives and
every one of the patient's resources is read to check the other (measured: 50 read for 10
matches). MongoDB cannot index two array fields in one compound index ("parallel arrays"), and an
index of their own would cost every write of the type the upkeep of one more multikey index
(measured on the embedded database: +12-25% database CPU per Observation create, for the same keys
in a `pair` field of their own). So the pairs are written as extra keys of the reference index
`ref`, marked apart from every reference key (a reference key starts with a parameter's code, a
pair with MARK, so no test on reference keys meets a pair):

    ^Patient/1|tok:code#8302-2               MARK, a compartment member | indexed field : its key
    ^Patient/1|dthi:date|2026-04-01T...      (the high end of each date range, `dthi`)

A resource has the key `^Patient/1|tok:code#8302-2` exactly when Patient/1 is in its patient
compartment and it has the key `code#8302-2`: the pair selects the same resources as the
compartment condition and the code condition together, and the shaped query sends it in their
place (the database then drives from it: planner.py). The keys of one member and one field keep
the order of the field's own keys (a shared prefix), so an equality, `$in` or bounded range on
`tok`/`dthi` is the same test on the pair once prefixed (a range, which on an array only
narrows, keeps the compartment condition beside it). Only the high end of a date is paired:
it serves `ge`, `gt` and `eb`; `lt`, `le`, `eq`, `sa` keep driving from the patient.

A search by a reference parameter (`subject=Patient/1`) names no compartment; the search engine
adds the compartment condition it implies when the parameter is one that puts the resource in the
compartment (fhir/search/engine.py), and that condition pairs.

The pairs are declared per type below (data): each costs every write of that type a few keys.
"""

from __future__ import annotations

from typing import Any

from fhirgoal.core import fields
from fhirgoal.store.planner import conditions_of

# The paired parameters of each type: tokens and dates whose searches name a patient most.
PAIRED: dict[str, tuple[str, ...]] = {
    "Observation": ("code", "date"),
    "Condition": ("code",),
    "DiagnosticReport": ("code", "date"),
}
MARK = fields.PAIR_MARK
# The indexed fields whose keys are paired, and the key space of parameter `c` in each (its keys
# lie between these bounds: fhir/search/index.py).
_SPACES = {
    fields.TOKEN: lambda c: (f"{c}#", f"{c}$"),
    fields.DATE_HIGH: lambda c: (f"{c}|", f"{c}}}"),
}
_RANGE_OPS = {"$gt", "$gte", "$lt", "$lte"}
# A search naming many codes would need as many pairs: past this, none.
MAX_PAIRED_KEYS = 200


def pair_keys(members: list[str], keys: list[tuple[str, str]]) -> list[str]:
    """`^member|field:key` for every compartment member and every (indexed field, key)."""
    return [f"{MARK}{member}|{field}:{key}" for member in members for field, key in keys]


def paired(resource_type: str, query: dict[str, Any]) -> dict[str, Any]:
    """`query` with a pair test in place of the compartment condition and the code or date
    condition it implies (same matches), or `query` itself when it has no such two."""
    others = PAIRED.get(resource_type)
    if not others:
        return query
    found = _pairing(others, conditions_of(query))
    if found is None:
        return query
    condition, implied = found
    kept = [{key: test} for n, (key, test) in enumerate(conditions_of(query)) if n not in implied]
    return {"$and": [condition, *kept]} if kept else condition


def _pairing(
    others: tuple[str, ...], conditions: list[tuple[str, Any]]
) -> tuple[dict[str, Any], set[int]] | None:
    """The pair test and the positions of the two conditions it implies, or None."""
    member: tuple[int, str] | None = None
    equal: list[tuple[int, str, list[str]]] = []
    ranges: list[tuple[int, str, dict[str, str]]] = []
    for n, (field, test) in enumerate(conditions):
        keys = _equal_keys(test)
        if field == fields.COMPARTMENT and keys is not None and len(keys) == 1:
            member = member or (n, keys[0])
        elif field not in _SPACES:
            continue
        elif keys is not None and all(_in_space(field, key, others) for key in keys):
            equal.append((n, field, keys))
        elif _is_bounded_range(test) and all(_in_space(field, b, others) for b in test.values()):
            ranges.append((n, field, test))
    if member is None:
        return None
    at, patient = member
    if equal:
        n, field, keys = min(equal, key=lambda item: len(item[2]))
        if len(keys) <= MAX_PAIRED_KEYS:
            keyed = sorted(pair_keys([patient], [(field, k) for k in keys]))
            return {fields.REFERENCE: {"$in": keyed}}, {at, n}
    if ranges:
        # A bare range on an array only narrows (its bounds may hold for two different keys, one
        # of another patient's pair): the compartment condition stays, and the date's exact
        # check (`dt`, fhir/search/conditions.py) beside it.
        n, field, test = ranges[0]
        prefix = f"{MARK}{patient}|{field}:"
        return {fields.REFERENCE: {op: prefix + bound for op, bound in test.items()}}, {n}
    return None


def _in_space(field: str, key: str, others: tuple[str, ...]) -> bool:
    return any(low <= key <= high for low, high in (_SPACES[field](c) for c in others))


def _equal_keys(test: Any) -> list[str] | None:
    if isinstance(test, str):
        return [test]
    if isinstance(test, dict) and set(test) == {"$in"} and test["$in"]:
        values = test["$in"]
        return values if all(isinstance(v, str) for v in values) else None
    return None


def _is_bounded_range(test: Any) -> bool:
    """A range with a low and a high bound, both strings (so both can be prefixed)."""
    if not isinstance(test, dict):
        return False
    ops = set(test)
    return (
        ops <= _RANGE_OPS
        and len(ops & {"$gt", "$gte"}) == 1
        and len(ops & {"$lt", "$lte"}) == 1
        and all(isinstance(v, str) for v in test.values())
    )
