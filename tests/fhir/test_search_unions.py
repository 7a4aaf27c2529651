"""Union parameters (fhir/search/unions.py): Observation's `combo-*` parameters store no keys of
their own and are searched through their parts' keys (`combo-code` through `code` and
`component-code`), finding exactly what they found when they stored their own. The oracle is a
second server whose registry does not link the unions: it stores and searches `combo-*` keys as
any other parameter's. Both get the same Observations, then every search form of every union
parameter (https://hl7.org/fhir/R4/observation.html#search, search.html#token, #quantity,
#composite, #modifiers, #sort), alone, under a patient, chained and in `_has`."""

from __future__ import annotations

import json
import random
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from decimal import Decimal
from typing import Any

import pytest

from fhirgoal import bootstrap
from fhirgoal.fhir.conformance import load_conformance
from fhirgoal.fhir.search import registry as registry_module
from fhirgoal.fhir.search.matching import matches
from fhirgoal.fhir.search.query import SearchCompiler
from fhirgoal.fhir.search.registry import SearchRegistry
from fhirgoal.fhir.search.unions import UnionFormError, spread
from tests.conftest import RunningServer, fresh_settings, running
from tests.fhir.r4_examples import raw_examples
from tests.fhir.test_search_pairs import observation_table
from tests.helpers import put, store

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
ABSENT = "http://terminology.hl7.org/CodeSystem/data-absent-reason"
CODES = [(LOINC, "8480-6", "Systolic"), (LOINC, "8462-4", "Diastolic"), ("", "8480-6", ""),
         ("http://snomed.info/sct", "27113001", "Body weight"), (LOINC, "85354-9", "Blood pressure panel")]  # fmt: skip
CONCEPTS = [("http://snomed.info/sct", "260385009", "Negative"), ("", "pos", "Positive"), ("http://snomed.info/sct", "10828004", "")]  # fmt: skip
UNITS = [(UCUM, "mm[Hg]", "mmHg"), (UCUM, "kg", "kg"), ("", "", "mg"), (UCUM, "mg", "")]
VALUES = ["5", "5.0", "4.5", "120", "90", "-3", "0", "1e2", "140.25"]


def codeable(choices: list[tuple[str, str, str]], rng: random.Random) -> dict[str, Any]:
    chosen = rng.sample(choices, rng.randint(1, 2))
    codings = [{k: v for k, v in (("system", s), ("code", c), ("display", d)) if v} for s, c, d in chosen]  # fmt: skip
    body: dict[str, Any] = {"coding": codings}
    if rng.random() < 0.3:
        body["text"] = rng.choice(["Blood pressure", "Weight check", "Screen"])
    return body


def quantity(rng: random.Random) -> dict[str, Any]:
    system, code, unit = rng.choice(UNITS)
    body: dict[str, Any] = {"value": Decimal(rng.choice(VALUES))}
    body.update({k: v for k, v in (("system", system), ("code", code), ("unit", unit)) if v})
    return body


def valued(rng: random.Random, body: dict[str, Any]) -> dict[str, Any]:
    """A value (Quantity, CodeableConcept, string), or none and sometimes a dataAbsentReason."""
    roll = rng.random()
    if roll < 0.45:
        body["valueQuantity"] = quantity(rng)
    elif roll < 0.7:
        body["valueCodeableConcept"] = codeable(CONCEPTS, rng)
    elif roll < 0.8:
        body["valueString"] = "see note"
    elif roll < 0.92:
        reason = rng.choice(["unknown", "asked-declined", "error"])
        body["dataAbsentReason"] = {"coding": [{"system": ABSENT, "code": reason}]}
    return body


def observation(rng: random.Random, n: int) -> dict[str, Any]:
    body: dict[str, Any] = {"resourceType": "Observation", "id": f"o{n}", "status": "final",
                            "code": codeable(CODES, rng),
                            "subject": {"reference": f"Patient/p{rng.randint(1, 2)}"}}  # fmt: skip
    valued(rng, body)
    # obs-7: a component's code is not the Observation's own (when that has a value)
    own = {coding["code"] for coding in body["code"]["coding"]}
    others = [choice for choice in CODES if choice[1] not in own]
    if rng.random() < 0.6:
        body["component"] = [
            valued(rng, {"code": codeable(others, rng)}) for _ in range(rng.randint(1, 3))
        ]
    return body


