"""Order-preserving string keys, so that every search parameter type is served by the same kind
of index: a multikey index over strings "param|key", queried with ranges.

https://hl7.org/fhir/R4/search.html#string , #date , #number , #quantity . Strings are folded
(case- and accent-insensitive, search.html#string); instants become fixed-width UTC text; numbers
become 16 hex digits whose lexical order is their numeric order (IEEE-754 bits with the sign
handled), so `gt`, `le`, ranges and sorting are plain string comparisons.
"""

from __future__ import annotations

import struct
import unicodedata
from datetime import UTC, datetime
from decimal import Decimal

NEG_INFINITY = ""  # sorts before every instant
POS_INFINITY = "~"  # sorts after every instant


def fold(text: str) -> str:
    """Case- and accent-insensitive form with whitespace collapsed ('Éric  Müller' -> 'eric muller')."""
    decomposed = unicodedata.normalize("NFKD", text)
    stripped = "".join(ch for ch in decomposed if not unicodedata.combining(ch))
    return " ".join(stripped.casefold().split())


def instant_key(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def number_key(value: float | Decimal | int) -> str:
    bits = int.from_bytes(struct.pack(">d", float(value)), "big")
    bits = (~bits & 0xFFFF_FFFF_FFFF_FFFF) if bits >> 63 else (bits | 1 << 63)
    return f"{bits:016x}"
