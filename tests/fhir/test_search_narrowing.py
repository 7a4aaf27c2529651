"""Narrowed reference parameters (`patient` = `subject.where(resolve() is Patient)`,
https://hl7.org/fhir/R4/searchparameter-registry.html): their keys are not stored, since the
other parameter's keys hold them (fhir/search/registry.py `references_of`), and every way of
searching by them still finds what it found before: plain values, `:missing`, a type modifier,
chains, `_has`, `_revinclude`, the compartment they decide, and `:identifier`."""

from __future__ import annotations

from typing import Any

from fhirgoal.fhir.conformance import load_conformance
from fhirgoal.fhir.search.registry import SearchRegistry
from tests.conftest import RunningServer
from tests.helpers import store


def registry(fhir: RunningServer) -> SearchRegistry:
    return SearchRegistry(load_conformance(fhir.settings.conformance_dir))


def weight(rid: str, subject: dict[str, Any] | None) -> dict[str, Any]:
    body: dict[str, Any] = {"resourceType": "Observation", "id": rid, "status": "final",
                            "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}]}}  # fmt: skip
    if subject is not None:
        body["subject"] = subject
    return body


async def ids(fhir: RunningServer, path: str, **params: str) -> set[str]:
    response = await fhir.client.get(path, params=params)
    assert response.status_code == 200, response.text
    return {
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in response.json().get("entry", [])
    }


def test_patient_is_a_narrowing_of_subject_and_stores_no_keys_of_its_own(
    fhir: RunningServer,
) -> None:
    table = registry(fhir).for_type("Goal")
    assert table.params["patient"].references_of == ("subject", "Patient")
    assert table.params["subject"].references_of is None
    goal = {"resourceType": "Goal", "id": "g1", "lifecycleStatus": "active",
            "description": {"text": "walk"}, "subject": {"reference": "Patient/p1"}}  # fmt: skip
    index = table.index_fields(goal)
    assert index["ref"] == ["subject=Patient/p1"] == index["refx"]
    # Goal's patient compartment is defined by `patient` alone: still decided by it
    assert "patient" in table.compartment_params and index["comp"] == ["Patient/p1"]
    assert table.reference_key("patient", "Patient/p1") == "subject=Patient/p1"
    assert table.reference_key("patient", "Group/g1") is None
    observations = registry(fhir).for_type("Observation")
    assert observations.params["goal"].references_of == ("focus", "Goal")  # a custom one too
    # a parameter with two narrowed branches is not a narrowing of either
    assert registry(fhir).for_type("AuditEvent").params["patient"].references_of is None


async def test_searches_by_a_narrowing_find_what_they_found_before(fhir: RunningServer) -> None:
    await store(fhir.client, {"resourceType": "Patient", "id": "p1", "name": [{"family": "Ng"}]})
    await store(fhir.client, {"resourceType": "Patient", "id": "p2", "name": [{"family": "Ode"}]})
    await store(
        fhir.client, {"resourceType": "Group", "id": "p1", "type": "person", "actual": True}
    )
    await store(fhir.client, weight("o1", {"reference": "Patient/p1"}))
    await store(fhir.client, weight("o2", {"reference": "Group/p1"}))
    await store(fhir.client, weight("o3", None))
    await store(fhir.client, weight("o4", {"reference": "Patient/p2"}))
    await store(fhir.client, weight("o5", {"identifier": {"system": "urn:s", "value": "v1"}}))
    identified = {"reference": "Patient/p2", "identifier": {"system": "urn:s", "value": "v2"}}
    await store(fhir.client, weight("o6", identified))

    assert await ids(fhir, "/Observation", patient="p1") == {"Observation/o1"}
    assert await ids(fhir, "/Observation", patient="Patient/p1") == {"Observation/o1"}
    assert await ids(fhir, "/Observation", patient=f"{fhir.base}/Patient/p1") == {"Observation/o1"}
    assert await ids(fhir, "/Observation", **{"patient:Patient": "p1"}) == {"Observation/o1"}
    assert await ids(fhir, "/Observation", patient="Group/p1") == set()  # not a Patient
    assert await ids(fhir, "/Observation", subject="p1") == {
        "Observation/o1",
        "Observation/o2",
    }
    assert await ids(fhir, "/Observation", **{"patient:missing": "false"}) == {
        "Observation/o1",
        "Observation/o4",
        "Observation/o6",
    }
    assert await ids(fhir, "/Observation", **{"patient:missing": "true"}) == {
        "Observation/o2",
        "Observation/o3",
        "Observation/o5",
    }
    # a reference's identifier is only the patient's where the reference is to a Patient
    assert await ids(fhir, "/Observation", **{"patient:identifier": "urn:s|v2"}) == {
        "Observation/o6"
    }
    assert await ids(fhir, "/Observation", **{"patient:identifier": "urn:s|v1"}) == set()
    assert await ids(fhir, "/Observation", **{"patient.name": "ng"}) == {"Observation/o1"}
    assert await ids(
        fhir, "/Patient", **{"_has:Observation:patient:code": "29463-7", "_id": "p1,p2"}
    ) == {"Patient/p1", "Patient/p2"}
    assert await ids(fhir, "/Group", **{"_has:Observation:patient:code": "29463-7"}) == set()
    assert await ids(fhir, "/Patient", _id="p1", _revinclude="Observation:patient") == {
        "Patient/p1",
        "Observation/o1",
    }
    assert await ids(fhir, "/Group", _id="p1", _revinclude="Observation:patient") == {"Group/p1"}
    assert await ids(fhir, "/Patient/p1/Observation") == {"Observation/o1"}
