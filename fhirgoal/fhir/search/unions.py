"""Union parameters: searched through their parts' keys, never stored with keys of their own.

R4 defines some search parameters as the union of others of the same type on the same resource
type (https://hl7.org/fhir/R4/observation.html#search, the `combo-*` parameters):

    combo-code                = code | component-code
    combo-value-quantity      = value-quantity | component-value-quantity
    combo-code-value-quantity = code-value-quantity | component-code-value-quantity  (composite)

A union's values are exactly its parts' values, so each of its index keys (fhir/search/index.py)
is one of its parts' keys with the union's code in place of the part's: `combo-code#x` is
`code#x` or `component-code#x`. Storing them again cost every Observation write a third of its
search keys (an ORS-like Observation: 26 indexed keys instead of 18, 175 keys in all instead of
116; measured, bench/durability.py, 8 clients: a create's database CPU 3.53 -> 2.93 ms and
server CPU 2.78 -> 2.45 ms without them). Instead the registry finds the unions from the
SearchParameter expressions (registry.py `_link_unions`), writes no keys for them, and a
condition compiled for a union is rewritten here onto its parts' keys (`spread`):

- a key tested for equality or membership (`$in`): any part's key (a longer `$in`);
- a key tested for absence (`$nin`, the `:not` modifier): no part's key;
- a range checked on one key (`$elemMatch`, the exact checks): any part's range (`$or`), and
  its negation (`$not`, the `ne` prefix): no part's range;
- a bare range on an indexed field (a driver, which only narrows and is always sent beside an
  exact check): one range from the lowest part's low bound to the highest part's high bound,
  since the embedded database drives a query from one range, not from two (an `$or` scans). It
  holds whatever keys sort between the parts' (`combo-value-quantity=gt5` drives from
  `component-value-quantity` above 5 up to every `value-quantity`), so a ranged union search
  reads more candidates than the same search on one part; equality searches read none extra;
- `miss` (`:missing=true`): every part missing.

The sort key of a union (`srt`) is still stored: the smallest of its parts', taken from their
own sort keys without extracting anything again (registry.py).
"""

from __future__ import annotations

import re
from typing import Any

from fhirgoal.core import fields

Condition = dict[str, Any]
Unions = dict[str, tuple[str, ...]]
# The code a key starts with: parameter codes are letters, digits, '-' and '_'; a key continues
# with '#', '|', '@', ':', '=' or, as a range's end, '$' or '}' (index.py, conditions.py).
_CODE = re.compile(r"[A-Za-z0-9_-]+")
_RANGE_OPS = {"$gt", "$gte", "$lt", "$lte"}
# The fields whose keys start with a parameter's code (index.py); `dt` holds dates, never a union.
_KEYED_FIELDS = {
    fields.TOKEN, fields.TOKEN_EXACT, fields.STRING, fields.STRING_EXACT,
    fields.NUMBER, fields.NUMBER_EXACT, fields.REFERENCE, fields.REFERENCE_EXACT,
}  # fmt: skip


class UnionFormError(ValueError):
    """A condition form on a union's keys that `spread` does not know how to rewrite: a bug in
    the search compiler (every form it builds for token, quantity and composite is covered)."""


def spread(condition: Condition, unions: Unions) -> Condition:
    """`condition`, compiled for union parameters' keys, over their parts' keys instead (the
    same matches). `unions`: union code -> its parts' codes."""
    parts = [_spread_one(key, test, unions) for key, test in condition.items()]
    return _all_of(parts) if parts else condition


def _spread_one(key: str, test: Any, unions: Unions) -> Condition:
    if key in ("$and", "$or"):
        return {key: [spread(part, unions) for part in test]}
    if key == fields.MISSING:
        if isinstance(test, str) and test in unions:
            return {key: {"$all": list(unions[test])}}  # a union lacks a value when all parts do
        if _mentions(test, unions):
            raise UnionFormError(f"{key}: {test!r}")
        return {key: test}
    if key not in _KEYED_FIELDS or not _mentions(test, unions):
        return {key: test}
    if isinstance(test, str):
        return {key: {"$in": _renamed(test, unions)}}
    if isinstance(test, dict) and set(test) == {"$in"}:
        return {key: {"$in": [k for value in test["$in"] for k in _renamed(value, unions)]}}
    if isinstance(test, dict) and set(test) == {"$nin"}:
        return {key: {"$nin": [k for value in test["$nin"] for k in _renamed(value, unions)]}}
    if isinstance(test, dict) and test and set(test) <= _RANGE_OPS:
        return {key: _covering(test, unions)}
    if isinstance(test, dict) and set(test) == {"$elemMatch"}:
        return _any_of(
            [{key: {"$elemMatch": body}} for body in _per_part(test["$elemMatch"], unions)]
        )
    if (
        isinstance(test, dict)
        and set(test) == {"$not"}
        and isinstance(test["$not"], dict)
        and set(test["$not"]) == {"$elemMatch"}
    ):
        bodies = _per_part(test["$not"]["$elemMatch"], unions)
        return _all_of([{key: {"$not": {"$elemMatch": body}}} for body in bodies])
    raise UnionFormError(f"{key}: {test!r}")


def _union_of(value: str, unions: Unions) -> str | None:
    found = _CODE.match(value)
    return found.group() if found and found.group() in unions else None


def _renamed(value: str, unions: Unions) -> list[str]:
    """The parts' keys of one key (the key itself when it is no union's)."""
    code = _union_of(value, unions)
    if code is None:
        return [value]
    return [part + value[len(code) :] for part in unions[code]]


def _mentions(test: Any, unions: Unions) -> bool:
    if isinstance(test, str):
        return _union_of(test, unions) is not None
    if isinstance(test, dict):
        pattern = test.get("$regex")  # a key pattern (`^code\|...`: string :contains)
        if isinstance(pattern, str) and _union_of(pattern.removeprefix("^"), unions):
            return True
        return any(_mentions(v, unions) for v in test.values())
    if isinstance(test, list):
        return any(_mentions(v, unions) for v in test)
    return False


def _union_of_bounds(body: dict[str, Any], unions: Unions) -> str:
    """The one union whose keys a range's bounds are (both bounds the same union's)."""
    codes = {
        _union_of(bound, unions) if isinstance(bound, str) else None for bound in body.values()
    }
    if set(body) - _RANGE_OPS or len(codes) != 1 or None in codes:
        raise UnionFormError(f"range {body!r}")
    return codes.pop()  # type: ignore[return-value]


def _per_part(body: dict[str, Any], unions: Unions) -> list[dict[str, Any]]:
    """A range over one union's keys, once per part."""
    code = _union_of_bounds(body, unions)
    return [{op: part + bound[len(code) :] for op, bound in body.items()} for part in unions[code]]


def _covering(body: dict[str, Any], unions: Unions) -> dict[str, Any]:
    """One range holding each part's range: the lowest low bound and the highest high bound."""
    ranges = _per_part(body, unions)
    covering: dict[str, Any] = {}
    for op in body:
        bounds = [part[op] for part in ranges]
        covering[op] = min(bounds) if op in ("$gt", "$gte") else max(bounds)
    return covering


def _any_of(conditions: list[Condition]) -> Condition:
    return conditions[0] if len(conditions) == 1 else {"$or": conditions}


def _all_of(conditions: list[Condition]) -> Condition:
    return conditions[0] if len(conditions) == 1 else {"$and": conditions}
