"""Audit: an AuditEvent for each request, a Provenance for each write, stored before the write is
acknowledged; reads flushed from a buffer; the trail append-only and for administrators
(https://hl7.org/fhir/R4/auditevent.html, https://hl7.org/fhir/R4/provenance.html)."""

from __future__ import annotations

from typing import Any

import pytest
from pymongo.errors import WriteError

from fhirgoal.auth.audit import SEGMENT
from fhirgoal.core.access import UNRESTRICTED
from fhirgoal.core.jsonio import dumps
from tests.auth.conftest import AUDIT_CLIENT, SmartServer, run_smart
from tests.helpers import observation, wait_until


async def stored(
    smart: SmartServer, rt: str, query: dict[str, Any] | None = None
) -> list[dict[str, Any]]:
    found = await smart.service.repo.find(UNRESTRICTED, rt, query or {}, [("_id", 1)], 100)
    return [v.resource for v in found if v.resource is not None]


async def test_a_write_is_audited_with_provenance_before_it_is_acknowledged(
    smart: SmartServer,
) -> None:
    await smart.seed({"resourceType": "Patient", "id": "pa"})
    async with await smart.as_scope("patient/*.cruds", patient="pa") as client:
        created = await client.post("/Observation", json=observation("pa"))
        assert created.status_code == 201
        # no waiting: by the time the client has its 201 both records are stored
        events = await stored(smart, "AuditEvent")
        provenance = await stored(smart, "Provenance")
    target = f"Observation/{created.json()['id']}/_history/1"
    [event] = [e for e in events if e["action"] == "C"]
    assert event["outcome"] == "0"
    assert event["subtype"][0]["code"] == "create"
    assert {"reference": target} in [e.get("what") for e in event["entity"]]
    assert {"reference": "Patient/pa"} in [e.get("what") for e in event["entity"]]
    assert event["agent"][0]["who"]["identifier"]["value"] == "test-app"
    assert event["agent"][0]["network"]["address"] == "127.0.0.1"
    [record] = provenance
    assert record["target"] == [{"reference": target}]
    assert record["activity"]["coding"][0]["code"] == "CREATE"
    # both are valid R4 resources
    smart.service.validator.validate(event)
    smart.service.validator.validate(record)


async def test_reads_and_failures_are_audited_within_the_flush_interval(smart: SmartServer) -> None:
    # a practitioner's launch: pa must be in their caseload (FHIRGOAL_USER_ACCESS=caseload)
    doc = [{"reference": "Practitioner/doc"}]
    await smart.seed({"resourceType": "Patient", "id": "pa", "generalPractitioner": doc})
    token = await smart.mint(
        "patient/*.rs openid fhirUser", patient="pa", fhir_user="Practitioner/doc"
    )
    async with smart.client(token) as client:
        assert (await client.get("/Patient/pa")).status_code == 200
        assert (await client.get("/Observation/nope")).status_code == 404
        assert (await client.get("/Observation?code=29463-7")).status_code == 200
        progress = await client.get("/Patient/pa/$progress")

    async def all_flushed() -> bool:  # the tests flush every 0.1 s
        return len(await stored(smart, "AuditEvent")) >= 4  # one for each request above

    await wait_until(all_flushed, within=5, what="the reads' AuditEvents flushed")
    events = await stored(smart, "AuditEvent")
    by_subtype = {e["subtype"][0]["code"]: e for e in events if e["outcome"] == "0"}
    read = by_subtype["read"]
    assert read["action"] == "R" and read["outcome"] == "0"
    assert read["agent"][0]["who"] == {"reference": "Practitioner/doc"}
    assert read["agent"][1]["who"]["identifier"]["value"] == "test-app"
    assert {"reference": "Patient/pa"} in [e.get("what") for e in read["entity"]]
    assert [e for e in events if e["outcome"] == "4"]
    search = by_subtype["search-type"]
    assert search["action"] == "E" and any("query" in e for e in search["entity"])
    # an operation is named as one, never as a read of a resource whose id is `$progress`
    [operation] = [e for e in events if e["subtype"][0]["code"] == "operation"]
    assert operation["action"] == "E" and operation["outcomeDesc"] == f"HTTP {progress.status_code}"
    assert {"reference": "Patient/pa"} in [e.get("what") for e in operation["entity"]]
    for event in events:
        smart.service.validator.validate(event)


