"""FHIR instants (https://hl7.org/fhir/R4/datatypes.html#instant) at BSON's millisecond precision."""

from __future__ import annotations

import math
import time
from datetime import UTC, datetime


def now() -> datetime:
    moment = datetime.now(UTC)
    return moment.replace(microsecond=moment.microsecond // 1000 * 1000)


# The text of the last second formatted: strftime was most of an audited read's audit cost, and
# the instants a server writes (now, meta.lastUpdated, AuditEvent.recorded) mostly share seconds.
_last_second: tuple[float, str] = (math.nan, "")


def instant_text(moment: datetime) -> str:
    global _last_second
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    second = moment.timestamp() // 1
    cached, prefix = _last_second
    if second != cached:
        prefix = moment.strftime("%Y-%m-%dT%H:%M:%S")
        _last_second = (second, prefix)
    return f"{prefix}.{moment.microsecond // 1000:03d}Z"


_clock_second: tuple[int, str] = (-1, "")


def clock_text(nanoseconds: int) -> str:
    """The instant of a `time.time_ns()` reading, as `instant_text` would write it, at a tenth
    of the cost of building a datetime first: for texts stamped on every request (an audited
    read's AuditEvent.recorded). Each second is formatted once."""
    global _clock_second
    second, millisecond = divmod(nanoseconds // 1_000_000, 1000)
    cached, prefix = _clock_second
    if second != cached:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _clock_second = (second, prefix)
    return f"{prefix}.{millisecond:03d}Z"
