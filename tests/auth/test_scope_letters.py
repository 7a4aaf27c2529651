"""Every SMART v2 permission letter (c r u d s) against every interaction: exactly the interactions
the letter names are allowed, the others are 403 (https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html)."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable

import httpx
import pytest

from fhirgoal.auth.clients import Client
from tests.auth.conftest import SmartServer
from tests.helpers import FHIR_JSON, JSON_PATCH, observation

Call = Callable[[httpx.AsyncClient], Awaitable[httpx.Response]]
FORM = {"Content-Type": "application/x-www-form-urlencoded"}
REPLACE_STATUS = json.dumps([{"op": "replace", "path": "/status", "value": "amended"}])

# interaction -> (letters it needs, the request)
INTERACTIONS: dict[str, tuple[str, Call]] = {
    "create": ("c", lambda c: c.post("/Observation", json=observation("pa"))),
    "read": ("r", lambda c: c.get("/Observation/o1")),
    "vread": ("r", lambda c: c.get("/Observation/o1/_history/1")),
    "history-instance": ("r", lambda c: c.get("/Observation/o1/_history")),
    "update": ("u", lambda c: c.put("/Observation/o1", json=observation("pa", "70.0", id="o1"))),
    "patch": ("u", lambda c: c.patch("/Observation/o1", content=REPLACE_STATUS, headers=JSON_PATCH)),
    "delete": ("d", lambda c: c.delete("/Observation/o2")),
    "search-type": ("s", lambda c: c.get("/Observation?subject=Patient/pa")),
    "search-post": ("s", lambda c: c.post("/Observation/_search", content="code=29463-7", headers=FORM)),
    "search-compartment": ("s", lambda c: c.get("/Patient/pa/Observation")),
    "search-system": ("s", lambda c: c.get("/?_type=Observation")),
    "history-type": ("s", lambda c: c.get("/Observation/_history")),
    "conditional-create": ("cs", lambda c: c.post("/Observation", json=observation("pa"), headers={**FHIR_JSON, "If-None-Exist": "_id=o9"})),
    "conditional-update": ("su", lambda c: c.put("/Observation?_id=o1", json=observation("pa", id="o1"))),
    "conditional-delete": ("sd", lambda c: c.delete("/Observation?_id=o2")),
}  # fmt: skip


async def seed(smart: SmartServer) -> None:
    await smart.seed({"resourceType": "Patient", "id": "pa"})
    await smart.seed(observation("pa", id="o1"))
    await smart.seed(observation("pa", id="o2"))


@pytest.mark.parametrize("letter", list("cruds"))
async def test_each_letter_allows_exactly_its_interactions(smart: SmartServer, letter: str) -> None:
    await seed(smart)
    async with await smart.as_scope(f"patient/Observation.{letter}", patient="pa") as client:
        for name, (needs, call) in INTERACTIONS.items():
            response = await call(client)
            allowed = set(needs) <= {letter}
            if allowed:
                assert response.status_code < 300, (letter, name, response.text)
            else:
                assert response.status_code == 403, (letter, name, response.status_code)
                assert response.json()["resourceType"] == "OperationOutcome"


async def test_all_letters_together_allow_every_interaction(smart: SmartServer) -> None:
    await seed(smart)
    async with await smart.as_scope("patient/Observation.cruds", patient="pa") as client:
        for name, (_, call) in INTERACTIONS.items():
            response = await call(client)
            assert response.status_code < 300, (name, response.text)


async def test_v1_read_and_write_map_to_letters(smart: SmartServer) -> None:
    await seed(smart)
    async with await smart.as_scope("patient/Observation.read", patient="pa") as client:
        assert (await client.get("/Observation/o1")).status_code == 200
        assert (await client.get("/Observation")).status_code == 200
        assert (await client.delete("/Observation/o2")).status_code == 403
    async with await smart.as_scope("patient/Observation.write", patient="pa") as client:
        assert (await client.get("/Observation/o1")).status_code == 403
        assert (await client.delete("/Observation/o2")).status_code == 204


async def test_a_scope_for_another_type_opens_nothing_here(smart: SmartServer) -> None:
    await seed(smart)
    async with await smart.as_scope("patient/Goal.cruds", patient="pa") as client:
        for name, (_, call) in INTERACTIONS.items():
            if name == "search-system":
                continue  # `_type=Observation` is refused too, checked below
            assert (await call(client)).status_code == 403, name
        assert (await client.get("/?_type=Observation")).status_code == 403


async def test_granular_scope_confines_reads_and_writes_to_its_filter(smart: SmartServer) -> None:
    await smart.seed({"resourceType": "Patient", "id": "pa"})
    survey = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "survey"}]}  # fmt: skip
    vital = {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}  # fmt: skip
    await smart.seed(observation("pa", id="s1", category=[survey]))
    await smart.seed(observation("pa", id="v1", category=[vital]))
    scope = "patient/Observation.crus?category=survey"
    async with await smart.as_scope(scope, patient="pa") as client:
        bundle = (await client.get("/Observation")).json()
        assert [e["resource"]["id"] for e in bundle["entry"]] == ["s1"]
        assert (await client.get("/Observation/v1")).status_code == 404
        assert (await client.get("/Observation/s1")).status_code == 200
        created = await client.post("/Observation", json=observation("pa", category=[survey]))
        assert created.status_code == 201
        refused = await client.post("/Observation", json=observation("pa", category=[vital]))
        assert refused.status_code == 403
        moved = observation("pa", id="s1", category=[vital])
        assert (await client.put("/Observation/s1", json=moved)).status_code == 403


async def test_the_audit_trail_cannot_be_changed_even_with_full_scopes(smart: SmartServer) -> None:
    full = "system/*.cruds system/AuditEvent.cruds"
    await smart.app.state.smart.clients.register(Client(client_id="full", scopes=full))
    async with smart.client(await smart.mint(full, client_id="full")) as client:
        await client.get("/Observation")
        await smart.app.state.auth_runtime.auditor.flush()
        events = (await client.get("/AuditEvent")).json()["entry"]
        event = events[0]["resource"]
        assert (await client.put(f"/AuditEvent/{event['id']}", json=event)).status_code == 405
        assert (await client.delete(f"/AuditEvent/{event['id']}")).status_code == 405
