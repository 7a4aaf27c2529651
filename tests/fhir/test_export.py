"""Bulk Data export (https://hl7.org/fhir/uv/bulkdata/export.html) against a real server:
kick-off at the three levels, polling, manifest, NDJSON files checked line by line against
searches, parameters, cancel, and a job taken over after its process died."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from fhirgoal.core.jsonio import loads
from fhirgoal.store.exports import RUNNING, ExportStore
from tests.conftest import RunningServer
from tests.helpers import export_manifest, issues, observation, patient, store

ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}
HEIGHT = {"coding": [{"system": "http://loinc.org", "code": "8302-2"}]}


async def seed(client: httpx.AsyncClient) -> None:
    await store(client, {"resourceType": "Practitioner", "id": "doc", "name": [{"family": "Lee"}]})
    for p in ("p1", "p2", "p3"):
        await store(client, patient(p.upper(), id=p))
        for i in range(5):
            await store(client, observation(p, id=f"{p}-o{i}"))
        await store(client, observation(p, id=f"{p}-phq", code=HEIGHT))
    await store(
        client,
        {
            "resourceType": "Group",
            "id": "payer-members",
            "type": "person",
            "actual": True,
            "member": [
                {"entity": {"reference": "Patient/p1"}},
                {"entity": {"reference": "Patient/p2"}, "inactive": True},
            ],
        },
    )


async def run_export(client: httpx.AsyncClient, path: str, **params: str) -> dict[str, Any]:
    kick = await client.get(path, params=params, headers=ASYNC)
    assert kick.status_code == 202, kick.text
    status_url = kick.headers["Content-Location"]
    body = await export_manifest(client, status_url)
    body["status_url"] = status_url
    return body


async def lines(client: httpx.AsyncClient, url: str) -> list[dict[str, Any]]:
    response = await client.get(url, headers={"Accept": "application/fhir+ndjson"})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/fhir+ndjson")
    assert response.text.endswith("\n")
    return [loads(line) for line in response.text.splitlines()]


async def exported(client: httpx.AsyncClient, manifest: dict[str, Any]) -> dict[str, list[str]]:
    """type -> ids, every line parsed and checked against a read of the same resource."""
    found: dict[str, list[str]] = {}
    for item in manifest["output"]:
        resources = await lines(client, item["url"])
        assert len(resources) == item["count"]
        for resource in resources:
            assert resource["resourceType"] == item["type"]
            current = await client.get(f"/{item['type']}/{resource['id']}")
            assert loads(current.text) == resource  # the stored resource, exactly
            found.setdefault(item["type"], []).append(resource["id"])
    return found


async def search_ids(client: httpx.AsyncClient, query: str) -> list[str]:
    body = (await client.get(query, params={"_count": "1000"})).json()
    return sorted(e["resource"]["id"] for e in body.get("entry", []))


async def test_system_export_holds_what_searches_find(fhir: RunningServer) -> None:
    await seed(fhir.client)
    manifest = await run_export(fhir.client, "/$export")
    assert manifest["requiresAccessToken"] is True
    assert manifest["request"] == f"{fhir.base}/$export"
    assert manifest["error"] == []
    datetime.fromisoformat(manifest["transactionTime"])
    found = await exported(fhir.client, manifest)
    for rt in ("Patient", "Observation", "Practitioner", "Group"):
        assert sorted(found[rt]) == await search_ids(fhir.client, f"/{rt}"), rt
    # the built-in catalogue (Questionnaires, ...) is part of the system too
    assert "Questionnaire" in found


async def test_patient_export_with_type_filter_and_since(fhir: RunningServer) -> None:
    await seed(fhir.client)
    manifest = await run_export(
        fhir.client,
        "/Patient/$export",
        _type="Observation,Patient",
        _typeFilter="Observation?code=http://loinc.org|8302-2",
    )
    found = await exported(fhir.client, manifest)
    assert sorted(found) == ["Observation", "Patient"]
    assert sorted(found["Observation"]) == ["p1-phq", "p2-phq", "p3-phq"]
    assert sorted(found["Patient"]) == ["p1", "p2", "p3"]
    # _since: what changed after the first export's transactionTime, nothing else
    await store(fhir.client, observation("p3", "80.0", id="p3-o1"))
    again = await run_export(fhir.client, "/Patient/$export", _since=manifest["transactionTime"])
    assert await exported(fhir.client, again) == {"Observation": ["p3-o1"]}


async def test_group_export_is_its_active_members(fhir: RunningServer) -> None:
    await seed(fhir.client)
    manifest = await run_export(fhir.client, "/Group/payer-members/$export")
    found = await exported(fhir.client, manifest)
    assert found["Patient"] == ["p1"]
    assert sorted(found["Observation"]) == [f"p1-o{i}" for i in range(5)] + ["p1-phq"]
    assert "Practitioner" not in found  # in no patient's compartment
    missing = await fhir.client.get("/Group/nobody/$export", headers=ASYNC)
    assert missing.status_code == 404


async def test_group_members_by_identifier_are_resolved_or_reported(fhir: RunningServer) -> None:
    """A payer's member list may name members by identifier only (R4 Reference.identifier): one
    that matches exactly one Patient is exported, one that matches none is reported in the
    manifest's `error` files, never guessed (fhir/groups.py)."""
    await seed(fhir.client)
    p2 = (await fhir.client.get("/Patient/p2")).json()
    member = {"system": "urn:example:payer-member-id", "value": "M-0002"}
    await store(fhir.client, {**p2, "identifier": [member]})
    nobody = {**member, "value": "NO-SUCH-MEMBER"}
    await store(
        fhir.client,
        {
            "resourceType": "Group", "id": "by-identifier", "type": "person", "actual": True,
            "member": [{"entity": {"identifier": member}}, {"entity": {"identifier": nobody}}],
        },
    )  # fmt: skip
    manifest = await run_export(fhir.client, "/Group/by-identifier/$export")
    found = await exported(fhir.client, manifest)
    assert found["Patient"] == ["p2"]
    assert sorted(found["Observation"]) == [f"p2-o{i}" for i in range(5)] + ["p2-phq"]
    [error_file] = manifest["error"]
    [outcome] = await lines(fhir.client, error_file["url"])
    [issue] = outcome["issue"]
    assert issue["severity"] == "warning" and issue["code"] == "not-found"
    assert "NO-SUCH-MEMBER" in issue["diagnostics"]
    assert issue["expression"] == ["Group.member[1].entity.identifier"]


