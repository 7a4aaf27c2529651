"""Instant text (https://hl7.org/fhir/R4/datatypes.html#instant): the cached formatting of
fhir/instants.py gives the same text as formatting each moment in full."""

from __future__ import annotations

import re
import time
from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from fhirgoal.fhir.instants import clock_text, instant_text, now

INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")

moments = st.datetimes(
    min_value=datetime(1, 1, 2), max_value=datetime(9998, 12, 30),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=-5)), timezone(timedelta(hours=9, minutes=30))]),
)  # fmt: skip


@given(st.lists(moments, min_size=1, max_size=20))
def test_instant_text_is_the_full_formatting_whatever_came_before(seq: list[datetime]) -> None:
    for moment in seq:  # each moment after others: the cached second must not leak
        utc = moment.astimezone(UTC)
        expected = utc.strftime("%Y-%m-%dT%H:%M:%S") + f".{utc.microsecond // 1000:03d}Z"
        assert instant_text(moment) == expected


def test_clock_text_reads_the_clock_like_instant_text_of_now() -> None:
    for _ in range(2000):  # across millisecond and (likely) second boundaries
        before = instant_text(now())
        text = clock_text(time.time_ns())
        after = instant_text(now())
        assert INSTANT.match(text), text
        assert before <= text <= after


@given(moments)
def test_clock_text_of_any_moment_is_its_instant_text(moment: datetime) -> None:
    utc = moment.astimezone(UTC).replace(microsecond=moment.microsecond // 1000 * 1000)
    nanoseconds = (utc - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1) * 1000
    assert clock_text(nanoseconds + 999_999) == instant_text(utc)