# Every union parameter, each search form: plain values, systems, several values, modifiers,
# every quantity prefix, with and without units.
SEARCHES: list[list[tuple[str, str]]] = [
    *[[("combo-code", v)] for v in ["8480-6", f"{LOINC}|8480-6", "|8480-6", f"{LOINC}|", "27113001,8462-4", "nope"]],
    *[[("combo-code:not", v)] for v in [f"{LOINC}|8480-6", "8462-4"]],
    *[[("combo-code:text", v)] for v in ["blood", "sys", "weight check"]],
    *[[("combo-code:missing", v)] for v in ["true", "false"]],
    [("combo-code:in", "http://example.org/vs/bp")], [("combo-code:not-in", "http://example.org/vs/bp")],
    *[[("combo-value-concept", v)] for v in ["260385009", "|pos", "http://snomed.info/sct|", "pos,10828004"]],
    [("combo-value-concept:text", "neg")], [("combo-value-concept:missing", "true")],
    [("combo-value-concept:not", "http://snomed.info/sct|260385009")],
    *[[("combo-data-absent-reason", v)] for v in ["unknown", f"{ABSENT}|asked-declined", f"{ABSENT}|"]],
    *[[("combo-data-absent-reason:missing", v)] for v in ["true", "false"]],
    *[[("combo-value-quantity", f"{p}{v}")] for p in ["", "eq", "ne", "gt", "lt", "ge", "le", "sa", "eb", "ap"] for v in ["5", "120"]],
    *[[("combo-value-quantity", v)] for v in [f"5|{UCUM}|mg", "5||mg", "ge4.5||kg", f"lt100|{UCUM}|mm[Hg]", "ne5||mg", "1e2", "5,90"]],
    *[[("combo-value-quantity:missing", v)] for v in ["true", "false"]],
    *[[("combo-code-value-quantity", v)] for v in ["8480-6$gt100", f"{LOINC}|8480-6$lt120", "8462-4$5||mmHg", f"8462-4$ge4.5|{UCUM}|kg", "8480-6$ne5", "27113001$5,8480-6$140.25"]],
    *[[("combo-code-value-quantity:missing", v)] for v in ["true", "false"]],
    *[[("combo-code-value-concept", v)] for v in ["8480-6$pos", f"{LOINC}|8462-4$http://snomed.info/sct|260385009", "85354-9$10828004"]],
    *[[("combo-code-value-concept:missing", v)] for v in ["true", "false"]],
    # with a patient (the pairs' path: store/pairs.py), two unions at once, the union and a part
    [("subject", "Patient/p1"), ("combo-code", f"{LOINC}|8480-6")],
    [("subject", "Patient/p2"), ("combo-value-quantity", "gt5")],
    [("combo-code", "8480-6"), ("combo-value-quantity", "lt100")],
    [("combo-code", "8462-4"), ("code", "8480-6")],
]  # fmt: skip
SORTS = ["combo-code", "-combo-code", "combo-value-quantity", "-combo-value-quantity"]


async def found(fhir: RunningServer, path: str, params: list[tuple[str, str]]) -> list[str]:
    response = await fhir.client.get(path, params=[*params, ("_count", "500")])
    assert response.status_code == 200, (params, response.text)
    return [e["resource"]["id"] for e in response.json().get("entry", [])]


@pytest.fixture
async def oracle(fhir: RunningServer, mongo_uri: str) -> AsyncIterator[RunningServer]:
    """A second server (started after `fhir`) whose registry does not link the unions: it
    stores and searches union parameters as any other."""
    async with AsyncExitStack() as stack:
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(registry_module, "_link_unions", lambda table: None)
            patch.setattr(bootstrap, "search_registry", SearchRegistry)
            server = await stack.enter_async_context(
                running(fresh_settings(mongo_uri, prefix="oracle"))
            )
        yield server


