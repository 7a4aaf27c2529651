"""A payer pulls Bulk Data the way payers do (issue 16, Done when): a Backend Services client with
its own key pair (private_key_jwt, client_credentials, `system/` scopes) over real HTTP exports at
the three levels with `_type`, `_since` and `_typeFilter`; every NDJSON line is parsed and
validated, and each type's count equals what the payer's own searches find. The clinic's writes go
through the API, so each carries the Provenance the server records, and the payer asks for the
latest of each (`includeAssociatedData=LatestProvenanceResources`). A cancel leaves nothing.
https://hl7.org/fhir/uv/bulkdata/export.html, https://hl7.org/fhir/smart-app-launch/backend-services.html
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from fhirgoal.auth.clients import Client
from fhirgoal.core.jsonio import loads
from fhirgoal.store.exports import ExportStore
from tests.auth import jose
from tests.auth.conftest import SmartServer
from tests.auth.flows import grant, token_request
from tests.helpers import clock_past, export_manifest, observation, patient, wait_until

ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}
PAYER_SCOPES = "system/Patient.rs system/Observation.rs system/Group.rs system/Provenance.rs"
HEIGHT = {"coding": [{"system": "http://loinc.org", "code": "8302-2"}]}


async def payer_client(smart: SmartServer) -> httpx.AsyncClient:
    """The payer: registered with its public key only; its token from the token endpoint."""
    key = jose.ec_key()
    await smart.app.state.smart.clients.register(
        Client(client_id="acme-health-plan", scopes=PAYER_SCOPES, jwks=jose.public_jwks(key))
    )
    response = await token_request(smart, grant(key, smart, "acme-health-plan", PAYER_SCOPES))
    assert response.status_code == 200, response.text
    assert response.json()["scope"] == PAYER_SCOPES
    return smart.client(response.json()["access_token"])


async def seed(clinic: httpx.AsyncClient) -> None:
    """The clinic's records, written through the API (each write gets its Provenance)."""
    entries: list[dict[str, Any]] = []
    for p in ("m1", "m2", "m3"):
        entries.append({"resource": patient(p.upper(), id=p)})
        for i in range(4):
            entries.append({"resource": observation(p, id=f"{p}-w{i}")})
        entries.append({"resource": observation(p, id=f"{p}-height", code=HEIGHT)})
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [
            {**e, "request": {"method": "PUT", "url": f"{e['resource']['resourceType']}/{e['resource']['id']}"}}
            for e in entries
        ],
    }  # fmt: skip
    response = await clinic.post("/", json=bundle)
    assert response.status_code == 200, response.text
    group = {
        "resourceType": "Group",
        "id": "acme-members",
        "type": "person",
        "actual": True,
        "member": [
            {"entity": {"reference": "Patient/m1"}},
            {"entity": {"reference": "Patient/m3"}},
        ],
    }
    assert (await clinic.put("/Group/acme-members", json=group)).status_code in (200, 201)


async def export(payer: httpx.AsyncClient, path: str, **params: str) -> dict[str, Any]:
    kick = await payer.get(path, params=params, headers=ASYNC)
    assert kick.status_code == 202, kick.text
    return await export_manifest(payer, kick.headers["Content-Location"])


async def contents(
    smart: SmartServer, payer: httpx.AsyncClient, manifest: dict[str, Any]
) -> dict[str, list[dict[str, Any]]]:
    """type -> resources; every line parsed and validated, every file's count checked, and the
    files refused without the payer's token."""
    validator = smart.service.validator
    found: dict[str, list[dict[str, Any]]] = {}
    for item in manifest["output"]:
        assert (await smart.http.get(item["url"])).status_code == 401
        response = await payer.get(item["url"])
        assert response.status_code == 200, response.text
        resources = [loads(line) for line in response.text.splitlines()]
        assert len(resources) == item["count"]
        for resource in resources:
            assert resource["resourceType"] == item["type"]
            validator.validate(resource)
        found.setdefault(item["type"], []).extend(resources)
    return found


async def searched(payer: httpx.AsyncClient, query: str, **params: str) -> list[str]:
    body = (await payer.get(query, params={"_count": "500", **params})).json()
    assert "next" not in {link["relation"] for link in body.get("link", [])}
    return sorted(
        e["resource"]["id"] for e in body.get("entry", []) if e["search"]["mode"] == "match"
    )


