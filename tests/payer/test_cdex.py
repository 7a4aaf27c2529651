"""Da Vinci CDex Task-based requests end to end over real HTTP: a payer (its own Backend Services
key, scopes bound to its Organization) asks, the clinician approves or refuses, the server
fulfils; the payer polls its Task (and hears it through a Subscription)."""

from __future__ import annotations

import base64
import hashlib
from typing import Any

from fhirgoal.core.jsonio import loads
from tests.auth.conftest import AUDIT_CLIENT, SmartServer
from tests.evidence.test_signature import verify
from tests.exchange.receiver import receiver
from tests.helpers import wait_until
from tests.payer.conftest import (
    attachment_request,
    by_mrn,
    clinician,
    data_request,
    members_group,
    register_payer,
)

RESOLVED = "https://fhirgoal.org/fhir/StructureDefinition/resolved-patient"


def contained(task: dict[str, Any], reference: str) -> dict[str, Any]:
    return next(r for r in task["contained"] if f"#{r['id']}" == reference)


async def test_an_attachment_request_approved_is_fulfilled_with_the_signed_evidence(
    clinic: SmartServer,
) -> None:
    payer = await register_payer(clinic, "acme")
    async with await payer.client() as acme:
        group = await acme.post("/Group", json=members_group("acme", by_mrn("DEMO-ALEX")))
        assert group.status_code == 201, group.text
        created = await acme.post("/Task", json=attachment_request("acme", "DEMO-ALEX"))
        assert created.status_code == 201, created.text
        task = created.json()
        assert task["status"] == "requested"
        assert {"url": RESOLVED, "valueReference": {"reference": "Patient/demo-alex"}} in task[
            "extension"
        ]
    # an administrator subscribes the payer's endpoint to its requests (CDex allows Subscriptions
    # set up by the data source for a client)
    async with receiver() as hook, clinic.client(await clinic.mint("system/*.cruds")) as admin:
        subscription = await admin.post("/Subscription", json={
            "resourceType": "Subscription", "status": "requested", "reason": "acme's requests",
            "criteria": "Task?requester=Organization/acme&status=completed",
            "channel": {"type": "rest-hook", "endpoint": hook.url,
                        "payload": "application/fhir+json"}})  # fmt: skip
        assert subscription.status_code == 201, subscription.text

        async with await clinician(clinic) as therapist:
            waiting = (await therapist.get("/Patient/demo-alex/Task")).json()
            assert [e["resource"]["id"] for e in waiting["entry"]] == [task["id"]]
            approved = await therapist.post(
                f"/Task/{task['id']}/$approve", json={"resourceType": "Parameters"}
            )
            assert approved.status_code == 200, approved.text

        async def heard() -> bool:
            return any(r.method == "PUT" and task["id"] in r.path for r in hook.accepted)

        await wait_until(heard, within=20, what="the payer's endpoint hears the completion")
        pushed = next(r for r in hook.accepted if r.method == "PUT")
        assert loads(pushed.body)["status"] == "completed"

    async with await payer.client() as acme:
        polled = await acme.get(f"/Task/{task['id']}")
        assert polled.status_code == 200, polled.text
        done = loads(polled.text)
    assert done["status"] == "completed"
    assert done["businessStatus"]["text"] == "Approved by Practitioner/demo-therapist"
    references = [o["valueReference"]["reference"] for o in done["output"]]
    assert references == ["#evidence-pdf", "#evidence-document"]
    pdf_reference = contained(done, "#evidence-pdf")
    attachment = pdf_reference["content"][0]["attachment"]
    pdf = base64.b64decode(attachment["data"])
    assert pdf.startswith(b"%PDF-") and attachment["size"] == len(pdf)
    assert attachment["hash"] == base64.b64encode(hashlib.sha1(pdf).digest()).decode()
    document = contained(done, "#evidence-document")
    assert document["type"] == "document"
    composition = document["entry"][0]["resource"]
    assert composition["subject"]["reference"] == "Patient/demo-alex"
    assert composition["event"][0]["period"] == {"start": "2026-08-01", "end": "2026-10-31"}
    await verify(document)  # the payer checks the signature with the published keys
    # every step is in the audit trail: the request, the approval, the payer's poll
    async with clinic.client(
        await clinic.mint("system/AuditEvent.rs", client_id=AUDIT_CLIENT)
    ) as audit:

        async def steps() -> set[str]:
            found = set()
            events = (await audit.get("/AuditEvent", params={"_count": "500"})).json()
            for entry in events.get("entry", []):
                event = entry["resource"]
                what = [e.get("what", {}).get("reference", "") for e in event.get("entity", [])]
                if any(w.startswith("Task/") for w in what):
                    found.add(event["subtype"][0]["code"])
            return found

        async def all_steps() -> bool:
            return {"create", "operation", "read"} <= await steps()

        await wait_until(all_steps, within=10, what="audit events of each step")


