"""FHIR date search values as half-open ranges: https://hl7.org/fhir/R4/search.html#date

A value such as `2026-03` means the whole month; prefixes compare the searched range with the
resource's range. Partial dates without a time zone are taken as UTC.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

from fhirgoal.core.errors import FhirError

PREFIXES = ("eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap")
_DATE = re.compile(
    r"^(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})(?:T(?P<H>\d{2}):(?P<M>\d{2})"
    r"(?::(?P<S>\d{2})(?P<f>\.\d+)?)?(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?$"
)


def split_prefix(value: str) -> tuple[str, str]:
    if len(value) > 2 and value[:2] in PREFIXES and not value[:2].isdigit():
        return value[:2], value[2:]
    return "eq", value


_END_OF_TIME = datetime.max.replace(tzinfo=UTC)


def _after(
    start: datetime, step: timedelta | None = None, year: int = 0, month: int = 1
) -> datetime:
    """The end of a range starting at `start` (a step, or the first of a later year/month); a
    range ending after year 9999 is open-ended."""
    try:
        return start + step if step is not None else start.replace(year=year, month=month)
    except (OverflowError, ValueError):
        return _END_OF_TIME


def parse_range(text: str) -> tuple[datetime, datetime]:
    """'2026-03' -> [2026-03-01T00:00Z, 2026-04-01T00:00Z)."""
    m = _DATE.match(text)
    if not m:
        raise FhirError("bad-request", f"'{text}' is not a FHIR date, dateTime or instant")
    try:
        year = int(m["y"])
        if m["m"] is None:
            start = datetime(year, 1, 1, tzinfo=UTC)
            return start, _after(start, year=year + 1)
        month = int(m["m"])
        if m["d"] is None:
            start = datetime(year, month, 1, tzinfo=UTC)
            return start, _after(start, year=year + (month == 12), month=month % 12 + 1)
        day = int(m["d"])
        if m["H"] is None:
            start = datetime(year, month, day, tzinfo=UTC)
            return start, _after(start, timedelta(days=1))
        tz: timezone = UTC
        if m["tz"] and m["tz"] != "Z":
            sign = 1 if m["tz"][0] == "+" else -1
            hours, minutes = int(m["tz"][1:3]), int(m["tz"][4:6])
            if hours > 14 or minutes > 59:
                raise ValueError(f"time-zone offset {m['tz']} is out of range")
            tz = timezone(sign * timedelta(hours=hours, minutes=minutes))
        seconds = int(m["S"]) if m["S"] else 0
        micros = int((m["f"] or ".0")[1:7].ljust(6, "0"))
        start = datetime(year, month, day, int(m["H"]), int(m["M"]), seconds, micros, tzinfo=tz)
        if m["f"]:
            step = timedelta(microseconds=10 ** (6 - min(len(m["f"]) - 1, 6)))
        elif m["S"]:
            step = timedelta(seconds=1)
        else:
            step = timedelta(minutes=1)
        return start.astimezone(UTC), _after(start, step).astimezone(UTC)
    except (ValueError, OverflowError) as exc:
        raise FhirError("bad-request", f"'{text}' is not a valid date: {exc}") from None


def instant_filter(prefix: str, text: str) -> dict[str, object]:
    """A MongoDB condition on a stored instant (a point in time) for one prefixed search value."""
    lo, hi = parse_range(text)
    if prefix == "eq":
        return {"$gte": lo, "$lt": hi}
    if prefix in ("gt", "sa"):
        return {"$gte": hi}
    if prefix in ("lt", "eb"):
        return {"$lt": lo}
    if prefix == "ge":
        return {"$gte": lo}
    if prefix == "le":
        return {"$lt": hi}
    if prefix == "ap":  # approximately: the range widened by 10% of its distance from now
        slack = max(abs(datetime.now(UTC) - lo) * 0.1, hi - lo)
        return {"$gte": lo - slack, "$lt": hi + slack}
    return {"$not": {"$gte": lo, "$lt": hi}}  # ne
