"""Batch Bundles: https://hl7.org/fhir/R4/http.html#transaction (batch: independent entries, each
with its own status; one failing affects no other)."""

from __future__ import annotations

from typing import Any

from tests.conftest import RunningServer
from tests.helpers import FHIR_JSON, patient

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
