"""One MongoDB condition per search parameter type and modifier.

https://hl7.org/fhir/R4/search.html#ptypes and #modifiers . Each builder turns the comma-separated
(OR) values of one parameter into one condition. Conditions only ever compare the string keys
built by index.py / keys.py, so a user value can never become an operator or a field name.

Each condition carries a driver an index can serve alone (an equality, `$in` or bare range on an
indexed field: store/planner.py) and, where the driver only narrows, an exact residual check on
the same document: the exact keys on the field's unindexed copy (`tokx`, `strx`, `numx`: a system,
a unit, `:exact`), the paired date ranges (`dt`), or the same range as one element's `$elemMatch`.
Every exact key implies its driver's coarse key (index.py), so a driver never loses a match.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal, InvalidOperation
from typing import Any

from fhirgoal.core import fields
from fhirgoal.core.errors import FhirError
from fhirgoal.fhir.instants import now
from fhirgoal.fhir.search.dates import parse_range, split_prefix
from fhirgoal.fhir.search.index import local_reference
from fhirgoal.fhir.search.keys import fold, instant_key, number_key
from fhirgoal.fhir.search.registry import SearchParam

Condition = dict[str, Any]
# Fields stored twice (index.py): coarse indexed keys, and an unindexed copy ("tokx", ...) holding
# every key, for exact checks and exact ranges.
EXACT_COPIES = {fields.TOKEN, fields.REFERENCE, fields.STRING, fields.NUMBER}
# The longest regular expression sent to the database: SecantusDB refuses more than 1000 characters
# (a 1000-character `:contains` value answered 503 as a database error).
MAX_PATTERN = 1000


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


def _driven(driver: Condition, check: Condition | None) -> Condition:
    return driver if check is None else {"$and": [driver, check]}


def _unsupported(param: SearchParam, modifier: str) -> FhirError:
    return FhirError(
        "not-supported", f"modifier ':{modifier}' is not supported on '{param.code}' ({param.type})"
    )


# ---- :missing ---------------------------------------------------------------------------------
def _present(param: SearchParam) -> Condition:
    c = param.code
    if param.type in ("token", "uri"):  # every token value has its 'code#value' key
        return _exact_range(fields.TOKEN, f"{c}#", f"{c}$")
    if param.type == "reference":
        return _exact_range(fields.REFERENCE, f"{c}=", f"{c}>")
    if param.type == "date":
        return {"$and": [_range("dtlo", f"{c}|", f"{c}}}"), {"dt": {"$elemMatch": {"p": c}}}]}
    if param.type == "string":
        return _exact_range(fields.STRING, f"{c}|", f"{c}}}")
    field = (
        fields.TOKEN
        if param.type == "composite" and param.components[1][0] == "token"
        else fields.NUMBER
    )
    if param.driver is not None:  # a pair implies its first value's key (registry.py)
        d = param.driver
        return {
            "$and": [
                _range(fields.TOKEN, f"{d}#", f"{d}$"),
                _between(field + "x", f"{c}|", f"{c}}}"),
            ]
        }
    return _exact_range(field, f"{c}|", f"{c}}}")


def missing(param: SearchParam, values: list[str]) -> Condition:
    if values not in (["true"], ["false"]):
        raise FhirError("bad-request", f"{param.code}:missing takes true or false")
    # `miss` is not indexed (a key per parameter a resource lacks: 27 for an Observation), so
    # `true` is a residual check, which scans when no other condition of the search drives it.
    return {"miss": param.code} if values == ["true"] else _present(param)


# ---- token, uri, reference ---------------------------------------------------------------------
def token_key(code: str, value: str) -> str:
    """The exact key (in `tokx`) of a token search value: code, system|code, |code or system|."""
    if "|" not in value:
        return f"{code}#{value}"
    system, _, token = value.partition("|")
    return f"{code}@{system}" if token == "" else f"{code}|{system}|{token}"


def token_match(code: str, values: list[str]) -> Condition:
    """Any of the token values: the coarse 'code#value' keys drive (a system-only value: the
    parameter's whole key range), the exact keys decide when a value names a system."""
    exact = [token_key(code, v) for v in values]
    coarse = [f"{code}#{v.partition('|')[2] if '|' in v else v}" for v in values]
    if any(key.startswith(f"{code}@") for key in exact):
        driver = _range(fields.TOKEN, f"{code}#", f"{code}$")
    else:
        driver = {fields.TOKEN: {"$in": sorted(set(coarse))}}
    return _driven(
        driver, None if exact == coarse else {fields.TOKEN_EXACT: {"$in": sorted(set(exact))}}
    )


def codings_match(code: str, codings: list[tuple[str, str]]) -> Condition:
    """Any of these (system, code) pairs ('' = explicitly no system), as `token_match`."""
    return {
        "$and": [
            {fields.TOKEN: {"$in": sorted({f"{code}#{c}" for _, c in codings})}},
            {
                fields.TOKEN_EXACT: {
                    "$in": sorted({f"{code}|{system}|{c}" for system, c in codings})
                }
            },
        ]
    }


def token(param: SearchParam, modifier: str, values: list[str]) -> Condition:
    if modifier == "":
        return token_match(param.code, values)
    if modifier == "not":  # search.html#token: also matches resources with no value at all
        return {fields.TOKEN_EXACT: {"$nin": [token_key(param.code, v) for v in values]}}
    if modifier == "text":  # the text or display, case- and accent-insensitive starts-with
        return any_of([starts_with(fields.STRING, f"{param.code}:text|{fold(v)}") for v in values])
    if modifier == "of-type":  # type-system|type-code|value; the identifier's value drives
        if any(v.count("|") != 2 for v in values):
            raise FhirError("bad-request", f"{param.code}:of-type takes system|code|value")
        return {
            "$and": [
                {
                    fields.TOKEN: {
                        "$in": sorted({f"{param.code}#{v.rsplit('|', 1)[1]}" for v in values})
                    }
                },
                {fields.TOKEN_EXACT: {"$in": [f"{param.code}:of-type|{v}" for v in values]}},
            ]
        }
    raise _unsupported(param, modifier)


def uri(param: SearchParam, modifier: str, values: list[str]) -> Condition:
    if modifier == "below":  # the stored uri starts with the value
        return any_of([starts_with(fields.TOKEN, f"{param.code}#{v}") for v in values])
    if modifier == "above":  # the stored uri is the value or one of its parents
        parents = {v.rsplit("/", n)[0] for v in values for n in range(v.count("/") + 1)}
        return {fields.TOKEN: {"$in": sorted(f"{param.code}#{p}" for p in parents if p)}}
    if modifier:
        raise _unsupported(param, modifier)
    return {fields.TOKEN: {"$in": [f"{param.code}#{v}" for v in values]}}


def reference(
    param: SearchParam,
    modifier: str,
    values: list[str],
    base_url: str,
    stored_key: Callable[[str], str | None] | None = None,
) -> Condition:
    """`stored_key(target)`: the key a resource referring to `target` stores, None when none
    can (registry.py TypeParams.reference_key: a narrowing such as `patient` is stored as
    `subject`); `code=target` by default."""
    if modifier == "identifier":  # the Reference.identifier, as a token (system|value or value)
        return token_match(f"{param.code}:identifier", values)
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
            keys.append(local)
        elif "/" not in value and ":" not in value:  # a bare id: any of the target types
            keys += [f"{t}/{value}" for t in param.targets] or [value]
        else:
            keys.append(value)
    stored = [stored_key(t) for t in keys] if stored_key else [f"{param.code}={t}" for t in keys]
    found = [key for key in stored if key is not None]
    return {fields.REFERENCE: {"$in": found}} if found else {"_id": {"$in": []}}


# ---- string ------------------------------------------------------------------------------------
def string(param: SearchParam, modifier: str, values: list[str]) -> Condition:
    c = param.code
    if modifier == "exact":  # the folded key drives: equal texts fold equally
        return {
            "$and": [
                {fields.STRING: {"$in": sorted({f"{c}|{fold(v)}" for v in values})}},
                {"strx": {"$in": [f"{c}={v}" for v in values]}},
            ]
        }
    if modifier == "contains":
        low, high = f"{c}|", f"{c}}}"
        # one pattern per value: the database refuses long patterns (SecantusDB: 1000 characters,
        # MongoDB: 32 KiB), and one alternation of a hundred values would pass neither
        patterns = [f"^{re.escape(c)}\\|.*{re.escape(fold(v))}" for v in values]
        if max(map(len, patterns)) > MAX_PATTERN:
            raise FhirError(
                "bad-request",
                f"a value of '{c}:contains' is too long (at most {MAX_PATTERN} characters "
                "once case and accents are folded and special characters escaped)",
                f"{c}:contains",
            )
        return {
            "$and": [
                _range(fields.STRING, low, high),
                any_of([{"strx": {"$regex": pattern}} for pattern in patterns]),
            ]
        }
    if modifier:
        raise _unsupported(param, modifier)
    return any_of([starts_with(fields.STRING, f"{c}|{fold(v)}") for v in values])


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


def _numeric(
    coarse: str, exact: str, prefix: str, value: Decimal, driver: Condition | None = None
) -> Condition:
    """The keys under `exact` (ending in '#', in `numx`) compared with `value` and its implicit
    precision; the same comparison on the indexed keys under `coarse` drives, unless `driver`
    is given (a composite's first value: registry.py)."""
    half = Decimal(5).scaleb(value.as_tuple().exponent - 1)  # type: ignore[operator]

    def key(head: str, number: Decimal) -> str:
        return head + number_key(number)

    def bounds(head: str) -> tuple[str, str, str, str]:
        low, high = head, head[:-1] + "$"  # '$' follows '#': every number under `head`
        if prefix == "eq":
            return key(head, value - half), key(head, value + half), "$gte", "$lt"
        if prefix in ("gt", "sa"):
            return key(head, value), high, "$gt", "$lt"
        if prefix in ("lt", "eb"):
            return low, key(head, value), "$gte", "$lt"
        if prefix == "ge":
            return key(head, value), high, "$gte", "$lt"
        if prefix == "le":
            return low, key(head, value), "$gte", "$lte"
        if prefix == "ap":
            slack = max(abs(value) * Decimal("0.1"), half)
            return key(head, value - slack), key(head, value + slack), "$gte", "$lte"
        return low, high, "$gte", "$lt"  # ne: a value of the parameter, checked below

    drive = driver if driver is not None else _range(fields.NUMBER, *bounds(coarse))
    check = _between("numx", *bounds(exact))
    if prefix != "ne":
        return {"$and": [drive, check]}
    # ne: none of the values inside the range
    inside = {"$elemMatch": {"$gte": key(exact, value - half), "$lt": key(exact, value + half)}}
    return {"$and": [drive, check, {"numx": {"$not": inside}}]}


def number(param: SearchParam, modifier: str, values: list[str]) -> Condition:
    if modifier:
        raise _unsupported(param, modifier)
    conditions = []
    for value in values:
        prefix, text = split_prefix(value)
        head = f"{param.code}|#"
        conditions.append(_numeric(head, head, prefix, _decimal(text, param.code)))
    return any_of(conditions)


def _quantity_value(
    code: str, coarse: str, exact: str, value: str, driver: Condition | None = None
) -> Condition:
    """`[prefix]number`, `[prefix]number|system|code` or `[prefix]number||code` against the keys
    under `exact` (index.py: 'exact#n', 'exact system|code|#n', 'exact |unit|#n'), driven by the
    indexed 'coarse#n' (any unit) or `driver`."""
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
    return _numeric(coarse + "#", exact + unit_prefix + "#", prefix, _decimal(text, code), driver)


def quantity(param: SearchParam, modifier: str, values: list[str]) -> Condition:
    """search.html#quantity"""
    if modifier:
        raise _unsupported(param, modifier)
    head = f"{param.code}|"
    return any_of([_quantity_value(param.code, head, head, v) for v in values])


# ---- composite ---------------------------------------------------------------------------------
def _composite_token_key(text: str) -> str:
    if "|" not in text:
        return f"#{text}"
    system, _, code = text.partition("|")
    return f"|{system}|{code}"


def _code_of(text: str) -> str:
    return text.partition("|")[2] if "|" in text else text


def composite(param: SearchParam, modifier: str, values: list[str]) -> Condition:
    """`token$token` or `token$[prefix]quantity` (search.html#composite). The first value's key
    under the driving token parameter drives (registry.py), else the coarse pair '#a$#b'."""
    if modifier:
        raise _unsupported(param, modifier)
    c, second_type = param.code, param.components[1][0]
    pairs: list[tuple[str, str, str]] = []
    for value in values:
        first, dollar, second = value.partition("$")
        if not dollar or not first or not second:
            raise FhirError(
                "bad-request", f"'{value}': a composite value is first$second ({param.code})"
            )
        pairs.append((first, second, f"{param.driver}#{_code_of(first)}" if param.driver else ""))
    if second_type == "token":
        drivers = {d or f"{c}|#{_code_of(a)}$#{_code_of(b)}" for a, b, d in pairs}
        exact = {f"{c}|{_composite_token_key(a)}${_composite_token_key(b)}" for a, b, _ in pairs}
        check = None if exact == drivers else {fields.TOKEN_EXACT: {"$in": sorted(exact)}}
        return _driven({fields.TOKEN: {"$in": sorted(drivers)}}, check)
    return any_of(
        [
            _quantity_value(
                c,
                f"{c}|#{_code_of(first)}$",
                f"{c}|{_composite_token_key(first)}$",
                second,
                {fields.TOKEN: driver} if driver else None,
            )
            for first, second, driver in pairs
        ]
    )
