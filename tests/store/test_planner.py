"""The planner's flat, index-first filters (fhirgoal.store.planner)."""

from __future__ import annotations

from fhirgoal.store.planner import driving_field, shape

LIVE = {"del": {"$ne": True}}


def test_one_condition_per_indexed_field_keeps_its_field_and_leads_by_rank() -> None:
    query = {"$and": [{"tok": {"$in": ["code#x"]}}, {"ref": {"$in": ["patient=Patient/1"]}}, LIVE]}
    flat = shape(query)
    assert flat == {"ref": "patient=Patient/1", "tok": "code#x", **LIVE}
    assert list(flat) == ["ref", "tok", "del"]
    assert driving_field(query) == "ref"


def test_a_one_value_in_is_sent_as_its_equality_and_nothing_else_is() -> None:
    """The same matches either way; the embedded database checks an equality for less."""
    assert shape({"ref": {"$in": ["subject=Patient/1"]}}) == {"ref": "subject=Patient/1"}
    assert shape({"_id": {"$in": ["a"]}}) == {"_id": "a"}
    several = {"$in": ["code#a", "code#b"]}
    assert shape({"tok": several}) == {"tok": several}
    assert shape({"_id": {"$in": []}}) == {"_id": {"$in": []}}  # matches nothing: stays so
    assert shape({"comp": {"$in": [[]]}}) == {"comp": {"$in": [[]]}}  # an empty array, not a key
    assert shape({"tok": {"$in": [{"$gt": "x"}]}}) == {"tok": {"$in": [{"$gt": "x"}]}}
    # the one further condition moved to a copy is the copy's only test: an equality there too
    flat = shape({"tok": {"$in": ["code#a"]}, "$and": [{"tok": {"$in": ["status#final"]}}]})
    assert flat == {"tok": "code#a", "tokx": "status#final"}


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
    assert next(iter(flat)) == "tok" and flat["tok"] == "status#final"  # not the range
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


def test_a_positive_index_test_excludes_tombstones_by_itself() -> None:
    """A tombstone's index fields are empty arrays, so a positive test on one never matches it;
    a test that an empty array passes, a negation or a non-index driver needs the `del` test."""
    from fhirgoal.store.planner import excludes_tombstones

    assert excludes_tombstones(shape({"ref": "subject=Patient/1"}))
    assert excludes_tombstones(shape({"ref": {"$in": ["subject=Patient/1"]}, "lu": {"$gt": 1}}))
    assert excludes_tombstones(shape({"dtlo": {"$lt": "date|2026"}}))
    assert not excludes_tombstones(shape({"comp": {"$in": ["Patient/1", []]}}))
    assert not excludes_tombstones(shape({"ref": {"$nin": ["subject=Patient/1"]}}))
    assert not excludes_tombstones(shape({"_id": "abc"}))
    assert not excludes_tombstones(shape({"lu": {"$gt": 1}}))
    assert not excludes_tombstones(shape({}))
