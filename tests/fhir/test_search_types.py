"""Search parameter types over HTTP: date, string, quantity, modifiers, compartments, and the
query plan of every supported parameter (no collection scans)."""

from __future__ import annotations

import os
from typing import Any

import pytest

from fhirgoal.fhir.conformance import load_conformance
from fhirgoal.fhir.search.query import SearchCompiler
from fhirgoal.fhir.search.registry import SearchRegistry
from fhirgoal.store.mongo import connect
from fhirgoal.store.planner import driving_field, shape
from tests.conftest import RunningServer
from tests.helpers import FHIR_JSON, create, patient, raw_observation


async def make(fhir: RunningServer, resource: dict[str, Any]) -> str:
    """Create `resource`; its id."""
    return str((await create(fhir.client, resource))["id"])


async def ids(fhir: RunningServer, path: str, **params: str) -> set[str]:
    response = await fhir.client.get(path, params=params)
    assert response.status_code == 200, response.text
    return {
        e["resource"]["id"]
        for e in response.json().get("entry", [])
        if e["search"]["mode"] == "match"
    }


def observation_at(pid: str, when: str, **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation", "status": "final", "code": {"text": "ORS"},
        "subject": {"reference": f"Patient/{pid}"}, "effectiveDateTime": when, **extra,
    }  # fmt: skip


async def test_date_search_respects_precision_time_zones_and_prefixes(fhir: RunningServer) -> None:
    pid = await make(fhir, patient())
    feb = await make(fhir, observation_at(pid, "2026-02-28T23:59:00Z"))
    mid = await make(fhir, observation_at(pid, "2026-03-15"))
    late = await make(fhir, observation_at(pid, "2026-04-01T00:00:00+02:00"))  # 2026-03-31T22:00Z
    assert await ids(fhir, "/Observation", date="2026-03") == {mid, late}
    assert await ids(fhir, "/Observation", date="lt2026-03") == {feb}
    assert await ids(fhir, "/Observation", date="ge2026-03-15") == {mid, late}
    assert await ids(fhir, "/Observation", date="sa2026-03-15") == {late}
    assert await ids(fhir, "/Observation", date="eb2026-03-01") == {feb}
    assert await ids(fhir, "/Observation", date="gt2026-03-31") == set()
    assert await ids(fhir, "/Observation", date="ne2026-03") == {feb}
    assert await ids(fhir, "/Observation", date="2026-03-31T22:00:00Z") == {late}
    assert await ids(fhir, "/Observation", date="2026-02,2026-04") == {feb}
    # AND of two ranges
    response = await fhir.client.get("/Observation?date=ge2026-03-01&date=lt2026-03-20")
    assert {e["resource"]["id"] for e in response.json()["entry"]} == {mid}
    assert (await fhir.client.get("/Observation", params={"date": "March"})).status_code == 400


