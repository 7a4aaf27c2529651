"""Lossless FHIR JSON: decimals keep their text, malformed input is a 400 (fhirgoal.core.jsonio)."""

from __future__ import annotations

import json
from decimal import Decimal

import pytest
from bson.decimal128 import Decimal128
from hypothesis import given, settings
from hypothesis import strategies as st

from fhirgoal.core import jsonio
from fhirgoal.core.errors import FhirError


@pytest.mark.parametrize("text", ["72.50", "-0.5", "1.000", "0.10", "0.0", "-12.340"])
def test_decimal_text_survives_loads_and_dumps(text: str) -> None:
    body = f'{{"valueDecimal":{text}}}'
    assert jsonio.dumps(jsonio.loads(body)) == body.encode()


def test_decimals_are_parsed_as_decimal_not_float() -> None:
    value = jsonio.loads(b'{"v": 72.50}')["v"]
    assert isinstance(value, Decimal)
    assert str(value) == "72.50"


def test_integers_stay_python_ints() -> None:
    parsed = jsonio.loads(b'{"count": 7, "big": 12345678901234567890, "neg": -3}')
    assert parsed == {"count": 7, "big": 12345678901234567890, "neg": -3}
    assert all(type(v) is int for v in parsed.values())
    assert jsonio.dumps(parsed) == b'{"count":7,"big":12345678901234567890,"neg":-3}'


def test_nested_decimals_in_arrays_keep_their_text() -> None:
    body = '{"component":[{"valueQuantity":{"value":1.50}},{"valueQuantity":{"value":2}}]}'
    assert jsonio.dumps(jsonio.loads(body)) == body.encode()


def test_other_json_values_round_trip() -> None:
    body = '{"a":"text ü","b":true,"c":false,"d":null,"e":[],"f":{}}'
    assert jsonio.dumps(jsonio.loads(body.encode())) == body.encode()


def test_loads_accepts_str_and_surrounding_whitespace() -> None:
    assert jsonio.loads('  \n{"a": 1}\n  ') == {"a": 1}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"id": "a", "id": "b"}', id="duplicate-key"),
        pytest.param(b'{"a": {"x": 1, "x": 1}}', id="nested-duplicate-key"),
        pytest.param(b'{"v": NaN}', id="nan"),
        pytest.param(b'{"v": Infinity}', id="infinity"),
        pytest.param(b'{"v": -Infinity}', id="minus-infinity"),
        pytest.param(b'{"a": 1} x', id="trailing-garbage"),
        pytest.param(b'{"a": 1}{"b": 2}', id="two-values"),
        pytest.param(b'{"a": "\xff"}', id="invalid-utf8"),
        pytest.param(b'{"a": [1, 2', id="truncated"),
        pytest.param(b"", id="empty"),
        pytest.param(b"{'a': 1}", id="single-quotes"),
    ],
)
def test_malformed_json_raises_bad_request(body: bytes) -> None:
    with pytest.raises(FhirError) as caught:
        jsonio.loads(body)
    assert caught.value.category == "bad-request"
    assert caught.value.status == 400


def test_duplicate_key_error_names_the_key() -> None:
    with pytest.raises(FhirError, match="'gender'"):
        jsonio.loads(b'{"gender": "male", "gender": "female"}')


def test_invalid_utf8_is_reported_as_encoding_problem() -> None:
    with pytest.raises(FhirError, match="UTF-8"):
        jsonio.loads(b'{"name": "\xc3\x28"}')


@pytest.mark.parametrize("text", ["72.50", "-0.5", "1.000", "0.10", "1E+2"])
def test_bson_decimal128_serializes_with_its_digits(text: str) -> None:
    assert jsonio.dumps({"v": Decimal128(text)}) == f'{{"v":{text}}}'.encode()


def test_decimal128_from_stored_document_matches_received_text() -> None:
    received = jsonio.loads(b'{"valueQuantity": {"value": 72.50}}')
    stored = {"valueQuantity": {"value": Decimal128(received["valueQuantity"]["value"])}}
    assert jsonio.dumps(stored) == b'{"valueQuantity":{"value":72.50}}'


def test_dumps_rejects_unknown_types() -> None:
    with pytest.raises(TypeError):
        jsonio.dumps({"v": object()})


def _digits(max_size: int) -> st.SearchStrategy[str]:
    return st.lists(st.sampled_from("0123456789"), max_size=max_size).map("".join)


