"""Cross-patient matrix: a token for patient A tries every interaction and search feature on
patient B's data; nothing of B's comes back, and nothing tells B's resources exist."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from fhirgoal.core.access import UNRESTRICTED
from tests.auth.conftest import SmartServer
from tests.auth.isolation import (
    SEARCHES,
    assert_conditional_create_does_not_leak_b,
    assert_nothing_of_b,
    assert_reads_of_b_are_404,
    assert_writes_to_b_change_nothing,
    b_records,
    search_showing_nothing_of_b,
)
from tests.helpers import observation, patch


@dataclass
class World:
    smart: SmartServer
    a: httpx.AsyncClient  # patient/*.cruds for Patient/pa


@pytest.fixture
async def world(smart: SmartServer) -> AsyncIterator[World]:
    doc = [{"reference": "Practitioner/doc"}]
    for resource in [
        {"resourceType": "Practitioner", "id": "doc", "name": [{"family": "Lee"}]},
        {"resourceType": "Patient", "id": "pa", "name": [{"family": "Aalto"}],
         "generalPractitioner": doc},
        {"resourceType": "Patient", "id": "p-bbbb", "name": [{"family": "Bbbbson"}],
         "generalPractitioner": doc},
        *b_records("pa"),
    ]:  # fmt: skip
        await smart.seed(resource)
    async with await smart.as_scope("patient/*.cruds", patient="pa") as a:
        yield World(smart, a)


async def test_reads_of_b_answer_404_exactly_as_for_an_unknown_id(world: World) -> None:
    await assert_reads_of_b_are_404(world.a)


@pytest.mark.parametrize(
    "path",
    [
        *SEARCHES,
        "/Observation?subject:Patient.name=Bbbbson",
        "/Observation?subject:Patient.general-practitioner.name=Lee",
        "/Patient?general-practitioner=Practitioner/doc",
        "/Patient?_id=pa&_revinclude=Observation:subject",
        "/Patient?_revinclude=Goal:subject&_revinclude=Encounter:subject",
        "/?_type=Observation,Goal,Encounter,Patient",
        "/Patient/pa/$everything",
        "/Patient/pa/$everything?_count=1",
    ],
)
async def test_searches_never_return_b(world: World, path: str) -> None:
    await search_showing_nothing_of_b(world.a, path)


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
    await assert_writes_to_b_change_nothing(world.smart, world.a, "pa")


async def test_update_as_create_reveals_nothing_about_an_existing_id(world: World) -> None:
    taken = await world.a.put("/Observation/obs-bbbb", json=observation("pa", id="obs-bbbb"))
    free = await world.a.put("/Observation/free-id", json=observation("pa", id="free-id"))
    assert taken.status_code == free.status_code == 404


async def test_writing_into_b_compartment_is_403(world: World) -> None:
    created = await world.a.post("/Observation", json=observation("p-bbbb"))
    assert created.status_code == 403, created.text
    moved = observation("p-bbbb", id="obs-a")
    assert (await world.a.put("/Observation/obs-a", json=moved)).status_code == 403
    into_b = [{"op": "replace", "path": "/subject/reference", "value": "Patient/p-bbbb"}]
    assert (await patch(world.a, "/Observation/obs-a", into_b)).status_code == 403
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
    await assert_conditional_create_does_not_leak_b(world.smart, world.a, "pa")
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
