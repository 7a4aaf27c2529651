"""Basic search: _id, _lastUpdated, references, tokens, _count and paging, strictness, injection."""

from __future__ import annotations

from tests.conftest import RunningServer
from tests.helpers import clock_past, create, issues, observation, patient


async def test_search_by_patient_and_subject_references(fhir: RunningServer) -> None:
    a, b = await create(fhir.client, patient("A")), await create(fhir.client, patient("B"))
    for _ in range(3):
        await create(fhir.client, observation(a["id"]))
    await create(fhir.client, observation(b["id"]))
    for params in ({"patient": a["id"]}, {"subject": f"Patient/{a['id']}"}, {"subject": f"{fhir.base}/Patient/{a['id']}"},
                   {"patient": f"Patient/{a['id']}"}):  # fmt: skip
        bundle = (await fhir.client.get("/Observation", params=params)).json()
        assert bundle["type"] == "searchset"
        assert bundle["total"] == 3, params
        assert all(e["search"]["mode"] == "match" for e in bundle["entry"])
        assert all(e["fullUrl"].startswith(f"{fhir.base}/Observation/") for e in bundle["entry"])
    both = (
        await fhir.client.get("/Observation", params={"patient": f"{a['id']},{b['id']}"})
    ).json()
    assert both["total"] == 4


async def test_search_by_id_and_token(fhir: RunningServer) -> None:
    a, b = (
        await create(fhir.client, patient("A", gender="female")),
        await create(fhir.client, patient("B", gender="male")),
    )
    assert (await fhir.client.get("/Patient", params={"_id": a["id"]})).json()["total"] == 1
    assert (await fhir.client.get("/Patient", params={"_id": f"{a['id']},{b['id']}"})).json()[
        "total"
    ] == 2
    assert (await fhir.client.get("/Patient", params={"gender": "male"})).json()["entry"][0][
        "resource"
    ]["id"] == b["id"]
    obs = await create(fhir.client, observation(a["id"]))
    for code in ("29463-7", "http://loinc.org|29463-7"):
        assert (await fhir.client.get("/Observation", params={"code": code})).json()["total"] == 1
    assert (
        await fhir.client.get("/Observation", params={"code": "http://snomed.info/sct|29463-7"})
    ).json()["total"] == 0
    assert (await fhir.client.get("/Observation", params={"code": "http://loinc.org|"})).json()[
        "total"
    ] == 1
    assert (await fhir.client.get("/Observation", params={"code": "|29463-7"})).json()["total"] == 0
    assert obs["id"]


async def test_repeated_parameter_means_and(fhir: RunningServer) -> None:
    a = await create(fhir.client, patient("A", gender="female"))
    await create(fhir.client, patient("B", gender="male"))
    result = (await fhir.client.get(f"/Patient?_id={a['id']}&gender=male")).json()
    assert result["total"] == 0


async def test_last_updated_prefixes(fhir: RunningServer) -> None:
    first = await create(fhir.client, patient("First"))
    await clock_past(first["meta"]["lastUpdated"])  # the second is stamped later
    second = await create(fhir.client, patient("Second"))
    boundary = second["meta"]["lastUpdated"]
    later = (await fhir.client.get("/Patient", params={"_lastUpdated": f"ge{boundary}"})).json()
    assert [e["resource"]["id"] for e in later["entry"]] == [second["id"]]
    earlier = (await fhir.client.get("/Patient", params={"_lastUpdated": f"lt{boundary}"})).json()
    assert [e["resource"]["id"] for e in earlier["entry"]] == [first["id"]]
    day = boundary[:10]
    assert (await fhir.client.get("/Patient", params={"_lastUpdated": day})).json()["total"] == 2
    assert (await fhir.client.get("/Patient", params={"_lastUpdated": "gt2999"})).json()[
        "total"
    ] == 0
    bad = await fhir.client.get("/Patient", params={"_lastUpdated": "yesterday"})
    assert bad.status_code == 400


async def test_count_and_paging_links_walk_every_match_once(fhir: RunningServer) -> None:
    ids = {(await create(fhir.client, patient(f"P{i}")))["id"] for i in range(7)}
    seen: list[str] = []
    url: str | None = "/Patient?_count=3&_total=accurate"
    pages = 0
    while url:
        bundle = (await fhir.client.get(url)).json()
        assert bundle["total"] == (7 if pages < 2 else 8)
        seen += [e["resource"]["id"] for e in bundle.get("entry", [])]
        links = {link["relation"]: link["url"] for link in bundle["link"]}
        assert links["self"].startswith(f"{fhir.base}/Patient?")
        url = links.get("next")
        pages += 1
        if pages == 2:
            # insert while paging: no duplicates, nothing skipped
            await create(fhir.client, patient("Late"))
    assert set(seen) >= ids and len(seen) == len(set(seen))
    # previous link from the last page goes back
    back = (await fhir.client.get(links["previous"])).json()
    assert len(back["entry"]) == 3
    assert (await fhir.client.get("/Patient", params={"_count": "0"})).json().get("entry") is None


