"""Patient/[id]/$everything (https://hl7.org/fhir/R4/patient-operation-everything.html): the
patient, its compartment, the resources they reference outside any compartment, paged."""

from __future__ import annotations

from typing import Any

import httpx

from tests.conftest import RunningServer
from tests.helpers import FHIR_JSON, issues, observation, patient, store


def encounter(rid: str, patient_id: str, start: str) -> dict[str, Any]:
    return {
        "resourceType": "Encounter",
        "id": rid,
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": f"Patient/{patient_id}"},
        "period": {"start": start, "end": start},
        "serviceProvider": {"reference": "Organization/clinic"},
    }


async def seed(client: httpx.AsyncClient) -> None:
    await store(client, {"resourceType": "Organization", "id": "clinic", "name": "Clinic"})
    await store(client, {"resourceType": "Practitioner", "id": "doc", "name": [{"family": "Lee"}]})
    await store(client, {"resourceType": "Practitioner", "id": "unused", "name": [{"family": "X"}]})
    await store(
        client,
        patient("Aalto", id="pa", generalPractitioner=[{"reference": "Practitioner/doc"}]),
    )
    await store(client, patient("Berg", id="pb"))
    await store(client, encounter("e1", "pa", "2026-01-10"))
    await store(client, encounter("e2", "pa", "2026-03-10"))
    await store(client, encounter("eb", "pb", "2026-01-10"))
    for i, day in enumerate(("2026-01-10", "2026-02-10", "2026-03-10")):
        await store(
            client,
            observation(
                "pa",
                id=f"o{i}",
                effectiveDateTime=day,
                performer=[{"reference": "Practitioner/doc"}],
                # another patient's encounter, referenced: never pulled in
                encounter={"reference": "Encounter/eb"},
            ),
        )
    await store(client, observation("pb", id="ob"))
    await store(
        client,
        {
            "resourceType": "Goal",
            "id": "g1",
            "lifecycleStatus": "active",
            "description": {"text": "sleep through the night"},
            "subject": {"reference": "Patient/pa"},
        },
    )


def ids(body: dict[str, Any], mode: str = "match") -> list[str]:
    return [
        f"{e['resource']['resourceType']}/{e['resource']['id']}"
        for e in body.get("entry", [])
        if e["search"]["mode"] == mode
    ]


async def test_everything_is_the_compartment_and_what_it_references(fhir: RunningServer) -> None:
    await seed(fhir.client)
    response = await fhir.client.get("/Patient/pa/$everything")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["type"] == "searchset" and body["total"] == 7
    assert ids(body) == [
        "Encounter/e1",
        "Encounter/e2",
        "Goal/g1",
        "Observation/o0",
        "Observation/o1",
        "Observation/o2",
        "Patient/pa",
    ]
    # referenced from the page and in no patient's compartment; pb's encounter eb is not
    assert sorted(ids(body, "include")) == ["Organization/clinic", "Practitioner/doc"]
    assert body["link"][0]["relation"] == "self"
    assert body["link"][0]["url"].startswith(f"{fhir.base}/Patient/pa/$everything")


async def test_pages_walk_everything_once(fhir: RunningServer) -> None:
    await seed(fhir.client)
    seen: list[str] = []
    url: str | None = f"{fhir.base}/Patient/pa/$everything?_count=3"
    pages = 0
    while url:
        response = await fhir.client.get(url)
        assert response.status_code == 200, response.text
        body = response.json()
        page = ids(body)
        assert len(page) <= 3
        seen += page
        pages += 1
        url = next((link["url"] for link in body["link"] if link["relation"] == "next"), None)
    assert pages == 3
    assert len(seen) == len(set(seen)) == 7
    assert "Patient/pb" not in seen and "Observation/ob" not in seen


async def test_type_since_and_care_dates(fhir: RunningServer) -> None:
    await seed(fhir.client)
    only = await fhir.client.get("/Patient/pa/$everything?_type=Observation,Patient")
    assert ids(only.json()) == [
        "Observation/o0",
        "Observation/o1",
        "Observation/o2",
        "Patient/pa",
    ]
    # care dates filter the types with a clinical date; Goal and Patient have none: kept
    dated = await fhir.client.get("/Patient/pa/$everything?start=2026-02-01&end=2026-02-28")
    assert ids(dated.json()) == ["Goal/g1", "Observation/o1", "Patient/pa"]
    # _since: only what changed after the instant; POST with Parameters works the same
    later = await fhir.client.get("/Observation/o2")
    stamp = later.json()["meta"]["lastUpdated"]
    await store(fhir.client, {**later.json(), "status": "amended"})
    posted = await fhir.client.post(
        "/Patient/pa/$everything",
        json={
            "resourceType": "Parameters",
            "parameter": [{"name": "_since", "valueInstant": stamp}],
        },
        headers=FHIR_JSON,
    )
    assert posted.status_code == 200, posted.text
    assert "Observation/o2" in ids(posted.json())
    assert "Observation/o0" not in ids(posted.json())


async def test_bad_requests_say_what_is_wrong(fhir: RunningServer) -> None:
    await seed(fhir.client)
    unknown = await fhir.client.get("/Patient/nobody/$everything")
    assert unknown.status_code == 404
    odd = await fhir.client.get("/Patient/pa/$everything?colour=blue")
    assert odd.status_code == 400 and "colour" in issues(odd.json())[0]["diagnostics"]
    wrong_type = await fhir.client.get("/Patient/pa/$everything?_type=Organization")
    assert wrong_type.status_code == 400
    assert "Organization" in issues(wrong_type.json())[0]["diagnostics"]
    cursor = await fhir.client.get("/Patient/pa/$everything?_cursor=bm9wZQ")
    assert cursor.status_code == 400
    assert (await fhir.client.get("/Observation/o0/$everything")).status_code in (400, 404)


async def test_capability_statement_lists_it(fhir: RunningServer) -> None:
    statement = (await fhir.client.get("/metadata")).json()
    patient_entry = next(r for r in statement["rest"][0]["resource"] if r["type"] == "Patient")
    assert {
        "name": "everything",
        "definition": "http://hl7.org/fhir/OperationDefinition/Patient-everything",
    }.items() <= next(o for o in patient_entry["operation"] if o["name"] == "everything").items()