async def test_a_refused_request_says_why_and_only_the_clinician_answers(
    clinic: SmartServer,
) -> None:
    payer = await register_payer(clinic, "acme")
    async with await payer.client() as acme:
        await acme.post("/Group", json=members_group(
            "acme", {"entity": {"reference": "Patient/demo-blair"}}))  # fmt: skip
        created = await acme.post("/Task", json=attachment_request("acme", "DEMO-BLAIR"))
        assert created.status_code == 201, created.text
        task = created.json()
        # the payer cannot answer its own request, by operation or by writing the status
        refused = await acme.post(
            f"/Task/{task['id']}/$approve", json={"resourceType": "Parameters"}
        )
        assert refused.status_code == 403, refused.text
        forged = {**task, "status": "completed",
                  "output": [{"type": {"text": "x"}, "valueString": "trust me"}]}  # fmt: skip
        written = await acme.put(f"/Task/{task['id']}", json=forged)
        assert written.status_code == 422, written.text
        assert "Task/{id}/$approve" in written.text
    async with await clinician(clinic) as therapist:
        without_reason = await therapist.post(
            f"/Task/{task['id']}/$reject", json={"resourceType": "Parameters"}
        )
        assert without_reason.status_code == 422, without_reason.text
        body = {"resourceType": "Parameters", "parameter": [
            {"name": "reason", "valueString": "No authorization from the client to release notes"}]}  # fmt: skip
        rejected = await therapist.post(f"/Task/{task['id']}/$reject", json=body)
        assert rejected.status_code == 200, rejected.text
        again = await therapist.post(
            f"/Task/{task['id']}/$approve", json={"resourceType": "Parameters"}
        )
        assert again.status_code == 409, again.text
    async with await payer.client() as acme:
        polled = (await acme.get(f"/Task/{task['id']}")).json()
    assert polled["status"] == "rejected"
    assert polled["statusReason"]["text"] == "No authorization from the client to release notes"
    assert "output" not in polled and polled["meta"]["versionId"] == "2"


async def test_a_data_request_is_answered_with_the_members_results_only(
    clinic: SmartServer,
) -> None:
    payer = await register_payer(clinic, "acme")
    async with await payer.client() as acme:
        await acme.post("/Group", json=members_group("acme", by_mrn("DEMO-BLAIR")))
        # the payer's own id for the member in `patient` means nothing here: it is dropped
        query = "Condition?patient=Member123&clinical-status=active"
        created = await acme.post("/Task", json=data_request("acme", "DEMO-BLAIR", query))
        assert created.status_code == 201, created.text
        task = created.json()
    async with await clinician(clinic) as therapist:
        approved = await therapist.post(
            f"/Task/{task['id']}/$approve", json={"resourceType": "Parameters"}
        )
        assert approved.status_code == 200, approved.text
        expected = (await therapist.get(
            "/Condition", params={"patient": "Patient/demo-blair", "clinical-status": "active"}
        )).json()  # fmt: skip
    async with await payer.client() as acme:
        done = (await acme.get(f"/Task/{task['id']}")).json()
    assert done["status"] == "completed"
    assert done["output"][0]["type"]["coding"][0]["code"] == "data-value"
    results = contained(done, done["output"][0]["valueReference"]["reference"])
    assert results["type"] == "searchset"
    found = sorted(e["resource"]["id"] for e in results.get("entry", []))
    assert found and found == sorted(e["resource"]["id"] for e in expected["entry"])
    assert all(
        e["resource"]["subject"]["reference"] == "Patient/demo-blair" for e in results["entry"]
    )


async def test_a_payer_asks_about_its_attributed_members_only_and_sees_its_own_requests(
    clinic: SmartServer,
) -> None:
    acme = await register_payer(clinic, "acme")
    other = await register_payer(clinic, "other")
    async with await acme.client() as client:
        await client.post("/Group", json=members_group(
            "acme", by_mrn("DEMO-ALEX"), by_mrn("DEMO-CASEY", inactive=True)))  # fmt: skip
        # an inactive member, an unknown identifier: refused alike, nothing stored
        for mrn in ("DEMO-CASEY", "NOBODY"):
            refused = await client.post("/Task", json=attachment_request("acme", mrn))
            assert refused.status_code == 403, refused.text
            assert "no member attributed to Organization/acme" in refused.text
        assert (await client.get("/Task")).json().get("total", 0) == 0
        # a request in another payer's name is outside its scopes
        foreign = await client.post("/Task", json=attachment_request("other", "DEMO-ALEX"))
        assert foreign.status_code == 403, foreign.text
        # an attachment this server cannot produce is refused, naming the ones it can
        asked = attachment_request("acme", "DEMO-ALEX")
        asked["input"][0]["valueCodeableConcept"]["coding"][0]["code"] = "18842-5"
        unknown = await client.post("/Task", json=asked)
        assert unknown.status_code == 422 and "11506-3 (Progress note)" in unknown.text
        mine = (await client.post("/Task", json=attachment_request("acme", "DEMO-ALEX"))).json()
        # its requester may withdraw an open request, and change nothing else of it
        cancel = {**mine, "status": "cancelled", "statusReason": {"text": "claim withdrawn"}}
        changed = {**cancel, "authoredOn": "2026-11-30T09:00:00Z"}
        assert (await client.put(f"/Task/{mine['id']}", json=changed)).status_code == 422
        cancelled = await client.put(f"/Task/{mine['id']}", json=cancel)
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["extension"] == mine["extension"]  # the member stays resolved
    async with await other.client() as client:
        assert (await client.get(f"/Task/{mine['id']}")).status_code == 404
        assert (await client.get("/Task")).json().get("total", 0) == 0
        # its own Group cannot attribute acme's member to it, nor can it write acme's Group
        acme_group = members_group("acme", by_mrn("DEMO-BLAIR"))
        assert (await client.post("/Group", json=acme_group)).status_code == 403
    async with await clinician(clinic) as therapist:
        late = await therapist.post(
            f"/Task/{mine['id']}/$approve", json={"resourceType": "Parameters"}
        )
        assert late.status_code == 409 and "cancelled already" in late.text
