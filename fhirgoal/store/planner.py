"""Shaping search filters so that the database drives them from an index.

Search filters are conjunctions of conditions on a few multikey fields (fhir/search/index.py).
They are sent as one flat document, a key per field, with no top-level `$and`, ordered so that the
first key is the most selective condition an index can serve on its own (an id, a reference, a
token, ...): MongoDB's planner considers every key anyway, and the embedded SecantusDB drives a
query from the first key whose clause is an equality, a pure `$in` or a pure range, and scans the
collection for anything else (including any top-level `$and`/`$or`, and any `hint`, which it turns
into a full index scan: measured, see the closing notes of the search issue). A one-value `$in` is
sent as the equality, which SecantusDB checks for less. Further conditions on the same field are
merged as `$all: [{$elemMatch: ...}]`, negations as `$nin` / `$not`.

A field with an unindexed copy (`ref`/`refx`, `tok`/`tokx`, ...: the copy holds every
key of the field, and more) keeps ONE servable condition as its driver and moves the others to
the copy, where they match the same documents (the copy's extra keys have other formats than any
key a condition on the field names). A bare range moved there becomes an `$elemMatch`, which is
stricter; conditions.py only ever sends a bare range on such a field beside an exact check that
implies the `$elemMatch`, so no match is lost. Drivers are ordered equality / `$in` first, then
ranges, each by the field's rank below. A test on the paired keys of `ref` (store/pairs.py) is
always `ref`'s driver and comes right after an id test; its copy `refx` holds the date pairs
only, for the exact check of a ranged pair (an `$elemMatch`, which moves there as any other).
"""

from __future__ import annotations

from typing import Any

from fhirgoal.core import fields

# Lower is more selective.
_RANK = {
    "_id": 0,
    "ref": 1,
    "tok": 2,
    "str": 3,
    "num": 4,
    "dtlo": 5,
    "dthi": 5,
    "comp": 6,
    "lu": 8,
}
# A test on paired keys (store/pairs.py): after an id, before everything else, a range included.
_PAIR_RANK = 0.5
_RANGE_OPS = {"$gt", "$gte", "$lt", "$lte"}
_SCALAR_FIELDS = {"_id", "lu", "v", "del", "id"}
# Indexed fields and their unindexed copies (fhir/search/index.py).
COPIES = {"ref": "refx", "tok": "tokx", "str": "strx", "num": "numx"}


def conditions_of(query: dict[str, Any]) -> list[tuple[str, Any]]:
    """(key, test) pairs of a conjunction, nested `$and`s flattened."""
    pairs: list[tuple[str, Any]] = []
    for key, value in query.items():
        if key == "$and":
            for part in value:
                pairs += conditions_of(part)
        else:
            pairs.append((key, value))
    return pairs


def servable(field: str, test: Any) -> bool:
    """Can an index on `field` serve this test alone (equality, pure $in, pure range)?"""
    if field not in _RANK:
        return False
    if not isinstance(test, dict):
        return True
    return bool(test) and (set(test) == {"$in"} or set(test) <= _RANGE_OPS)


def is_pair_test(test: Any) -> bool:
    """Is this test on `ref` one on paired keys (store/pairs.py)? It is always `ref`'s driver:
    its copy `refx` holds no token pairs, and a date pair's range is checked there exactly."""
    if isinstance(test, str):
        return test.startswith(fields.PAIR_MARK)
    if isinstance(test, dict) and test and set(test) <= {"$in", *_RANGE_OPS}:
        values = [v for op, v in test.items() for v in (v if op == "$in" else [v])]
        return bool(values) and all(
            isinstance(v, str) and v.startswith(fields.PAIR_MARK) for v in values
        )
    return False


def _is_range(test: Any) -> bool:
    return isinstance(test, dict) and bool(test) and set(test) <= _RANGE_OPS


def _element_test(test: Any) -> dict[str, Any]:
    """A positive test on an array field, as the body of an $elemMatch."""
    if isinstance(test, dict):
        return test["$elemMatch"] if set(test) == {"$elemMatch"} else test
    return {"$eq": test}


