"""Last-Modified is an RFC 9110 IMF-fixdate of the version's instant, in GMT."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from email.utils import format_datetime

import pytest

from fhirgoal.fhir.bundles import http_date
from fhirgoal.store.repository import Version


@pytest.mark.parametrize(
    "moment",
    [
        datetime(2026, 1, 5, 0, 30, 0, 120_000, tzinfo=timezone(timedelta(hours=1))),
        datetime(2026, 12, 31, 23, 59, 59, 999_999, tzinfo=timezone(timedelta(hours=-11))),
        datetime(2028, 2, 29, 12, 0, tzinfo=UTC),
    ],
)
def test_http_date_is_the_imf_fixdate_of_the_instant(moment: datetime) -> None:
    version = Version("Patient", "p1", 1, moment, "POST", "{}")
    expected = format_datetime(moment.astimezone(UTC), usegmt=True)
    assert http_date(version) == expected


def test_the_example_of_rfc_9110() -> None:
    moment = datetime(1994, 11, 6, 8, 49, 37, tzinfo=UTC)
    assert http_date(Version("Patient", "p1", 1, moment, "POST", "{}")) == (
        "Sun, 06 Nov 1994 08:49:37 GMT"
    )
