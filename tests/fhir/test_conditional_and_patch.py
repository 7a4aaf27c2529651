"""Conditional create/update/delete and JSON Patch (https://hl7.org/fhir/R4/http.html)."""

from __future__ import annotations

from tests.conftest import RunningServer
from tests.helpers import FHIR_JSON, JSON_PATCH, issues, patient

MRN = "https://example.org/mrn"


def with_mrn(value: str, family: str = "Rivera") -> dict:
    return patient(family, identifier=[{"system": MRN, "value": value}])


async def total(fhir: RunningServer, **params: str) -> int:
    return (await fhir.client.get("/Patient", params=params)).json()["total"]


async def test_conditional_create_creates_once_then_returns_the_match(fhir: RunningServer) -> None:
    headers = {**FHIR_JSON, "If-None-Exist": f"identifier={MRN}|A1"}
    first = await fhir.client.post("/Patient", json=with_mrn("A1"), headers=headers)
    assert first.status_code == 201
    second = await fhir.client.post("/Patient", json=with_mrn("A1"), headers=headers)
    assert second.status_code == 200
    assert second.json()["id"] == first.json()["id"]
    assert await total(fhir, identifier=f"{MRN}|A1") == 1


async def test_conditional_create_with_several_matches_is_412(fhir: RunningServer) -> None:
    for _ in range(2):
        await fhir.client.post("/Patient", json=with_mrn("DUP"), headers=FHIR_JSON)
    response = await fhir.client.post(
        "/Patient",
        json=with_mrn("DUP"),
        headers={**FHIR_JSON, "If-None-Exist": f"identifier={MRN}|DUP"},
    )
    assert response.status_code == 412
    assert await total(fhir, identifier=f"{MRN}|DUP") == 2


async def test_conditional_update_updates_the_single_match_or_creates(fhir: RunningServer) -> None:
    created = await fhir.client.put(
        f"/Patient?identifier={MRN}|C1", json=with_mrn("C1", "First"), headers=FHIR_JSON
    )
    assert created.status_code == 201
    pid = created.json()["id"]
    updated = await fhir.client.put(
        f"/Patient?identifier={MRN}|C1", json=with_mrn("C1", "Second"), headers=FHIR_JSON
    )
    assert updated.status_code == 200
    assert updated.json()["id"] == pid and updated.json()["meta"]["versionId"] == "2"


async def test_conditional_update_with_several_matches_is_412(fhir: RunningServer) -> None:
    for _ in range(2):
        await fhir.client.post("/Patient", json=with_mrn("M"), headers=FHIR_JSON)
    response = await fhir.client.put(
        f"/Patient?identifier={MRN}|M", json=with_mrn("M", "X"), headers=FHIR_JSON
    )
    assert response.status_code == 412
    families = {
        e["resource"]["name"][0]["family"]
        for e in (await fhir.client.get("/Patient")).json()["entry"]
    }
    assert families == {"Rivera"}


async def test_conditional_delete_single_and_several(fhir: RunningServer) -> None:
    pid = (await fhir.client.post("/Patient", json=with_mrn("D1"), headers=FHIR_JSON)).json()["id"]
    assert (await fhir.client.delete(f"/Patient?identifier={MRN}|D1")).status_code == 204
    assert (await fhir.client.get(f"/Patient/{pid}")).status_code == 410
    for _ in range(2):
        await fhir.client.post("/Patient", json=with_mrn("D2"), headers=FHIR_JSON)
    assert (await fhir.client.delete(f"/Patient?identifier={MRN}|D2")).status_code == 412
    assert await total(fhir, identifier=f"{MRN}|D2") == 2
    assert (await fhir.client.delete(f"/Patient?identifier={MRN}|none")).status_code == 204


async def test_conditional_interaction_without_criteria_is_400(fhir: RunningServer) -> None:
    assert (await fhir.client.delete("/Patient")).status_code == 400


async def test_json_patch_changes_one_element_and_bumps_the_version(fhir: RunningServer) -> None:
    pid = (await fhir.client.post("/Patient", json=patient(), headers=FHIR_JSON)).json()["id"]
    ops = [
        {"op": "replace", "path": "/name/0/family", "value": "Patched"},
        {"op": "add", "path": "/gender", "value": "female"},
    ]
    response = await fhir.client.patch(
        f"/Patient/{pid}", json=ops, headers={**JSON_PATCH, "If-Match": 'W/"1"'}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["name"][0]["family"] == "Patched" and body["gender"] == "female"
    assert body["meta"]["versionId"] == "2"
    history = (await fhir.client.get(f"/Patient/{pid}/_history")).json()
    assert history["entry"][0]["request"]["method"] == "PATCH"


async def test_json_patch_failures_store_nothing(fhir: RunningServer) -> None:
    pid = (await fhir.client.post("/Patient", json=patient(), headers=FHIR_JSON)).json()["id"]
    cases = [
        ([{"op": "replace", "path": "/nothing/here", "value": 1}], 422),
        (
            [{"op": "add", "path": "/gender", "value": "robot"}],
            400,
        ),  # outside the required value set
        ([{"op": "replace", "path": "/id", "value": "other"}], 422),
        ([{"op": "jump", "path": "/gender"}], 422),
        ({"op": "add"}, 400),
    ]
    for ops, status in cases:
        response = await fhir.client.patch(f"/Patient/{pid}", json=ops, headers=JSON_PATCH)
        assert response.status_code == status, (ops, response.text)
        assert issues(response.json())
    stale = await fhir.client.patch(
        f"/Patient/{pid}",
        json=[{"op": "add", "path": "/gender", "value": "male"}],
        headers={**JSON_PATCH, "If-Match": 'W/"7"'},
    )
    assert stale.status_code == 412
    # application/fhir+json is a FHIRPath Patch (a Parameters resource): an array is not one
    not_parameters = await fhir.client.patch(f"/Patient/{pid}", json=[], headers=FHIR_JSON)
    assert not_parameters.status_code == 400
    assert "Parameters" in not_parameters.text
    wrong_type = await fhir.client.patch(
        f"/Patient/{pid}", content=b"[]", headers={"Content-Type": "application/xml"}
    )
    assert wrong_type.status_code == 415
    assert (await fhir.client.get(f"/Patient/{pid}")).json()["meta"]["versionId"] == "1"