async def test_period_dates_are_ranges_and_open_ends_are_unbounded(fhir: RunningServer) -> None:
    pid = await make(fhir, patient())

    def encounter(period: dict[str, str]) -> dict[str, Any]:
        return {"resourceType": "Encounter", "status": "finished", "subject": {"reference": f"Patient/{pid}"},
                "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                "period": period}  # fmt: skip

    session = await make(
        fhir, encounter({"start": "2026-03-01T10:00:00Z", "end": "2026-03-01T11:00:00Z"})
    )
    ongoing = await make(fhir, encounter({"start": "2026-05-01T10:00:00Z"}))
    assert await ids(fhir, "/Encounter", date="2026-03-01") == {session}
    assert await ids(fhir, "/Encounter", date="gt2030-01-01") == {ongoing}
    assert await ids(fhir, "/Encounter", date="lt2026-04") == {session}


async def test_string_search_is_case_and_accent_insensitive_prefix(fhir: RunningServer) -> None:
    eric = await make(
        fhir, {"resourceType": "Patient", "name": [{"family": "Müller", "given": ["Éric"]}]}
    )
    ann = await make(
        fhir, {"resourceType": "Patient", "name": [{"family": "Mullins", "given": ["Ann"]}]}
    )
    assert await ids(fhir, "/Patient", name="eric") == {eric}
    assert await ids(fhir, "/Patient", family="MUL") == {eric, ann}
    assert await ids(fhir, "/Patient", family="muller") == {eric}
    assert await ids(fhir, "/Patient", **{"family:exact": "Müller"}) == {eric}
    assert await ids(fhir, "/Patient", **{"family:exact": "muller"}) == set()
    assert await ids(fhir, "/Patient", **{"name:contains": "LLIN"}) == {ann}
    assert await ids(fhir, "/Patient", **{"name:contains": ".*"}) == set()  # a value, not a pattern
    assert await ids(fhir, "/Patient", given="ann,eric") == {eric, ann}


async def test_quantity_search_with_implicit_precision_units_and_prefixes(
    fhir: RunningServer,
) -> None:
    pid = await make(fhir, patient())
    created = await fhir.client.post(
        "/Observation", content=raw_observation(pid, "72.50"), headers=FHIR_JSON
    )
    heavy = created.json()["id"]
    light = await make(
        fhir,
        observation_at(
            pid,
            "2026-03-01",
            valueQuantity={
                "value": -3,
                "unit": "kg",
                "system": "http://unitsofmeasure.org",
                "code": "kg",
            },
        ),
    )
    assert await ids(fhir, "/Observation", **{"value-quantity": "72.5"}) == {heavy}
    assert await ids(fhir, "/Observation", **{"value-quantity": "72"}) == set()  # [71.5, 72.5)
    assert await ids(fhir, "/Observation", **{"value-quantity": "7e1"}) == {heavy}  # [20, 120)
    assert await ids(
        fhir, "/Observation", **{"value-quantity": "gt72|http://unitsofmeasure.org|kg"}
    ) == {heavy}
    assert await ids(fhir, "/Observation", **{"value-quantity": "72.5||kg"}) == {heavy}
    assert (
        await ids(fhir, "/Observation", **{"value-quantity": "72.5|http://unitsofmeasure.org|g"})
        == set()
    )
    assert await ids(fhir, "/Observation", **{"value-quantity": "lt0"}) == {light}
    assert await ids(fhir, "/Observation", **{"value-quantity": "ge-10"}) == {heavy, light}
    assert await ids(fhir, "/Observation", **{"value-quantity": "ne72.5"}) == {light}
    assert (
        await fhir.client.get("/Observation", params={"value-quantity": "heavy"})
    ).status_code == 400


async def test_missing_not_and_typed_reference_modifiers(fhir: RunningServer) -> None:
    pid = await make(fhir, patient())
    with_value = await make(fhir, observation_at(pid, "2026-03-01", valueString="ok"))
    without = await make(fhir, {**observation_at(pid, "2026-03-02"), "status": "preliminary"})
    assert await ids(fhir, "/Observation", **{"value-string:missing": "true"}) == {without}
    assert await ids(fhir, "/Observation", **{"value-string:missing": "false"}) == {with_value}
    assert await ids(fhir, "/Observation", **{"status:not": "final"}) == {without}
    assert await ids(fhir, "/Observation", **{"subject:Patient": pid}) == {with_value, without}
    assert await ids(fhir, "/Observation", **{"subject:Group": pid}) == set()
    assert (
        await fhir.client.get("/Observation", params={"subject:Spaceship": pid})
    ).status_code == 400


async def test_summary_count_total_none_and_patient_compartment(fhir: RunningServer) -> None:
    a, b = await make(fhir, patient("A")), await make(fhir, patient("B"))
    mine = {await make(fhir, observation_at(a, f"2026-03-0{d}")) for d in range(1, 4)}
    await make(fhir, observation_at(b, "2026-03-01"))
    count = (
        await fhir.client.get("/Observation", params={"patient": a, "_summary": "count"})
    ).json()
    assert count["total"] == 3 and "entry" not in count
    untotalled = (await fhir.client.get("/Observation", params={"_total": "none"})).json()
    assert "total" not in untotalled and len(untotalled["entry"]) == 4
    assert await ids(fhir, f"/Patient/{a}/Observation") == mine
    assert len(await ids(fhir, f"/Patient/{a}/Observation", date="2026-03-02")) == 1
    compartment = (await fhir.client.get(f"/Patient/{a}/Observation")).json()
    assert compartment["link"][0]["url"].startswith(f"{fhir.base}/Patient/{a}/Observation")
    assert (await fhir.client.get(f"/Encounter/{a}/Observation")).status_code == 404


def _stages(plan: Any) -> list[str]:
    if isinstance(plan, dict):
        found = [plan["stage"]] if "stage" in plan else []
        for value in plan.values():
            found += _stages(value)
        return found
    if isinstance(plan, list):
        return [stage for item in plan for stage in _stages(item)]
    return []


SAMPLE_VALUES = {"token": ["x|y", "x", "x|", "|y", "x,a|b"], "reference": ["Patient/1"],
                 "uri": ["http://x"], "string": ["ab"], "date": ["ge2026-03"], "number": ["5"],
                 "quantity": ["5||mg", "5", "ne5|http://u|mg"]}  # fmt: skip
COMPOSITE_VALUES = {"quantity": ["x|y$5", "x$ne5||mg"], "token": ["x|y$a|b", "x$b,c$d"]}
MODIFIED = {"token": [(":of-type", "s|c|v")], "string": [(":exact", "Ab"), (":contains", "b")],
            "reference": [(":identifier", "s|v")], "uri": [(":below", "http://x")]}  # fmt: skip
# The embedded SecantusDB drives a query only from an equality, `$in` or bare range on the first
# suitable field (store/planner.py); a range over an array of keys is made exact by the same range
# as $elemMatch on an unindexed copy, so every parameter still has an index-servable driver.
# `:missing=true` is the exception: `miss` is not indexed (index.py), so it needs another
# condition (here a patient) to drive it.


@pytest.mark.parametrize(
    "resource_type",
    [
        "Observation",
        "Patient",
        "Goal",
        "CarePlan",
        "Encounter",
        "QuestionnaireResponse",
        "Condition",
    ],
)
async def test_every_supported_parameter_is_served_by_an_index(
    fhir: RunningServer, resource_type: str
) -> None:
    conformance = load_conformance(fhir.settings.conformance_dir)
    table = SearchRegistry(conformance).for_type(resource_type)
    compiler = SearchCompiler(table, 100, 20)
    # SecantusDB's explain does not describe its find path; a real MongoDB's does.
    real_mongodb = bool(os.environ.get("MONGODB_URI"))
    client = connect(fhir.settings.mongodb_uri or "")
    db = client[fhir.settings.db]
    unserved = {}
    for param in table.params.values():
        if not param.supported:
            continue
        values = ["2026"] if param.code == "_lastUpdated" else SAMPLE_VALUES.get(param.type, ["x"])
        if param.type == "composite":
            values = COMPOSITE_VALUES[param.components[1][0]]
        searches = [(param.code, value) for value in values]
        searches += [
            (param.code + modifier, value) for modifier, value in MODIFIED.get(param.type, [])
        ]
        if param.code == "_id":
            searches = [(param.code, "x")]
        elif not param.code.startswith("_"):
            searches += [(f"{param.code}:missing", "false"), (f"{param.code}:missing", "true")]
        for name, text in searches:
            query = {**compiler.compile([(name, text)], fhir.base).filter, "del": {"$ne": True}}
            alone = driving_field(query)
            with_patient = driving_field({**query, "ref": {"$in": ["patient=Patient/1"]}})
            if with_patient is None or (alone is None and (name, text)[1] != "true"):
                unserved[f"{name}={text}"] = shape(query)
            elif alone is None:
                continue  # :missing=true alone scans (documented above)
            elif real_mongodb:  # MongoDB's explain reports what its planner does: check it too
                plan = await db.command("explain", {"find": resource_type, "filter": shape(query)})
                if "COLLSCAN" in _stages(plan["queryPlanner"]["winningPlan"]):
                    unserved[name] = shape(query)
    await client.close()
    assert unserved == {}


async def test_shaped_filters_return_the_same_matches(fhir: RunningServer) -> None:
    pid = await make(fhir, patient())
    for day in ("2026-03-01", "2026-03-15", "2026-04-02"):
        await make(fhir, observation_at(pid, day))
    nested = {
        "$and": [
            {"ref": {"$in": [f"subject=Patient/{pid}"]}},
            {
                "$and": [
                    {"dtlo": {"$gte": "date|2026-03", "$lt": "date|2026-04"}},
                    {"dt": {"$elemMatch": {"p": "date", "lo": {"$gte": "2026-03"}}}},
                ]
            },
        ]
    }
    client = connect(fhir.settings.mongodb_uri or "")
    try:
        collection = client[fhir.settings.db]["Observation"]
        flat = shape(nested)
        assert "$and" not in flat and next(iter(flat)) == "ref"
        assert (
            await collection.count_documents(nested) == await collection.count_documents(flat) == 2
        )
        # several token conditions: all but one move to the unindexed copy, same matches
        tokens = {
            "$and": [
                {"tok": {"$in": ["status#final"]}},
                {"tok": {"$gte": "date#", "$lt": "date$"}},  # no such token: matches nothing
                {"tokx": {"$nin": ["status#final"]}},
            ]
        }
        for query in (tokens, {"$and": tokens["$and"][:1]}, {"$and": tokens["$and"][::2]}):
            flat = shape(query)
            assert "$and" not in flat and driving_field(query) == "tok"
            assert await collection.count_documents(query) == await collection.count_documents(flat)
        assert await collection.count_documents(shape({"$and": tokens["$and"][:1]})) == 3
    finally:
        await client.close()


async def test_composite_parameters_pair_values_of_the_same_component(fhir: RunningServer) -> None:
    pid = await make(fhir, patient())
    mmhg = {"unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}

    def bp(systolic: int, diastolic: int) -> dict[str, Any]:
        return {**observation_at(pid, "2026-03-01"), "code": {"coding": [{"system": "http://loinc.org", "code": "85354-9"}]},
                "component": [
                    {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]}, "valueQuantity": {"value": systolic, **mmhg}},
                    {"code": {"coding": [{"system": "http://loinc.org", "code": "8462-4"}]}, "valueQuantity": {"value": diastolic, **mmhg}},
                ]}  # fmt: skip

    high = await make(fhir, bp(150, 70))
    normal = await make(fhir, bp(118, 95))
    search = "/Observation"
    assert await ids(
        fhir, search, **{"component-code-value-quantity": "http://loinc.org|8480-6$gt140"}
    ) == {high}
    # the systolic values (150, 118) exceed 100 but never pair with the diastolic code
    pair = "component-code-value-quantity"
    assert await ids(fhir, search, **{pair: "8462-4$gt100"}) == set()
    assert await ids(fhir, search, **{pair: "8480-6$gt120"}) == {high}
    assert await ids(fhir, search, **{"component-code-value-quantity": "8462-4$gt90||mmHg"}) == {
        normal
    }
    assert await ids(
        fhir,
        search,
        **{"component-code-value-quantity": "8462-4$gt90|http://unitsofmeasure.org|mm[Hg]"},
    ) == {normal}
    assert await ids(fhir, search, **{"combo-code-value-quantity": "8480-6$lt120"}) == {normal}
    weight = await fhir.client.post(
        "/Observation", content=raw_observation(pid, "72.50"), headers=FHIR_JSON
    )
    assert await ids(fhir, search, **{"code-value-quantity": "http://loinc.org|29463-7$72.5"}) == {
        weight.json()["id"]
    }
    assert (
        await fhir.client.get(search, params={"code-value-quantity": "29463-7"})
    ).status_code == 400


