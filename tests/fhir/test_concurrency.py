"""Concurrent writers: with the same If-Match exactly one wins; history stays consistent."""

from __future__ import annotations

import asyncio

from tests.conftest import RunningServer
from tests.helpers import FHIR_JSON, patient


async def test_concurrent_if_match_race_has_exactly_one_winner(fhir: RunningServer) -> None:
    pid = (await fhir.client.post("/Patient", json=patient("Start"), headers=FHIR_JSON)).json()[
        "id"
    ]
    for round_ in range(3):
        version = round_ + 1

        async def attempt(n: int, version: int = version) -> int:
            response = await fhir.client.put(
                f"/Patient/{pid}",
                json={**patient(f"Writer{n}"), "id": pid},
                headers={**FHIR_JSON, "If-Match": f'W/"{version}"'},
            )
            return response.status_code

        statuses = await asyncio.gather(*(attempt(n) for n in range(8)))
        assert sorted(statuses) == [200] + [412] * 7, statuses
    history = (await fhir.client.get(f"/Patient/{pid}/_history")).json()
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == ["4", "3", "2", "1"]


async def test_concurrent_updates_without_if_match_all_land_in_order(fhir: RunningServer) -> None:
    pid = (await fhir.client.post("/Patient", json=patient("Start"), headers=FHIR_JSON)).json()[
        "id"
    ]
    statuses = await asyncio.gather(
        *(
            fhir.client.put(
                f"/Patient/{pid}", json={**patient(f"W{n}"), "id": pid}, headers=FHIR_JSON
            )
            for n in range(4)
        )
    )
    assert all(r.status_code == 200 for r in statuses)
    history = (await fhir.client.get(f"/Patient/{pid}/_history")).json()
    assert [e["resource"]["meta"]["versionId"] for e in history["entry"]] == [
        "5",
        "4",
        "3",
        "2",
        "1",
    ]


async def test_parallel_conditional_creates_make_exactly_one_resource(fhir: RunningServer) -> None:
    for round_ in range(3):
        system_value = f"urn:sys|X{round_}"
        body = {
            **patient(f"Same{round_}"),
            "identifier": [{"system": "urn:sys", "value": f"X{round_}"}],
        }
        responses = await asyncio.gather(
            *(
                fhir.client.post(
                    "/Patient",
                    json=body,
                    headers={**FHIR_JSON, "If-None-Exist": f"identifier={system_value}"},
                )
                for _ in range(20)
            )
        )
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200] * 19 + [201], statuses
        assert len({r.json()["id"] for r in responses}) == 1
        found = (await fhir.client.get("/Patient", params={"identifier": system_value})).json()
        assert found["total"] == 1


async def test_parallel_conditional_updates_create_once_then_update(fhir: RunningServer) -> None:
    body = {**patient("Upsert"), "identifier": [{"system": "urn:sys", "value": "U1"}]}
    responses = await asyncio.gather(
        *(
            fhir.client.put("/Patient?identifier=urn:sys|U1", json=body, headers=FHIR_JSON)
            for _ in range(8)
        )
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 7 + [201], statuses
    assert len({r.json()["id"] for r in responses}) == 1
    found = (await fhir.client.get("/Patient", params={"identifier": "urn:sys|U1"})).json()
    assert found["total"] == 1
    assert found["entry"][0]["resource"]["meta"]["versionId"] == "8"


async def test_failed_conditional_create_does_not_block_the_next(fhir: RunningServer) -> None:
    criteria = {**FHIR_JSON, "If-None-Exist": "identifier=urn:sys|F1"}
    bad = {
        "resourceType": "Patient",
        "identifier": [{"system": "urn:sys", "value": "F1"}],
        "gender": "robot",
    }
    assert (await fhir.client.post("/Patient", json=bad, headers=criteria)).status_code == 400
    good = {**patient("Fine"), "identifier": [{"system": "urn:sys", "value": "F1"}]}
    created = await fhir.client.post("/Patient", json=good, headers=criteria)
    assert created.status_code == 201, created.text