async def test_union_searches_find_what_they_found_with_keys_of_their_own(
    fhir: RunningServer, oracle: RunningServer
) -> None:
    rng = random.Random(23)
    bodies = [observation(rng, n) for n in range(90)]
    value_set = {"resourceType": "ValueSet", "id": "bp", "url": "http://example.org/vs/bp",
                 "status": "active", "compose": {"include": [
                     {"system": LOINC, "concept": [{"code": "8480-6"}, {"code": "8462-4"}]}]}}  # fmt: skip
    assert not oracle.app.state.fhir.registry.for_type("Observation").unions
    assert fhir.app.state.fhir.registry.for_type("Observation").unions
    for server in (fhir, oracle):
        for pid in ("p1", "p2"):
            await store(server.client, {"resourceType": "Patient", "id": pid})
        await store(server.client, value_set)
        for body in bodies:
            await store(server.client, body)
        for n in range(0, 90, 11):  # deleted resources match nothing
            assert (await server.client.delete(f"/Observation/o{n}")).status_code in (200, 204)
    searches = [("/Observation", s) for s in SEARCHES]
    searches += [("/Observation", [("_sort", f"{s},_id")]) for s in SORTS]
    searches += [("/Observation", [("combo-code", "8480-6"), ("_sort", f"{s},-_id")]) for s in SORTS]  # fmt: skip
    searches += [("/Patient/p1/Observation", s) for s in SEARCHES[:6] + SEARCHES[-4:]]
    searches += [("/Patient", [("_has:Observation:subject:combo-code-value-quantity", "8480-6$gt100")])]  # fmt: skip
    searches += [("/Patient", [("_has:Observation:subject:combo-code", f"{LOINC}|85354-9")])]
    nonempty = 0
    for path, search in searches:
        ours, theirs = await found(fhir, path, search), await found(oracle, path, search)
        sorted_search = any(name == "_sort" for name, _ in search)
        if not sorted_search:
            ours, theirs = sorted(ours), sorted(theirs)
        assert ours == theirs, (path, search)
        nonempty += bool(ours) and len(ours) < 80
    assert nonempty > len(searches) * 0.6  # not a comparison of empties or of everything


def test_the_unions_found_are_observations_combo_parameters(fhir: RunningServer) -> None:
    """Found from the expressions alone: R4's six `combo-*` parameters, on Observation only."""
    registry = SearchRegistry(load_conformance(fhir.settings.conformance_dir))
    found_unions = {rt: table.unions for rt, table in registry.types.items() if table.unions}
    assert found_unions == {
        "Observation": {
            "combo-code": ("code", "component-code"),
            "combo-code-value-concept": ("code-value-concept", "component-code-value-concept"),
            "combo-code-value-quantity": ("code-value-quantity", "component-code-value-quantity"),
            "combo-data-absent-reason": ("component-data-absent-reason", "data-absent-reason"),
            "combo-value-concept": ("component-value-concept", "value-concept"),
            "combo-value-quantity": ("component-value-quantity", "value-quantity"),
        }
    }


def test_a_union_stores_only_its_sort_key(fhir: RunningServer) -> None:
    table = observation_table(fhir)
    index = table.index_fields({"resourceType": "Observation", "status": "final",
                                "code": {"coding": [{"system": LOINC, "code": "85354-9"}]},
                                "component": [{"code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
                                               "valueQuantity": {"value": 120, "unit": "mmHg"}}]})  # fmt: skip
    text = json.dumps({k: v for k, v in index.items() if k != "srt"})
    assert "combo" not in text, text
    assert index["srt"]["combo-code"] == "8480-6"  # the smallest of code's and component-code's
    assert index["srt"]["combo-value-quantity"] == index["srt"]["component-value-quantity"]
    assert "code-value-quantity" in index["miss"]  # no value of its own: `combo-*` would find
    assert "combo-code-value-quantity" not in index["miss"]  # ... through this one's parts


def test_a_union_condition_is_sent_over_its_parts_keys(fhir: RunningServer) -> None:
    compiler = SearchCompiler(observation_table(fhir), 100, 20)

    def sent(name: str, value: str) -> dict[str, Any]:
        return compiler.compile([(name, value)], fhir.base).filter

    assert sent("combo-code", f"{LOINC}|8480-6") == {"$and": [
        {"tok": {"$in": ["code#8480-6", "component-code#8480-6"]}},
        {"tokx": {"$in": [f"code|{LOINC}|8480-6", f"component-code|{LOINC}|8480-6"]}}]}  # fmt: skip
    assert sent("combo-code:missing", "true") == {"miss": {"$all": ["code", "component-code"]}}
    assert sent("combo-code:not", "x") == {"tokx": {"$nin": ["code#x", "component-code#x"]}}
    # a range drives as one range holding both parts', the exact check is either part's
    ranged = sent("combo-value-quantity", "gt5")["$and"]
    assert ranged[0]["num"]["$gt"].startswith("component-value-quantity|#")
    assert ranged[0]["num"]["$lt"] == "value-quantity|$"
    assert [list(c) for c in ranged[1]["$or"]] == [["numx"], ["numx"]]
    # the composite's driver is a union too
    pair = sent("combo-code-value-concept", "8480-6$pos")
    assert pair == {"$and": [
        {"tok": {"$in": ["code#8480-6", "component-code#8480-6"]}},
        {"tokx": {"$in": ["code-value-concept|#8480-6$#pos", "component-code-value-concept|#8480-6$#pos"]}}]}  # fmt: skip
    assert "combo" not in json.dumps(sent("combo-value-quantity", "ne5||mg"))


