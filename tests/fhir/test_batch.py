"""Batch Bundles: https://hl7.org/fhir/R4/http.html#transaction (batch: independent entries, each
with its own status; one failing affects no other)."""

from __future__ import annotations

import json
from typing import Any

from tests.conftest import RunningServer
from tests.helpers import FHIR_JSON, observation, patient, store

MRN = "https://example.org/mrn"


def batch(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "batch", "entry": list(entries)}


def entry(method: str, url: str, resource: dict[str, Any] | None = None, **extra: Any) -> dict:
    out: dict[str, Any] = {"request": {"method": method, "url": url, **extra}}
    if resource is not None:
        out["resource"] = resource
    return out


async def test_entries_succeed_and_fail_independently(fhir: RunningServer) -> None:
    existing = (await fhir.client.post("/Patient", json=patient("Kept"), headers=FHIR_JSON)).json()
    bad = {"resourceType": "Patient", "gender": "not-a-gender"}
    response = await fhir.client.post(
        "",
        json=batch(
            entry("POST", "Patient", patient("First")),
            entry("POST", "Patient", bad),
            entry("GET", "Patient/does-not-exist"),
            {"resource": patient("No request")},
            entry(
                "PUT", f"Patient/{existing['id']}", {**existing, "active": True}, ifMatch='W/"7"'
            ),
            entry("DELETE", f"Patient/{existing['id']}"),
            entry("GET", f"{fhir.base}/Patient?family=First"),
        ),
        headers=FHIR_JSON,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["type"] == "batch-response"
    statuses = [e["response"]["status"] for e in body["entry"]]
    assert statuses == [
        "201 Created",
        "400 Bad Request",
        "404 Not Found",
        "400 Bad Request",
        "412 Precondition Failed",
        "204 No Content",
        "200 OK",
    ]
    for failed in (1, 2, 3, 4):
        outcome = body["entry"][failed]["response"]["outcome"]
        assert outcome["resourceType"] == "OperationOutcome"
    assert body["entry"][6]["resource"]["total"] == 1  # the first entry is stored
    assert (await fhir.client.get(f"/Patient/{existing['id']}")).status_code == 410
    family = (await fhir.client.get("/Patient", params={"family": "First"})).json()
    assert family["total"] == 1


async def test_batch_entries_may_be_conditional(fhir: RunningServer) -> None:
    mrn = {"identifier": [{"system": MRN, "value": "B1"}]}
    bundle = batch(
        entry("POST", "Patient", patient("Once", **mrn), ifNoneExist=f"identifier={MRN}|B1"),
        entry("POST", "Patient", patient("Once", **mrn), ifNoneExist=f"identifier={MRN}|B1"),
    )
    response = await fhir.client.post("", json=bundle, headers=FHIR_JSON)
    statuses = [e["response"]["status"] for e in response.json()["entry"]]
    assert statuses == ["201 Created", "200 OK"]  # in order: the second finds the first


async def test_a_bundle_of_another_type_is_refused(fhir: RunningServer) -> None:
    for kind in ("document", "searchset", None):
        bundle = {"resourceType": "Bundle", "type": kind, "entry": []}
        response = await fhir.client.post("", json=bundle, headers=FHIR_JSON)
        assert response.status_code == 400
        assert response.json()["resourceType"] == "OperationOutcome"
    empty = await fhir.client.post("", json=batch(), headers=FHIR_JSON)
    assert empty.status_code == 200 and empty.json() == {
        "resourceType": "Bundle",
        "type": "batch-response",
    }


async def test_head_entries_answer_like_get_without_the_resource(fhir: RunningServer) -> None:
    kept = await store(fhir.client, {"resourceType": "Patient", "id": "h1", "active": True})
    response = await fhir.client.post(
        "",
        json=batch(
            entry("HEAD", "Patient/h1"),
            entry("GET", "Patient/h1"),
            entry("HEAD", "Patient/none"),
            entry("HEAD", "Patient?active=true"),
            entry("HEAD", "Patient/h1", ifNoneMatch=f'W/"{kept["meta"]["versionId"]}"'),
        ),
        headers=FHIR_JSON,
    )
    assert response.status_code == 200, response.text
    head, get, missing, search, unchanged = response.json()["entry"]
    assert head["response"]["status"] == "200 OK"
    assert head["response"]["etag"] == get["response"]["etag"] == 'W/"1"'
    assert head["response"]["lastModified"] == get["response"]["lastModified"]
    assert "resource" not in head and get["resource"]["id"] == "h1"
    assert missing["response"]["status"] == "404 Not Found"
    assert search["response"]["status"] == "200 OK" and "resource" not in search
    assert unchanged["response"]["status"] == "304 Not Modified"


async def test_system_and_compartment_reads_in_a_batch(fhir: RunningServer) -> None:
    await store(fhir.client, {"resourceType": "Patient", "id": "c1"})
    await store(fhir.client, {"resourceType": "Patient", "id": "c2"})
    for pid in ("c1", "c1", "c2"):
        await fhir.client.post("/Observation", json=observation(pid), headers=FHIR_JSON)
    response = await fhir.client.post(
        "",
        json=batch(
            entry("GET", "Patient/c1/Observation"),
            entry("GET", "Patient/c2/Observation?_summary=count"),
            entry("GET", "?_type=Patient,Observation&_count=2&_total=accurate"),
            entry("GET", "_history?_count=1"),
            entry("GET", "Encounter/e1/Observation"),
            entry("GET", f"{fhir.base}/?_type=Patient&_total=accurate"),
        ),
        headers=FHIR_JSON,
    )
    assert response.status_code == 200, response.text
    c1, c2, system, history, other, absolute = response.json()["entry"]
    assert c1["resource"]["total"] == 2
    assert {e["resource"]["subject"]["reference"] for e in c1["resource"]["entry"]} == {
        "Patient/c1"
    }
    assert c1["resource"]["link"][0]["url"].startswith(f"{fhir.base}/Patient/c1/Observation")
    assert c2["resource"]["total"] == 1
    assert system["resource"]["type"] == "searchset"
    assert system["resource"]["total"] == 5 and len(system["resource"]["entry"]) == 2
    assert "_type=Patient" in system["resource"]["link"][0]["url"]
    assert history["resource"]["type"] == "history"
    newest = history["resource"]["entry"]  # the server's own catalog is history too
    assert len(newest) == 1 and history["resource"]["total"] >= 5
    assert newest[0]["resource"]["subject"]["reference"] == "Patient/c2"
    assert other["response"]["status"] == "404 Not Found"
    assert "Patient compartment" in json.dumps(other["response"]["outcome"])
    assert absolute["resource"]["total"] == 2
    # a system-level entry of a transaction runs the same way, after its writes
    bundle = {**batch(entry("POST", "Patient", patient("Late")), entry("GET", "?_type=Patient&_total=accurate")),
              "type": "transaction"}  # fmt: skip
    response = await fhir.client.post("", json=bundle, headers=FHIR_JSON)
    assert response.status_code == 200, response.text
    assert response.json()["entry"][1]["resource"]["total"] == 3
