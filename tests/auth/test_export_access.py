"""Bulk Data export under SMART: the requester's scopes confine what is exported exactly like a
search, only the requester sees the job and its files, and a download needs the token."""

from __future__ import annotations

import asyncio
import base64
from typing import Any

import httpx

from fhirgoal.auth.clients import Client
from fhirgoal.core.jsonio import loads
from tests.auth.conftest import AUDIT_CLIENT, SmartServer
from tests.helpers import export_manifest, observation, patient

ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}


async def finished(client: httpx.AsyncClient, status_url: str) -> dict[str, Any]:
    return await export_manifest(client, status_url)


async def seed(smart: SmartServer) -> None:
    for p in ("pa", "pb"):
        await smart.seed(patient(p.upper(), id=p))
        await smart.seed(observation(p, id=f"{p}-obs"))


async def test_a_patient_token_exports_its_patient_only(smart: SmartServer) -> None:
    await seed(smart)
    async with await smart.as_scope("patient/*.rs", patient="pa") as a:
        kick = await a.get("/Patient/$export", headers=ASYNC)
        assert kick.status_code == 202, kick.text
        manifest = await finished(a, kick.headers["Content-Location"])
        ids = []
        for item in manifest["output"]:
            body = await a.get(item["url"])
            assert body.status_code == 200
            ids += [loads(line)["id"] for line in body.text.splitlines()]
        assert sorted(ids) == ["pa", "pa-obs"]


async def test_only_the_requester_sees_the_job_and_files(smart: SmartServer) -> None:
    await seed(smart)
    await smart.app.state.smart.clients.register(
        Client(client_id="other-payer", scopes="system/*.rs")
    )
    async with smart.client(await smart.mint("system/*.rs")) as payer:
        kick = await payer.get("/$export", params={"_type": "Observation"}, headers=ASYNC)
        assert kick.status_code == 202, kick.text
        status_url = kick.headers["Content-Location"]
        manifest = await finished(payer, status_url)
        file_url = manifest["output"][0]["url"]
        assert (await payer.get(file_url)).status_code == 200
    other_token = await smart.mint("system/*.rs", client_id="other-payer")
    async with smart.client(other_token) as other:
        assert (await other.get(status_url)).status_code == 404
        assert (await other.get(file_url)).status_code == 404
        assert (await other.delete(status_url)).status_code == 404
    anonymous = await smart.http.get(file_url)
    assert anonymous.status_code == 401
    # each download is audited, naming the file
    file_path = file_url.split("/fhir/", 1)[1]
    async with smart.client(
        await smart.mint("system/AuditEvent.rs", client_id=AUDIT_CLIENT)
    ) as audit:
        for _ in range(100):
            events = (await audit.get("/AuditEvent", params={"_count": "200"})).json()
            queries = [
                base64.b64decode(entity["query"]).decode()
                for entry in events.get("entry", [])
                for entity in entry["resource"].get("entity", [])
                if "query" in entity
            ]
            if file_path in queries:
                break
            await asyncio.sleep(0.1)
        assert file_path in queries
    # a type the token cannot search is refused at kick-off, not silently left out
    async with await smart.as_scope("system/Patient.rs") as narrow:
        denied = await narrow.get("/$export", params={"_type": "Observation"}, headers=ASYNC)
        assert denied.status_code == 403
