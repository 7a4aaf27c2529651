"""Transaction Bundles: https://hl7.org/fhir/R4/http.html#transaction (all or nothing, placeholders,
conditional references, processing order, every interaction in entries)."""

from __future__ import annotations

from typing import Any

from tests.conftest import RunningServer
from tests.fhir.helpers import FHIR_JSON, issues, observation, patient

MRN = "https://example.org/mrn"
PAT = "urn:uuid:0b7e1a5c-4f3e-4a55-9a7c-3c1d2e0f9a01"
ENC = "urn:uuid:0b7e1a5c-4f3e-4a55-9a7c-3c1d2e0f9a02"


def transaction(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "transaction", "entry": list(entries)}


def create(resource: dict[str, Any], full_url: str | None = None, **request: Any) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "resource": resource,
        "request": {"method": "POST", "url": resource["resourceType"], **request},
    }
    if full_url:
        entry["fullUrl"] = full_url
    return entry


def request(method: str, url: str, resource: dict[str, Any] | None = None, **extra: Any) -> dict:
    entry: dict[str, Any] = {"request": {"method": method, "url": url, **extra}}
    if resource is not None:
        entry["resource"] = resource
    return entry


def with_mrn(value: str, family: str = "Rivera") -> dict[str, Any]:
    return patient(family, identifier=[{"system": MRN, "value": value}])


async def post(fhir: RunningServer, bundle: dict[str, Any], **headers: str) -> Any:
    return await fhir.client.post("", json=bundle, headers={**FHIR_JSON, **headers})


async def count(fhir: RunningServer, rt: str, **params: str) -> int:
    response = await fhir.client.get(f"/{rt}", params={**params, "_total": "accurate"})
    assert response.status_code == 200, response.text
    return int(response.json()["total"])


async def test_placeholders_become_the_assigned_ids_everywhere_a_link_stands(
    fhir: RunningServer,
) -> None:
    subject = {"reference": PAT}
    obs = observation("x", subject=subject, encounter={"reference": ENC})
    obs["text"] = {
        "status": "generated",
        "div": f'<div xmlns="http://www.w3.org/1999/xhtml"><a href="{PAT}">the patient</a></div>',
    }
    obs["extension"] = [
        {"url": "https://example.org/ext/about", "valueReference": {"reference": PAT}}
    ]
    obs["contained"] = [
        {"resourceType": "Provenance", "id": "p1", "target": [{"reference": ENC}],
         "recorded": "2026-01-05T10:00:00Z", "agent": [{"who": {"reference": PAT}}]}
    ]  # fmt: skip
    obs["derivedFrom"] = [{"reference": "#p1"}]
    obs["identifier"] = [{"system": "urn:ietf:rfc:3986", "value": PAT}]  # a string: kept
    encounter = {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": subject,
    }
    bundle = transaction(create(obs), create(encounter, ENC), create(with_mrn("P1"), PAT))
    response = await post(fhir, bundle)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["type"] == "transaction-response"
    statuses = [e["response"]["status"] for e in body["entry"]]
    assert statuses == ["201 Created"] * 3
    pid = body["entry"][2]["resource"]["id"]
    eid = body["entry"][1]["resource"]["id"]
    stored = (await fhir.client.get(f"/Observation/{body['entry'][0]['resource']['id']}")).json()
    assert stored["subject"]["reference"] == f"Patient/{pid}"
    assert stored["encounter"]["reference"] == f"Encounter/{eid}"
    assert stored["extension"][0]["valueReference"]["reference"] == f"Patient/{pid}"
    assert stored["contained"][0]["target"][0]["reference"] == f"Encounter/{eid}"
    assert stored["contained"][0]["agent"][0]["who"]["reference"] == f"Patient/{pid}"
    assert f'href="Patient/{pid}"' in stored["text"]["div"]
    assert stored["derivedFrom"][0]["reference"] == "#p1"
    assert stored["identifier"][0]["value"] == PAT
    entry = body["entry"][2]
    assert entry["fullUrl"] == f"{fhir.base}/Patient/{pid}"
    assert entry["response"]["location"] == f"{fhir.base}/Patient/{pid}/_history/1"
    assert entry["response"]["etag"] == 'W/"1"'
    assert (
        entry["response"]["lastModified"] == stored["meta"]["lastUpdated"]
        or entry["response"]["lastModified"]
    )
    # searchable through the rewritten reference
    assert await count(fhir, "Observation", subject=f"Patient/{pid}") == 1


async def test_a_failing_entry_stores_nothing_and_names_the_entry(fhir: RunningServer) -> None:
    bad = {"resourceType": "Observation", "status": "not-a-status", "code": {"text": "x"}}
    bundle = transaction(create(with_mrn("ROLLBACK"), PAT), create(bad, ENC))
    response = await post(fhir, bundle)
    assert response.status_code == 400, response.text
    found = issues(response.json())
    assert any("Bundle.entry[1]" in i["diagnostics"] and ENC in i["diagnostics"] for i in found)
    assert any(e.startswith("Bundle.entry[1]") for i in found for e in i.get("expression", []))
    assert await count(fhir, "Patient", identifier=f"{MRN}|ROLLBACK") == 0
    history = (await fhir.client.get("/Patient/_history")).json()
    assert history["total"] == 0