async def test_token_text_of_type_reference_identifier_and_uri_hierarchy(
    fhir: RunningServer,
) -> None:
    mrn_type = {
        "coding": [{"system": "http://terminology.hl7.org/CodeSystem/v2-0203", "code": "MR"}]
    }
    pid = await make(fhir, {"resourceType": "Patient", "identifier": [{"type": mrn_type, "system": "urn:mrn", "value": "A-7"}],
                            "meta": {"profile": ["http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient"]}})  # fmt: skip
    obs = await make(fhir, {**observation_at(pid, "2026-03-01"),
                            "code": {"coding": [{"system": "http://loinc.org", "code": "44261-6", "display": "PHQ-9 total score"}],
                                     "text": "Patient Health Questionnaire"},
                            "performer": [{"identifier": {"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567893"}}]})  # fmt: skip
    assert await ids(fhir, "/Observation", **{"code:text": "phq-9"}) == {obs}
    assert await ids(fhir, "/Observation", **{"code:text": "patient health"}) == {obs}
    assert await ids(fhir, "/Observation", **{"code:text": "health"}) == set()
    of_type = "http://terminology.hl7.org/CodeSystem/v2-0203|MR|A-7"
    assert await ids(fhir, "/Patient", **{"identifier:of-type": of_type}) == {pid}
    assert (
        await ids(fhir, "/Patient", **{"identifier:of-type": of_type.replace("MR", "SS")}) == set()
    )
    npi = "http://hl7.org/fhir/sid/us-npi|1234567893"
    assert await ids(fhir, "/Observation", **{"performer:identifier": npi}) == {obs}
    assert await ids(fhir, "/Observation", **{"performer:identifier": "1234567893"}) == {obs}
    assert await ids(fhir, "/Patient", **{"_profile:below": "http://hl7.org/fhir/us/core/"}) == {
        pid
    }
    assert await ids(
        fhir,
        "/Patient",
        **{
            "_profile:above": "http://hl7.org/fhir/us/core/StructureDefinition/us-core-patient/extra"
        },
    ) == {pid}
    assert await ids(fhir, "/Patient", **{"_profile:below": "http://example.org/"}) == set()