async def test_the_total_rule(fhir: RunningServer) -> None:
    """Bundle.total (search.html#total): free when one page holds every match; counted when asked
    (`_total=accurate`, `estimate`, `_summary=count`, `_count=0`, fhirpy's `_totalMethod=count`);
    otherwise left out, so that paging a long result does not count it on every page."""
    for i in range(5):
        await create(fhir.client, patient(f"T{i}"))

    async def total(**params: str) -> int | None:
        response = await fhir.client.get("/Patient", params=params)
        assert response.status_code == 200, response.text
        found: int | None = response.json().get("total")
        return found

    assert await total() == 5  # one page holds them all
    assert await total(_count="2") is None
    assert await total(_count="2", _total="accurate") == 5
    assert await total(_count="2", _total="estimate") == 5
    assert await total(_total="none") is None
    assert await total(_summary="count") == 5
    assert await total(_count="0") == 5
    assert await total(_count="0", _totalMethod="count") == 5
    bad = await fhir.client.get("/Patient", params={"_totalMethod": "roughly"})
    assert bad.status_code == 400


async def test_unknown_parameter_is_400_unless_lenient(fhir: RunningServer) -> None:
    strict = await fhir.client.get("/Patient", params={"colour": "blue"})
    assert strict.status_code == 400
    assert "colour" in issues(strict.json())[0]["diagnostics"]
    lenient = await fhir.client.get(
        "/Patient", params={"colour": "blue"}, headers={"Prefer": "handling=lenient"}
    )
    assert lenient.status_code == 200
    outcome = [e for e in lenient.json()["entry"] if e["search"]["mode"] == "outcome"]
    assert "colour" in outcome[0]["resource"]["issue"][0]["diagnostics"]
    assert (await fhir.client.get("/Patient", params={"gender:exact": "male"})).status_code == 400
    assert (await fhir.client.get("/Patient", params={"_count": "many"})).status_code == 400


async def test_injection_attempts_match_nothing_or_fail_cleanly(fhir: RunningServer) -> None:
    await create(fhir.client, patient("A", gender="female"))
    for params in (
        {"_id": '{"$ne": null}'},
        {"gender": '{"$gt": ""}'},
        {"_id": "$where"},
        {"subject": "Patient/$ne"},
    ):
        response = await fhir.client.get(
            "/Patient" if "subject" not in params else "/Observation", params=params
        )
        assert response.status_code == 200, params
        assert response.json()["total"] == 0
    assert (await fhir.client.get("/Patient?gender[$ne]=x")).status_code == 400
    assert (await fhir.client.get("/Patient", params={"$where": "1"})).status_code == 400


async def test_post_search_with_form_body(fhir: RunningServer) -> None:
    a = await create(fhir.client, patient("A", gender="female"))
    response = await fhir.client.post(
        "/Patient/_search",
        content=f"_id={a['id']}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200 and response.json()["total"] == 1


async def test_metadata_lists_types_and_working_search_parameters(fhir: RunningServer) -> None:
    statement = (await fhir.client.get("/metadata")).json()
    assert statement["fhirVersion"] == "4.0.1"
    resources = {r["type"]: r for r in statement["rest"][0]["resource"]}
    assert {"Goal", "CarePlan", "Observation", "QuestionnaireResponse", "Patient"} <= set(resources)
    types = {p["name"]: p["type"] for p in resources["Observation"]["searchParam"]}
    assert {"_id", "_lastUpdated", "patient", "subject", "code", "date", "value-quantity"} <= set(
        types
    )
    sample = {"date": "2026", "number": "5", "quantity": "5", "composite": "x$5"}
    for name, kind in types.items():  # every advertised parameter is accepted
        response = await fhir.client.get("/Observation", params={name: sample.get(kind, "x")})
        assert response.status_code == 200, (name, response.text)


async def test_every_advertised_include_and_revinclude_is_accepted(fhir: RunningServer) -> None:
    statement = (await fhir.client.get("/metadata")).json()
    goal = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Goal")
    assert "Goal:subject" in goal["searchInclude"]
    assert "Observation:focus" in goal["searchRevInclude"]
    for name, values in (
        ("_include", goal["searchInclude"]),
        ("_revinclude", goal["searchRevInclude"]),
    ):
        for value in values:
            response = await fhir.client.get("/Goal", params={name: value})
            assert response.status_code == 200, (name, value, response.text)
