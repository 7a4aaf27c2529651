"""A read by id finds the same document whether or not the client retries reads (a cursor, or
one `find` command: fhirgoal.store.batching)."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from fhirgoal.store.batching import BatchedCollectionOps
from fhirgoal.store.mongo import CODEC_OPTIONS


@pytest.mark.parametrize("retry_reads", [True, False])
async def test_find_by_id_applies_the_filter_and_projection(
    mongo_uri: str, retry_reads: bool
) -> None:
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(mongo_uri, retryReads=retry_reads)
    db = client.get_database(f"test_{uuid.uuid4().hex[:12]}", codec_options=CODEC_OPTIONS)
    try:
        collection = db["Observation"]
        await collection.insert_one({"_id": "o1", "v": 2, "comp": ["Patient/p1"], "tok": ["x"]})
        ops = BatchedCollectionOps()
        found = await ops.find_by_id(collection, "o1", {}, {"tok": 0})
        assert found == {"_id": "o1", "v": 2, "comp": ["Patient/p1"]}
        assert await ops.find_by_id(collection, "o1", {"comp": "Patient/p1"}, {"tok": 0})
        assert await ops.find_by_id(collection, "o1", {"comp": "Patient/p2"}, {"tok": 0}) is None
        assert await ops.find_by_id(collection, "missing", {}, {"tok": 0}) is None
    finally:
        await client.drop_database(db.name)
        await client.close()
