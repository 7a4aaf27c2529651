"""Payer requests on the overview: the clinician sees the Da Vinci CDex requests a payer sent
about the launched client and answers them from the app, which calls the server's
`Task/{id}/$approve` and `$reject` (the server fulfils: tests/payer/)."""

from __future__ import annotations

from typing import Any

from fhirgoal.core.access import UNRESTRICTED
from tests.auth.conftest import SmartServer
from tests.payer.conftest import attachment_request, by_mrn, members_group, register_payer
from tests.webapp.conftest import axe_violations, open_patient, screenshot

PATIENT = "demo-blair"


async def test_a_payer_request_is_refused_with_a_reason_and_another_approved(
    ehr: SmartServer, page: Any, axe_source: str
) -> None:
    payer = await register_payer(ehr, "acme")
    async with await payer.client() as acme:
        await acme.post("/Group", json=members_group("acme", by_mrn("DEMO-BLAIR")))
        ids = []
        for claim in ("first", "second"):
            asked = attachment_request("acme", "DEMO-BLAIR")
            asked["reasonReference"]["identifier"]["value"] = f"claim-{claim}"
            created = await acme.post("/Task", json=asked)
            assert created.status_code == 201, created.text
            ids.append(created.json()["id"])
    await open_patient(page, ehr, PATIENT)
    for task_id in ids:
        assert await page.locator(f"#request-{task_id}").count() == 1
    assert "Progress note (LOINC 11506-3)" in await page.locator(f"#request-{ids[0]}").inner_text()
    assert await axe_violations(page, axe_source) == []
    await screenshot(page, "payer-requests")

    first = page.locator(f"#request-{ids[0]}")
    await first.get_by_role("button", name="Refuse").click()  # without a reason: nothing sent
    await page.wait_for_url("**/?payer=reason")
    first = page.locator(f"#request-{ids[0]}")
    await first.get_by_label("Reason for refusing").fill("The client has not consented")
    await first.get_by_role("button", name="Refuse").click()
    await page.wait_for_url("**/?payer=rejected")
    assert await page.locator(f"#request-{ids[0]}").count() == 0

    await page.locator(f"#request-{ids[1]}").get_by_role("button", name="Approve and send").click()
    await page.wait_for_url("**/?payer=*")
    assert page.url.endswith("?payer=approved"), await page.locator("#payer-notice").inner_text()
    assert await page.locator(f"#request-{ids[1]}").count() == 0

    refused = await ehr.service.current(UNRESTRICTED, "Task", ids[0])
    approved = await ehr.service.current(UNRESTRICTED, "Task", ids[1])
    assert refused is not None and refused.resource is not None
    assert refused.resource["status"] == "rejected"
    assert refused.resource["statusReason"]["text"] == "The client has not consented"
    assert approved is not None and approved.resource is not None
    assert approved.resource["status"] == "completed"
    assert [o["valueReference"]["reference"] for o in approved.resource["output"]] == [
        "#evidence-pdf", "#evidence-document"]  # fmt: skip
