"""Cross-patient matrix: a token for patient A tries every interaction and search feature on
patient B's data; nothing of B's comes back, and nothing tells B's resources exist."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from fhirgoal.core.access import UNRESTRICTED
from tests.auth.conftest import SmartServer
from tests.helpers import FHIR_JSON, observation

SURVEY = {
    "coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "survey"}
    ]
}
# Every id of B's data contains this marker, so one substring check per response suffices.
MARK = "bbbb"


@dataclass
class World:
    smart: SmartServer
    a: httpx.AsyncClient  # patient/*.cruds for Patient/pa


@pytest.fixture
async def world(smart: SmartServer) -> AsyncIterator[World]:
    await smart.seed({"resourceType": "Practitioner", "id": "doc", "name": [{"family": "Lee"}]})
    await smart.seed(
        {"resourceType": "Patient", "id": "pa", "name": [{"family": "Aalto"}],
         "generalPractitioner": [{"reference": "Practitioner/doc"}]}
    )  # fmt: skip
    await smart.seed(
        {"resourceType": "Patient", "id": "p-bbbb", "name": [{"family": "Bbbbson"}],
         "generalPractitioner": [{"reference": "Practitioner/doc"}]}
    )  # fmt: skip
    await smart.seed(
        {"resourceType": "Goal", "id": "goal-bbbb", "lifecycleStatus": "active",
         "description": {"text": "B's goal"}, "subject": {"reference": "Patient/p-bbbb"}}
    )  # fmt: skip
    await smart.seed(
        {"resourceType": "Encounter", "id": "enc-bbbb", "status": "finished",
         "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
         "subject": {"reference": "Patient/p-bbbb"}}
    )  # fmt: skip
    await smart.seed(
        observation("p-bbbb", id="obs-bbbb", category=[SURVEY],
                    encounter={"reference": "Encounter/enc-bbbb"})
    )  # fmt: skip
    await smart.seed(observation("p-bbbb", "80.0", id="obs-bbbb", category=[SURVEY]))  # v2
    # A's own observation points at B's goal: includes must not follow it.
    await smart.seed(
        observation("pa", id="obs-a", category=[SURVEY], focus=[{"reference": "Goal/goal-bbbb"}])
    )
    async with await smart.as_scope("patient/*.cruds", patient="pa") as a:
        yield World(smart, a)


def assert_nothing_of_b(response: httpx.Response) -> None:
    """No resource of B's in the body (A's own obs-a refers to B's goal by id: that is A's data)."""
    body = response.json() if response.content else {}
    resources = [e["resource"] for e in body.get("entry", [])] if "entry" in body else [body]
    for resource in resources:
        assert MARK not in resource.get("id", ""), (response.request.url, resource)
        assert "p-bbbb" not in json.dumps(resource.get("subject", {})), resource


async def test_reads_of_b_answer_404_exactly_as_for_an_unknown_id(world: World) -> None:
    for path in ("Patient/p-bbbb", "Observation/obs-bbbb", "Goal/goal-bbbb", "Encounter/enc-bbbb"):
        rt = path.split("/")[0]
        seen = await world.a.get(f"/{path}")
        unknown = await world.a.get(f"/{rt}/no-such-bbbb")
        assert seen.status_code == unknown.status_code == 404, seen.text
        assert set(seen.json()) == set(unknown.json())
    for path in (
        "Observation/obs-bbbb/_history/1",
        "Observation/obs-bbbb/_history/2",
        "Observation/obs-bbbb/_history",
    ):
        response = await world.a.get(f"/{path}")
        assert response.status_code == 404, (path, response.text)


SEARCHES = [
    "/Observation",
    "/Observation?subject=Patient/p-bbbb",
    "/Observation?patient=p-bbbb",
    "/Observation?_id=obs-bbbb",
    "/Observation?_total=accurate",
    "/Observation?_summary=count",
    "/Observation?subject:Patient.name=Bbbbson",
    "/Observation?subject:Patient._id=p-bbbb",
    "/Observation?encounter:Encounter.subject=Patient/p-bbbb",
    "/Observation?subject:Patient.general-practitioner.name=Lee",
    "/Patient",
    "/Patient?_has:Observation:patient:_id=obs-bbbb",
    "/Patient?general-practitioner=Practitioner/doc",
    "/Patient?_id=pa&_revinclude=Observation:subject",
    "/Patient?_revinclude=Goal:subject&_revinclude=Encounter:subject",
    "/Observation?_id=obs-a&_include=Observation:focus",
    "/Observation?_include=Observation:*&_include:iterate=Goal:*",
    "/Observation?_revinclude:iterate=Observation:focus&_include=Observation:subject",
    "/Goal",
    "/Goal?subject=Patient/p-bbbb",
    "/Encounter",
    "/Patient/p-bbbb/Observation",
    "/Patient/p-bbbb/Goal",
    "/Patient/p-bbbb/Encounter?_include=Encounter:subject",
    "/?_type=Observation,Goal,Encounter,Patient",
    "/",
    "/?_id=obs-bbbb",
    "/Observation/_history",
    "/Goal/_history",
    "/_history",
]


@pytest.mark.parametrize("path", SEARCHES)
async def test_searches_never_return_b(world: World, path: str) -> None:
    response = await world.a.get(path)
    assert response.status_code == 200, response.text
    assert_nothing_of_b(response)


async def test_a_still_sees_its_own_data_through_the_same_features(world: World) -> None:
    bundle = (await world.a.get("/Observation?_total=accurate")).json()
    assert bundle["total"] == 1
    assert [e["resource"]["id"] for e in bundle["entry"]] == ["obs-a"]
    assert (await world.a.get("/Observation?_summary=count")).json()["total"] == 1
    assert (await world.a.get("/?_summary=count")).json()["total"] == 2  # pa and obs-a
    history = (await world.a.get("/_history")).json()
    assert {e["resource"]["id"] for e in history["entry"]} == {"pa", "obs-a"}
    included = (await world.a.get("/Patient?_id=pa&_revinclude=Observation:subject")).json()
    assert {e["resource"]["id"] for e in included["entry"]} == {"pa", "obs-a"}
    compartment = (await world.a.get("/Patient/pa/Observation")).json()
    assert [e["resource"]["id"] for e in compartment["entry"]] == ["obs-a"]
    everything = (await world.a.get("/?_type=Observation,Patient")).json()
    assert {e["resource"]["id"] for e in everything["entry"]} == {"obs-a", "pa"}


async def test_post_search_never_returns_b(world: World) -> None:
    response = await world.a.post(
        "/Observation/_search",
        content="subject=Patient/p-bbbb",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 200
    assert_nothing_of_b(response)
    assert response.json().get("entry", []) == []


async def test_writes_to_b_answer_404_and_change_nothing(world: World) -> None:
    body = observation("pa", id="obs-bbbb")
    assert (await world.a.put("/Observation/obs-bbbb", json=body)).status_code == 404
    patch = [{"op": "replace", "path": "/status", "value": "cancelled"}]
    response = await world.a.patch(
        "/Observation/obs-bbbb",
        content=json.dumps(patch),
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert response.status_code == 404
    assert (await world.a.delete("/Observation/obs-bbbb")).status_code == 404
    assert (await world.a.delete("/Patient/p-bbbb")).status_code == 404
    gone = await world.a.delete("/Observation?subject=Patient/p-bbbb")
    assert gone.status_code == 204  # nothing matched *for A*: nothing deleted
    current = await world.smart.service.read(UNRESTRICTED, "Observation", "obs-bbbb")
    assert current.version is not None and current.version.version == 2


async def test_update_as_create_reveals_nothing_about_an_existing_id(world: World) -> None:
    taken = await world.a.put("/Observation/obs-bbbb", json=observation("pa", id="obs-bbbb"))
    free = await world.a.put("/Observation/free-id", json=observation("pa", id="free-id"))
    assert taken.status_code == free.status_code == 404


async def test_writing_into_b_compartment_is_403(world: World) -> None:
    created = await world.a.post("/Observation", json=observation("p-bbbb"))
    assert created.status_code == 403, created.text
    moved = observation("p-bbbb", id="obs-a")
    assert (await world.a.put("/Observation/obs-a", json=moved)).status_code == 403
    patch = [{"op": "replace", "path": "/subject/reference", "value": "Patient/p-bbbb"}]
    response = await world.a.patch(
        "/Observation/obs-a",
        content=json.dumps(patch),
        headers={"Content-Type": "application/json-patch+json"},
    )
    assert response.status_code == 403
    # and A's own observation is untouched
    own = (await world.a.get("/Observation/obs-a")).json()
    assert own["subject"]["reference"] == "Patient/pa"


async def test_a_second_reference_cannot_reach_into_b_compartment(world: World) -> None:
    about_both = observation("pa", performer=[{"reference": "Patient/p-bbbb"}])
    created = await world.a.post("/Observation", json=about_both)
    assert created.status_code == 403, created.text
    stored = await world.smart.service.repo.find(
        UNRESTRICTED, "Observation", {"comp": "Patient/p-bbbb"}, [("_id", 1)], 100
    )
    assert [v.id for v in stored] == ["obs-bbbb"]  # only B's own, seeded


async def test_conditional_interactions_do_not_leak_b(world: World) -> None:
    # If-None-Exist matching only B's resource: it is not seen, so A's resource is created
    created = await world.a.post(
        "/Observation",
        json=observation("pa"),
        headers={**FHIR_JSON, "If-None-Exist": "_id=obs-bbbb"},
    )
    assert created.status_code == 201
    assert_nothing_of_b(created)
    # conditional update whose criteria match only B's: creates for A, leaves B's alone
    updated = await world.a.put("/Observation?_id=obs-bbbb", json=observation("pa"))
    assert updated.status_code == 201
    assert_nothing_of_b(updated)
    b = await world.smart.service.repo.current(UNRESTRICTED, "Observation", "obs-bbbb")
    assert b is not None and b.version == 2


async def test_launch_patient_cannot_be_swapped_by_parameters(world: World) -> None:
    for path in ("/Observation?patient=p-bbbb&patient=pa", "/Observation?subject=p-bbbb,pa"):
        response = await world.a.get(path)
        assert response.status_code == 200
        assert_nothing_of_b(response)
