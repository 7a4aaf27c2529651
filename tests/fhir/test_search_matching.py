"""In-memory matching of a stored version against a compiled search (fhir/search/matching.py)
agrees with the database running the same search: each search below is run over HTTP, and its
compiled filter is tested against every stored document, index fields as stored."""

from __future__ import annotations

from decimal import Decimal
from typing import Any
from urllib.parse import parse_qsl

import pytest

from fhirgoal.fhir.search.matching import UnsupportedFilter, check, matches
from fhirgoal.store.mongo import connect
from tests.conftest import RunningServer
from tests.helpers import create, observation, patient

SEARCHES = [
    "code=http://loinc.org|29463-7",
    "code=8302-2,9999-9",
    "code:not=29463-7",
    "value-quantity=gt70",
    "value-quantity=le70|http://unitsofmeasure.org|kg",
    "date=ge2026-01-05",
    "date=lt2026-01-05T00:00:00Z",
    "status=final&code=8302-2",
    "subject:missing=true",
    "code:text=body height",
    "_id=obs-a,obs-c",
]


@pytest.mark.parametrize("query", SEARCHES)
async def test_matching_agrees_with_the_database(fhir: RunningServer, query: str) -> None:
    pid = (await create(fhir.client, patient()))["id"]
    variants = [
        ("obs-a", "72.50", "29463-7", "2026-01-05T10:00:00+01:00", True),
        ("obs-b", "65.0", "29463-7", "2026-01-04", True),
        ("obs-c", "181", "8302-2", "2026-02-01T08:00:00Z", True),
        ("obs-d", "70", "29463-7", "2025-12-31", False),
    ]
    for rid, value, code, when, with_subject in variants:
        resource = observation(pid, value, id=rid, effectiveDateTime=when)
        resource["code"]["coding"][0]["code"] = code
        if code == "8302-2":
            resource["code"]["text"] = "Body height"
        if not with_subject:
            del resource["subject"]
        response = await fhir.client.put(f"/Observation/{rid}", json=resource)
        assert response.status_code == 201, response.text

    bundle = (await fhir.client.get(f"/Observation?{query}&_count=50")).json()
    expected = sorted(e["resource"]["id"] for e in bundle.get("entry", []))

    service = fhir.app.state.fhir
    compiled = service.engine.compiler("Observation").compile(parse_qsl(query), fhir.base)
    mongo = connect(fhir.settings.mongodb_uri or "")
    try:
        docs = [doc async for doc in mongo[fhir.settings.db]["Observation"].find({})]
    finally:
        await mongo.close()
    try:
        check(compiled.filter)  # what the compiler makes is matchable, checked up front too
        found = sorted(doc["_id"] for doc in docs if matches(doc, compiled.filter))
    except UnsupportedFilter as error:
        pytest.fail(f"{query}: {error}")
    assert found == expected, (query, compiled.filter)
    assert 0 < len(expected) < 4, (query, expected)  # a search that tells documents apart
    assert len(docs) == 4


def test_array_semantics_follow_mongodb() -> None:
    doc = {"tok": ["a", "b"], "num": [1, 5]}
    assert matches(doc, {"tok": "a"})
    assert not matches(doc, {"tok": {"$nin": ["b"]}})
    assert matches(doc, {"num": {"$gt": 4, "$lt": 2}})  # each bound met by some element
    assert not matches(doc, {"num": {"$elemMatch": {"$gt": 4, "$lt": 2}}})  # not by one
    assert matches(doc, {"missing": {"$exists": False}})
    with pytest.raises(UnsupportedFilter):
        matches(doc, {"$where": "true"})


def test_check_finds_an_unsupported_operator_matching_would_skip() -> None:
    """`matches` meets an operator only on the documents that get that far; `check` looks at the
    whole filter, wherever the operator hides."""
    doc = {"tok": ["a"], "num": [1]}
    for hidden in [
        {"$and": [{"tok": "zzz"}, {"num": {"$size": 1}}]},
        {"tok": "zzz", "$expr": {"$eq": [1, 1]}},
        {"$or": [{"tok": "a"}, {"num": {"$not": {"$mod": [2, 0]}}}]},
        {"tok": "zzz", "ref": {"$elemMatch": {"$type": "string"}}},
        {"tok": "zzz", "ref": {"$all": [{"$elemMatch": {"x": {"$where": "1"}}}]}},
    ]:
        assert not matches(doc, hidden) or "$or" in hidden  # never reached the operator
        with pytest.raises(UnsupportedFilter):
            check(hidden)
    check({"$nor": [{"num": {"$gte": 2, "$not": {"$in": [3]}}}], "tok": {"$all": ["a"]}})


def test_a_long_in_list_matches_as_its_values_one_by_one() -> None:
    """A long `$in` (a caseload's patients in a Subscription's reach) is tested by hashing its
    strings; it agrees with testing each of its values alone (the direct comparison)."""
    many: list[Any] = [f"Patient/{i}" for i in range(20)] + [[], 7, Decimal("2.5"), None]
    values: list[Any] = ["Patient/3", "Patient/30", [], ["Patient/19"], ["x", "Patient/0"], 7]
    values += [7.0, "7", None, Decimal("2.50"), [Decimal("2.5")], [[]], ["Patient/3x"], True]
    docs: list[dict[str, Any]] = [*({"f": v} for v in values), {}]
    for doc in docs:
        expected = any(matches(doc, {"f": {"$in": [one]}}) for one in many)
        assert matches(doc, {"f": {"$in": many}}) == expected, doc
        assert matches(doc, {"f": {"$nin": many}}) == (not expected), doc
    assert matches({"f": "Patient/3"}, {"f": {"$in": many}})
    assert not matches({"f": "Patient/30"}, {"f": {"$in": many}})