async def test_in_and_not_in_use_value_sets_held_by_the_server(fhir: RunningServer) -> None:
    pid = await make(fhir, patient())
    loinc = "http://loinc.org"
    value_set = {
        "resourceType": "ValueSet", "url": "https://fhirgoal.org/fhir/ValueSet/standardized-measures",
        "status": "active",
        "compose": {"include": [{"system": loinc, "concept": [{"code": "44261-6"}, {"code": "70274-6"}]}]},
    }  # fmt: skip
    assert (
        await fhir.client.post("/ValueSet", json=value_set, headers=FHIR_JSON)
    ).status_code == 201
    coded = {}
    for code in ("44261-6", "70274-6", "29463-7"):
        coded[code] = await make(
            fhir,
            {
                **observation_at(pid, "2026-03-01"),
                "code": {"coding": [{"system": loinc, "code": code}]},
            },
        )
    url = value_set["url"]
    assert await ids(fhir, "/Observation", **{"code:in": url}) == {
        coded["44261-6"],
        coded["70274-6"],
    }
    assert await ids(fhir, "/Observation", **{"code:not-in": url}) == {coded["29463-7"]}
    missing = await fhir.client.get("/Observation", params={"code:in": "https://example.org/nope"})
    assert missing.status_code == 400
    filtered = {
        **value_set,
        "url": "https://fhirgoal.org/fhir/ValueSet/all-loinc",
        "compose": {"include": [{"system": loinc}]},
    }
    assert (
        await fhir.client.post("/ValueSet", json=filtered, headers=FHIR_JSON)
    ).status_code == 201
    refused = await fhir.client.get("/Observation", params={"code:in": filtered["url"]})
    assert refused.status_code == 422


