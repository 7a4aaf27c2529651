"""Every bad input gets a 4xx OperationOutcome with `expression` where it applies, and stores nothing."""

from __future__ import annotations

import pytest

from tests.conftest import RunningServer
from tests.helpers import FHIR_JSON, expressions, issues


async def assert_nothing_stored(fhir: RunningServer, rt: str) -> None:
    assert (await fhir.client.get(f"/{rt}")).json()["total"] == 0
    assert (await fhir.client.get(f"/{rt}/_history")).json()["total"] == 0


INVALID = [
    ({"resourceType": "Goal"}, ["Goal.lifecycleStatus", "Goal.description", "Goal.subject"]),
    ({"resourceType": "Patient", "colour": "blue"}, ["Patient.colour"]),
    ({"resourceType": "Patient", "gender": "robot"}, ["Patient.gender"]),
    (
        {
            "resourceType": "Observation",
            "status": "final",
            "code": {"text": "x"},
            "valueString": "a",
            "valueBoolean": True,
        },
        ["Observation.valueBoolean"],
    ),
    ({"resourceType": "Patient", "name": {"family": "NotAnArray"}}, ["Patient.name"]),
    ({"resourceType": "Patient", "active": "yes"}, ["Patient.active"]),
    ({"resourceType": "Patient", "name": []}, ["Patient.name"]),
    ({"resourceType": "Patient", "birthDate": "2026-13-45"}, ["Patient.birthDate"]),
    ({"resourceType": "Observation", "code": {"text": "x"}}, ["Observation.status"]),
    # integer types: whole numbers in range (the R4 JSON schema lets any number through)
    ({"resourceType": "Patient", "multipleBirthInteger": 1.5}, ["Patient.multipleBirthInteger"]),
    ({"resourceType": "Patient", "multipleBirthInteger": 2**31}, ["Patient.multipleBirthInteger"]),
    ({"resourceType": "Patient", "multipleBirthInteger": 10**30}, ["Patient.multipleBirthInteger"]),
    (
        {"resourceType": "Group", "type": "person", "actual": True, "quantity": -1},
        ["Group.quantity"],
    ),
    (
        {
            "resourceType": "Task",
            "status": "draft",
            "intent": "order",
            "restriction": {"repetitions": 0},
        },
        ["Task.restriction.repetitions"],
    ),
]


@pytest.mark.parametrize(("resource", "where"), INVALID)
async def test_invalid_resource_is_400_with_expression(
    fhir: RunningServer, resource: dict, where: list[str]
) -> None:
    rt = resource["resourceType"]
    response = await fhir.client.post(f"/{rt}", json=resource, headers=FHIR_JSON)
    assert response.status_code == 400, response.text
    found = expressions(response.json())
    for expected in where:
        assert any(e.startswith(expected) for e in found), (expected, found)
    await assert_nothing_stored(fhir, rt)


async def test_invariant_violation_is_rejected(fhir: RunningServer) -> None:
    # obs-6: dataAbsentReason SHALL only be present if value[x] is not present
    resource = {
        "resourceType": "Observation", "status": "final", "code": {"text": "x"}, "valueString": "a",
        "dataAbsentReason": {"text": "unknown"},
    }  # fmt: skip
    response = await fhir.client.post("/Observation", json=resource, headers=FHIR_JSON)
    assert response.status_code == 400
    assert any("obs-6" in i["diagnostics"] for i in issues(response.json()))
    await assert_nothing_stored(fhir, "Observation")


async def test_body_type_differing_from_url_is_400(fhir: RunningServer) -> None:
    response = await fhir.client.post("/Goal", json={"resourceType": "Patient"}, headers=FHIR_JSON)
    assert response.status_code == 400
    assert expressions(response.json()) == ["resourceType"]
    await assert_nothing_stored(fhir, "Goal")
    await assert_nothing_stored(fhir, "Patient")


@pytest.mark.parametrize(
    "body",
    [b'{"resourceType": "Patient",', b"not json", b'{"resourceType":"Patient","active":true,"active":false}',
     b'{"resourceType":"Patient","x":NaN}', b"[1,2]", b"", b"\xff\xfe"],
)  # fmt: skip
async def test_malformed_json_is_400(fhir: RunningServer, body: bytes) -> None:
    response = await fhir.client.post("/Patient", content=body, headers=FHIR_JSON)
    assert response.status_code == 400, response.text
    assert issues(response.json())[0]["severity"] == "error"
    await assert_nothing_stored(fhir, "Patient")


async def test_wrong_content_type_is_415(fhir: RunningServer) -> None:
    xml = b'<Patient xmlns="http://hl7.org/fhir"/>'
    response = await fhir.client.post(
        "/Patient", content=xml, headers={"Content-Type": "application/fhir+xml"}
    )
    assert response.status_code == 415
    assert issues(response.json())
    no_type = await fhir.client.post("/Patient", content=b'{"resourceType":"Patient"}')
    assert no_type.status_code == 415
    await assert_nothing_stored(fhir, "Patient")


async def test_xml_only_accept_is_406(fhir: RunningServer) -> None:
    response = await fhir.client.get("/Patient", headers={"Accept": "application/fhir+xml"})
    assert response.status_code == 406
    assert (await fhir.client.get("/Patient", params={"_format": "xml"})).status_code == 406


async def test_body_over_the_limit_is_413(fhir: RunningServer) -> None:
    big = {
        "resourceType": "Patient",
        "name": [{"family": "x" * (fhir.settings.max_body_bytes + 10)}],
    }
    response = await fhir.client.post("/Patient", json=big, headers=FHIR_JSON)
    assert response.status_code == 413
    assert issues(response.json())
    await assert_nothing_stored(fhir, "Patient")


async def test_unknown_route_and_method_answer_operation_outcomes(fhir: RunningServer) -> None:
    response = await fhir.client.request("PATCH", "/Patient")
    assert response.status_code == 405
    assert issues(response.json())
