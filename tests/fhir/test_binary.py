"""Binary on the RESTful API: raw content in and out (https://hl7.org/fhir/R4/binary.html#rest)."""

from __future__ import annotations

import base64
import json

from tests.conftest import RunningServer

FHIR_JSON = "application/fhir+json"
PNG = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256))


async def test_raw_content_is_stored_and_served_as_sent(fhir: RunningServer) -> None:
    created = await fhir.client.post(
        "/Binary", content=PNG, headers={"Content-Type": "image/png", "Accept": "*/*"}
    )
    assert created.status_code == 201, created.text
    rid = created.headers["location"].split("/Binary/")[1].split("/")[0]

    raw = await fhir.client.get(f"/Binary/{rid}", headers={"Accept": "image/png"})
    assert raw.status_code == 200
    assert raw.content == PNG
    assert raw.headers["content-type"] == "image/png"
    assert raw.headers["etag"] == 'W/"1"'
    assert raw.headers["x-content-type-options"] == "nosniff"
    assert raw.headers["content-security-policy"] == "sandbox"

    # no Accept at all, or any other type: the content too (binary.html#rest)
    assert (await fhir.client.get(f"/Binary/{rid}", headers={"Accept": ""})).content == PNG
    other = await fhir.client.get(f"/Binary/{rid}", headers={"Accept": "application/pdf"})
    assert other.content == PNG

    resource = await fhir.client.get(f"/Binary/{rid}", headers={"Accept": FHIR_JSON})
    assert resource.headers["content-type"].startswith(FHIR_JSON)
    body = resource.json()
    assert body["resourceType"] == "Binary"
    assert body["contentType"] == "image/png"
    assert base64.b64decode(body["data"]) == PNG
    assert (await fhir.client.get(f"/Binary/{rid}?_format=json")).json()["id"] == rid


async def test_put_raw_content_creates_and_versions_at_the_url_id(fhir: RunningServer) -> None:
    headers = {"Content-Type": "text/plain; charset=utf-8"}
    first = await fhir.client.put("/Binary/note-1", content=b"first", headers=headers)
    assert first.status_code == 201, first.text
    second = await fhir.client.put("/Binary/note-1", content=b"second", headers=headers)
    assert second.status_code == 200
    old = await fhir.client.get("/Binary/note-1/_history/1", headers={"Accept": "text/plain"})
    assert old.content == b"first"
    assert old.headers["content-type"].startswith("text/plain")
    current = await fhir.client.get("/Binary/note-1", headers={"Accept": FHIR_JSON})
    assert current.json()["contentType"] == "text/plain; charset=utf-8"
    assert current.json()["meta"]["versionId"] == "2"


async def test_a_binary_resource_in_fhir_json_is_stored_as_the_resource(
    fhir: RunningServer,
) -> None:
    binary = {"resourceType": "Binary", "contentType": "text/csv", "data": "YSxiCjEsMgo="}
    created = await fhir.client.post(
        "/Binary", json=binary, headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
    )
    assert created.status_code == 201
    assert created.json()["contentType"] == "text/csv"
    rid = created.json()["id"]
    raw = await fhir.client.get(f"/Binary/{rid}")
    assert raw.content == b"a,b\n1,2\n"
    assert raw.headers["content-type"].startswith("text/csv")


async def test_fhir_json_that_is_not_a_binary_is_content(fhir: RunningServer) -> None:
    """ "the data is accepted as is [...] including when the content type is application/fhir+json,
    except for the special case where the content is actually a Binary resource"."""
    patient = json.dumps({"resourceType": "Patient", "active": True}).encode()
    created = await fhir.client.post(
        "/Binary", content=patient, headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON}
    )
    assert created.status_code == 201
    stored = created.json()
    assert stored["resourceType"] == "Binary"
    assert stored["contentType"] == FHIR_JSON
    assert base64.b64decode(stored["data"]) == patient


async def test_content_without_a_content_type_is_refused_and_nothing_stored(
    fhir: RunningServer,
) -> None:
    refused = await fhir.client.post("/Binary", content=b"bytes", headers={"Content-Type": ""})
    assert refused.status_code == 415
    assert refused.json()["resourceType"] == "OperationOutcome"
    found = await fhir.client.get("/Binary", params={"_summary": "count"})
    assert found.json()["total"] == 0


async def test_content_over_the_body_limit_is_refused(fhir: RunningServer) -> None:
    limit = fhir.settings.max_body_bytes
    refused = await fhir.client.post(
        "/Binary", content=b"x" * (limit + 1), headers={"Content-Type": "application/pdf"}
    )
    assert refused.status_code == 413


async def test_security_context_header_links_the_binary_to_its_patient(
    fhir: RunningServer,
) -> None:
    await fhir.client.put("/Patient/p1", json={"resourceType": "Patient", "id": "p1"})
    created = await fhir.client.post(
        "/Binary",
        content=b"%PDF-1.4",
        headers={
            "Content-Type": "application/pdf",
            "X-Security-Context": "Patient/p1",
            "Accept": FHIR_JSON,
        },
    )
    assert created.status_code == 201
    assert created.json()["securityContext"] == {"reference": "Patient/p1"}
    rid = created.json()["id"]
    by_context = await fhir.client.get("/Binary", params={"security-context": "Patient/p1"})
    assert [e["resource"]["id"] for e in by_context.json()["entry"]] == [rid]
    in_compartment = await fhir.client.get("/Patient/p1/Binary")
    assert [e["resource"]["id"] for e in in_compartment.json()["entry"]] == [rid]
    assert "entry" not in (await fhir.client.get("/Patient/p2/Binary")).json()


async def test_search_and_history_carry_the_resource(fhir: RunningServer) -> None:
    await fhir.client.put("/Binary/b1", content=b"abc", headers={"Content-Type": "text/plain"})
    searched = await fhir.client.get("/Binary", params={"_id": "b1"})
    assert searched.json()["entry"][0]["resource"]["data"] == base64.b64encode(b"abc").decode()
    history = await fhir.client.get("/Binary/b1/_history")
    assert history.json()["entry"][0]["resource"]["contentType"] == "text/plain"


async def test_a_deleted_binary_reads_as_gone(fhir: RunningServer) -> None:
    await fhir.client.put("/Binary/b2", content=b"abc", headers={"Content-Type": "text/plain"})
    assert (await fhir.client.delete("/Binary/b2")).status_code in (200, 204)
    gone = await fhir.client.get("/Binary/b2", headers={"Accept": "text/plain"})
    assert gone.status_code == 410
    assert gone.json()["resourceType"] == "OperationOutcome"