# ---- coarse indexed keys, exact checks (index.py): the same results as exact keys alone ------
SYS_A, SYS_B = "http://example.org/a", "http://example.org/b"


def coded(pid: str, *codings: dict[str, str], **extra: Any) -> dict[str, Any]:
    return {**observation_at(pid, "2026-03-01"), "code": {"coding": list(codings)}, **extra}


async def test_system_qualified_tokens_match_the_system_not_only_the_code(
    fhir: RunningServer,
) -> None:
    pid = await make(fhir, patient())
    in_a = await make(fhir, coded(pid, {"system": SYS_A, "code": "x"}))
    in_b = await make(fhir, coded(pid, {"system": SYS_B, "code": "x"}))
    bare = await make(fhir, coded(pid, {"code": "x"}))
    both = await make(
        fhir, coded(pid, {"system": SYS_A, "code": "y"}, {"system": SYS_B, "code": "x"})
    )
    textual = await make(fhir, {**observation_at(pid, "2026-03-01"), "code": {"text": "x"}})
    assert await ids(fhir, "/Observation", code="x") == {in_a, in_b, bare, both}
    assert await ids(fhir, "/Observation", code=f"{SYS_A}|x") == {in_a}
    assert await ids(fhir, "/Observation", code=f"{SYS_B}|x") == {in_b, both}
    assert await ids(fhir, "/Observation", code="|x") == {bare}
    assert await ids(fhir, "/Observation", code=f"{SYS_A}|") == {in_a, both}
    assert await ids(fhir, "/Observation", code=f"{SYS_A}|x,{SYS_A}|y") == {in_a, both}
    assert await ids(fhir, "/Observation", code=f"y,{SYS_B}|x") == {in_b, both}
    assert await ids(fhir, "/Observation", code=f"{SYS_A}|x,{SYS_B}|") == {in_a, in_b, both}
    assert await ids(fhir, "/Observation", **{"code:not": f"{SYS_A}|x"}) == {
        in_b, bare, both, textual
    }  # fmt: skip
    assert await ids(fhir, "/Observation", **{"code:not": "x"}) == {textual}
    assert await ids(fhir, "/Observation", **{"code:not": f"{SYS_A}|x,|x"}) == {in_b, both, textual}
    # several conditions on tokens: one drives, the others are checked on the copy
    response = await fhir.client.get(
        "/Observation", params=[("code", f"{SYS_B}|x"), ("code", f"{SYS_A}|y"), ("status", "final")]
    )
    assert {e["resource"]["id"] for e in response.json()["entry"]} == {both}
    assert await ids(fhir, "/Observation", code="x", **{"status:not": "final"}) == set()


