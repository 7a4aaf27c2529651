"""Bulk Data Access 2.0.0 export options against a real server
(https://hl7.org/fhir/uv/bulkdata/export.html): the `deleted` Bundles of a `_since` export,
`includeAssociatedData` (the Provenance of what is exported), `_elements` (SUBSETTED), and
`Prefer: handling=lenient` (what is ignored reported in the manifest's `error` files). Every
NDJSON line is parsed and validated by the server's own validator."""

from __future__ import annotations

from typing import Any

import httpx

from fhirgoal.core.jsonio import loads
from fhirgoal.fhir.subsetting import SUBSETTED
from fhirgoal.store.exports import ExportStore
from tests.conftest import RunningServer
from tests.fhir.test_export import ASYNC, run_export, search_ids
from tests.helpers import clock_past, export_manifest, issues, observation, patient, store

HEIGHT = {"coding": [{"system": "http://loinc.org", "code": "8302-2"}]}


async def ndjson(fhir: RunningServer, url: str) -> list[dict[str, Any]]:
    """A file's lines, each parsed and valid R4 (the server's validator: schema, structure,
    invariants; OperationOutcomes, which it does not take, by their required elements)."""
    response = await fhir.client.get(url)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/fhir+ndjson")
    resources = [loads(line) for line in response.text.splitlines()]
    for resource in resources:
        if resource["resourceType"] == "OperationOutcome":  # not a stored type: no validator
            for issue in resource["issue"]:
                assert issue["severity"] in ("fatal", "error", "warning", "information")
                assert issue["code"] and issue["diagnostics"]
        else:
            fhir.app.state.fhir.validator.validate(resource)
    return resources


async def files(fhir: RunningServer, items: list[dict[str, Any]]) -> dict[str, list[Any]]:
    """type -> the resources of the manifest items, each file's count checked."""
    found: dict[str, list[Any]] = {}
    for item in items:
        resources = await ndjson(fhir, item["url"])
        assert len(resources) == item["count"]
        assert all(r["resourceType"] == item["type"] for r in resources)
        found.setdefault(item["type"], []).extend(resources)
    return found


async def seed(client: httpx.AsyncClient) -> None:
    for p in ("p1", "p2"):
        await store(client, patient(p.upper(), id=p, gender="other", birthDate="1990-04-01"))
        for i in range(3):
            await store(client, observation(p, id=f"{p}-o{i}"))
        await store(client, observation(p, id=f"{p}-height", code=HEIGHT))
    await store(client, {"resourceType": "Practitioner", "id": "doc", "name": [{"family": "Lee"}]})


async def test_since_export_lists_deletions_as_transaction_bundles(fhir: RunningServer) -> None:
    await seed(fhir.client)
    first = await run_export(fhir.client, "/Patient/$export")
    assert first["deleted"] == []  # no _since: nothing to list
    await clock_past(first["transactionTime"])
    for gone in ("Observation/p1-o0", "Observation/p2-height", "Practitioner/doc"):
        assert (await fhir.client.delete(f"/{gone}")).status_code in (200, 204)
    # deleted, then created again: live, so in `output` and never in `deleted`
    await fhir.client.delete("/Observation/p1-o1")
    await store(fhir.client, observation("p1", "80.0", id="p1-o1"))
    since = {"_since": first["transactionTime"]}

    manifest = await run_export(fhir.client, "/Patient/$export", **since)
    output = await files(fhir, manifest["output"])
    assert [r["id"] for r in output["Observation"]] == ["p1-o1"]
    bundles = (await files(fhir, manifest["deleted"]))["Bundle"]
    assert all(b["type"] == "transaction" for b in bundles)
    deleted = sorted(
        e["request"]["url"]
        for b in bundles
        for e in b["entry"]
        if e["request"]["method"] == "DELETE"
    )
    # the Practitioner is in no patient's compartment: not part of a Patient-level export
    assert deleted == ["Observation/p1-o0", "Observation/p2-height"]
    assert all(not e.get("resource") for b in bundles for e in b["entry"])

    # the deleted list follows the request: _type, _typeFilter, the Group's members
    by_code = await run_export(
        fhir.client,
        "/$export",
        _type="Observation,Practitioner",
        _typeFilter="Observation?code=http://loinc.org|8302-2",
        **since,
    )
    urls = [e["request"]["url"] for b in (await files(fhir, by_code["deleted"]))["Bundle"]
            for e in b["entry"]]  # fmt: skip
    assert sorted(urls) == ["Observation/p2-height", "Practitioner/doc"]
    await store(
        fhir.client,
        {"resourceType": "Group", "id": "g1", "type": "person", "actual": True,
         "member": [{"entity": {"reference": "Patient/p1"}}]},
    )  # fmt: skip
    group = await run_export(fhir.client, "/Group/g1/$export", **since)
    urls = [e["request"]["url"] for b in (await files(fhir, group["deleted"]))["Bundle"]
            for e in b["entry"]]  # fmt: skip
    assert urls == ["Observation/p1-o0"]