def _decimal_texts() -> st.SearchStrategy[str]:
    integer = st.one_of(
        st.just("0"),
        st.builds(
            lambda first, rest: first + rest,
            st.sampled_from("123456789"),
            _digits(max_size=5),
        ),
    )
    fraction = _digits(max_size=6)
    sign = st.sampled_from(["", "-"])
    # A bare "-0" is a JSON integer, which Python reads as int 0; only decimals are covered here.
    return st.builds(
        lambda s, i, f: f"{s}{i}.{f}" if f else ("" if i == "0" else s) + i, sign, integer, fraction
    )


@settings(database=None)  # no example database written into the repository
@given(_decimal_texts())
def test_property_decimal_text_is_preserved_through_round_trips(text: str) -> None:
    body = f'{{"v":{text}}}'
    once = jsonio.loads(body)
    twice = jsonio.loads(jsonio.dumps(once))
    assert str(twice["v"]) == text
    assert jsonio.dumps(twice) == body.encode()


_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()  # beyond 64 bits as well (jsonio.dumps writes them as text)
    | st.decimals(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(_json_values)
def test_stored_json_parses_back_to_what_was_stored(value: object) -> None:
    """The fast parser of stored versions (msgspec) yields what the client parser yields, decimal
    digits included, for anything the server writes."""
    written = jsonio.dumps(value)
    expected = jsonio.loads(written)
    for text in (written.decode(), written):
        parsed = jsonio.loads_stored(text)
        assert parsed == expected
        assert jsonio.dumps(parsed) == written


def test_stored_json_falls_back_for_what_only_the_standard_parser_accepts() -> None:
    assert jsonio.loads_stored('{"a": "\\ud800", "v": 1.50}') == {
        "a": "\ud800",
        "v": Decimal("1.50"),
    }


def test_integers_beyond_64_bits_keep_their_text() -> None:
    """orjson and BSON stop at 64 bits; such a number (a legal R4 decimal) stays a Decimal when
    parsed from a request, and is written back digit for digit from either parser's result."""
    text = '{"v":[123456789012345678901234567890,-9223372036854775809,18446744073709551615]}'
    parsed = jsonio.loads(text)
    assert parsed["v"] == [Decimal("123456789012345678901234567890"),
                           Decimal("-9223372036854775809"), 18446744073709551615]  # fmt: skip
    assert jsonio.dumps(parsed) == text.encode()
    assert jsonio.dumps(jsonio.loads_stored(text)) == text.encode()


def _depth(value: object) -> int:
    if isinstance(value, dict):
        return 1 + max(map(_depth, value.values()), default=0)
    if isinstance(value, list):
        return 1 + max(map(_depth, value), default=0)
    return 0


_bracket_texts = st.text(alphabet='[]{}"\\ ,:ab', max_size=12)
_nested_values = st.recursive(
    st.none() | st.integers() | _bracket_texts,
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(_bracket_texts, children, max_size=3)
    ),
    max_leaves=30,
)


@settings(max_examples=400, deadline=None, database=None)
@given(_nested_values, st.integers(min_value=1, max_value=8), st.booleans())
def test_property_depth_limit_matches_the_nesting_strings_aside(
    value: object, limit: int, pretty: bool
) -> None:
    """Brackets, quotes and backslashes inside strings never count; the limit is exact."""
    text = json.dumps(value, indent=1 if pretty else None)
    if _depth(value) > limit:
        with pytest.raises(FhirError, match=f"nested deeper than {limit} levels"):
            jsonio.loads(text, max_depth=limit)
    else:
        assert jsonio.loads(text, max_depth=limit) == json.loads(text)


@pytest.mark.parametrize("depth", [101, 1000, 100_000])
def test_deep_nesting_is_refused_before_parsing(depth: int) -> None:
    for body in (b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth):
        with pytest.raises(FhirError, match="nested deeper than 100 levels"):
            jsonio.loads(body)
    with pytest.raises(FhirError):  # never closed: the parser must not descend into it
        jsonio.loads(b"[" * depth)


def test_lone_surrogate_escape_is_refused_and_a_pair_is_kept() -> None:
    with pytest.raises(FhirError, match="lone surrogate"):
        jsonio.loads(b'{"family": "\\ud800"}')
    assert jsonio.loads(b'{"family": "\\ud83d\\ude00"}') == {"family": "\U0001f600"}


def test_check_nesting_bounds_built_values() -> None:
    value: object = 1
    for _ in range(150):
        value = [value]
    with pytest.raises(FhirError, match="nested deeper than 100"):
        jsonio.check_nesting(value)
    jsonio.check_nesting(value, limit=150)