async def test_of_type_and_reference_identifier_need_the_type_and_the_system(
    fhir: RunningServer,
) -> None:
    v2 = "http://terminology.hl7.org/CodeSystem/v2-0203"

    def typed(code: str, system: str) -> dict[str, Any]:
        kind = {"coding": [{"system": v2, "code": code}]}
        return {"resourceType": "Patient", "identifier": [{"type": kind, "system": system, "value": "7"}]}  # fmt: skip

    mrn = await make(fhir, typed("MR", "urn:a"))
    ssn = await make(fhir, typed("SS", "urn:b"))
    assert await ids(fhir, "/Patient", identifier="7") == {mrn, ssn}
    assert await ids(fhir, "/Patient", **{"identifier:of-type": f"{v2}|MR|7"}) == {mrn}
    assert await ids(fhir, "/Patient", **{"identifier:of-type": f"{v2}|SS|7,{v2}|MR|8"}) == {ssn}
    assert await ids(fhir, "/Patient", identifier="urn:b|7") == {ssn}

    def by(system: str) -> dict[str, Any]:
        performer = {"identifier": {"system": system, "value": "42"}}
        return {**observation_at(mrn, "2026-03-01"), "performer": [performer]}

    npi = await make(fhir, by("http://hl7.org/fhir/sid/us-npi"))
    other = await make(fhir, by("urn:other"))
    assert await ids(fhir, "/Observation", **{"performer:identifier": "42"}) == {npi, other}
    assert await ids(fhir, "/Observation", **{"performer:identifier": "urn:other|42"}) == {other}


async def test_exact_strings_differ_in_case_and_accents_from_their_folded_key(
    fhir: RunningServer,
) -> None:
    accented = await make(fhir, {"resourceType": "Patient", "name": [{"family": "Müller"}]})
    upper = await make(fhir, {"resourceType": "Patient", "name": [{"family": "MULLER"}]})
    plain = await make(fhir, {"resourceType": "Patient", "name": [{"family": "muller"}]})
    assert await ids(fhir, "/Patient", family="Muller") == {accented, upper, plain}
    assert await ids(fhir, "/Patient", **{"family:exact": "Müller"}) == {accented}
    assert await ids(fhir, "/Patient", **{"family:exact": "MULLER,muller"}) == {upper, plain}
    assert await ids(fhir, "/Patient", **{"family:exact": "Mull"}) == set()
    response = await fhir.client.get(
        "/Patient", params=[("family:exact", "MULLER"), ("family", "mul")]
    )
    assert {e["resource"]["id"] for e in response.json()["entry"]} == {upper}


async def test_missing_true_and_false_partition_every_parameter_type(fhir: RunningServer) -> None:
    pid = await make(fhir, patient())
    bp = {"code": {"coding": [{"system": "http://loinc.org", "code": "8480-6"}]},
          "valueQuantity": {"value": 120, "unit": "mmHg", "system": "http://unitsofmeasure.org", "code": "mm[Hg]"}}  # fmt: skip
    full = await make(
        fhir,
        {**coded(pid, {"system": SYS_A, "code": "x"}), "valueQuantity": {"value": 3, "unit": "kg"},
         "component": [bp], "focus": [{"reference": f"Patient/{pid}"}], "identifier": [{"value": "i1"}]},
    )  # fmt: skip
    bare = await make(
        fhir, {"resourceType": "Observation", "status": "final", "code": {"text": "t"}}
    )
    for name in ("identifier", "value-quantity", "component-code-value-quantity", "focus",
                 "date", "component-code", "combo-code-value-quantity", "subject"):  # fmt: skip
        assert await ids(fhir, "/Observation", **{f"{name}:missing": "false"}) == {full}, name
        assert await ids(fhir, "/Observation", **{f"{name}:missing": "true"}) == {bare}, name
    assert await ids(fhir, "/Observation", patient=pid, **{"focus:missing": "true"}) == set()
    assert await ids(fhir, "/Observation", patient=pid, **{"focus:missing": "false"}) == {full}
    no_name = await make(fhir, {"resourceType": "Patient", "gender": "other"})
    assert await ids(fhir, "/Patient", **{"family:missing": "true"}) == {no_name}
    assert no_name not in await ids(fhir, "/Patient", **{"family:missing": "false"})


