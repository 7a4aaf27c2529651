"""Transactions under SMART: each entry is authorized as its own interaction (a forbidden entry
fails the whole transaction) and audited as its own interaction, with a Provenance per version
written, committed with the entries (https://hl7.org/fhir/R4/http.html#transaction)."""

from __future__ import annotations

from typing import Any

from fhirgoal.core.access import UNRESTRICTED
from tests.auth.conftest import SmartServer
from tests.helpers import observation

PAT = "urn:uuid:6a1c3e8e-8d7b-4b7e-9d1e-5b0e7d2a4c11"


async def stored(smart: SmartServer, rt: str, query: dict[str, Any]) -> list[dict[str, Any]]:
    await smart.service.audit_log.catch_up()
    found = await smart.service.repo.find(UNRESTRICTED, rt, query, [("_id", 1)], 100)
    return [v.resource for v in found if v.resource is not None]


def transaction(*resources: dict[str, Any]) -> dict[str, Any]:
    entries = [
        {"resource": r, "request": {"method": "POST", "url": r["resourceType"]}} for r in resources
    ]
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


async def test_a_patient_token_cannot_write_another_patients_data_through_a_transaction(
    smart: SmartServer,
) -> None:
    await smart.seed({"resourceType": "Patient", "id": "pa"})
    await smart.seed({"resourceType": "Patient", "id": "pb"})
    bundle = transaction(observation("pa"), observation("pb"))
    async with await smart.as_scope("patient/*.cruds", patient="pa") as client:
        response = await client.post("", json=bundle)
    assert response.status_code == 403, response.text
    assert "Bundle.entry[1]" in response.json()["issue"][0]["diagnostics"]
    # nothing stored: neither the allowed entry nor its Provenance or entry audit
    assert await stored(smart, "Observation", {}) == []
    assert await stored(smart, "Provenance", {}) == []
    events = await stored(smart, "AuditEvent", {})
    # the request's own event, named by the Bundle's type (restful-interaction `transaction`)
    assert [e["subtype"][0]["code"] for e in events] == ["transaction"]
    assert events[0]["subtype"][0]["system"] == "http://hl7.org/fhir/restful-interaction"
    assert events[0]["outcome"] == "4"


async def test_each_entry_is_audited_as_its_own_interaction(smart: SmartServer) -> None:
    bundle = transaction(
        {"resourceType": "Patient", "name": [{"family": "Aalto"}]},
        observation("x", subject={"reference": PAT}),
    )
    bundle["entry"][0]["fullUrl"] = PAT
    async with await smart.as_scope("system/*.cruds") as client:
        response = await client.post("", json=bundle)
    assert response.status_code == 200, response.text
    written = [e["response"]["location"].split("/fhir/")[1] for e in response.json()["entry"]]
    events = await stored(smart, "AuditEvent", {})
    creates = [e for e in events if e["subtype"][0]["code"] == "create"]
    assert sorted(w["what"]["reference"] for e in creates for w in e["entity"][:1]) == sorted(
        written
    )
    assert all(e["action"] == "C" and e["outcome"] == "0" for e in creates)
    provenances = await stored(smart, "Provenance", {})
    assert sorted(p["target"][0]["reference"] for p in provenances) == sorted(written)
    for record in [*creates, *provenances]:
        smart.service.validator.validate(record)


async def test_the_request_event_of_a_batch_says_batch(smart: SmartServer) -> None:
    bundle = transaction(observation("x"))
    bundle["type"] = "batch"
    async with await smart.as_scope("system/*.cruds") as client:
        response = await client.post("", json=bundle)
    assert response.status_code == 200, response.text
    events = await stored(smart, "AuditEvent", {})
    subtypes = sorted(e["subtype"][0]["code"] for e in events)
    assert subtypes == ["batch", "create"]  # the request's own event and its entry's