def ids(found: dict[str, list[dict[str, Any]]], rt: str) -> list[str]:
    return sorted(r["id"] for r in found.get(rt, []))


async def test_a_payer_exports_at_three_levels(smart: SmartServer) -> None:
    async with smart.client(await smart.mint("system/*.cruds")) as clinic:
        await seed(clinic)
    async with await payer_client(smart) as payer:
        # system level, two types
        system = await export(payer, "/$export", _type="Patient,Observation")
        found = await contents(smart, payer, system)
        assert ids(found, "Patient") == await searched(payer, "/Patient")
        assert ids(found, "Observation") == await searched(payer, "/Observation")

        # Patient level, a _typeFilter, and the latest Provenance of each exported resource
        heights = await export(
            payer,
            "/Patient/$export",
            _type="Observation",
            _typeFilter="Observation?code=http://loinc.org|8302-2",
            includeAssociatedData="LatestProvenanceResources",
        )
        found = await contents(smart, payer, heights)
        assert ids(found, "Observation") == await searched(
            payer, "/Observation", code="http://loinc.org|8302-2"
        )
        targets = sorted(
            t["reference"].rsplit("/_history/", 1)[0]
            for provenance in found["Provenance"]
            for t in provenance["target"]
        )
        assert targets == [f"Observation/{i}" for i in ids(found, "Observation")]

        # Group level: its members' records only; then _since after a change and a deletion
        group = await export(payer, "/Group/acme-members/$export")
        found = await contents(smart, payer, group)
        assert ids(found, "Patient") == ["m1", "m3"]
        members = await searched(payer, "/Observation", subject="Patient/m1,Patient/m3")
        assert ids(found, "Observation") == members
        await clock_past(group["transactionTime"])
        async with smart.client(await smart.mint("system/*.cruds")) as clinic:
            changed = observation("m3", "81.0", id="m3-w0")
            assert (await clinic.put("/Observation/m3-w0", json=changed)).status_code == 200
            assert (await clinic.delete("/Observation/m1-w1")).status_code in (200, 204)
            assert (await clinic.delete("/Observation/m2-w1")).status_code in (200, 204)
        since = await export(payer, "/Group/acme-members/$export", _since=group["transactionTime"])
        found = await contents(smart, payer, since)
        assert sorted(found) == ["Observation", "Provenance"]
        assert ids(found, "Observation") == ["m3-w0"]
        # Provenance at a patient level: that of the compartments' resources (Bulk Data 2.0.0),
        # here the server's record of the update; the deletions' records target no live resource
        assert [t["reference"].split("/_history/")[0] for p in found["Provenance"]
                for t in p["target"]] == ["Observation/m3-w0"]  # fmt: skip
        deleted = [
            entry["request"]
            for item in since["deleted"]
            for line in (await payer.get(item["url"])).text.splitlines()
            for entry in loads(line)["entry"]
        ]
        assert deleted == [{"method": "DELETE", "url": "Observation/m1-w1"}]  # m2: not a member


async def test_a_payer_cancels_an_export(smart: SmartServer) -> None:
    async with smart.client(await smart.mint("system/*.cruds")) as clinic:
        await seed(clinic)
    store = ExportStore(smart.service.database)
    async with await payer_client(smart) as payer:
        kick = await payer.get("/$export", headers=ASYNC)
        assert kick.status_code == 202
        status_url = kick.headers["Content-Location"]
        job_id = status_url.rsplit("/", 1)[1]
        cancelled = await payer.delete(status_url)
        assert cancelled.status_code == 202
        assert (await payer.get(status_url)).status_code == 404

        async def nothing_left() -> bool:  # a chunk the run wrote before it noticed goes too
            return await store.chunks.count_documents({"job": job_id}) == 0

        await wait_until(nothing_left, within=10, what="the cancelled export's chunks removed")
        await asyncio.sleep(0.5)  # the run, if still going, notices at its next chunk
        assert await nothing_left()
        assert await store.jobs.count_documents({"_id": job_id}) == 0