async def test_quantity_units_are_checked_after_the_number_drives(fhir: RunningServer) -> None:
    pid = await make(fhir, patient())
    ucum = "http://unitsofmeasure.org"

    def weighing(value: float, unit: str) -> dict[str, Any]:
        quantity = {"value": value, "unit": unit, "system": ucum, "code": unit}
        return {**observation_at(pid, "2026-03-01"), "valueQuantity": quantity}

    mg = await make(fhir, weighing(5, "mg"))
    kg = await make(fhir, weighing(5, "kg"))
    heavy = await make(fhir, weighing(7, "kg"))
    assert await ids(fhir, "/Observation", **{"value-quantity": "5"}) == {mg, kg}
    assert await ids(fhir, "/Observation", **{"value-quantity": "5||kg"}) == {kg}
    assert await ids(fhir, "/Observation", **{"value-quantity": f"5|{ucum}|mg"}) == {mg}
    assert await ids(fhir, "/Observation", **{"value-quantity": "5|http://other|mg"}) == set()
    assert await ids(fhir, "/Observation", **{"value-quantity": "ge5||kg"}) == {kg, heavy}
    assert await ids(fhir, "/Observation", **{"value-quantity": "ne5||kg"}) == {heavy}
    assert await ids(fhir, "/Observation", **{"value-quantity": "lt6||kg,gt6||mg"}) == {kg}
    response = await fhir.client.get(
        "/Observation", params=[("value-quantity", "ge5||kg"), ("value-quantity", "lt6")]
    )
    assert {e["resource"]["id"] for e in response.json()["entry"]} == {kg}


async def test_composites_pair_codes_with_systems_and_values_with_units(
    fhir: RunningServer,
) -> None:
    pid = await make(fhir, patient())
    ucum = "http://unitsofmeasure.org"

    def scored(system: str, code: str, value: float, unit: str) -> dict[str, Any]:
        quantity = {"value": value, "unit": unit, "system": ucum, "code": unit}
        return {**coded(pid, {"system": system, "code": code}), "valueQuantity": quantity}

    a5 = await make(fhir, scored(SYS_A, "x", 5, "kg"))
    b5 = await make(fhir, scored(SYS_B, "x", 5, "mg"))
    a9 = await make(fhir, scored(SYS_A, "y", 9, "kg"))
    pair = "code-value-quantity"
    assert await ids(fhir, "/Observation", **{pair: "x$5"}) == {a5, b5}
    assert await ids(fhir, "/Observation", **{pair: f"{SYS_A}|x$5"}) == {a5}
    assert await ids(fhir, "/Observation", **{pair: "x$5||mg"}) == {b5}
    assert await ids(fhir, "/Observation", **{pair: f"{SYS_A}|x$5||mg"}) == set()
    assert await ids(fhir, "/Observation", **{pair: "x$gt4,y$gt8"}) == {a5, b5, a9}
    assert await ids(fhir, "/Observation", **{pair: "x$gt6"}) == set()  # 9 is y's
    assert await ids(fhir, "/Observation", **{pair: "x$ne5"}) == set()
    concept = "code-value-concept"
    answered = await make(
        fhir,
        {**coded(pid, {"system": SYS_A, "code": "q"}),
         "valueCodeableConcept": {"coding": [{"system": SYS_B, "code": "yes"}]}},
    )  # fmt: skip
    assert await ids(fhir, "/Observation", **{concept: "q$yes"}) == {answered}
    assert await ids(fhir, "/Observation", **{concept: f"{SYS_A}|q${SYS_B}|yes"}) == {answered}
    assert await ids(fhir, "/Observation", **{concept: f"{SYS_B}|q$yes"}) == set()
    assert await ids(fhir, "/Observation", **{concept: f"q${SYS_A}|yes"}) == set()
    assert await ids(fhir, "/Observation", **{concept: "q$no,q$yes"}) == {answered}
    assert await ids(fhir, "/Observation", **{concept: "yes$q"}) == set()
