"""Paired keys (store/pairs.py): a search naming a patient and a code or a date drives from a
patient-and-key entry of `ref`, and finds exactly what the same search finds without pairs. The
oracle is the same server with the type's pairs taken out of PAIRED while it answers: the
searches then take the paths they took before pairs (compartment or reference, then the code or
date checked on each candidate), over the very same stored keys.
(https://hl7.org/fhir/R4/search.html#combining, #compartments)"""

from __future__ import annotations

import json
import random
from collections.abc import Awaitable, Callable, Mapping
from functools import partial
from typing import Any

import pytest

from fhirgoal.core import fields
from fhirgoal.fhir.conformance import load_conformance
from fhirgoal.fhir.search.query import SearchCompiler
from fhirgoal.fhir.search.registry import SearchRegistry
from fhirgoal.store import pairs
from fhirgoal.store.planner import conditions_of, driving_field, is_pair_test, servable, shape
from tests.conftest import RunningServer
from tests.fhir.r4_examples import raw_examples
from tests.helpers import FHIR_JSON, store

PATIENTS = ("p1", "p2", "p3")
LOINC = "http://loinc.org"
CODES = [(LOINC, "29463-7"), (LOINC, "8302-2"), ("", "8302-2"), ("http://snomed.info/sct", "27113001"), (LOINC, "85354-9")]  # fmt: skip
EFFECTIVE = [
    {"effectiveDateTime": "2026-03-01T10:00:00Z"},
    {"effectiveDateTime": "2026-03-15T08:30:00+02:00"},
    {"effectiveDateTime": "2026-03"},  # partial: the whole month
    {"effectiveDateTime": "2026"},
    {"effectiveDateTime": "2026-04-02"},
    {"effectivePeriod": {"start": "2026-02-20", "end": "2026-03-10"}},
    {"effectivePeriod": {"start": "2026-03-20"}},  # open end
    {"effectivePeriod": {"end": "2026-03-05T12:00:00Z"}},  # open start
    {"effectiveInstant": "2026-03-31T23:59:59.999Z"},
    {},  # no date
]
CODE_SEARCHES = ["29463-7", f"{LOINC}|8302-2", "|8302-2", "8302-2", f"{LOINC}|", "27113001,29463-7", "nope"]  # fmt: skip
DATE_SEARCHES = [
    ["2026-03"], ["eq2026-03-15"], ["ge2026-03-10"], ["gt2026-03"], ["lt2026-03-05"],
    ["le2026-03-01T10:00:00Z"], ["sa2026-03-01"], ["eb2026-03-31"], ["ne2026-03"],
    ["ge2026-03-01", "lt2026-03-16"], ["2026"],
]  # fmt: skip


def observation(rng: random.Random, n: int) -> dict[str, Any]:
    body: dict[str, Any] = {"resourceType": "Observation", "id": f"o{n}", "status": "final",
                            **rng.choice(EFFECTIVE)}  # fmt: skip
    codings = [{"system": s, "code": c} if s else {"code": c} for s, c in rng.sample(CODES, rng.randint(0, 2))]  # fmt: skip
    body["code"] = {"coding": codings} if codings else {"text": "uncoded"}
    if rng.random() < 0.9:
        body["subject"] = {"reference": f"Patient/{rng.choice(PATIENTS)}"}
    if rng.random() < 0.3:  # a second patient in its compartment: another patient's pairs
        body["performer"] = [{"reference": f"Patient/{rng.choice(PATIENTS)}"}]
    return body


async def ids(fhir: RunningServer, path: str, params: list[tuple[str, str]]) -> list[str]:
    response = await fhir.client.get(path, params=[*params, ("_count", "500")])
    assert response.status_code == 200, response.text
    return sorted(e["resource"]["id"] for e in response.json().get("entry", []))