async def test_deletions_after_transaction_time_wait_for_the_next_export(
    fhir: RunningServer,
) -> None:
    await seed(fhir.client)
    first = await run_export(fhir.client, "/$export", _type="Observation")
    second = await run_export(
        fhir.client, "/$export", _type="Observation", _since=first["transactionTime"]
    )
    assert second["output"] == [] and second["deleted"] == []
    await clock_past(second["transactionTime"])
    await fhir.client.delete("/Observation/p2-o2")
    third = await run_export(
        fhir.client, "/$export", _type="Observation", _since=second["transactionTime"]
    )
    urls = [e["request"]["url"] for b in (await files(fhir, third["deleted"]))["Bundle"]
            for e in b["entry"]]  # fmt: skip
    assert urls == ["Observation/p2-o2"]


def provenance(pid: str, targets: list[str], recorded: str) -> dict[str, Any]:
    return {
        "resourceType": "Provenance",
        "id": pid,
        "target": [{"reference": t} for t in targets],
        "recorded": recorded,
        "agent": [{"who": {"reference": "Practitioner/doc"}}],
    }


async def test_include_associated_provenance(fhir: RunningServer) -> None:
    await seed(fhir.client)
    for resource in (
        provenance("o0-old", ["Observation/p1-o0/_history/1"], "2026-01-01T10:00:00Z"),
        provenance("o0-new", ["Observation/p1-o0/_history/1"], "2026-02-01T10:00:00+01:00"),
        provenance("both", ["Observation/p1-o1", "Observation/p2-o1"], "2026-01-15T10:00:00Z"),
        provenance("p2-o1-later", ["Observation/p2-o1"], "2026-03-01T10:00:00Z"),
        provenance("doc", ["Practitioner/doc"], "2026-03-01T10:00:00Z"),
    ):
        await store(fhir.client, resource)
    kinds = ("LatestProvenanceResources", "RelevantProvenanceResources")
    expected = {
        kinds[0]: ["both", "o0-new", "p2-o1-later"],  # the most recent of each exported one
        kinds[1]: ["both", "o0-new", "o0-old", "p2-o1-later"],
    }
    for kind in kinds:
        manifest = await run_export(
            fhir.client, "/$export", _type="Observation,Provenance", includeAssociatedData=kind
        )
        found = await files(fhir, manifest["output"])
        assert sorted(r["id"] for r in found["Provenance"]) == expected[kind], kind
        assert len(found["Observation"]) == 8
    # both asked: the least restrictive applies
    both = await run_export(
        fhir.client, "/$export", _type="Observation", includeAssociatedData=",".join(kinds)
    )
    found = await files(fhir, both["output"])
    assert sorted(r["id"] for r in found["Provenance"]) == expected[kinds[1]]
    # without it Provenance is a type like any other: all of them
    plain = await files(
        fhir, (await run_export(fhir.client, "/$export", _type="Provenance"))["output"]
    )
    assert sorted(r["id"] for r in plain["Provenance"]) == await search_ids(
        fhir.client, "/Provenance"
    )


async def provenance_targets(client: httpx.AsyncClient) -> dict[str, set[str]]:
    """Every stored Provenance (the server's own records of writes too) -> its targets."""
    body = (await client.get("/Provenance", params={"_count": "1000"})).json()
    return {
        e["resource"]["id"]: {
            "/".join(t["reference"].split("/")[:2]) for t in e["resource"].get("target", [])
        }
        for e in body.get("entry", [])
    }


