"""FHIRPath Patch (https://hl7.org/fhir/R4/fhirpatch.html): the cases of the HL7 fhir-test-cases
patch suite (r5/patch/fhir-path-tests.xml, written here in JSON), then over HTTP, alone and as a
transaction entry, with its failures storing nothing."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from fhirgoal.config import Settings
from fhirgoal.core.errors import FhirError
from fhirgoal.fhir.conformance import load_conformance
from fhirgoal.fhir.fhirpath_patch import apply_fhirpath_patch
from fhirgoal.fhir.structure import StructureChecker
from tests.conftest import RunningServer
from tests.helpers import FHIR_JSON, issues, observation, patient

STRUCTURE = StructureChecker(load_conformance(Settings().conformance_dir).structure)


def op(kind: str, path: str, **parts: Any) -> dict[str, Any]:
    """One `operation` parameter: each keyword a part (`value_X` -> valueX; `parts` -> part)."""
    out = [{"name": "type", "valueCode": kind}, {"name": "path", "valueString": path}]
    for name, value in parts.items():
        if name == "name":
            out.append({"name": "name", "valueString": value})
        elif name in ("index", "source", "destination"):
            out.append({"name": name, "valueInteger": value})
        else:  # value=("Date", "1930-01-01") or value=[subparts]
            out.append({"name": "value", "part": value} if isinstance(value, list)
                       else {"name": "value", f"value{value[0]}": value[1]})  # fmt: skip
    return {"name": "operation", "part": out}


def params(*operations: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Parameters", "parameter": list(operations)}


def pat(**elements: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", **elements}


def ids(*values: str) -> list[dict[str, str]]:
    return [{"system": "http://example.org", "value": v} for v in values]


CONTACT = {"name": {"text": "a name"}, "gender": "male"}

CASES = [
    ("No Difference", pat(birthDate="1920-01-01"), [], pat(birthDate="1920-01-01")),
    ("Replace Primitive", pat(birthDate="1920-01-01"),
     [op("replace", "Patient.birthDate", value=("Date", "1930-01-01"))], pat(birthDate="1930-01-01")),
    ("Delete Primitive", pat(birthDate="1920-01-01"), [op("delete", "Patient.birthDate")], pat()),
    ("Add Primitive", pat(), [op("add", "Patient", name="birthDate", value=("Date", "1930-01-01"))],
     pat(birthDate="1930-01-01")),
    ("Replace Nested Primitive #1", pat(contact=[CONTACT]),
     [op("replace", "Patient.contact[0].gender", value=("Code", "female"))],
     pat(contact=[{**CONTACT, "gender": "female"}])),
    ("Replace Nested Primitive #2", pat(contact=[CONTACT]),
     [op("replace", "Patient.contact[0].name.text", value=("String", "the name"))],
     pat(contact=[{**CONTACT, "name": {"text": "the name"}}])),
    ("Delete Nested Primitive #1", pat(contact=[CONTACT]),
     [op("delete", "Patient.contact[0].gender")], pat(contact=[{"name": {"text": "a name"}}])),
    ("Delete Nested Primitive #2", pat(contact=[CONTACT]),
     [op("delete", "Patient.contact[0].name.text")], pat(contact=[{"gender": "male"}])),
    ("Add Nested Primitive", pat(contact=[{"name": {"text": "a name"}}]),
     [op("add", "Patient.contact[0]", name="gender", value=("Code", "male"))], pat(contact=[CONTACT])),
    ("Add Complex", pat(), [op("add", "Patient", name="maritalStatus",
                               value=("CodeableConcept", {"text": "married"}))],
     pat(maritalStatus={"text": "married"})),
    ("Replace Complex", pat(maritalStatus={"id": "1", "text": "married"}),
     [op("replace", "Patient.maritalStatus", value=("CodeableConcept", {"id": "2", "text": "not married"}))],
     pat(maritalStatus={"id": "2", "text": "not married"})),
    ("Delete Complex", pat(maritalStatus={"text": "married"}),
     [op("delete", "Patient.maritalStatus")], pat()),
    ("Add Anonymous Type", pat(), [op("add", "Patient", name="contact",
                                      value=[{"name": "name", "valueHumanName": {"text": "a name"}}])],
     pat(contact=[{"name": {"text": "a name"}}])),
    ("Delete Anonymous Type", pat(contact=[{"name": {"text": "a name"}}]),
     [op("delete", "Patient.contact[0]")], pat()),
    ("List unchanged, contents changed",
     pat(identifier=[{"id": "a", **ids("value 1")[0]}, {"id": "b", **ids("value 2")[0]}]),
     [op("replace", "Patient.identifier[0].value", value=("String", "value 2")),
      op("replace", "Patient.identifier[1].value", value=("String", "value 1"))],
     pat(identifier=[{"id": "a", **ids("value 2")[0]}, {"id": "b", **ids("value 1")[0]}])),
    ("Add to list", pat(identifier=ids("value 1", "value 2")),
     [op("insert", "Patient.identifier", index=2, value=("Identifier", ids("value 3")[0]))],
     pat(identifier=ids("value 1", "value 2", "value 3"))),
    ("Insert in list #1", pat(identifier=ids("value 1", "value 2")),
     [op("insert", "Patient.identifier", index=1, value=("Identifier", ids("value 3")[0]))],
     pat(identifier=ids("value 1", "value 3", "value 2"))),
    ("Insert in list #2", pat(identifier=ids("value 1", "value 2")),
     [op("insert", "Patient.identifier", index=0, value=("Identifier", ids("value 3")[0]))],
     pat(identifier=ids("value 3", "value 1", "value 2"))),
    *[(f"Delete from List #{n + 1}", pat(identifier=ids("value 1", "value 2", "value 3")),
       [op("delete", f"Patient.identifier[{n}]")],
       pat(identifier=[i for k, i in enumerate(ids("value 1", "value 2", "value 3")) if k != n]))
      for n in range(3)],
    *[(f"Reorder List #{n}", pat(identifier=ids("value 1", "value 2", "value 3", "value 4")),
       [op("move", "Patient.identifier", source=source, destination=destination)],
       pat(identifier=ids(*(f"value {v}" for v in order))))
      for n, source, destination, order in ((1, 3, 1, "1423"), (2, 3, 0, "4123"),
                                            (3, 3, 2, "1243"), (4, 0, 3, "2341"))],
]  # fmt: skip


@pytest.mark.parametrize(
    ("name", "before", "operations", "after"), CASES, ids=[c[0] for c in CASES]
)
def test_the_hl7_patch_cases(
    name: str, before: dict[str, Any], operations: list[dict[str, Any]], after: dict[str, Any]
) -> None:
    kept = copy.deepcopy(before)
    assert apply_fhirpath_patch(before, params(*operations), STRUCTURE, 50, 40) == after
    assert before == kept  # the stored resource is not touched


@pytest.mark.parametrize(
    ("before", "operation", "words"),
    [
        (pat(), op("replace", "Patient.birthDate", value=("Date", "1930-01-01")), "matches nothing"),
        (pat(birthDate="1920-01-01"), op("add", "Patient", name="birthDate",
                                         value=("Date", "1930-01-01")), "already there"),
        (pat(), op("add", "Patient", name="birthDate", value=("String", "x")), "valueDate"),
        (pat(), op("add", "Patient", name="nickname", value=("String", "x")), "no element"),
        (pat(identifier=ids("1", "2")), op("delete", "Patient.identifier"), "matches 2"),
        (pat(identifier=ids("1")), op("insert", "Patient.identifier", index=3,
                                      value=("Identifier", ids("x")[0])), "past its end"),
        (pat(identifier=ids("1")), op("move", "Patient.identifier", source=0, destination=1),
         "cannot move"),
        (pat(), op("replace", "Patient.birthDate.resolve()", value=("Date", "1930-01-01")),
         "not supported"),
        (pat(), op("replace", "Patient.birthDate =", value=("Date", "1930-01-01")), "parse"),
        (pat(), op("jump", "Patient"), "unknown operation type"),
        (pat(), {"name": "operation", "part": [{"name": "type", "valueCode": "add"}]}, "'path'"),
    ],
)  # fmt: skip
def test_refused_operations_say_why_and_name_themselves(
    before: dict[str, Any], operation: dict[str, Any], words: str
) -> None:
    ok = op("add", "Patient", name="active", value=("Boolean", True))
    with pytest.raises(FhirError) as refused:
        apply_fhirpath_patch(before, params(ok, operation), STRUCTURE, 50, 40)
    text = refused.value.issues[0].diagnostics
    assert words in text and text.startswith("Parameters.parameter[1]"), text


def test_where_paths_and_choice_elements() -> None:
    before = {**observation("p1"), "resourceType": "Observation",
              "identifier": ids("a", "b")}  # fmt: skip
    patch = params(
        op("replace", "Observation.identifier.where(value = 'b').value", value=("String", "c")),
        op("replace", "Observation.value", value=("String", "unmeasurable")),
        op("delete", "Observation.identifier.where(value = 'zzz')"),  # nothing: no error
    )
    after = apply_fhirpath_patch(before, patch, STRUCTURE, 50, 40)
    assert after["identifier"] == ids("a", "c")
    assert after["valueString"] == "unmeasurable" and "valueQuantity" not in after


async def test_patch_over_http_with_parameters(fhir: RunningServer) -> None:
    pid = (await fhir.client.post("/Patient", json=patient(), headers=FHIR_JSON)).json()["id"]
    patch = params(
        op("add", "Patient", name="birthDate", value=("Date", "1980-02-03")),
        op("replace", "Patient.name[0].family", value=("String", "Rivers")),
    )
    response = await fhir.client.patch(
        f"/Patient/{pid}", json=patch, headers={**FHIR_JSON, "If-Match": 'W/"1"'}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["birthDate"] == "1980-02-03" and body["name"][0]["family"] == "Rivers"
    assert body["meta"]["versionId"] == "2"
    history = (await fhir.client.get(f"/Patient/{pid}/_history")).json()
    assert history["entry"][0]["request"]["method"] == "PATCH"


async def test_failed_fhirpath_patches_store_nothing(fhir: RunningServer) -> None:
    pid = (await fhir.client.post("/Patient", json=patient(), headers=FHIR_JSON)).json()["id"]
    cases = [
        (params(op("add", "Patient", name="gender", value=("Code", "robot"))), 400),  # invalid
        (params(op("replace", "Patient.photo", value=("Attachment", {}))), 422),
        (params(op("replace", "Patient.id", value=("Id", "other"))), 422),
        ({"resourceType": "Patient"}, 400),  # fhir+json: a Parameters, or nothing
        ([{"op": "add", "path": "/gender", "value": "male"}], 400),
    ]
    for body, status in cases:
        response = await fhir.client.patch(f"/Patient/{pid}", json=body, headers=FHIR_JSON)
        assert response.status_code == status, (body, response.text)
        assert issues(response.json())
    other = await fhir.client.patch(
        f"/Patient/{pid}", content=b"x", headers={"Content-Type": "text/plain"}
    )
    assert other.status_code == 415
    assert (await fhir.client.get(f"/Patient/{pid}")).json()["meta"]["versionId"] == "1"


async def test_a_transaction_entry_may_be_a_fhirpath_patch(fhir: RunningServer) -> None:
    pid = (await fhir.client.post("/Patient", json=patient(), headers=FHIR_JSON)).json()["id"]
    patch = params(op("add", "Patient", name="active", value=("Boolean", True)))
    bundle = {
        "resourceType": "Bundle",
        "type": "transaction",
        "entry": [{"resource": patch, "request": {"method": "PATCH", "url": f"Patient/{pid}"}}],
    }
    response = await fhir.client.post("", json=bundle, headers=FHIR_JSON)
    assert response.status_code == 200, response.text
    assert response.json()["entry"][0]["response"]["status"] == "200 OK"
    assert (await fhir.client.get(f"/Patient/{pid}")).json()["active"] is True
    bad = params(op("replace", "Patient.deceased", value=("Boolean", True)))
    bundle["entry"][0]["resource"] = bad
    response = await fhir.client.post("", json=bundle, headers=FHIR_JSON)
    assert response.status_code == 422, response.text
    assert "Bundle.entry[0]" in response.text and "matches nothing" in response.text
