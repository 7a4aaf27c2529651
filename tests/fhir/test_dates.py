"""Date search values as half-open UTC ranges (fhirgoal.fhir.search.dates)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from fhirgoal.core.errors import FhirError
from fhirgoal.fhir.search.dates import PREFIXES, instant_filter, parse_range, split_prefix


def utc(
    year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0, us: int = 0
) -> datetime:
    return datetime(year, month, day, hour, minute, second, us, tzinfo=UTC)


def matches(condition: dict[str, Any], instant: datetime) -> bool:
    """Evaluate the MongoDB condition shapes instant_filter produces against one stored instant."""
    assert set(condition) <= {"$gte", "$lt", "$not"}, condition
    if "$not" in condition:
        return not matches(condition["$not"], instant)
    inside = True
    if "$gte" in condition:
        inside &= instant >= condition["$gte"]
    if "$lt" in condition:
        inside &= instant < condition["$lt"]
    return inside


# --- parse_range: partial precision -------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "start", "end"),
    [
        pytest.param("2026", utc(2026, 1, 1), utc(2027, 1, 1), id="year-covers-the-whole-year"),
        pytest.param("2026-03", utc(2026, 3, 1), utc(2026, 4, 1), id="month-covers-the-whole-month"),
        pytest.param("2026-12", utc(2026, 12, 1), utc(2027, 1, 1),
                     id="december-rolls-over-into-january-of-the-next-year"),
        pytest.param("2028-02-29", utc(2028, 2, 29), utc(2028, 3, 1),
                     id="february-of-a-leap-year-ends-on-march-first"),
        pytest.param("2026-03-15", utc(2026, 3, 15), utc(2026, 3, 16), id="day-covers-one-day"),
        pytest.param("2026-12-31", utc(2026, 12, 31), utc(2027, 1, 1),
                     id="last-day-of-year-ends-at-next-new-year"),
        pytest.param("2026-03-15T10:30Z", utc(2026, 3, 15, 10, 30), utc(2026, 3, 15, 10, 31),
                     id="minutes-precision-covers-one-minute"),
        pytest.param("2026-03-15T10:30:05Z", utc(2026, 3, 15, 10, 30, 5),
                     utc(2026, 3, 15, 10, 30, 6), id="seconds-precision-covers-one-second"),
        pytest.param("2026-03-15T10:30:05.1234567Z", utc(2026, 3, 15, 10, 30, 5, 123_456),
                     utc(2026, 3, 15, 10, 30, 5, 123_457),
                     id="fractional-seconds-beyond-microseconds-are-truncated-to-one-microsecond"),
        pytest.param("2026-03-15T10:00+02:00", utc(2026, 3, 15, 8, 0), utc(2026, 3, 15, 8, 1),
                     id="positive-offset-is-converted-to-utc"),
        pytest.param("2026-03-15T10:00-05:30", utc(2026, 3, 15, 15, 30),
                     utc(2026, 3, 15, 15, 31),
                     id="negative-offset-with-half-hour-is-converted-to-utc"),
    ],
)  # fmt: skip
def test_a_partial_value_covers_one_unit_of_its_precision(
    text: str, start: datetime, end: datetime
) -> None:
    assert parse_range(text) == (start, end)


def test_fractional_seconds_cover_one_unit_of_the_last_digit() -> None:
    assert parse_range("2026-03-15T10:30:05.5Z") == (
        utc(2026, 3, 15, 10, 30, 5, 500_000),
        utc(2026, 3, 15, 10, 30, 5, 600_000),
    )
    assert parse_range("2026-03-15T10:30:05.123Z") == (
        utc(2026, 3, 15, 10, 30, 5, 123_000),
        utc(2026, 3, 15, 10, 30, 5, 124_000),
    )


def test_offset_can_move_the_instant_into_the_previous_month() -> None:
    assert parse_range("2026-04-01T00:00+02:00")[0] == utc(2026, 3, 31, 22, 0)


def test_z_and_missing_zone_both_mean_utc() -> None:
    assert parse_range("2026-03-15T10:00:00Z") == parse_range("2026-03-15T10:00:00")
    assert parse_range("2026-03-15T10:00:00Z")[0].utcoffset() == timedelta(0)


def test_returned_bounds_are_always_utc_aware() -> None:
    for text in ("2026", "2026-03", "2026-03-15", "2026-03-15T10:00-05:30"):
        lo, hi = parse_range(text)
        assert lo.tzinfo is UTC and hi.tzinfo is UTC


# --- parse_range: invalid input -----------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "2026-13",  # month 13
        "2026-00",  # month 0
        "2026-02-30",  # no such day
        "2027-02-29",  # not a leap year
        "yesterday",
        "2026-1-5",  # digits not padded
        "26-03-01",
        "2026-03-15T25:00Z",  # hour 25
        "2026-03-15T10:00:61Z",
        "2026-03-15T10Z",  # hour without minutes
        "2026-03-15Z",  # zone without a time
        "2026-03-15T10:00+2:00",
        "2026-03-15 10:00",
        "",
        " 2026",
        "2026-03-15T10:00+25:00",  # offset beyond a day
    ],
)
def test_invalid_dates_raise_bad_request(text: str) -> None:
    with pytest.raises(FhirError) as caught:
        parse_range(text)
    assert caught.value.category == "bad-request"
    assert caught.value.status == 400


def test_offset_minutes_out_of_range_are_rejected() -> None:
    with pytest.raises(FhirError):
        parse_range("2026-03-15T10:00+02:60")


def test_last_representable_day_is_an_open_ended_range() -> None:
    start, end = parse_range("9999-12-31")
    assert start == datetime(9999, 12, 31, tzinfo=UTC)
    assert end > start


# --- split_prefix -------------------------------------------------------------------------------


@pytest.mark.parametrize("prefix", PREFIXES)
def test_split_prefix_recognizes_every_fhir_prefix(prefix: str) -> None:
    assert split_prefix(f"{prefix}2026-03") == (prefix, "2026-03")


def test_prefixes_are_the_nine_fhir_comparators() -> None:
    assert set(PREFIXES) == {"eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"}


def test_value_without_prefix_means_eq() -> None:
    assert split_prefix("2026-03") == ("eq", "2026-03")


def test_unknown_letters_are_not_taken_as_a_prefix() -> None:
    assert split_prefix("xx2026") == ("eq", "xx2026")


def test_a_bare_prefix_with_no_value_is_left_as_the_value() -> None:
    assert split_prefix("ge") == ("eq", "ge")


# --- instant_filter -----------------------------------------------------------------------------


def test_eq_month_is_half_open_month_range() -> None:
    assert instant_filter("eq", "2026-03") == {"$gte": utc(2026, 3, 1), "$lt": utc(2026, 4, 1)}


def test_ge_starts_at_the_range_start() -> None:
    assert instant_filter("ge", "2026-03") == {"$gte": utc(2026, 3, 1)}


def test_gt_starts_after_the_whole_range() -> None:
    assert instant_filter("gt", "2026-03") == {"$gte": utc(2026, 4, 1)}


def test_le_ends_with_the_whole_range() -> None:
    assert instant_filter("le", "2026-03") == {"$lt": utc(2026, 4, 1)}


def test_lt_ends_before_the_range_starts() -> None:
    assert instant_filter("lt", "2026-03") == {"$lt": utc(2026, 3, 1)}


def test_sa_and_eb_behave_like_gt_and_lt_for_instants() -> None:
    assert instant_filter("sa", "2026-03") == instant_filter("gt", "2026-03")
    assert instant_filter("eb", "2026-03") == instant_filter("lt", "2026-03")


def test_ne_negates_the_eq_range() -> None:
    assert instant_filter("ne", "2026-03") == {
        "$not": {"$gte": utc(2026, 3, 1), "$lt": utc(2026, 4, 1)}
    }


def test_ap_widens_the_range_on_both_sides() -> None:
    lo, hi = utc(2026, 3, 1), utc(2026, 4, 1)
    condition: dict[str, Any] = instant_filter("ap", "2026-03")
    assert set(condition) == {"$gte", "$lt"}
    width = hi - lo
    assert condition["$gte"] <= lo - width
    assert condition["$lt"] >= hi + width


def test_ap_slack_grows_with_distance_from_now() -> None:
    before = datetime.now(UTC)
    lo = utc(2000, 1, 1)
    condition: dict[str, Any] = instant_filter("ap", "2000-01-01")
    assert condition["$gte"] <= lo - (before - lo) * 0.1
    assert condition["$gte"] < utc(1998, 1, 1)


def test_invalid_value_in_filter_raises_bad_request() -> None:
    with pytest.raises(FhirError) as caught:
        instant_filter("ge", "2026-13")
    assert caught.value.category == "bad-request"


# --- the boundary example ---------------------------------------------------------------

STORED = {
    "feb-28-late": parse_range("2026-02-28T23:59Z")[0],
    "mar-15": parse_range("2026-03-15")[0],
    "apr-01-in-+02:00": parse_range("2026-04-01T00:00+02:00")[0],  # = 2026-03-31T22:00Z
}


def selected(prefix: str, value: str) -> set[str]:
    condition = instant_filter(prefix, value)
    return {name for name, instant in STORED.items() if matches(condition, instant)}


def test_boundary_example_stored_instants_are_utc() -> None:
    assert STORED["apr-01-in-+02:00"] == utc(2026, 3, 31, 22, 0)
    assert STORED["feb-28-late"] == utc(2026, 2, 28, 23, 59)


def test_boundary_example_eq_month_selects_only_instants_inside_march_utc() -> None:
    assert selected("eq", "2026-03") == {"mar-15", "apr-01-in-+02:00"}


def test_boundary_example_ne_month_selects_the_complement() -> None:
    assert selected("ne", "2026-03") == {"feb-28-late"}


def test_boundary_example_ordered_prefixes() -> None:
    assert selected("ge", "2026-03") == {"mar-15", "apr-01-in-+02:00"}
    assert selected("le", "2026-03") == set(STORED)
    assert selected("lt", "2026-03") == {"feb-28-late"}
    assert selected("gt", "2026-03") == set()
    assert selected("gt", "2026-02") == {"mar-15", "apr-01-in-+02:00"}


def test_boundary_example_day_precision_with_offset() -> None:
    # 2026-04-01T00:00+02:00 is still March 31st in UTC
    assert selected("eq", "2026-03-31") == {"apr-01-in-+02:00"}
    assert selected("eq", "2026-04-01") == set()
