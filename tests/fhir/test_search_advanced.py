"""Chaining, _has, _include/_revinclude, _sort with stable paging (https://hl7.org/fhir/R4/search.html)."""

from __future__ import annotations

from fhirgoal.clinical.resources import SURVEY, gas_goal
from tests.conftest import RunningServer
from tests.helpers import store


def ref(target: str) -> dict[str, str]:
    return {"reference": target}


async def clinic(fhir: RunningServer) -> None:
    """Two patients, one with a GP; goals; GAS ratings that focus on the goals."""
    await store(
        fhir.client, {"resourceType": "Practitioner", "id": "gp", "name": [{"family": "Lee"}]}
    )
    await store(fhir.client, {"resourceType": "Patient", "id": "alex", "name": [{"family": "Rivera", "given": ["Alex"]}],
                     "generalPractitioner": [ref("Practitioner/gp")]})  # fmt: skip
    await store(
        fhir.client,
        {
            "resourceType": "Patient",
            "id": "blair",
            "name": [{"family": "Chen", "given": ["Blair"]}],
        },
    )
    for pid, gid in (("alex", "g1"), ("alex", "g2"), ("blair", "g3")):
        await store(fhir.client, {"resourceType": "Goal", "id": gid, "lifecycleStatus": "active",
                         "description": {"text": f"goal {gid}"}, "subject": ref(f"Patient/{pid}")})  # fmt: skip
    for oid, gid, pid, level in (
        ("r1", "g1", "alex", "LA34481-4"),
        ("r2", "g2", "alex", "LA34483-0"),
        ("r3", "g3", "blair", "LA34481-4"),
    ):
        await store(fhir.client, {"resourceType": "Observation", "id": oid, "status": "final", "category": [SURVEY],
                         "code": {"coding": [{"system": "http://loinc.org", "code": "107333-7"}]},
                         "performer": [ref("Practitioner/t1")],
                         "subject": ref(f"Patient/{pid}"), "focus": [ref(f"Goal/{gid}")],
                         "effectiveDateTime": "2026-03-01",
                         "valueCodeableConcept": {"coding": [{"system": "http://loinc.org", "code": level}]}})  # fmt: skip


async def entries(fhir: RunningServer, path: str, **params: str) -> dict[str, set[str]]:
    response = await fhir.client.get(path, params=params)
    assert response.status_code == 200, response.text
    found: dict[str, set[str]] = {"match": set(), "include": set()}
    for entry in response.json().get("entry", []):
        resource = entry["resource"]
        found[entry["search"]["mode"]].add(f"{resource['resourceType']}/{resource['id']}")
    return found


async def test_chained_parameters_one_and_two_levels(fhir: RunningServer) -> None:
    await clinic(fhir)
    assert (await entries(fhir, "/Goal", **{"subject:Patient.name": "rivera"}))["match"] == {
        "Goal/g1",
        "Goal/g2",
    }
    assert (await entries(fhir, "/Goal", **{"patient.family": "chen"}))["match"] == {"Goal/g3"}
    two_levels = await entries(
        fhir, "/Goal", **{"subject:Patient.general-practitioner:Practitioner.name": "lee"}
    )
    assert two_levels["match"] == {"Goal/g1", "Goal/g2"}
    assert (await entries(fhir, "/Goal", **{"patient.family": "nobody"}))["match"] == set()
    bad = await fhir.client.get("/Goal", params={"subject:Patient.colour": "x"})
    assert bad.status_code == 400


async def test_reverse_chaining_with_has_and_nested_has(fhir: RunningServer) -> None:
    await clinic(fhir)
    rated_expected = await entries(
        fhir, "/Goal", **{"_has:Observation:focus:value-concept": "LA34481-4"}
    )
    assert rated_expected["match"] == {"Goal/g1", "Goal/g3"}
    # patients having a goal that has an 'expected' rating
    nested = await entries(
        fhir, "/Patient", **{"_has:Goal:patient:_has:Observation:focus:value-concept": "LA34483-0"}
    )
    assert nested["match"] == {"Patient/alex"}
    assert (
        await fhir.client.get("/Patient", params={"_has:Observation:encounter:code": "x"})
    ).status_code == 400


async def test_include_and_revinclude_with_iterate(fhir: RunningServer) -> None:
    await clinic(fhir)
    goals = await entries(fhir, "/Goal", patient="alex", _include="Goal:subject")
    assert goals["match"] == {"Goal/g1", "Goal/g2"} and goals["include"] == {"Patient/alex"}
    ratings = await entries(fhir, "/Goal", patient="alex", _revinclude="Observation:focus")
    assert ratings["include"] == {"Observation/r1", "Observation/r2"}
    response = await fhir.client.get(
        "/Observation?_id=r1&_include=Observation:focus&_include:iterate=Goal:subject&_include:iterate=Patient:general-practitioner"
    )
    found = {
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in response.json()["entry"]
        if e["search"]["mode"] == "include"
    }
    assert found == {"Goal/g1", "Patient/alex", "Practitioner/gp"}
    for bad in ("Goal", "Goal:colour", "Spaceship:subject"):
        assert (await fhir.client.get("/Goal", params={"_include": bad})).status_code == 400


