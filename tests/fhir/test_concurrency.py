"""Concurrent writers: with the same If-Match exactly one wins; history stays consistent."""

from __future__ import annotations

import asyncio

from tests.conftest import RunningServer
from tests.fhir.helpers import FHIR_JSON, patient


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
