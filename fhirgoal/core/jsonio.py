"""Lossless FHIR JSON in and out: https://hl7.org/fhir/R4/json.html

R4 decimals carry their precision in their text (`72.50` is not `72.5`, json.html#primitive), so
request bodies are parsed with `Decimal` for every non-integer number, stored as BSON Decimal128
(which keeps the digits and exponent), and written back from that text. orjson serializes
everything else; decimals reach it as pre-rendered `orjson.Fragment`s. Duplicate keys are rejected
rather than letting the last one silently win. NaN / Infinity are not JSON and are rejected too.

Nesting is bounded before anything recursive sees the text (RFC 8259 section 9 lets a parser set
that limit). The deepest R4 example (hl7.fhir.r4.examples 4.0.1) nests 22 levels, while a 2 KB body
of brackets nested 500 deep used to drive the recursive parser into RecursionError and its
traceback into minutes of CPU; orjson cannot write more than 255 levels at all.
"""

from __future__ import annotations

import itertools
import json
import operator
import re
import uuid
from decimal import Decimal
from typing import Any

import msgspec
import orjson
from bson.decimal128 import Decimal128

from fhirgoal.core.errors import FhirError

# The default of settings.max_json_depth: several times what real resources need (see above).
MAX_DEPTH = 100


class _DuplicateKey(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a valid JSON number")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _DuplicateKey(f"duplicate JSON property {key!r}")
            seen.add(key)
    return obj


# What orjson writes as an integer, and (but for the top half of the unsigned range) BSON can hold.
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


def _integer(text: str) -> int | Decimal:
    """An integer outside the range above stays a Decimal, so that it is written back as sent
    (a 30-digit `valueDecimal` is legal R4) instead of failing on the way to storage."""
    value = int(text)
    return value if _INT_MIN <= value <= _INT_MAX else Decimal(text)


# Opening brackets become 2 and closing ones 0: minus one each, their running sum is the depth.
_AS_STEPS = bytes.maketrans(b"[{]}", b"\x02\x02\x00\x00")
_NOT_STRUCTURE = bytes(sorted(set(range(256)) - set(b'[]{}"')))


def _check_depth(body: bytes, limit: int) -> None:
    """400 unless `body` nests at most `limit` arrays/objects deep: linear, without recursion, in
    bytes operations but for one C-level loop over the brackets. Escaped backslashes and quotes go
    first, so that every quote left opens or closes a string; then everything but brackets and
    quotes. Adjacent quotes are then a string without brackets (or a close and an open with
    nothing between): dropping them keeps the rest aligned, and the few strings left, those that
    hold brackets, go with a split. The deepest point of what remains is as deep as the parser
    would recurse (an unmatched closing bracket stops it before anything after counts)."""
    if b"\\\\" in body:  # each replace copies the body: only when there is something to drop
        body = body.replace(b"\\\\", b"")
    if b'\\"' in body:
        body = body.replace(b'\\"', b"")
    structure = body.translate(None, _NOT_STRUCTURE)
    if len(structure) <= limit:  # cannot nest deeper than it has brackets (most resources)
        return
    structure = structure.replace(b'""', b"")
    if b'"' in structure:
        structure = b"".join(structure.split(b'"')[::2])
    steps = map(operator.sub, structure.translate(_AS_STEPS), itertools.repeat(1))
    if max(itertools.accumulate(steps), default=0) > limit:
        raise FhirError("bad-request", f"malformed JSON: nested deeper than {limit} levels")


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abcdefABCDEF]")

_decoder = json.JSONDecoder(
    parse_float=Decimal,
    parse_int=_integer,
    parse_constant=_reject_constant,
    object_pairs_hook=_no_duplicates,
)


