"""Da Vinci CDex `$submit-attachment` to a payer, over real HTTP, from the durable outbox: the payer
(tests/payer/payer_endpoint.py) authenticates fhirgoal with the key set it was handed and fails
twice before it takes the submission; solicited (a CDex request approved with sendToPayer) and
unsolicited (`Patient/{id}/$submit-to-payer`); a payer removed before delivery."""

from __future__ import annotations

import copy
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest

from fhirgoal.auth.keys import encryption_key
from fhirgoal.demo import write_demo
from fhirgoal.evidence.payers.connections import NPI, PayerConnection, PayerConnectionStore
from fhirgoal.evidence.payers.submission import operation_definition
from fhirgoal.exchange.backend_connections import new_key
from fhirgoal.fhir.operation_parameters import check_parameters
from fhirgoal.store.outbox import OutboxStore
from tests.auth.conftest import AUDIT_CLIENT, TEST_KEK, SmartServer, run_smart
from tests.evidence.test_signature import verify
from tests.exchange.receiver import Answer
from tests.helpers import wait_until
from tests.payer.conftest import (
    MRN,
    Payer,
    attachment_request,
    by_mrn,
    clinician,
    members_group,
    register_payer,
)
from tests.payer.payer_endpoint import CLIENT_ID, PayerEndpoint, payer_endpoint

FAST = {
    "outbox_backoff_base_seconds": 0.1,
    "outbox_backoff_max_seconds": 3.0,
    "outbox_poll_seconds": 0.1,
    "outbox_timeout_seconds": 5.0,
    "outbox_lease_seconds": 15.0,
}
PRACTICE_NPI = "1407071236"


@asynccontextmanager
async def clinic_with_payer(
    mongo_uri: str, plan: list[Answer], **connection: Any
) -> AsyncIterator[tuple[SmartServer, PayerEndpoint, Payer]]:
    """The clinic (demo data, outbox worker, fast retries) with a connection to the payer acme,
    whose endpoint answers as `plan` says; and acme's own client at the clinic (its CDex
    requests)."""
    async with run_smart(mongo_uri, **FAST) as clinic, payer_endpoint(plan) as payer:
        await write_demo(clinic.service)
        acme = await register_payer(clinic, "acme")
        store = PayerConnectionStore(clinic.service.database)
        values: dict[str, Any] = {
            "organization_id": {"system": NPI, "value": PRACTICE_NPI},
            "payer_id": {"system": "http://example.org/payer-ids", "value": "acme"},
            **connection,
        }
        await store.add(
            PayerConnection(
                name="acme", base=payer.base, client_id=CLIENT_ID,
                scopes="system/Claim.u", alg="ES384", public_jwk={},
                organization="Organization/acme", **values,
            ),
            new_key("ES384"),
            encryption_key(TEST_KEK, clinic.settings.data_dir),
        )  # fmt: skip
        added = await store.get("acme")
        assert added is not None
        payer.jwks = added.public_jwks()  # what `payer add` hands the payer's administrator
        yield clinic, payer, acme


