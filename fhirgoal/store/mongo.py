"""Connecting to MongoDB with PyMongo's native async client.

https://pymongo.readthedocs.io/en/stable/async-tutorial.html . Decimals (parsed from FHIR JSON with
their precision) are encoded as BSON Decimal128 through the codec, so no document is walked twice.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from bson.codec_options import CodecOptions, TypeEncoder, TypeRegistry
from bson.decimal128 import Decimal128
from pymongo import AsyncMongoClient


class _DecimalEncoder(TypeEncoder):
    python_type = Decimal

    def transform_python(self, value: Any) -> Decimal128:
        return Decimal128(value)


CODEC_OPTIONS: CodecOptions[dict[str, Any]] = CodecOptions(
    tz_aware=True, type_registry=TypeRegistry([_DecimalEncoder()])
)


def connect(uri: str) -> AsyncMongoClient[dict[str, Any]]:
    """An async client; the URI carries topology, TLS and write-concern options."""
    return AsyncMongoClient(
        uri,
        tz_aware=True,
        type_registry=CODEC_OPTIONS.type_registry,
        serverSelectionTimeoutMS=10_000,
        appname="fhirgoal",
    )