async def test_patient_level_provenance_is_that_of_compartment_resources(
    fhir: RunningServer,
) -> None:
    """Bulk Data 2.0.0 (export.html, Query Parameters): without includeAssociatedData a patient
    level export SHALL include all Provenance whose target is a resource in the compartment."""
    await seed(fhir.client)
    await store(fhir.client, {"resourceType": "Group", "id": "g", "type": "person",
                              "actual": True, "member": [{"entity": {"reference": "Patient/p1"}}]})  # fmt: skip
    for resource in (
        provenance("of-p1-o0", ["Observation/p1-o0/_history/1"], "2026-01-01T10:00:00Z"),
        provenance("of-p2", ["Observation/p2-o1", "Practitioner/doc"], "2026-01-02T10:00:00Z"),
        provenance("of-doc", ["Practitioner/doc"], "2026-01-03T10:00:00Z"),
        provenance("of-p2-itself", ["Patient/p2"], "2026-01-04T10:00:00Z"),
    ):
        await store(fhir.client, resource)
    targets = await provenance_targets(fhir.client)
    compartments = {
        "p1": {"Patient/p1", *(f"Observation/p1-o{i}" for i in range(3)), "Observation/p1-height"},
        "p2": {"Patient/p2", *(f"Observation/p2-o{i}" for i in range(3)), "Observation/p2-height"},
    }
    everyone = compartments["p1"] | compartments["p2"]

    def expected(within: set[str]) -> list[str]:
        return sorted(pid for pid, found in targets.items() if found & within)

    manifest = await run_export(fhir.client, "/Patient/$export", _type="Provenance")
    exported = sorted(r["id"] for r in (await files(fhir, manifest["output"]))["Provenance"])
    assert exported == expected(everyone)
    assert {"of-p1-o0", "of-p2", "of-p2-itself"} <= set(exported)
    assert "of-doc" not in exported  # its only target is outside every compartment
    group = await run_export(fhir.client, "/Group/g/$export", _type="Provenance")
    in_group = sorted(r["id"] for r in (await files(fhir, group["output"]))["Provenance"])
    assert in_group == expected(compartments["p1"]) and "of-p1-o0" in in_group
    assert "of-p2" not in in_group

    # _since applies to the Provenance: a new one about an old Observation is exported
    await clock_past(manifest["transactionTime"])
    await store(fhir.client, provenance("late", ["Observation/p2-o0"], "2026-02-01T10:00:00Z"))
    later = await run_export(
        fhir.client, "/Patient/$export", _type="Observation,Provenance",
        _since=manifest["transactionTime"],
    )  # fmt: skip
    found = await files(fhir, later["output"])
    assert [r["id"] for r in found["Provenance"]] == ["late"]
    assert "Observation" not in found  # none changed since


async def test_elements_subset_and_tag(fhir: RunningServer) -> None:
    await seed(fhir.client)
    manifest = await run_export(
        fhir.client,
        "/Patient/$export",
        _type="Patient,Observation",
        _elements="Patient.name,subject",
    )
    found = await files(fhir, manifest["output"])
    for resource in found["Patient"]:
        assert set(resource) == {"resourceType", "id", "meta", "name"}
        assert SUBSETTED in resource["meta"]["tag"]
    for resource in found["Observation"]:
        # subject asked; status and code are mandatory (R4: 1..1), kept whether asked or not
        assert set(resource) == {"resourceType", "id", "meta", "subject", "status", "code"}
        assert SUBSETTED in resource["meta"]["tag"]
    assert sorted(r["id"] for r in found["Observation"]) == await search_ids(
        fhir.client, "/Observation"
    )


async def test_lenient_handling_reports_what_it_ignored(fhir: RunningServer) -> None:
    await seed(fhir.client)
    lenient = {**ASYNC, "Prefer": "respond-async, handling=lenient"}
    kick = await fhir.client.get(
        "/$export",
        params={
            "_type": "Patient",
            "organizeOutputBy": "Patient",
            "includeAssociatedData": "_everything",
            "_elements": "Patient.colour,name",
        },
        headers=lenient,
    )
    assert kick.status_code == 202, kick.text
    status_url = kick.headers["Content-Location"]
    manifest = await export_manifest(fhir.client, status_url)
    errors = (await files(fhir, manifest["error"]))["OperationOutcome"]
    said = [issue["diagnostics"] for outcome in errors for issue in issues(outcome)]
    assert len(said) == 3
    assert any("organizeOutputBy" in text for text in said)
    assert any("_everything" in text for text in said)
    assert any("Patient.colour" in text for text in said)
    patients = (await files(fhir, manifest["output"]))["Patient"]
    assert all(set(r) == {"resourceType", "id", "meta", "name"} for r in patients)

    # the same request without lenient handling is refused, nothing queued
    before = await ExportStore(fhir.app.state.fhir.database).jobs.count_documents({})
    strict = await fhir.client.get(
        "/$export", params={"_type": "Patient", "organizeOutputBy": "Patient"}, headers=ASYNC
    )
    assert strict.status_code == 400
    assert "organizeOutputBy" in issues(strict.json())[0]["diagnostics"]
    assert await ExportStore(fhir.app.state.fhir.database).jobs.count_documents({}) == before
    # invalid values of supported parameters stay errors: ignoring them would widen the export
    widened = await fhir.client.get(
        "/$export", params={"_typeFilter": "Observation?colour=red"}, headers=lenient
    )
    assert widened.status_code == 400
