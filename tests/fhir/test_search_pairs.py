"""Paired keys (store/pairs.py): a search naming a patient and a code or a date drives from a
patient-and-key entry of `ref`, and finds exactly what the same search finds without pairs. The
oracle is the same server with the type's pairs taken out of PAIRED while it answers: the
searches then take the paths they took before pairs (compartment or reference, then the code or
date checked on each candidate), over the very same stored keys.
(https://hl7.org/fhir/R4/search.html#combining, #compartments)"""

from __future__ import annotations

import random
from typing import Any

import pytest

from fhirgoal.core import fields
from fhirgoal.fhir.conformance import load_conformance
from fhirgoal.fhir.search.query import SearchCompiler
from fhirgoal.fhir.search.registry import SearchRegistry
from fhirgoal.store import pairs
from fhirgoal.store.planner import conditions_of, driving_field, is_pair_test, shape
from tests.conftest import RunningServer
from tests.helpers import store

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
    found: dict[tuple[str, str], list[str]] = {}
    for paired_on in (True, False):
        with monkeypatch.context() as patch:
            if not paired_on:
                patch.delitem(pairs.PAIRED, "Observation")
            for path, form in forms:
                for search in searches:
                    key = (path + str(form), str(search))
                    got = await ids(fhir, path, [*form, *search])
                    assert found.setdefault(key, got) == got, (paired_on, path, form, search)
    assert sum(bool(v) for v in found.values()) > len(found) / 3  # not a comparison of empties


async def test_pair_keys_and_the_plan(fhir: RunningServer) -> None:
    table = SearchRegistry(load_conformance(fhir.settings.conformance_dir)).for_type("Observation")
    index = table.index_fields({"resourceType": "Observation", "status": "final",
                                "subject": {"reference": "Patient/p1"},
                                "performer": {"reference": "Practitioner/d1"},
                                "code": {"coding": [{"system": LOINC, "code": "8302-2"}]},
                                "effectiveDateTime": "2026-03"})  # fmt: skip
    assert [key for key in index["ref"] if key.startswith("^")] == [
        "^Patient/p1|dthi:date|2026-04-01T00:00:00.000000Z",
        "^Patient/p1|tok:code#8302-2",
    ]
    assert "subject=Patient/p1" in index["ref"]
    assert not [key for key in index["refx"] if key.startswith("^")]  # the copy holds none
    compiler = SearchCompiler(table, 100, 20)
    for reference in ("subject", "patient"):
        for search in ([("code", f"{LOINC}|8302-2")], [("date", "ge2026-03-10")], [("date", "gt2026-03")]):  # fmt: skip
            compiled = compiler.compile([(reference, "Patient/p1"), *search], fhir.base)
            member = table.paired_member(compiled.filter)
            assert member == "Patient/p1", search
            query = {"$and": [compiled.filter, {fields.COMPARTMENT: member}]}
            sent = shape(pairs.paired("Observation", query))
            assert driving_field(sent) == "ref" and is_pair_test(sent["ref"]), (search, sent)
            # the reference condition checked on the copy; no code or date key test beside
            assert "subject=Patient/p1" in str(sent["refx"]), sent
            assert not {"tok", "dtlo", "dthi"} & set(sent), (search, sent)
            # an equality implies the compartment; a range only narrows, so it stays
            assert (fields.COMPARTMENT in sent) == ("date" in str(search)), sent
    # only the high end of a date is paired: a search with no range on it has none
    for search in ([("date", "lt2026-03-10")], [("date", "le2026-03")], [("date", "2026-03")], [("date", "sa2026-03")]):  # fmt: skip
        compiled = compiler.compile([("patient", "Patient/p1"), *search], fhir.base)
        query = {"$and": [compiled.filter, {fields.COMPARTMENT: "Patient/p1"}]}
        assert pairs.paired("Observation", query) == query, search
    # the performer puts an Observation in a compartment too, but a value is not paired, nor is
    # a reference to a Group, nor a reference parameter outside the compartment (focus)
    for search in ([("performer", "Patient/p1"), ("value-quantity", "5")], [("subject", "Group/g1"), ("code", "x")], [("focus", "Patient/p1"), ("code", "x")]):  # fmt: skip
        compiled = compiler.compile(search, fhir.base)
        member = table.paired_member(compiled.filter)
        query = (
            {"$and": [compiled.filter, {fields.COMPARTMENT: member}]} if member else compiled.filter
        )
        assert not any(
            is_pair_test(t) for _, t in conditions_of(pairs.paired("Observation", query))
        ), search
