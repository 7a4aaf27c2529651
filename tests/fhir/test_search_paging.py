"""Keyset paging under `_sort` (https://hl7.org/fhir/R4/search.html#sort , #count): the pages
walk every match once in the sort's order, ties broken by id, missing values first when
ascending and last when descending, forwards and back; and each query a page makes is one the
database drives from an index (fhir/search/engine.py `_after`: a top-level `$or` made the
embedded database scan the collection)."""

from __future__ import annotations

from typing import Any

from fhirgoal.fhir.search.engine import _after, _and
from fhirgoal.fhir.search.query import Cursor
from fhirgoal.store.planner import driving_field, shape
from tests.conftest import RunningServer
from tests.helpers import store

# id -> effective date (None: no effective[x]); ties on 2026-02-01 and 2026-03-01
DATES = {
    "o1": "2026-03-01",
    "o2": "2026-01-15",
    "o3": None,
    "o4": "2026-03-01",
    "o5": "2026-02-01",
    "o6": None,
    "o7": "2026-02-01",
    "o8": "2026-04-01",
    "o9": "2026-03-01",
}


def expected_order(descending: bool) -> list[str]:
    dated = sorted((d, i) for i, d in DATES.items() if d)
    undated = sorted(i for i, d in DATES.items() if d is None)
    if descending:  # newest first, ties by id ascending, missing last
        newest = sorted(dated, key=lambda pair: (-int(pair[0].replace("-", "")), pair[1]))
        return [i for _, i in newest] + undated
    return undated + [i for _, i in dated]


async def walk(fhir: RunningServer, url: str, relation: str) -> list[list[str]]:
    pages: list[list[str]] = []
    next_url: str | None = url
    while next_url:
        response = await fhir.client.get(next_url)
        assert response.status_code == 200, response.text
        bundle = response.json()
        pages.append([e["resource"]["id"] for e in bundle.get("entry", [])])
        links = {link["relation"]: link["url"] for link in bundle["link"]}
        next_url = links.get(relation)
        assert len(pages) < 20
    return pages


async def test_sorted_pages_walk_every_match_once_in_order_both_ways(fhir: RunningServer) -> None:
    await store(fhir.client, {"resourceType": "Patient", "id": "p1"})
    await store(fhir.client, {"resourceType": "Patient", "id": "p2"})
    for rid, date in DATES.items():
        body: dict[str, Any] = {
            "resourceType": "Observation",
            "id": rid,
            "status": "final",
            "code": {"text": "weight"},
            "subject": {"reference": "Patient/p1"},
        }
        if date:
            body["effectiveDateTime"] = date
        await store(fhir.client, body)
    other = {"resourceType": "Observation", "id": "x1", "status": "final", "code": {"text": "w"},
             "subject": {"reference": "Patient/p2"}, "effectiveDateTime": "2026-03-01"}  # fmt: skip
    await store(fhir.client, other)

    for sort, descending in (("-date", True), ("date", False)):
        url = f"/Observation?subject=Patient/p1&_sort={sort}&_count=2"
        pages = await walk(fhir, url, "next")
        assert [rid for page in pages for rid in page] == expected_order(descending), sort
        assert all(len(page) == 2 for page in pages[:-1])
        # back from the last page: the same pages, in reverse
        last = (await fhir.client.get(url)).json()
        while nxt := {lk["relation"]: lk["url"] for lk in last["link"]}.get("next"):
            last = (await fhir.client.get(nxt)).json()
        previous = {lk["relation"]: lk["url"] for lk in last["link"]}["previous"]
        back = await walk(fhir, previous, "previous")
        assert back == list(reversed(pages[:-1])), sort


def test_each_query_of_a_sorted_page_is_driven_by_the_searchs_index() -> None:
    search = {"ref": {"$in": ["subject=Patient/p1"]}}
    for sort in (
        [("srt.date", -1)],
        [("srt.date", 1)],
        [("srt.date", -1), ("srt.code", 1)],
        [("lu", -1)],
    ):
        for values in (["2026-03-01"] * len(sort), [None] * len(sort)):
            runs = _after(sort, Cursor("a", values, "o4"))
            assert runs, (sort, values)
            for run in runs:
                shaped = shape(_and(search, run))
                assert not any(key.startswith("$") for key in shaped), (sort, values, shaped)
                assert driving_field(shaped) == "ref", (sort, values, shaped)