def loads(body: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON keeping decimal text; raise a 400 FhirError on anything malformed or nested
    deeper than `max_depth` (settings.max_json_depth)."""
    raw = body.encode("utf-8", "surrogatepass") if isinstance(body, str) else bytes(body)
    _check_depth(raw, max_depth)
    try:
        text = (body.decode("utf-8") if isinstance(body, bytes | bytearray) else body).lstrip()
        value, end = _decoder.raw_decode(text)
        if text[end:].strip():
            raise ValueError("extra data after the JSON value")
    except UnicodeDecodeError:
        raise FhirError("bad-request", "request body is not UTF-8") from None
    except _DuplicateKey as exc:
        raise FhirError("bad-request", f"malformed JSON: {exc}") from None
    except ValueError as exc:
        raise FhirError("bad-request", f"malformed JSON: {exc}") from None
    if _SURROGATE_ESCAPE.search(raw):
        # `\ud800` alone is JSON but no Unicode text (nor FHIR string); paired escapes are fine
        try:
            orjson.dumps(value, default=_default)
        except TypeError:
            raise FhirError("bad-request", "a JSON string holds a lone surrogate") from None
    return value


def check_nesting(value: Any, limit: int = MAX_DEPTH, level: int = 1) -> None:
    """The same 400 as `loads` for a parsed value nested deeper than `limit` (iteratively), its
    top at `level`: for values built from bodies rather than parsed, like what a JSON Patch
    places, whose `add` operations can each nest their value inside the last one."""
    pending = [(value, level)]
    while pending:
        node, depth = pending.pop()
        if depth > limit:
            raise FhirError("bad-request", f"the result is nested deeper than {limit} levels")
        if isinstance(node, dict):
            pending += [
                (item, depth + 1) for item in node.values() if isinstance(item, dict | list)
            ]
        elif isinstance(node, list):
            pending += [(item, depth + 1) for item in node if isinstance(item, dict | list)]


_stored_decoder = msgspec.json.Decoder(float_hook=Decimal)
_stored_fallback = json.JSONDecoder(parse_float=Decimal)


def loads_stored(text: str | bytes) -> Any:
    """Parse JSON this server wrote itself (stored versions) with the same lossless decimals.

    msgspec parses it about twice as fast as the standard library (6 against 13 us for the bench
    Observation; parsing was a third of `$progress`'s CPU) into the same values, Decimals with
    their digits included. There is no duplicate-key check: it is a Python call per object and
    cannot fail on our own output. The standard library is the fallback for anything msgspec
    refuses that it accepts (a lone surrogate escape, which orjson never writes)."""
    try:
        return _stored_decoder.decode(text)
    except msgspec.DecodeError:
        return _stored_fallback.decode(text if isinstance(text, str) else text.decode())


def _default(obj: Any) -> Any:
    if isinstance(obj, Decimal128):
        return orjson.Fragment(_decimal_text(obj.to_decimal()))
    if isinstance(obj, Decimal):
        return orjson.Fragment(_decimal_text(obj))
    raise TypeError(f"cannot serialize {type(obj).__name__}")


def _decimal_text(value: Decimal) -> str:
    # str(Decimal) is the shortest exact text: '72.50', '1E+2', '-0.5'; all are valid JSON numbers.
    return str(value)


def dumps(value: Any) -> bytes:
    """Serialize to JSON bytes, writing decimals exactly as they were received."""
    try:
        return orjson.dumps(value, default=_default)
    except TypeError:
        # orjson refuses integers beyond 64 bits without asking `_default`; they come from
        # parsing stored text (loads_stored keeps them as int) and are written as they were
        return orjson.dumps(_big_integers_as_text(value), default=_default)


def dumps_indented(value: Any) -> str:
    """JSON text indented by two spaces for people to read (the CLI), decimals as received.
    orjson writes decimal Fragments verbatim but cannot indent around them, so each decimal
    travels as a marked string, unquoted afterwards; the mark is new on every call."""
    mark = f"decimal-{uuid.uuid4().hex}:"

    def marked(node: Any) -> Any:
        if isinstance(node, Decimal128):
            node = node.to_decimal()
        if isinstance(node, Decimal):
            return mark + _decimal_text(node)
        if (
            isinstance(node, int)
            and not isinstance(node, bool)
            and not _INT_MIN <= node <= _INT_MAX
        ):
            return mark + str(node)
        if isinstance(node, dict):
            return {key: marked(item) for key, item in node.items()}
        if isinstance(node, list | tuple):
            return [marked(item) for item in node]
        return node

    text = orjson.dumps(marked(value), option=orjson.OPT_INDENT_2).decode()
    return re.sub(f'"{mark}([^"]*)"', r"\1", text)


def dumps_canonical(value: Any) -> bytes:
    """FHIR's canonical JSON (https://hl7.org/fhir/R4/json.html#canonical), what a signature is
    computed over: properties in alphabetical order, no whitespace between tokens, every value as
    `dumps` writes it (decimals with their digits)."""
    try:
        return orjson.dumps(value, default=_default, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        return orjson.dumps(
            _big_integers_as_text(value), default=_default, option=orjson.OPT_SORT_KEYS
        )


def _big_integers_as_text(value: Any) -> Any:
    if isinstance(value, dict):
        return {key: _big_integers_as_text(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_big_integers_as_text(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool) and not _INT_MIN <= value <= _INT_MAX:
        return orjson.Fragment(str(value))
    return value
