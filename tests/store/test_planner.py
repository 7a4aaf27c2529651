"""Filter shaping (store/planner.py): one index over every search key drives each search, and the
shaped filter matches exactly what the original does, on the real database."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from pymongo import ASCENDING

from fhirgoal.store.mongo import connect
from fhirgoal.store.planner import driving_field, search_keys, shape


def test_search_keys_prefix_each_key_with_its_field() -> None:
    index = {"tok": ["code#a", "status#final"], "ref": ["subject=Patient/1"], "srt": {"x": "y"}}
    assert search_keys(index) == ["tok:code#a", "tok:status#final", "ref:subject=Patient/1"]


def test_the_most_selective_condition_drives_through_ix_and_stays_as_a_check() -> None:
    query = {"$and": [{"tok": {"$in": ["code#a"]}}, {"ref": "subject=Patient/1"}]}
    flat = shape(query)
    assert next(iter(flat)) == "ix"
    assert flat["ix"] == "ref:subject=Patient/1"
    assert flat["ref"] == "subject=Patient/1" and flat["tok"] == {"$in": ["code#a"]}


def test_two_conditions_on_one_field_still_have_a_driver() -> None:
    # merged into $all on `tok`, which no index serves alone: one of them drives through `ix`
    query = {"$and": [{"tok": "code#a"}, {"tok": "status#final"}]}
    assert driving_field(query) == "ix"
    assert shape(query)["ix"] in ("tok:code#a", "tok:status#final")


def test_ranges_keep_their_order_within_the_field() -> None:
    flat = shape({"dtlo": {"$gte": "date|2026-03", "$lt": "date|2026-04"}})
    assert flat["ix"] == {"$gte": "dtlo:date|2026-03", "$lt": "dtlo:date|2026-04"}
    one_sided = shape({"num": {"$gt": "v|#8"}})
    assert one_sided["ix"] == {"$gt": "num:v|#8", "$lt": "num;"}


def test_an_id_drives_without_the_search_keys() -> None:
    flat = shape({"tok": "code#a", "_id": "x"})
    assert next(iter(flat)) == "_id" and "ix" not in flat


@pytest.mark.parametrize(
    "query",
    [
        {"tok": "code#a"},
        {"$and": [{"tok": "code#a"}, {"tok": "status#final"}]},
        {"num": {"$gt": "v|#5"}},
        {"num": {"$gte": "v|#", "$lt": "v|#5"}},
        {"tok": {"$in": ["code#a", "code#b"]}, "ref": {"$in": ["subject=Patient/2"]}},
        {"tok": {"$nin": ["code#a"]}, "ref": "subject=Patient/1"},
    ],
)
async def test_shaped_filters_match_the_same_documents(
    mongo_uri: str, query: dict[str, Any]
) -> None:
    db_name = f"test_{uuid.uuid4().hex[:12]}"
    client = connect(mongo_uri)
    try:
        collection = client[db_name]["shapes"]
        await collection.create_index([("ix", ASCENDING)])
        docs = []
        for n, (codes, nums, patient) in enumerate(
            [
                (["code#a", "status#final"], ["v|#3"], "1"),
                (["code#a"], ["v|#7"], "2"),
                (["code#b", "status#final"], ["v|#5", "v|#9"], "1"),
                (["status#final"], [], "2"),
            ]
        ):
            index = {"tok": codes, "num": nums, "ref": [f"subject=Patient/{patient}"]}
            docs.append({"_id": str(n), **index, "ix": search_keys(index)})
        await collection.insert_many(docs)
        expected = {d["_id"] async for d in collection.find(query, {"_id": 1})}
        shaped = {d["_id"] async for d in collection.find(shape(query), {"_id": 1})}
        assert shaped == expected and expected
    finally:
        await client.drop_database(db_name)
        await client.close()
