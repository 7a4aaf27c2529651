"""A real FHIR client library against the server, unchanged: fhirpy (https://github.com/beda-software/fhir-py),
as an application would use it. Its `.count()` sends `_count=0&_totalMethod=count` (Aidbox's
spelling), its `fetch_all()` follows `next` links, its `save()` is create or update."""

from __future__ import annotations

from fhirpy import AsyncFHIRClient
from fhirpy.base.exceptions import OperationOutcome, ResourceNotFound

from tests.conftest import RunningServer
from tests.helpers import observation


async def test_fhirpy_creates_searches_pages_counts_and_deletes(fhir: RunningServer) -> None:
    client = AsyncFHIRClient(fhir.base)
    patient = client.resource("Patient", name=[{"family": "Okafor", "given": ["Ada"]}])
    await patient.save()
    assert patient.id and patient["meta"]["versionId"] == "1"
    for i in range(45):
        body = observation(patient.id, f"{70 + i}.5")
        del body["resourceType"]
        await client.resource("Observation", **body).save()

    observations = client.resources("Observation").search(subject=f"Patient/{patient.id}")
    assert await observations.count() == 45
    every = await observations.limit(20).fetch_all()  # three pages, followed by `next`
    assert len(every) == 45 and len({o.id for o in every}) == 45
    first = await observations.sort("-_lastUpdated").first()
    assert first is not None and first["valueQuantity"]["value"] == 114.5

    patient["name"][0]["given"] = ["Adaeze"]
    await patient.save()  # update
    again = await client.resources("Patient").search(_id=patient.id).get()
    assert again["name"][0]["given"] == ["Adaeze"] and again["meta"]["versionId"] == "2"

    bad = client.resource("Observation", status="finished-ish", code={"text": "x"})
    try:
        await bad.save()
        raise AssertionError("an invalid Observation was stored")
    except OperationOutcome as outcome:
        assert "status" in str(outcome)

    await again.delete()
    try:
        await client.resources("Patient").search(_id=patient.id).get()
        raise AssertionError("a deleted Patient was found")
    except ResourceNotFound:
        pass
