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


_now_second: tuple[int, str] = (-1, "")


def now_text() -> str:
    """`instant_text(now())` at a tenth of its cost, for a text stamped on every request (an
    audited read's AuditEvent.recorded): one clock reading in whole milliseconds, and the second
    formatted once per second."""
    global _now_second
    second, millisecond = divmod(time.time_ns() // 1_000_000, 1000)
    cached, prefix = _now_second
    if second != cached:
        prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        _now_second = (second, prefix)
    return f"{prefix}.{millisecond:03d}Z"