def test_a_subscription_matches_a_union_as_before(fhir: RunningServer) -> None:
    """A Subscription's criteria are matched in memory against a version's index fields
    (fhir/search/matching.py): through the parts' keys as it was through the union's own."""
    conformance = load_conformance(fhir.settings.conformance_dir)
    ours = SearchRegistry(conformance).for_type("Observation")
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(registry_module, "_link_unions", lambda table: None)
        theirs = SearchRegistry(conformance).for_type("Observation")
    rng = random.Random(5)
    bodies = [observation(rng, n) for n in range(60)]
    sides = [
        (SearchCompiler(table, 100, 20), [table.index_fields(body) for body in bodies])
        for table in (ours, theirs)
    ]
    matched = 0
    for search in SEARCHES:
        if any(name.endswith((":in", ":not-in")) for name, _ in search):
            continue  # a ValueSet read first: not a Subscription's matter
        found = [
            [matches(doc, compiler.compile(search, fhir.base).filter) for doc in docs]
            for compiler, docs in sides
        ]
        assert found[0] == found[1], search
        matched += any(found[0])
    assert matched > len(SEARCHES) * 0.6


def test_an_unknown_condition_form_on_a_union_is_refused() -> None:
    unions = {"combo-code": ("code", "component-code")}
    assert spread({"_id": {"$in": ["a"]}, "lu": {"$gt": 1}}, unions) == {
        "$and": [{"_id": {"$in": ["a"]}}, {"lu": {"$gt": 1}}]
    }
    for form in [
        {"strx": {"$regex": "^combo-code\\|x"}},  # not a key
        {"tok": {"$all": ["combo-code#x"]}},
        {"tokx": {"$elemMatch": {"$gte": "combo-code#a", "$lt": "code$"}}},  # two codes' range
        {"miss": {"$ne": "combo-code"}},
    ]:
        with pytest.raises(UnionFormError):
            spread(form, unions)


async def test_the_r4_example_observations_are_found_alike_through_unions(
    fhir: RunningServer, oracle: RunningServer
) -> None:
    """Content we did not write: every R4 example Observation the server takes, searched by
    each of its codes, values and component pairs through the unions, as with their own keys."""
    examples = [
        body for body in raw_examples().values() if json.loads(body).get("resourceType") == "Observation"
    ]  # fmt: skip
    taken: list[dict[str, Any]] = []
    for body in examples:
        resource = json.loads(body)
        if "id" not in resource:
            continue
        answers = [(await put(server.client, resource)).status_code for server in (fhir, oracle)]
        assert answers[0] == answers[1], resource["id"]
        if answers[0] in (200, 201):
            taken.append(resource)
    assert len(taken) > 60
    searches: set[tuple[str, str]] = set()
    for resource in taken:
        nodes = [resource, *resource.get("component", [])]
        for node in nodes:
            for coding in node.get("code", {}).get("coding", []):
                code = coding.get("code")
                searches |= {
                    ("combo-code", code),
                    ("combo-code", f"{coding.get('system', '')}|{code}"),
                }
                value = node.get("valueQuantity", {}).get("value")
                if value is not None:
                    searches |= {("combo-value-quantity", f"ge{value}"),
                                 ("combo-code-value-quantity", f"{code}${value}"),
                                 ("combo-code-value-quantity", f"{code}$lt{value}")}  # fmt: skip
                for concept in node.get("valueCodeableConcept", {}).get("coding", []):
                    searches.add(("combo-code-value-concept", f"{code}${concept.get('code')}"))
                    searches.add(("combo-value-concept", concept.get("code")))
            for coding in node.get("dataAbsentReason", {}).get("coding", []):
                searches.add(("combo-data-absent-reason", coding.get("code")))
    assert len(searches) > 150
    nonempty = 0
    for name, value in sorted(searches):
        ours = sorted(await found(fhir, "/Observation", [(name, value)]))
        theirs = sorted(await found(oracle, "/Observation", [(name, value)]))
        assert ours == theirs, (name, value)
        nonempty += bool(ours)
    assert nonempty > len(searches) * 0.8  # most name a value one of them has