async def alike_without_pairs(
    monkeypatch: pytest.MonkeyPatch,
    types: list[str],
    asks: Mapping[str, Callable[[], Awaitable[Any]]],
) -> dict[str, Any]:
    """Each answer as the server gives it with pairs, then with the types' pairs taken out of
    PAIRED (the oracle): they must agree. The answers, by key."""
    found: dict[str, Any] = {}
    for paired_on in (True, False):
        with monkeypatch.context() as patch:
            if not paired_on:
                for rt in types:
                    patch.delitem(pairs.PAIRED, rt)
            for key, ask in asks.items():
                got = await ask()
                assert found.setdefault(key, got) == got, (paired_on, key)
    return found


async def test_paired_searches_find_what_the_searches_without_pairs_find(
    fhir: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(17)
    for pid in PATIENTS:
        await store(fhir.client, {"resourceType": "Patient", "id": pid})
    for n in range(80):
        await store(fhir.client, observation(rng, n))
    for n in range(0, 80, 7):  # deleted resources match nothing
        assert (await fhir.client.delete(f"/Observation/o{n}")).status_code in (200, 204)
    searches = [[("code", v)] for v in CODE_SEARCHES]
    searches += [[("date", v) for v in values] for values in DATE_SEARCHES]
    searches += [[("code", "8302-2"), ("date", "ge2026-03-01")], [("code:missing", "false")]]
    searches += [[("date:missing", "false")], [("date:missing", "true")]]
    searches += [
        [("code", "8302-2"), ("_sort", "-date")],
        [("date", "gt2026-03"), ("_sort", "date")],
    ]
    forms = [(f"/Patient/{pid}/Observation", []) for pid in PATIENTS]
    forms += [("/Observation", [(ref, f"Patient/{pid}")]) for pid in PATIENTS for ref in ("subject", "patient")]  # fmt: skip
    forms += [("/Observation", [("subject", "Patient/p1"), ("performer", "Patient/p2")])]
    # the id drives, the pair is tested on each document (as MongoDB may test a multikey range)
    every = ",".join(f"o{n}" for n in range(80))
    forms += [(f"/Patient/{pid}/Observation", [("_id", every)]) for pid in PATIENTS]
    forms += [("/Observation", [("_id", every), ("subject", f"Patient/{pid}")]) for pid in PATIENTS]
    asks = {
        f"{path} {form} {search}": partial(ids, fhir, path, [*form, *search])
        for path, form in forms
        for search in searches
    }
    found = await alike_without_pairs(monkeypatch, ["Observation"], asks)
    assert sum(bool(v) for v in found.values()) > len(found) / 3  # not a comparison of empties


async def walk(fhir: RunningServer, path: str, params: list[tuple[str, str]]) -> list[list[str]]:
    """The ids of every page, in order, following the next links to the end and then the
    previous links back to the first (which must give the same pages)."""
    response = await fhir.client.get(path, params=params)
    pages: list[list[str]] = []
    bundles = []
    while True:
        assert response.status_code == 200, response.text
        bundle = response.json()
        bundles.append(bundle)
        pages.append([e["resource"]["id"] for e in bundle.get("entry", [])])
        links = {link["relation"]: link["url"] for link in bundle["link"]}
        if "next" not in links:
            break
        response = await fhir.client.get(links["next"])
    back = [pages[-1]]
    bundle = bundles[-1]
    while True:
        links = {link["relation"]: link["url"] for link in bundle["link"]}
        if "previous" not in links:
            break
        response = await fhir.client.get(links["previous"])
        assert response.status_code == 200, response.text
        bundle = response.json()
        back.append([e["resource"]["id"] for e in bundle.get("entry", [])])
    assert back[::-1] == pages, (path, params)
    return pages


async def test_keyset_pages_sorted_by_date_are_those_without_pairs(
    fhir: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The next pages of a patient's Observations newest first drive from the low ends' pairs
    (`srt.date` before the last row's); every page, forwards and back, is the oracle's. Dates
    repeat (ties on the sort key cross page boundaries) and some rows have none (last)."""
    rng = random.Random(29)
    for pid in PATIENTS:
        await store(fhir.client, {"resourceType": "Patient", "id": pid})
    for n in range(60):
        await store(fhir.client, observation(rng, n))
    for n in range(0, 60, 9):
        assert (await fhir.client.delete(f"/Observation/o{n}")).status_code in (200, 204)
    searches = [[("_sort", "-date")], [("_sort", "date")], [("_sort", "-date,-code")],
                [("_sort", "-date"), ("date", "ge2026-03-01")], [("_sort", "-date"), ("code", "8302-2")]]  # fmt: skip
    forms = [("/Observation", [("subject", f"Patient/{pid}")]) for pid in PATIENTS]
    forms += [(f"/Patient/{pid}/Observation", []) for pid in PATIENTS]
    asks = {
        f"{path} {params}": partial(walk, fhir, path, params)
        for path, form in forms
        for search in searches
        for count in ("2", "5")
        for params in [[*form, *search, ("_count", count)]]
    }
    found = await alike_without_pairs(monkeypatch, ["Observation"], asks)
    assert sum(len(pages) > 2 for pages in found.values()) > len(found) / 2  # pages, not one


def observation_table(fhir: RunningServer) -> Any:
    return SearchRegistry(load_conformance(fhir.settings.conformance_dir)).for_type("Observation")


async def test_pair_keys_and_the_plan(fhir: RunningServer) -> None:
    table = observation_table(fhir)
    index = table.index_fields({"resourceType": "Observation", "status": "final",
                                "subject": {"reference": "Patient/p1"},
                                "performer": [{"reference": "Practitioner/d1"}],
                                "code": {"coding": [{"system": LOINC, "code": "8302-2"}]},
                                "effectiveDateTime": "2026-03"})  # fmt: skip
    assert [key for key in index["ref"] if key.startswith("^")] == [
        "^subject=Patient/p1|dthi:date|2026-04-01T00:00:00.000000Z",
        "^subject=Patient/p1|dtlo:date|2026-03-01T00:00:00.000000Z",
        f"^subject=Patient/p1|tok:code|{LOINC}|8302-2",
    ]
    # the copy holds the date pairs (for a ranged pair's exact check), not the token pairs
    assert [key for key in index["refx"] if key.startswith("^")] == [
        "^subject=Patient/p1|dthi:date|2026-04-01T00:00:00.000000Z",
        "^subject=Patient/p1|dtlo:date|2026-03-01T00:00:00.000000Z",
    ]
    # the patient reported on themself: the subject's pairs serve the compartment
    index = table.index_fields({"resourceType": "Observation", "status": "final",
                                "subject": {"reference": "Patient/p1"},
                                "performer": [{"reference": "Patient/p1"}, {"reference": "Patient/p2"}],
                                "code": {"coding": [{"system": LOINC, "code": "8302-2"}]}})  # fmt: skip
    assert [key for key in index["ref"] if key.startswith("^")] == [
        f"^performer=Patient/p2|tok:code|{LOINC}|8302-2",
        f"^subject=Patient/p1|tok:code|{LOINC}|8302-2",
    ]
    assert "subject=Patient/p1" in index["ref"]
    compiler = SearchCompiler(table, 100, 20)

    def sent(search: list[tuple[str, str]], compartment: str | None = None) -> dict[str, Any]:
        compiled = compiler.compile(search, fhir.base)
        query = compiled.filter
        if compartment:  # the compartment form, or a patient-scoped token's condition
            query = {"$and": [query, {fields.COMPARTMENT: compartment}]}
        shaped = shape(pairs.paired("Observation", query))
        # the embedded database scans the collection for any other test of an indexed field
        # (an `$elemMatch` on `ref`: 360 ms instead of 3.5 for a page of 20 of 5,000)
        for field, test in conditions_of(shaped):
            assert field not in fields.INDEX_FIELDS or servable(field, test), (search, shaped)
        return shaped

    # a patient and codes: the pair alone, nothing left to check on each document
    for reference in ("subject", "patient"):
        for code in (f"{LOINC}|8302-2", f"|8302-2,{LOINC}|29463-7"):
            query = sent([(reference, "Patient/p1"), ("code", code)])
            assert list(query) == ["ref"] and is_pair_test(query["ref"]), (code, query)
        query = sent([(reference, "Patient/p1"), ("code", f"{LOINC}|8302-2")], "Patient/p1")
        assert query == {"ref": f"^subject=Patient/p1|tok:code|{LOINC}|8302-2"}
    query = sent([("code", f"{LOINC}|8302-2")], "Patient/p1")  # every member parameter
    assert query == {"ref": {"$in": [f"^performer=Patient/p1|tok:code|{LOINC}|8302-2",
                                     f"^subject=Patient/p1|tok:code|{LOINC}|8302-2"]}}  # fmt: skip
    # another patient's token: its compartment condition stays beside the pair
    query = sent([("subject", "Patient/p1"), ("code", f"{LOINC}|8302-2")], "Patient/p2")
    assert is_pair_test(query["ref"]) and query["comp"] == "Patient/p2", query
    # a date range: the pair's range drives, the same range as one key's $elemMatch on the
    # copy makes it exact (a multikey range is not, on MongoDB): nothing else is checked
    for date, (end, low, high) in {
        "ge2026-03-10": ("dthi", ("$gt", "date|2026-03-10T00:00:00.000000Z"), ("$lt", "date}")),
        "gt2026-03": ("dthi", ("$gt", "date|2026-04-01T00:00:00.000000Z"), ("$lt", "date}")),
        "eb2026-03-10": ("dthi", ("$gte", "date|"), ("$lte", "date|2026-03-10T00:00:00.000000Z")),
        "lt2026-03-10": ("dtlo", ("$gte", "date|"), ("$lt", "date|2026-03-10T00:00:00.000000Z")),
        "le2026-03": ("dtlo", ("$gte", "date|"), ("$lt", "date|2026-04-01T00:00:00.000000Z")),
        "sa2026-03": ("dtlo", ("$gte", "date|2026-04-01T00:00:00.000000Z"), ("$lt", "date}")),
    }.items():
        keyed = {op: f"^subject=Patient/p1|{end}:{bound}" for op, bound in (low, high)}
        for compartment in (None, "Patient/p1"):
            query = sent([("subject", "Patient/p1"), ("date", date)], compartment)
            assert query == {"ref": keyed, "refx": {"$elemMatch": keyed}}, query
            assert driving_field(query) == "ref"
    # a second date condition stays, checked
    query = sent([("subject", "Patient/p1"), ("date", "ge2026-03-10"), ("date", "lt2026-04")])
    assert is_pair_test(query["ref"]) and "dtlo" in query and "lo" in str(query["dt"]), query
    # eq compares both ends: the low end's pair drives, the exact check of both stays
    query = sent([("subject", "Patient/p1"), ("date", "2026-03")])
    assert is_pair_test(query["ref"]) and "dtlo:" in str(query["ref"]) and "hi" in str(query["dt"])
    # a keyset page sorted newest first: "the smallest low end before X" is "some low end before
    # X", the low ends' pair range (fhir/search/engine.py sends it beside the patient)
    moment = "2026-03-01T00:00:00.000000Z"
    for op in ("$lt", "$lte"):
        query = shape(
            pairs.paired("Observation", {"ref": "subject=Patient/p1", "srt.date": {op: moment}})
        )
        keyed = {
            "$gte": "^subject=Patient/p1|dtlo:date|",
            op: f"^subject=Patient/p1|dtlo:date|{moment}",
        }
        assert query == {"ref": keyed, "refx": {"$elemMatch": keyed}}, query
    # ... but not "the smallest after X" (an ascending page), nor a token's sort key
    for key, test in [
        ("srt.date", {"$gt": moment}),
        ("srt.date", {"$gte": moment}),
        ("srt.code", {"$lt": "x"}),
        ("srt.date", {"$lt": moment, "$gt": "2020"}),
    ]:
        query = pairs.paired("Observation", {"ref": "subject=Patient/p1", key: test})
        assert query == {"ref": "subject=Patient/p1", key: test}, query
    # no pair: two member parameters' dates; a system alone; a value; a Group; a reference
    # outside the compartment (focus)
    for search, compartment in [
        ([("subject", "Patient/p1"), ("code", f"{LOINC}|")], None),
        ([("subject", "Patient/p1"), ("code", "8302-2")], None),
        ([("performer", "Patient/p1"), ("code", f"{LOINC}|8302-2")], None),
        ([("date", "ge2026-03-10")], "Patient/p1"),
        ([("performer", "Patient/p1"), ("value-quantity", "5")], None),
        ([("subject", "Group/g1"), ("code", "x")], None),
        ([("focus", "Patient/p1"), ("code", "x")], None),
    ]:
        query = sent(search, compartment)
        assert not any(is_pair_test(t) for _, t in conditions_of(query)), search


def test_the_paired_members_are_the_compartment_definitions(fhir: RunningServer) -> None:
    """PAIRED names, per type, the parameters whose stored reference keys decide the patient
    compartment: the CompartmentDefinition's, each narrowing by the parameter it narrows."""
    registry = SearchRegistry(load_conformance(fhir.settings.conformance_dir))
    for resource_type, pairing in pairs.PAIRED.items():
        table = registry.for_type(resource_type)
        stored = set()
        for code in table.compartment_params:
            narrowed = table.params[code].references_of
            stored.add(narrowed[0] if narrowed and narrowed[1] == "Patient" else code)
        assert set(pairing.members) == stored, resource_type
        assert all(
            table.params[code].type in ("token", "date")
            for code in (*pairing.tokens, *pairing.dates)
        )


async def test_the_r4_examples_are_found_alike_with_and_without_pairs(
    fhir: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Content we did not write: every R4 example of a paired type that the server takes,
    searched by each of its patients with each of its codes and dates, as with pairs off."""
    stored: list[dict[str, Any]] = []
    for body in raw_examples().values():
        resource = json.loads(body)
        if resource.get("resourceType") not in pairs.PAIRED or "id" not in resource:
            continue
        rt, rid = resource["resourceType"], resource["id"]
        response = await fhir.client.put(f"/{rt}/{rid}", content=body, headers=FHIR_JSON)
        if response.status_code in (200, 201):
            stored.append(resource)
    searches: set[tuple[str, str, tuple[tuple[str, str], ...]]] = set()
    for resource in stored:
        rt = resource["resourceType"]
        refs = [resource.get("subject", {}).get("reference", "")]
        refs += [p.get("reference", "") for p in resource.get("performer", [])]
        patients = {r for r in refs if r.startswith("Patient/")}
        codings = resource.get("code", {}).get("coding", [])
        values = [("code", f"{c.get('system', '')}|{c['code']}") for c in codings if "code" in c]
        if "date" in pairs.PAIRED[rt].dates:
            values += [("date", "ge2000-01-01"), ("date", "gt2012-09-17")]
            values += [("date", "lt2013-04-03"), ("date", "le2012-09-17"), ("date", "sa2000")]
        for patient in patients:
            for value in values:
                searches.add((rt, f"/{patient}/{rt}", (value,)))
                searches.add((rt, f"/{rt}", (("subject", patient), value)))
    assert len(stored) > 50 and len(searches) > 150, (len(stored), len(searches))
    asks = {
        f"{path} {params}": partial(ids, fhir, path, list(params))
        for _rt, path, params in sorted(searches)
    }
    found = await alike_without_pairs(monkeypatch, list(pairs.PAIRED), asks)
    assert sum(bool(v) for v in found.values()) > len(found) / 2
