"""Under SMART the evidence is read with the caller's access: a patient-scoped token reaches no
other patient's evidence (404, as for any read), a clinician stores the document; the signing
keys are published without a token."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from fhirgoal.demo import write_demo
from tests.auth.conftest import SmartServer, run_smart
from tests.evidence.conftest import OPERATION, PERIOD


@pytest.fixture
async def smart_demo(mongo_uri: str) -> AsyncIterator[SmartServer]:
    async with run_smart(mongo_uri) as running:
        await write_demo(running.service)
        yield running


async def test_a_patient_token_gets_no_other_patients_evidence(smart_demo: SmartServer) -> None:
    async with await smart_demo.as_scope("patient/*.rs", patient="demo-alex") as alex:
        other = await alex.get(f"/Patient/demo-blair/{OPERATION}", params=PERIOD)
        assert other.status_code == 404, other.text
        assert "Bundle" not in other.text
        own = await alex.get(f"/Patient/demo-alex/{OPERATION}", params=PERIOD)
        assert own.status_code == 200, own.text


async def test_a_clinician_stores_the_document_and_anyone_can_fetch_the_keys(
    smart_demo: SmartServer,
) -> None:
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "start", "valueDate": PERIOD["start"]}, {"name": "end", "valueDate": PERIOD["end"]},
        {"name": "format", "valueCode": "document"}]}  # fmt: skip
    token = await smart_demo.mint("user/*.cruds", fhir_user="Practitioner/demo-therapist")
    async with smart_demo.client(token) as clinician:
        stored = await clinician.post(f"/Patient/demo-blair/{OPERATION}", json=body)
        assert stored.status_code == 200, stored.text
        bundle = stored.json()["parameter"][0]["resource"]
        assert (await clinician.get(f"/Bundle/{bundle['id']}")).status_code == 200
    async with httpx.AsyncClient() as anyone:
        keys = await anyone.get(f"{smart_demo.origin}/evidence/jwks")
    assert keys.status_code == 200
    assert [k["alg"] for k in keys.json()["keys"]] == ["RS256"]
    assert all("d" not in k for k in keys.json()["keys"])  # public halves only
