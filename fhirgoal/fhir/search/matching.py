"""Does one stored version match a compiled search? Without asking the database.

A Subscription's criteria (https://hl7.org/fhir/R4/subscription.html#2.46.6.1) is a search; a
write is notified when its new version matches it. The criteria are compiled once by the search
compiler (fhir/search/query.py) into the filter the database would run, and each write's new
version is tested here against that filter and the version's own search index fields (the very
document that is stored): no query per write, and exactly the search's semantics, since it is
the same filter.

The filter language is the subset the compiler and the planner (store/planner.py) produce, with
MongoDB's meaning (https://www.mongodb.com/docs/manual/reference/operator/query/): a condition
on an array field holds when some element satisfies it; `$elemMatch` wants one element to
satisfy every part; `$nin`/`$ne`/`$not` hold when no element does. An operator outside that
subset is an error, never a silent match.
"""

from __future__ import annotations

import re
from functools import cache
from typing import Any

_MISSING = object()


class UnsupportedFilter(ValueError):
    """The filter uses an operator this matcher does not evaluate."""


def matches(doc: dict[str, Any], query: dict[str, Any]) -> bool:
    for key, test in query.items():
        if key == "$and":
            if not all(matches(doc, part) for part in test):
                return False
        elif key == "$or":
            if not any(matches(doc, part) for part in test):
                return False
        elif key == "$nor":
            if any(matches(doc, part) for part in test):
                return False
        elif key.startswith("$"):
            raise UnsupportedFilter(key)
        elif not _field_matches(doc.get(key, _MISSING), test):
            return False
    return True


def check(query: dict[str, Any]) -> None:
    """Raise UnsupportedFilter when `query` uses an operator `matches` does not evaluate.
    `matches` finds that out only when a document reaches the operator, which one that fails an
    earlier test never does: a filter to be matched later is checked once, whole, up front."""
    for key, test in query.items():
        if key in _LOGICAL:
            for part in test:
                check(part)
        elif key.startswith("$"):
            raise UnsupportedFilter(key)
        elif _is_operators(test):
            _check_operators(test)


_LOGICAL = frozenset({"$and", "$or", "$nor"})
# the operators on a field `_operator` evaluates
_FIELD_OPERATORS = frozenset(
    {"$eq", "$ne", "$in", "$nin", "$gt", "$gte", "$lt", "$lte", "$not", "$exists", "$regex"}
    | {"$elemMatch", "$all"}
)


def _check_operators(test: dict[str, Any]) -> None:
    for op, arg in test.items():
        if op not in _FIELD_OPERATORS:
            raise UnsupportedFilter(op)
        if op == "$not" and _is_operators(arg):
            _check_operators(arg)
        elif op == "$elemMatch":
            _check_element(arg)
        elif op == "$all":
            for part in arg:
                if isinstance(part, dict) and "$elemMatch" in part:
                    _check_element(part["$elemMatch"])


def _check_element(test: Any) -> None:
    if _is_operators(test):
        _check_operators(test)
    elif isinstance(test, dict):
        check(test)


def _values(value: Any) -> list[Any]:
    """The values a condition on a field considers: an array's elements (and the array)."""
    if value is _MISSING or value is None:
        return [None]
    if isinstance(value, list | tuple | set | frozenset):
        return [*value, list(value)] if value else [[]]
    return [value]


def _is_operators(test: Any) -> bool:
    return isinstance(test, dict) and bool(test) and all(k.startswith("$") for k in test)


def _field_matches(value: Any, test: Any) -> bool:
    if not _is_operators(test):
        return any(_equal(v, test) for v in _values(value))
    return all(_operator(value, op, arg) for op, arg in test.items())


def _operator(value: Any, op: str, arg: Any) -> bool:
    values = _values(value)
    if op == "$eq":
        return any(_equal(v, arg) for v in values)
    if op == "$ne":
        return not any(_equal(v, arg) for v in values)
    if op == "$in":
        return _in(values, arg)
    if op == "$nin":
        return not _in(values, arg)
    if op in ("$gt", "$gte", "$lt", "$lte"):
        return any(_compare(v, op, arg) for v in values)
    if op == "$not":
        return not _field_matches(value, arg)
    if op == "$exists":
        return (value is not _MISSING) == bool(arg)
    if op == "$regex":
        pattern = _pattern(arg)
        return any(isinstance(v, str) and pattern.search(v) is not None for v in values)
    if op == "$elemMatch":
        elements = value if isinstance(value, list | tuple | set | frozenset) else []
        return any(_element_matches(e, arg) for e in elements)
    if op == "$all":
        return all(
            _operator(value, "$elemMatch", part["$elemMatch"])
            if isinstance(part, dict) and "$elemMatch" in part
            else _operator(value, "$eq", part)
            for part in arg
        )
    raise UnsupportedFilter(op)


# An `$in` over many values (a caseload's patients, hundreds of them, in a Subscription's reach)
# is tested by hashing rather than by comparing each value: 0.35 ms a test for 500 patients
# otherwise, paid on every write of the type. The strings of an operand list are kept while the
# list is (its identity is the key, the list itself held so the identity is not reused); compiled
# filters are never changed once built.
_SMALL_IN = 8
_IN_SETS: dict[int, tuple[Any, frozenset[str], list[Any]]] = {}
_IN_SETS_MAX = 4096


def _in(values: list[Any], operands: Any) -> bool:
    if len(operands) <= _SMALL_IN:
        return any(_equal(v, a) for v in values for a in operands)
    strings, others = _split(operands)
    # a string equals no operand but a string; anything else equals no string (_equal)
    return any(
        (isinstance(v, str) and v in strings) or any(_equal(v, a) for a in others) for v in values
    )


def _split(operands: Any) -> tuple[frozenset[str], list[Any]]:
    kept = _IN_SETS.get(id(operands))
    if kept is not None and kept[0] is operands:
        return kept[1], kept[2]
    strings = frozenset(a for a in operands if type(a) is str)
    others = [a for a in operands if type(a) is not str]
    if len(_IN_SETS) >= _IN_SETS_MAX:
        _IN_SETS.clear()
    _IN_SETS[id(operands)] = (operands, strings, others)
    return strings, others


def _element_matches(element: Any, test: Any) -> bool:
    if _is_operators(test):
        return all(_operator(element, op, arg) for op, arg in test.items())
    if isinstance(element, dict) and isinstance(test, dict):
        return matches(element, test)
    return _equal(element, test)


def _equal(value: Any, expected: Any) -> bool:
    if isinstance(expected, re.Pattern):
        return isinstance(value, str) and expected.search(value) is not None
    return bool(value == expected) and _comparable(value, expected)


def _comparable(a: Any, b: Any) -> bool:
    """MongoDB compares within a type bracket only (a string never equals or orders a number)."""
    if a is None or b is None:
        return a is None and b is None
    numeric = (int, float)
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool)
    if isinstance(a, numeric) and isinstance(b, numeric):
        return True
    return type(a) is type(b) or (isinstance(a, str) and isinstance(b, str))


def _compare(value: Any, op: str, bound: Any) -> bool:
    if value is None or not _comparable(value, bound) or isinstance(value, list):
        return False
    if op == "$gt":
        return bool(value > bound)
    if op == "$gte":
        return bool(value >= bound)
    if op == "$lt":
        return bool(value < bound)
    return bool(value <= bound)


@cache
def _pattern(text: str) -> re.Pattern[str]:
    return re.compile(text)