def named(parameters: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [p for p in parameters["parameter"] if p["name"] == name]


def part(attachment: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [p for p in attachment["part"] if p["name"] == name]


async def outbox_items(clinic: SmartServer) -> list[dict[str, Any]]:
    return await OutboxStore(clinic.service.database).items_for("PayerConnection/acme")


async def payer_audit(clinic: SmartServer) -> list[dict[str, Any]]:
    async with clinic.client(
        await clinic.mint("system/AuditEvent.rs", client_id=AUDIT_CLIENT)
    ) as audit:
        found = (await audit.get("/AuditEvent", params={"_count": "500"})).json()
    return [
        e["resource"] for e in found.get("entry", [])
        if e["resource"].get("subtype", [{}])[0].get("system") == "urn:fhirgoal:payer-submission"
    ]  # fmt: skip


async def test_an_approved_request_is_submitted_once_to_a_payer_that_fails_twice_first(
    mongo_uri: str,
) -> None:
    plan = [Answer(503, {"Retry-After": "1"}), Answer(429, {"Retry-After": "1"})]
    async with clinic_with_payer(mongo_uri, plan) as (clinic, payer, payer_client):
        async with await payer_client.client() as acme:
            group = await acme.post("/Group", json=members_group("acme", by_mrn("DEMO-ALEX")))
            assert group.status_code == 201, group.text
            created = await acme.post("/Task", json=attachment_request("acme", "DEMO-ALEX"))
            assert created.status_code == 201, created.text
            task = created.json()
        async with await clinician(clinic) as therapist:
            body = {"resourceType": "Parameters",
                    "parameter": [{"name": "sendToPayer", "valueBoolean": True}]}  # fmt: skip
            approved = await therapist.post(f"/Task/{task['id']}/$approve", json=body)
            assert approved.status_code == 200, approved.text
            assert "$submit-attachment (acme)" in approved.json()["businessStatus"]["text"]

        async def taken() -> bool:
            return bool(payer.accepted)

        await wait_until(taken, within=30, what="the payer takes the submission")
        # 503, 429, then 200: each wait at least what Retry-After asked
        assert [s.status for s in payer.submissions] == [503, 429, 200]
        gaps = [b.at - a.at for a, b in zip(payer.submissions, payer.submissions[1:], strict=False)]
        assert all(gap >= 0.95 for gap in gaps), gaps
        assert payer.refused_tokens == []

        # one item, delivered, its key the idempotency key of every attempt (the worker records
        # the delivery after the payer's 200: under load, a moment after the payer has it)
        async def recorded() -> bool:
            return [i["state"] for i in await outbox_items(clinic)] == ["delivered"]

        await wait_until(recorded, within=30, what="the delivery recorded")
        items = await outbox_items(clinic)
        assert [(i["state"], i["attempts"]) for i in items] == [("delivered", 3)]
        assert {s.headers["idempotency-key"] for s in payer.submissions} == {items[0]["_id"]}

        parameters = payer.submissions[-1].parameters
        assert check_parameters(parameters, operation_definition()) == []
        assert named(parameters, "TrackingId")[0]["valueIdentifier"] == {
            "system": "http://example.org/acme", "value": "tracking-DEMO-ALEX"}  # fmt: skip
        assert named(parameters, "AttachTo")[0]["valueCode"] == "claim"
        assert named(parameters, "MemberId")[0]["valueIdentifier"] == {
            "system": MRN, "value": "DEMO-ALEX"}  # fmt: skip
        assert named(parameters, "PayerId")[0]["valueIdentifier"]["value"] == "acme"
        assert named(parameters, "ProviderId")[0]["valueIdentifier"] == {
            "system": NPI, "value": "1234567893"}  # fmt: skip
        assert named(parameters, "ServiceDate")[0]["valueDateTime"] == "2026-08-01"
        attachments = named(parameters, "Attachment")
        contents = [part(a, "Content")[0]["resource"] for a in attachments]
        assert [c["resourceType"] for c in contents] == ["DocumentReference", "Bundle"]
        for attachment in attachments:
            code = part(attachment, "Code")[0]["valueCodeableConcept"]["coding"][0]
            assert code["code"] == "11506-3"
        pdf = contents[0]["content"][0]["attachment"]
        assert pdf["contentType"] == "application/pdf" and pdf["data"]
        assert all(not r.get("reference", "").startswith("#")
                   for r in contents[0]["context"]["related"])  # fmt: skip
        await verify(contents[1])  # the payer checks the document's signature

        # the approval is submitted once: nothing else waits to reach the payer
        assert await clinic.service.outbox.store.next_due() is None
        assert len(payer.accepted) == 1 and len(payer.submissions) == 3

        async def audited() -> bool:
            return sorted(e["outcome"] for e in await payer_audit(clinic)) == ["0", "4", "4"]

        await wait_until(audited, within=10, what="an AuditEvent per attempt")
        events = await payer_audit(clinic)
        assert all(f"Task/{task['id']}/_history/" in e["entity"][0]["what"]["reference"]
                   for e in events)  # fmt: skip
        assert all(e["entity"][-1]["what"]["reference"] == "Patient/demo-alex" for e in events)


async def test_unsolicited_evidence_is_submitted_and_its_communication_completed(
    mongo_uri: str,
) -> None:
    async with clinic_with_payer(mongo_uri, [Answer(500)], member_system=MRN) as (clinic, payer, _):
        async with await clinician(clinic) as therapist:
            body = {"resourceType": "Parameters", "parameter": [
                {"name": "payer", "valueString": "acme"},
                {"name": "start", "valueDate": "2026-08-01"},
                {"name": "end", "valueDate": "2026-10-31"},
                {"name": "claim", "valueString": "CLM-2026-0042"}]}  # fmt: skip
            sent = await therapist.post("/Patient/demo-alex/$submit-to-payer", json=body)
            assert sent.status_code == 200, sent.text
            communication = sent.json()
            assert communication["status"] == "in-progress"
            assert communication["identifier"][0]["value"] == "CLM-2026-0042"

            async def completed() -> bool:
                read = await therapist.get(f"/Communication/{communication['id']}")
                return bool(read.json()["status"] == "completed")

            await wait_until(completed, within=30, what="the Communication is completed")
        assert [s.status for s in payer.submissions] == [500, 200]
        parameters = payer.submissions[-1].parameters
        assert check_parameters(parameters, operation_definition()) == []
        assert named(parameters, "TrackingId")[0]["valueIdentifier"]["value"] == "CLM-2026-0042"
        assert named(parameters, "AttachTo")[0]["valueCode"] == "claim"
        assert named(parameters, "ServiceDate")[0]["valueDateTime"] == "2026-08-01"
        assert named(parameters, "MemberId")[0]["valueIdentifier"] == {
            "system": MRN, "value": "DEMO-ALEX"}  # fmt: skip
        assert named(parameters, "OrganizationId")[0]["valueIdentifier"]["value"] == PRACTICE_NPI
        contents = [part(a, "Content")[0]["resource"] for a in named(parameters, "Attachment")]
        assert [c["resourceType"] for c in contents] == ["DocumentReference", "Bundle"]
        await verify(contents[1])


async def test_an_unsolicited_submission_the_payer_could_not_take_stores_nothing(
    mongo_uri: str,
) -> None:
    # no member system and demo patients carry no member number: no MemberId
    async with clinic_with_payer(mongo_uri, []) as (clinic, payer, _):
        async with await clinician(clinic) as therapist:
            body = {"resourceType": "Parameters", "parameter": [
                {"name": "payer", "valueString": "acme"},
                {"name": "start", "valueDate": "2026-08-01"},
                {"name": "end", "valueDate": "2026-10-31"}]}  # fmt: skip
            refused = await therapist.post("/Patient/demo-alex/$submit-to-payer", json=body)
            assert refused.status_code == 422, refused.text
            assert "member id" in refused.text
            unknown = copy.deepcopy(body)
            unknown["parameter"][0]["valueString"] = "nobody"
            missing = await therapist.post("/Patient/demo-alex/$submit-to-payer", json=unknown)
            assert missing.status_code == 422 and "nobody" in missing.text
            stored = await therapist.get("/Communication")
            assert stored.json().get("total", 0) == 0
        assert await outbox_items(clinic) == []
        assert payer.submissions == []


async def test_a_payer_removed_before_delivery_leaves_a_dead_submission_saying_why(
    mongo_uri: str,
) -> None:
    failing = [Answer(503, {"Retry-After": "2"}) for _ in range(50)]
    async with clinic_with_payer(mongo_uri, failing, member_system=MRN) as (clinic, payer, _):
        async with await clinician(clinic) as therapist:
            body = {"resourceType": "Parameters", "parameter": [
                {"name": "payer", "valueString": "acme"},
                {"name": "start", "valueDate": "2026-08-01"},
                {"name": "end", "valueDate": "2026-10-31"},
                {"name": "claim", "valueString": "CLM-7"}]}  # fmt: skip
            sent = await therapist.post("/Patient/demo-alex/$submit-to-payer", json=body)
            assert sent.status_code == 200, sent.text
            communication = sent.json()

            async def tried() -> bool:
                return bool(payer.submissions)

            await wait_until(tried, within=20, what="a first attempt")
            assert await PayerConnectionStore(clinic.service.database).remove("acme")

            async def dead() -> bool:
                return [i["state"] for i in await outbox_items(clinic)] == ["dead"]

            await wait_until(dead, within=20, what="the submission parked as dead")
            item = (await outbox_items(clinic))[0]
            assert "the payer connection acme was removed" in item["error"]

            async def stopped() -> bool:
                read = await therapist.get(f"/Communication/{communication['id']}")
                return bool(read.json()["status"] == "stopped")

            await wait_until(stopped, within=10, what="the Communication says it stopped")
            record = (await therapist.get(f"/Communication/{communication['id']}")).json()
            assert "the payer connection acme was removed" in record["statusReason"]["text"]
        assert payer.accepted == {}


@pytest.mark.parametrize(
    ("mutate", "problem"),
    [
        (lambda p: p["parameter"].pop(0), "TrackingId: at least 1 required"),
        (lambda p: p["parameter"].append({"name": "Colour", "valueString": "red"}),
         "unknown parameter 'Colour'"),
        (lambda p: p["parameter"][1].update({"valueCode": None, "valueString": "claim"}),
         "AttachTo must carry valueCode"),
        (lambda p: p["parameter"][-1]["part"].pop(), "Content: at least 1 required"),
    ],
)  # fmt: skip
def test_the_operation_definition_check_finds_what_a_payer_would_refuse(
    mutate: Any, problem: str
) -> None:
    good = {"resourceType": "Parameters", "parameter": [
        {"name": "TrackingId", "valueIdentifier": {"value": "1"}},
        {"name": "AttachTo", "valueCode": "claim"},
        {"name": "MemberId", "valueIdentifier": {"value": "m"}},
        {"name": "Attachment", "part": [
            {"name": "Content", "resource": {"resourceType": "DocumentReference"}}]}]}  # fmt: skip
    assert check_parameters(good, operation_definition()) == []
    bad = copy.deepcopy(good)
    mutate(bad)
    if bad["parameter"][1].get("valueCode", "x") is None:
        del bad["parameter"][1]["valueCode"]
    found = [i.diagnostics for i in check_parameters(bad, operation_definition())]
    assert problem in found, found
