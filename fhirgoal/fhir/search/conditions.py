"""One MongoDB condition per search parameter type and modifier.

https://hl7.org/fhir/R4/search.html#ptypes and #modifiers . Each builder turns the comma-separated
(OR) values of one parameter into one condition. Conditions only ever compare the string keys
built by index.py / keys.py, so every condition is a range or equality on an indexed field, and a
user value can never become an operator or a field name. Where a range can only narrow (dates,
`:contains`, `ne`), an exact residual check on the same document follows it.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation
from typing import Any

from fhirgoal.fhir.errors import FhirError
from fhirgoal.fhir.instants import now
from fhirgoal.fhir.search.dates import parse_range, split_prefix
from fhirgoal.fhir.search.index import local_reference
from fhirgoal.fhir.search.keys import fold, instant_key, number_key
from fhirgoal.fhir.search.registry import SearchParam

Condition = dict[str, Any]
# Fields stored twice (index.py): indexed keys, and an unindexed copy ("strx") for exact ranges.
EXACT_COPIES = {"str", "num"}


def starts_with(field: str, prefix: str) -> Condition:
    """Keys that start with `prefix`: [prefix, prefix with its last character incremented)."""
    high = prefix[:-1] + chr(ord(prefix[-1]) + 1)
    return (
        _exact_range(field, prefix, high)
        if field in EXACT_COPIES
        else _between(field, prefix, high)
    )


def any_of(conditions: list[Condition]) -> Condition:
    return conditions[0] if len(conditions) == 1 else {"$or": conditions}


def _between(
    field: str, low: str, high: str, low_op: str = "$gte", high_op: str = "$lt"
) -> Condition:
    # $elemMatch: on an array, both bounds must hold for the same key (a bare range on a multikey
    # field is satisfied by one key above `low` and another below `high`).
    return {field: {"$elemMatch": {low_op: low, high_op: high}}}


def _range(
    field: str, low: str, high: str, low_op: str = "$gte", high_op: str = "$lt"
) -> Condition:
    # A bare range: an index serves it alone, but on an array its bounds may hold for different
    # keys, so it only narrows; an exact check on paired values must follow (dates: `dt`).
    return {field: {low_op: low, high_op: high}}


def _exact_range(
    field: str, low: str, high: str, low_op: str = "$gte", high_op: str = "$lt"
) -> Condition:
    """A range an index can drive (bare, on `field`) made exact by the same range as an
    $elemMatch on `field`x, an unindexed copy of the keys (index.py): both hold for one key."""
    return {
        "$and": [
            _range(field, low, high, low_op, high_op),
            _between(field + "x", low, high, low_op, high_op),
        ]
    }


def _unsupported(param: SearchParam, modifier: str) -> FhirError:
    return FhirError(
        "not-supported", f"modifier ':{modifier}' is not supported on '{param.code}' ({param.type})"
    )


# ---- :missing ---------------------------------------------------------------------------------
def _present(param: SearchParam) -> Condition:
    c = param.code
    if param.type in ("token", "uri"):
        return any_of([_between("tok", f"{c}#", f"{c}$"), _between("tok", f"{c}|", f"{c}}}")])
    if param.type == "reference":
        return _between("ref", f"{c}=", f"{c}>")
    if param.type == "date":
        return _between("dtlo", f"{c}|", f"{c}}}")
    if param.type == "string":
        return _exact_range("str", f"{c}|", f"{c}}}")
    if param.type == "composite" and param.components[1][0] == "token":
        return _between("tok", f"{c}|", f"{c}}}")
    return _exact_range("num", f"{c}|", f"{c}}}")


def missing(param: SearchParam, values: list[str]) -> Condition:
    if values not in (["true"], ["false"]):
        raise FhirError("bad-request", f"{param.code}:missing takes true or false")
    return {"miss": param.code} if values == ["true"] else _present(param)


# ---- token, uri, reference ---------------------------------------------------------------------
def token_key(code: str, value: str) -> str:
    if "|" not in value:
        return f"{code}#{value}"
    system, _, token = value.partition("|")
    return f"{code}@{system}" if token == "" else f"{code}|{system}|{token}"


def token(param: SearchParam, modifier: str, values: list[str]) -> Condition:
    keys = [token_key(param.code, v) for v in values]
    if modifier == "":
        return {"tok": {"$in": keys}}
    if modifier == "not":  # search.html#token: also matches resources with no value at all
        return {"tok": {"$nin": keys}}
    if modifier == "text":  # the text or display, case- and accent-insensitive starts-with
        return any_of([starts_with("str", f"{param.code}:text|{fold(v)}") for v in values])
    if modifier == "of-type":  # type-system|type-code|value
        if any(v.count("|") != 2 for v in values):
            raise FhirError("bad-request", f"{param.code}:of-type takes system|code|value")
        return {"tok": {"$in": [f"{param.code}:of-type|{v}" for v in values]}}
    raise _unsupported(param, modifier)


def uri(param: SearchParam, modifier: str, values: list[str]) -> Condition:
    if modifier == "below":  # the stored uri starts with the value
        return any_of([starts_with("tok", f"{param.code}#{v}") for v in values])
    if modifier == "above":  # the stored uri is the value or one of its parents
        parents = {v.rsplit("/", n)[0] for v in values for n in range(v.count("/") + 1)}
        return {"tok": {"$in": sorted(f"{param.code}#{p}" for p in parents if p)}}
    if modifier:
        raise _unsupported(param, modifier)
    return {"tok": {"$in": [f"{param.code}#{v}" for v in values]}}


def reference(param: SearchParam, modifier: str, values: list[str], base_url: str) -> Condition:
    if modifier == "identifier":  # the Reference.identifier, as a token (system|value or value)
        return {"tok": {"$in": [f"{param.code}:identifier{token_key('', v)}" for v in values]}}
    if modifier and not (modifier[:1].isupper() and modifier in param.targets):
        raise _unsupported(param, modifier)
    keys: list[str] = []
    for value in values:
        if base_url and value.startswith(base_url.rstrip("/") + "/"):
            value = value[len(base_url.rstrip("/")) + 1 :]
        if modifier and "/" not in value:
            value = f"{modifier}/{value}"
        local = local_reference(value)
        if local:
            if modifier and not local.startswith(f"{modifier}/"):
                raise FhirError("bad-request", f"'{value}' is not a {modifier} reference")
            keys.append(f"{param.code}={local}")
        elif "/" not in value and ":" not in value:  # a bare id: any of the target types
            keys += [f"{param.code}={t}/{value}" for t in param.targets] or [
                f"{param.code}={value}"
            ]
        else:
            keys.append(f"{param.code}={value}")
    return {"ref": {"$in": keys}}


# ---- string ------------------------------------------------------------------------------------
def string(param: SearchParam, modifier: str, values: list[str]) -> Condition:
    c = param.code
    if modifier == "exact":
        return {"str": {"$in": [f"{c}={v}" for v in values]}}
    if modifier == "contains":
        low, high = f"{c}|", f"{c}}}"
        pattern = "|".join(re.escape(fold(v)) for v in values)
        return {
            "$and": [
                _range("str", low, high),
                {"strx": {"$regex": f"^{re.escape(c)}\\|.*({pattern})"}},
            ]
        }
    if modifier:
        raise _unsupported(param, modifier)
    return any_of([starts_with("str", f"{c}|{fold(v)}") for v in values])


# ---- date --------------------------------------------------------------------------------------
def date(param: SearchParam, modifier: str, values: list[str]) -> Condition:
    if modifier:
        raise _unsupported(param, modifier)
    return any_of([_date_value(param.code, value) for value in values])


def _date_value(c: str, value: str) -> Condition:
    """Resource range [lo, hi) against the search range [qlo, qhi), per prefix (search.html#prefix)."""
    prefix, text = split_prefix(value)
    qlo_dt, qhi_dt = parse_range(text)
    qlo, qhi = instant_key(qlo_dt), instant_key(qhi_dt)
    low, high = f"{c}|", f"{c}}}"

    def exact(**bounds: Any) -> Condition:
        return {"dt": {"$elemMatch": {"p": c, **bounds}}}

    if prefix == "eq":
        narrow, check = (
            _range("dtlo", f"{c}|{qlo}", f"{c}|{qhi}"),
            exact(lo={"$gte": qlo}, hi={"$lte": qhi}),
        )
    elif prefix == "gt":
        narrow, check = _range("dthi", f"{c}|{qhi}", high, "$gt"), exact(hi={"$gt": qhi})
    elif prefix == "lt":
        narrow, check = _range("dtlo", low, f"{c}|{qlo}"), exact(lo={"$lt": qlo})
    elif prefix == "ge":
        narrow, check = _range("dthi", f"{c}|{qlo}", high, "$gt"), exact(hi={"$gt": qlo})
    elif prefix == "le":
        narrow, check = _range("dtlo", low, f"{c}|{qhi}"), exact(lo={"$lt": qhi})
    elif prefix == "sa":
        narrow, check = _range("dtlo", f"{c}|{qhi}", high), exact(lo={"$gte": qhi})
    elif prefix == "eb":
        narrow, check = _range("dthi", low, f"{c}|{qlo}", "$gte", "$lte"), exact(hi={"$lte": qlo})
    elif prefix == "ap":  # overlaps the search range widened by 10% of its distance from now
        slack = max(abs(now() - qlo_dt) * 0.1, qhi_dt - qlo_dt)
        alo, ahi = instant_key(qlo_dt - slack), instant_key(qhi_dt + slack)
        narrow, check = _range("dtlo", low, f"{c}|{ahi}"), exact(lo={"$lt": ahi}, hi={"$gt": alo})
    else:  # ne: no range of the resource lies within the search range
        narrow = _range("dtlo", low, high)
        check = {"dt": {"$not": {"$elemMatch": {"p": c, "lo": {"$gte": qlo}, "hi": {"$lte": qhi}}}}}
    return {"$and": [narrow, check]}


# ---- number and quantity -------------------------------------------------------------------------
def _decimal(text: str, code: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise FhirError("bad-request", f"'{text}' is not a number (parameter {code})") from None
    if not value.is_finite():
        raise FhirError("bad-request", f"'{text}' is not a finite number (parameter {code})")
    return value


def _numeric(field_prefix: str, prefix: str, value: Decimal) -> Condition:
    """Keys under `field_prefix` (ending in '#') compared with `value` and its implicit precision."""
    half = Decimal(5).scaleb(value.as_tuple().exponent - 1)  # type: ignore[operator]
    low, high = field_prefix, field_prefix[:-1] + "$"  # '$' follows '#'

    def key(number: Decimal) -> str:
        return field_prefix + number_key(number)

    if prefix == "eq":
        return _exact_range("num", key(value - half), key(value + half))
    if prefix in ("gt", "sa"):
        return _exact_range("num", key(value), high, "$gt")
    if prefix in ("lt", "eb"):
        return _exact_range("num", low, key(value))
    if prefix == "ge":
        return _exact_range("num", key(value), high)
    if prefix == "le":
        return _exact_range("num", low, key(value), "$gte", "$lte")
    if prefix == "ap":
        slack = max(abs(value) * Decimal("0.1"), half)
        return _exact_range("num", key(value - slack), key(value + slack), "$gte", "$lte")
    # ne: a value of the parameter, none of them inside the range
    inside = {"$elemMatch": {"$gte": key(value - half), "$lt": key(value + half)}}
    return {"$and": [_exact_range("num", low, high), {"numx": {"$not": inside}}]}


def number(param: SearchParam, modifier: str, values: list[str]) -> Condition:
    if modifier:
        raise _unsupported(param, modifier)
    conditions = []
    for value in values:
        prefix, text = split_prefix(value)
        conditions.append(_numeric(f"{param.code}|#", prefix, _decimal(text, param.code)))
    return any_of(conditions)


def _quantity_value(head: str, value: str, code: str) -> Condition:
    """`[prefix]number`, `[prefix]number|system|code` or `[prefix]number||code` against the keys
    under `head` (index.py: 'head#n', 'head system|code|#n', 'head |unit|#n')."""
    parts = value.split("|")
    if len(parts) not in (1, 3):
        raise FhirError(
            "bad-request", f"'{value}' is not number, number|system|code or number||code"
        )
    number_text, system, unit = (parts[0], "", "") if len(parts) == 1 else parts
    if system and not unit:
        raise FhirError("bad-request", f"'{value}': a quantity system needs a code")
    prefix, text = split_prefix(number_text)
    unit_prefix = f"{system}|{unit}|" if unit else ""
    return _numeric(head + unit_prefix + "#", prefix, _decimal(text, code))


def quantity(param: SearchParam, modifier: str, values: list[str]) -> Condition:
    """search.html#quantity"""
    if modifier:
        raise _unsupported(param, modifier)
    return any_of([_quantity_value(f"{param.code}|", v, param.code) for v in values])


# ---- composite ---------------------------------------------------------------------------------
def _composite_token_key(text: str) -> str:
    if "|" not in text:
        return f"#{text}"
    system, _, code = text.partition("|")
    return f"|{system}|{code}"


def composite(param: SearchParam, modifier: str, values: list[str]) -> Condition:
    """`token$token` or `token$[prefix]quantity` (search.html#composite)."""
    if modifier:
        raise _unsupported(param, modifier)
    second_type = param.components[1][0]
    conditions = []
    for value in values:
        first, dollar, second = value.partition("$")
        if not dollar or not first or not second:
            raise FhirError(
                "bad-request", f"'{value}': a composite value is first$second ({param.code})"
            )
        head = f"{param.code}|{_composite_token_key(first)}$"
        if second_type == "token":
            conditions.append({"tok": head + _composite_token_key(second)})
        else:
            conditions.append(_quantity_value(head, second, param.code))
    return any_of(conditions)