async def test_the_trail_is_searchable_by_an_administrator_only(smart: SmartServer) -> None:
    await smart.seed({"resourceType": "Patient", "id": "pa"})
    async with await smart.as_scope("patient/*.cruds", patient="pa") as patient_app:
        await patient_app.get("/Patient/pa")
        await smart.app.state.auth_runtime.auditor.flush()
        assert (await patient_app.get("/AuditEvent")).status_code == 403
    admin_token = await smart.mint("system/AuditEvent.rs", client_id=AUDIT_CLIENT)
    async with smart.client(admin_token) as admin:
        bundle = (await admin.get("/AuditEvent?patient=Patient/pa&action=R")).json()
        assert bundle["entry"], bundle
        event_id = bundle["entry"][0]["resource"]["id"]
        assert (await admin.delete(f"/AuditEvent/{event_id}")).status_code == 405


async def refuse_audit_records(smart: SmartServer, refuse: bool = True) -> None:
    """Make the database refuse (or accept again) every write to the audit trail's log."""
    database = smart.service.repo.db
    await database.command(
        "collMod", "AuditEvent_log", validator={"n": {"$lt": 0}} if refuse else {}
    )


async def test_a_write_whose_audit_cannot_be_stored_is_not_acknowledged(smart: SmartServer) -> None:
    await smart.seed({"resourceType": "Patient", "id": "pa"})
    async with await smart.as_scope("patient/*.cruds", patient="pa") as client:
        assert (await client.post("/Observation", json=observation("pa"))).status_code == 201
        await refuse_audit_records(smart)
        response = await client.post("/Observation", json=observation("pa"))
    assert response.status_code == 503
    assert response.json()["resourceType"] == "OperationOutcome"


async def test_a_full_segment_of_reads_is_stored_before_the_interval(mongo_uri: str) -> None:
    async with run_smart(mongo_uri, audit_flush_seconds=60) as smart:
        await smart.seed({"resourceType": "Patient", "id": "pa"})
        async with await smart.as_scope("patient/*.rs", patient="pa") as client:
            for _ in range(SEGMENT):
                assert (await client.get("/Patient/pa")).status_code == 200
        reads = {"tok": "subtype#read"}

        async def segment_stored() -> bool:
            return await smart.service.repo.count(UNRESTRICTED, "AuditEvent", reads) == SEGMENT

        # within 5 s: a minute before the timer would flush them
        await wait_until(segment_stored, within=5, what="a full segment stored")


async def test_reads_the_database_refuses_are_kept_and_stored_later_once(
    smart: SmartServer,
) -> None:
    auditor = smart.app.state.auth_runtime.auditor
    await auditor.flush()
    events = [
        {"resourceType": "AuditEvent", "id": f"refused-{n}", "type": {"code": "rest"}, "action": "R",
         "recorded": "2026-11-23T10:00:00Z", "outcome": "0", "outcomeDesc": f"read {n}",
         "agent": [{"requestor": True}], "source": {"observer": {"display": "fhirgoal"}}}
        for n in range(3)
    ]  # fmt: skip
    for event in events:
        auditor.buffer(dumps(event))
    await refuse_audit_records(smart)
    with pytest.raises(WriteError):
        await auditor.flush()
    await refuse_audit_records(smart, refuse=False)
    await auditor.flush()  # the same events again, stored once
    await auditor.flush()  # nothing left to store
    descriptions = sorted(e["outcomeDesc"] for e in await stored(smart, "AuditEvent"))
    assert descriptions == ["read 0", "read 1", "read 2"]