@pytest.mark.parametrize(
    ("path", "params", "headers", "says"),
    [
        ("/$export", {}, {"Accept": "application/fhir+json"}, "respond-async"),
        ("/$export", {"_outputFormat": "text/csv"}, ASYNC, "_outputFormat"),
        ("/$export", {"_elements": "Patient.nonsense"}, ASYNC, "_elements"),
        ("/$export", {"organizeOutputBy": "Patient"}, ASYNC, "organizeOutputBy"),
        ("/$export", {"includeAssociatedData": "_custom"}, ASYNC, "includeAssociatedData"),
        ("/$export", {"patient": "Patient/p1"}, ASYNC, "patient"),
        ("/$export", {"_type": "Nonsense"}, ASYNC, "Nonsense"),
        ("/Patient/$export", {"_type": "Practitioner"}, ASYNC, "Practitioner"),
        (
            "/$export",
            {"_type": "Patient", "_typeFilter": "Observation?code=x"},
            ASYNC,
            "not exported",
        ),
        ("/$export", {"_type": "Observation", "_typeFilter": "Observation?_count=5"}, ASYNC, ""),
        ("/$export", {"_type": "Observation", "_typeFilter": "Observation?colour=red"}, ASYNC, ""),
        ("/$export", {"_since": "yesterday"}, ASYNC, "_since"),
    ],
)
async def test_bad_kick_offs_are_refused(
    fhir: RunningServer, path: str, params: dict[str, str], headers: dict[str, str], says: str
) -> None:
    response = await fhir.client.get(path, params=params, headers=headers)
    assert response.status_code == 400, response.text
    assert says in issues(response.json())[0]["diagnostics"]
    jobs = await ExportStore(fhir.app.state.fhir.database).jobs.count_documents({})
    assert jobs == 0  # nothing queued


async def test_files_split_and_cancel_deletes(fhir: RunningServer) -> None:
    await seed(fhir.client)
    fhir.app.state.exports.file_lines = 7
    manifest = await run_export(fhir.client, "/$export", _type="Observation")
    files = [item for item in manifest["output"]]
    assert [f["count"] for f in files] == [7, 7, 4]
    assert len({f["url"] for f in files}) == 3
    assert sorted(i for ids in (await exported(fhir.client, manifest)).values() for i in ids) == (
        await search_ids(fhir.client, "/Observation")
    )
    deleted = await fhir.client.delete(manifest["status_url"])
    assert deleted.status_code == 202
    assert (await fhir.client.get(manifest["status_url"])).status_code == 404
    assert (await fhir.client.get(files[0]["url"])).status_code == 404
    chunks = await ExportStore(fhir.app.state.fhir.database).chunks.count_documents({})
    assert chunks == 0


async def test_a_job_whose_process_died_is_taken_over(fhir: RunningServer) -> None:
    """A job left running by a dead process (its lease lapsed, a partial chunk written) is run
    again from the start by the live server, and its stale chunk never shows."""
    await seed(fhir.client)
    store = ExportStore(fhir.app.state.fhir.database)
    kick = await fhir.client.get("/$export", params={"_type": "Patient"}, headers=ASYNC)
    status_url = kick.headers["Content-Location"]
    job_id = status_url.rsplit("/", 1)[1]
    await export_manifest(fhir.client, status_url)  # finished; now as a dead process left it
    past = datetime.now(UTC) - timedelta(seconds=5)
    await store.jobs.update_one(
        {"_id": job_id},
        {"$set": {"status": RUNNING, "worker": "dead", "lease": past}, "$unset": {"output": ""}},
    )
    await store.write_chunk(job_id, 99, "Patient-1.ndjson", 0, b'{"stale":1}\n', past)
    fhir.app.state.exports._wake.set()
    manifest = await export_manifest(fhir.client, status_url)  # the lapsed job taken over
    job = await store.get(job_id)
    assert job is not None and job["attempts"] == 2 and job["worker"] != "dead"
    found = await exported(fhir.client, manifest)
    assert sorted(found["Patient"]) == ["p1", "p2", "p3"]
    assert json.dumps(found).count("stale") == 0