async def test_sort_by_parameters_with_stable_paging_under_inserts(fhir: RunningServer) -> None:
    families = ["Diaz", "adams", "Bauer", "Ng", "ellis", "Cho", "Baker"]
    for n, family in enumerate(families):
        await store(
            fhir.client,
            {
                "resourceType": "Patient",
                "id": f"p{n}",
                "name": [{"family": family}],
                "birthDate": f"19{80 + n}-01-01",
            },
        )
    url: str | None = "/Patient?_sort=family&_count=3"
    seen: list[str] = []
    pages = 0
    while url:
        bundle = (await fhir.client.get(url)).json()
        seen += [e["resource"]["name"][0]["family"] for e in bundle.get("entry", [])]
        url = next((link["url"] for link in bundle["link"] if link["relation"] == "next"), None)
        pages += 1
        if pages == 1:  # inserted before the cursor: must not appear; after it: must appear once
            await store(
                fhir.client,
                {"resourceType": "Patient", "id": "early", "name": [{"family": "Aaron"}]},
            )
            await store(
                fhir.client, {"resourceType": "Patient", "id": "late", "name": [{"family": "Zed"}]}
            )
    assert seen == ["adams", "Baker", "Bauer", "Cho", "Diaz", "ellis", "Ng", "Zed"]
    newest_first = (
        await fhir.client.get("/Patient", params={"_sort": "-birthdate,family", "_count": "3"})
    ).json()
    assert [e["resource"]["id"] for e in newest_first["entry"]] == ["p6", "p5", "p4"]
    back = next(link["url"] for link in newest_first["link"] if link["relation"] == "next")
    second = (await fhir.client.get(back)).json()
    previous = next(link["url"] for link in second["link"] if link["relation"] == "previous")
    again = (await fhir.client.get(previous)).json()
    assert [e["resource"]["id"] for e in again["entry"]] == ["p6", "p5", "p4"]
    assert (await fhir.client.get("/Patient", params={"_sort": "colour"})).status_code == 400


async def test_summary_and_elements_return_tagged_subsets(fhir: RunningServer) -> None:
    await clinic(fhir)
    query = {"_id": "alex", "_summary": "true"}
    resource = (await fhir.client.get("/Patient", params=query)).json()["entry"][0]["resource"]
    assert "name" in resource and "generalPractitioner" not in resource  # not a summary element
    assert resource["meta"]["tag"][-1]["code"] == "SUBSETTED"
    query = {"_id": "r1", "_summary": "text"}
    resource = (await fhir.client.get("/Observation", params=query)).json()["entry"][0]["resource"]
    assert set(resource) == {"resourceType", "id", "meta", "status", "code"}
    picked = (
        await fhir.client.get("/Observation", params={"_id": "r1", "_elements": "focus"})
    ).json()
    resource = picked["entry"][0]["resource"]
    assert set(resource) == {"resourceType", "id", "meta", "focus", "status", "code"}  # + mandatory
    whole = (
        await fhir.client.get("/Observation", params={"_id": "r1", "_summary": "false"})
    ).json()
    assert "tag" not in whole["entry"][0]["resource"]["meta"]
    stored = (await fhir.client.get("/Observation/r1")).json()
    assert "tag" not in stored["meta"]  # subsetting never touches what is stored
    assert (await fhir.client.get("/Observation", params={"_summary": "some"})).status_code == 400


async def test_custom_search_parameters_work_from_data_alone(fhir: RunningServer) -> None:
    await clinic(fhir)
    assert (await entries(fhir, "/Observation", goal="Goal/g1"))["match"] == {"Observation/r1"}
    assert (await entries(fhir, "/Observation", goal="g3"))["match"] == {"Observation/r3"}
    levels = ["No work", "1 day", "3 days a week", "4 days", "Full time"]
    await store(fhir.client, gas_goal("g9", "alex", "work", levels, start="2026-03-01"))
    assert (await entries(fhir, "/Goal", **{"gas-scaled": "true"}))["match"] == {"Goal/g9"}
    assert (await entries(fhir, "/Goal", **{"gas-scaled": "false"}))["match"] == {
        "Goal/g1",
        "Goal/g2",
        "Goal/g3",
    }


async def test_search_across_types_with_type_and_paging(fhir: RunningServer) -> None:
    await clinic(fhir)
    params = {"_type": "Goal,Patient", "_count": "2"}
    everything = (await fhir.client.get("", params={**params, "_total": "accurate"})).json()
    assert everything["total"] == 5
    # not asked for, and more than a page: no total (the total rule, search/engine.py)
    assert "total" not in (await fhir.client.get("", params=params)).json()
    seen = [f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in everything["entry"]]
    url = next(link["url"] for link in everything["link"] if link["relation"] == "next")
    while url:
        page = (await fhir.client.get(url)).json()
        seen += [
            f"{e['resource']['resourceType']}/{e['resource']['id']}" for e in page.get("entry", [])
        ]
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
    assert seen == ["Goal/g1", "Goal/g2", "Goal/g3", "Patient/alex", "Patient/blair"]
    tagged = (await fhir.client.get("", params={"_id": "alex,r1"})).json()
    assert {e["resource"]["id"] for e in tagged["entry"]} == {"alex", "r1"}
    assert (await fhir.client.get("", params={"_type": "Spaceship"})).status_code == 400
    for empty in ("", ","):
        assert (await fhir.client.get("", params={"_type": empty})).status_code == 400
    assert (
        await fhir.client.get("", params={"_type": "Goal,Patient", "family": "chen"})
    ).status_code == 400