def _as_equality(test: Any) -> Any:
    """A one-value `$in` of a string as that string: the same matches (on an array field either
    is "some element equals it"), and the embedded database's equality path costs it less per
    candidate than its `$in` path (a patient's page of 20 of 50 Observations, in-process: 3.26 ->
    3.03 ms)."""
    if isinstance(test, dict) and set(test) == {"$in"} and len(test["$in"]) == 1:
        (value,) = test["$in"]
        if isinstance(value, str):
            return value
    return test


def _merge(field: str, tests: list[Any]) -> tuple[Any, list[dict[str, Any]]]:
    """One test for a field, plus conditions that could not be merged into it."""
    if len(tests) == 1:
        return _as_equality(tests[0]), []
    leftovers: list[dict[str, Any]] = []
    if field in _SCALAR_FIELDS:
        merged: dict[str, Any] = {}
        for test in tests:
            if isinstance(test, dict) and not (merged.keys() & test.keys()):
                merged.update(test)
            else:
                leftovers.append({field: test})
        return merged, leftovers
    merged = {}
    positives: list[dict[str, Any]] = []
    for test in tests:
        if isinstance(test, dict) and set(test) == {"$nin"}:
            merged["$nin"] = sorted({*merged.get("$nin", []), *test["$nin"]})
        elif isinstance(test, dict) and set(test) == {"$not"} and "$not" not in merged:
            merged["$not"] = test["$not"]
        elif isinstance(test, dict) and ("$not" in test or "$nin" in test):
            leftovers.append({field: test})
        else:
            positives.append({"$elemMatch": _element_test(test)})
    if positives:
        merged["$all"] = positives
    return merged, leftovers


def shape(query: dict[str, Any]) -> dict[str, Any]:
    """The flat, index-first form of a conjunctive filter (same matches)."""
    by_field: dict[str, list[Any]] = {}
    logical: list[dict[str, Any]] = []
    for key, test in conditions_of(query):
        if key.startswith("$"):
            logical.append({key: test})
        else:
            by_field.setdefault(key, []).append(test)
    for field, copy in COPIES.items():
        tests = by_field.get(field, [])
        drivers = sorted(
            (i for i, test in enumerate(tests) if servable(field, test)),
            key=lambda i: (not is_pair_test(tests[i]), _is_range(tests[i])),
        )
        if len(tests) > 1 and drivers:
            by_field[field] = [tests[drivers[0]]]
            moved = [test for i, test in enumerate(tests) if i != drivers[0]]
            by_field[copy] = [*by_field.get(copy, []), *moved]

    def order(field: str) -> tuple[int, int, float]:
        tests = by_field[field]
        alone = len(tests) == 1 and servable(field, tests[0])
        if alone and is_pair_test(tests[0]):  # a patient and a code or date in one key
            return (0, 0, _PAIR_RANK)
        return (0 if alone else 1, int(alone and _is_range(tests[0])), _RANK.get(field, 99))

    flat: dict[str, Any] = {}
    for field in sorted(by_field, key=order):
        flat[field], leftovers = _merge(field, by_field[field])
        logical += leftovers
    if len(logical) == 1 and next(iter(logical[0])) not in flat:
        flat.update(logical[0])
    elif logical:
        flat["$and"] = logical
    return flat


# The search index fields, which a deletion's tombstone holds empty (store/repository.py).
_CLEARED_ON_DELETE = {"ref", "tok", "str", "num", "dtlo", "dthi", "comp"}


def excludes_tombstones(shaped: dict[str, Any]) -> bool:
    """Whether `shaped` (a `shape` result) can match no deletion's tombstone by itself: it
    drives from a search index field with a positive test that no empty array passes, and a
    tombstone's index fields are empty. Then a `del` test only costs the database work (about a
    tenth of a patient's page of Observations, measured on the embedded database)."""
    for field, test in shaped.items():
        if field.startswith("$") or not servable(field, test):
            return False
        if field not in _CLEARED_ON_DELETE:
            return False
        values = test.get("$in") if isinstance(test, dict) else [test]
        return values is None or all(v != [] for v in values)
    return False


def driving_field(query: dict[str, Any]) -> str | None:
    """The field an index-first database drives `shape(query)` from, or None for a scan."""
    shaped = shape(query)
    for field, test in shaped.items():
        if not field.startswith("$") and servable(field, test):
            return field
    return None
