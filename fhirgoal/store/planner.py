"""Choosing the index that drives a search, and telling the database with `hint`.

The search filters are conjunctions of conditions on a handful of multikey fields (see
fhir/search/index.py). SecantusDB's planner only considers an index when the filter names a single
field, and MongoDB's planner has to guess among multikey indexes; both do the right thing when told.
The rule: drive the query from the most selective indexed condition (an id, then a reference,
then a token, ...); the other conditions are checked on the documents that index yields.
"""

from __future__ import annotations

from typing import Any

# Lower is more selective. Index names are the field names (store/repository.py), except these.
_RANK = {
    "_id": 0,
    "ref": 1,
    "tok": 2,
    "str": 3,
    "num": 4,
    "dtlo": 5,
    "dthi": 5,
    "comp": 6,
    "miss": 7,
    "lu": 8,
}
_INDEX_NAME = {"_id": "_id_", "lu": "lastUpdated"}
FULL_SCAN_INDEX = "lastUpdated"  # for filters with no usable condition: an index scan, in order
ID_INDEX = "_id_"


def _field(condition: dict[str, Any]) -> str | None:
    """The one indexed field a condition can be served by, or None."""
    if "$and" in condition and len(condition) == 1:  # [narrowing range, exact check]
        first = condition["$and"][0]
        return _field(first) if isinstance(first, dict) else None
    if "$or" in condition and len(condition) == 1:
        fields = {_field(branch) for branch in condition["$or"]}
        return fields.pop() if len(fields) == 1 else None
    keys = [k for k in condition if not k.startswith("$")]
    if len(keys) != 1 or keys[0] not in _RANK:
        return None
    test = condition[keys[0]]
    if isinstance(test, dict) and test.keys() & {"$nin", "$not", "$ne"}:
        return None  # negations select nearly everything
    return keys[0]


def conditions_of(query: dict[str, Any]) -> list[dict[str, Any]]:
    if set(query) == {"$and"}:
        return [c for part in query["$and"] for c in conditions_of(part)]
    parts = []
    for key, value in query.items():
        if key == "$and":
            parts += [c for part in value for c in conditions_of(part)]
        else:
            parts.append({key: value})
    return parts


def choose_index(query: dict[str, Any]) -> str | None:
    """The index to drive `query` from; None when no condition can use one."""
    best: str | None = None
    for condition in conditions_of(query):
        field = _field(condition)
        if field is not None and (best is None or _RANK[field] < _RANK[best]):
            best = field
    return None if best is None else _INDEX_NAME.get(best, best)
