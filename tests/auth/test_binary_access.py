"""A Binary's access follows its securityContext (https://hl7.org/fhir/R4/binary.html#security):
one naming a Patient puts it in that patient's compartment, so a patient-scoped token reaches the
Binaries of its own patient only, its raw content included."""

from __future__ import annotations

from tests.auth.conftest import SmartServer


async def test_a_patient_token_reaches_the_binaries_of_its_patient_only(
    smart: SmartServer,
) -> None:
    for pid in ("pa", "pb"):
        await smart.seed({"resourceType": "Patient", "id": pid})
        await smart.seed(
            {
                "resourceType": "Binary",
                "id": f"scan-{pid}",
                "contentType": "text/plain",
                "securityContext": {"reference": f"Patient/{pid}"},
                "data": "c2Nhbg==",
            }
        )
    async with await smart.as_scope("patient/Binary.rs", patient="pa") as client:
        own = await client.get("/Binary/scan-pa", headers={"Accept": "text/plain"})
        assert own.status_code == 200
        assert own.content == b"scan"
        assert (await client.get("/Binary/scan-pb")).status_code == 404
        listed = await client.get("/Binary")
        assert [e["resource"]["id"] for e in listed.json()["entry"]] == ["scan-pa"]


async def test_a_patient_token_writes_binaries_of_its_patient_only(smart: SmartServer) -> None:
    async with await smart.as_scope("patient/Binary.c", patient="pa") as client:
        headers = {"Content-Type": "application/pdf"}
        own = await client.post(
            "/Binary", content=b"%PDF", headers={**headers, "X-Security-Context": "Patient/pa"}
        )
        assert own.status_code == 201, own.text
        other = await client.post(
            "/Binary", content=b"%PDF", headers={**headers, "X-Security-Context": "Patient/pb"}
        )
        assert other.status_code == 403
