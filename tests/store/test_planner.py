"""The planner's flat, index-first filters (fhirgoal.store.planner): one index over every search
key drives each search, and a shaped filter matches exactly what the original does, on the real
database."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from pymongo import ASCENDING

from fhirgoal.store.mongo import connect
from fhirgoal.store.planner import driving_field, search_keys, shape

LIVE = {"del": {"$ne": True}}


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
    assert driving_field(query) == "tok"
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
            copies = {f"{name}x": keys for name, keys in index.items()}  # as index.py stores
            docs.append({"_id": str(n), **index, **copies, "ix": search_keys(index)})
        await collection.insert_many(docs)
        expected = {d["_id"] async for d in collection.find(query, {"_id": 1})}
        shaped = {d["_id"] async for d in collection.find(shape(query), {"_id": 1})}
        assert shaped == expected and expected
    finally:
        await client.drop_database(db_name)
        await client.close()


def test_one_condition_per_indexed_field_keeps_its_field_and_leads_by_rank() -> None:
    query = {"$and": [{"tok": {"$in": ["code#x"]}}, {"ref": {"$in": ["patient=Patient/1"]}}, LIVE]}
    flat = shape(query)
    assert flat == {
        "ix": {"$in": ["ref:patient=Patient/1"]},
        "ref": {"$in": ["patient=Patient/1"]},
        "tok": {"$in": ["code#x"]},
        **LIVE,
    }
    assert driving_field(query) == "ref"


def test_further_conditions_on_a_field_with_a_copy_move_to_the_copy() -> None:
    query = {
        "$and": [
            {"tok": {"$gte": "code#", "$lt": "code$"}},  # a system-only token: a broad range
            {"tokx": {"$in": ["code@http://a"]}},
            {"tok": {"$in": ["status#final"]}},
            {"tokx": {"$nin": ["category#x"]}},
            {"tok": "category#y"},
            LIVE,
        ]
    }
    flat = shape(query)
    assert flat["ix"] == {"$in": ["tok:status#final"]}  # not the range
    assert flat["tok"] == {"$in": ["status#final"]}
    assert flat["tokx"] == {
        "$nin": ["category#x"],
        "$all": [
            {"$elemMatch": {"$in": ["code@http://a"]}},
            {"$elemMatch": {"$gte": "code#", "$lt": "code$"}},
            {"$elemMatch": {"$eq": "category#y"}},
        ],
    }
    assert "$and" not in flat


def test_fields_without_a_copy_merge_their_conditions_and_lose_the_lead() -> None:
    query = {
        "$and": [{"dtlo": {"$gte": "date|a"}}, {"dtlo": {"$lt": "date|b"}}, {"comp": "Patient/1"}]
    }
    assert driving_field(query) == "comp"
    assert shape(query)["dtlo"] == {
        "$all": [{"$elemMatch": {"$gte": "date|a"}}, {"$elemMatch": {"$lt": "date|b"}}]
    }


def test_an_equality_leads_a_range_on_a_better_ranked_field() -> None:
    query = {"dtlo": {"$gte": "date|2026", "$lt": "date|2027"}, "comp": "Patient/1", **LIVE}
    assert driving_field(query) == "comp"
    query = {"num": {"$gte": "value-quantity|#a"}, "str": {"$in": ["name|x"]}}
    assert driving_field(query) == "str"


def test_unindexed_fields_never_drive() -> None:
    assert driving_field({"miss": "focus", **LIVE}) is None
    assert driving_field({"tokx": {"$in": ["code|s|x"]}, "miss": "focus"}) is None
    assert driving_field({"miss": "focus", "ref": "patient=Patient/1"}) == "ref"
