"""Transaction Bundles: https://hl7.org/fhir/R4/http.html#transaction (all or nothing, placeholders,
conditional references, processing order, every interaction in entries)."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

from tests.conftest import RunningServer
from tests.helpers import FHIR_JSON, issues, observation, patient

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
        {
            "resourceType": "Provenance",
            "id": "p1",
            "target": [{"reference": ENC}],
            "recorded": "2026-01-05T10:00:00Z",
            "agent": [{"who": {"reference": PAT}}],
        }
    ]
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


def json_patch(operations: list[dict[str, Any]]) -> dict[str, Any]:
    data = base64.b64encode(json.dumps(operations).encode()).decode()
    return {"resourceType": "Binary", "contentType": "application/json-patch+json", "data": data}


async def stored(fhir: RunningServer, mrn: str, family: str = "Rivera") -> dict[str, Any]:
    response = await fhir.client.post("/Patient", json=with_mrn(mrn, family), headers=FHIR_JSON)
    assert response.status_code == 201
    return response.json()


async def test_every_interaction_in_one_transaction(fhir: RunningServer) -> None:
    kept = await stored(fhir, "KEEP")
    patched = await stored(fhir, "PATCH")
    doomed = await stored(fhir, "DELETE")
    doomed_by_criteria = await stored(fhir, "DELETE-Q")
    updated = await stored(fhir, "UPDATE")
    bundle = transaction(
        request("GET", f"Patient?identifier={MRN}|NEW"),  # processed last: sees the create
        create(with_mrn("NEW"), PAT, ifNoneExist=f"identifier={MRN}|NEW"),
        create(with_mrn("KEEP", "Other"), ifNoneExist=f"identifier={MRN}|KEEP"),
        request(
            "PUT",
            f"Patient/{updated['id']}",
            {**with_mrn("UPDATE", "Changed"), "id": updated["id"]},
            ifMatch='W/"1"',
        ),
        request("PUT", f"Patient?identifier={MRN}|CU", with_mrn("CU", "Conditional")),
        request(
            "PATCH",
            f"Patient/{patched['id']}",
            json_patch([{"op": "replace", "path": "/name/0/family", "value": "Patched"}]),
        ),
        request("DELETE", f"Patient/{doomed['id']}"),
        request("DELETE", f"Patient?identifier={MRN}|DELETE-Q"),
        request("GET", f"Patient/{kept['id']}"),
        request("GET", f"Patient/{kept['id']}/_history/1"),
        request("GET", f"Patient/{kept['id']}", ifNoneMatch='W/"1"'),
        request("GET", f"Patient/{kept['id']}", ifModifiedSince="2999-01-01T00:00:00Z"),
        request("GET", f"Patient/{updated['id']}/_history"),
    )
    response = await post(fhir, bundle)
    assert response.status_code == 200, response.text
    entries = response.json()["entry"]
    statuses = [e["response"]["status"] for e in entries]
    assert statuses == [
        "200 OK",
        "201 Created",
        "200 OK",
        "200 OK",
        "201 Created",
        "200 OK",
        "204 No Content",
        "204 No Content",
        "200 OK",
        "200 OK",
        "304 Not Modified",
        "304 Not Modified",
        "200 OK",
    ]
    search = entries[0]["resource"]
    assert search["type"] == "searchset" and search["total"] == 1
    assert search["entry"][0]["resource"]["id"] == entries[1]["resource"]["id"]
    assert entries[2]["resource"]["id"] == kept["id"]  # the match, unchanged
    assert entries[2]["resource"]["name"][0]["family"] == "Rivera"
    assert entries[3]["response"]["etag"] == 'W/"2"'
    assert entries[5]["resource"]["name"][0]["family"] == "Patched"
    assert "resource" not in entries[10]
    assert entries[12]["resource"]["type"] == "history"
    assert entries[12]["resource"]["total"] == 2
    assert (await fhir.client.get(f"/Patient/{doomed['id']}")).status_code == 410
    assert (await fhir.client.get(f"/Patient/{doomed_by_criteria['id']}")).status_code == 410
    assert await count(fhir, "Patient", identifier=f"{MRN}|CU") == 1
    assert await count(fhir, "Patient", identifier=f"{MRN}|KEEP") == 1


async def test_a_version_conflict_rolls_back_the_entries_before_it(fhir: RunningServer) -> None:
    target = await stored(fhir, "VERSIONED")
    await fhir.client.put(
        f"/Patient/{target['id']}", json={**target, "active": True}, headers=FHIR_JSON
    )
    bundle = transaction(
        create(with_mrn("NEVER"), PAT),
        request("PUT", f"Patient/{target['id']}", {**target, "active": False}, ifMatch='W/"1"'),
        request("DELETE", f"Patient?identifier={MRN}|VERSIONED"),
    )
    bundle["entry"].pop()  # the same resource twice is a 400 of its own (tested below)
    response = await post(fhir, bundle)
    assert response.status_code == 412, response.text
    assert "Bundle.entry[1]" in issues(response.json())[0]["diagnostics"]
    assert await count(fhir, "Patient", identifier=f"{MRN}|NEVER") == 0
    history = (await fhir.client.get(f"/Patient/{target['id']}/_history")).json()
    assert history["total"] == 2
    assert (await fhir.client.get("/Patient/_history")).json()["total"] == 2  # its own two


async def test_conditional_references_resolve_to_their_one_match(fhir: RunningServer) -> None:
    known = await stored(fhir, "REF-1")
    bundle = transaction(
        create(observation("x", subject={"reference": f"Patient?identifier={MRN}|REF-1"})),
        # the criteria of a conditional create of the same Bundle name its resource
        create(observation("x", subject={"reference": f"Patient?identifier={MRN}|REF-NEW"})),
        create(with_mrn("REF-NEW"), PAT, ifNoneExist=f"identifier={MRN}|REF-NEW"),
    )
    response = await post(fhir, bundle)
    assert response.status_code == 200, response.text
    entries = response.json()["entry"]
    assert entries[0]["resource"]["subject"]["reference"] == f"Patient/{known['id']}"
    new_id = entries[2]["resource"]["id"]
    assert entries[1]["resource"]["subject"]["reference"] == f"Patient/{new_id}"


async def test_a_conditional_reference_without_exactly_one_match_fails(
    fhir: RunningServer,
) -> None:
    await stored(fhir, "TWICE")
    await stored(fhir, "TWICE")
    for criteria in ("NOBODY", "TWICE"):
        bundle = transaction(
            create(with_mrn("BYSTANDER")),
            create(
                observation("x", subject={"reference": f"Patient?identifier={MRN}|{criteria}"}), ENC
            ),
        )
        response = await post(fhir, bundle)
        assert response.status_code == 412, response.text
        text = issues(response.json())[0]["diagnostics"]
        assert "Bundle.entry[1]" in text and ENC in text
    assert await count(fhir, "Patient", identifier=f"{MRN}|BYSTANDER") == 0
    assert await count(fhir, "Observation") == 0


async def test_placeholders_in_criteria_and_their_cycles(fhir: RunningServer) -> None:
    a, b = (
        "urn:uuid:aaaaaaaa-0000-4000-8000-000000000001",
        "urn:uuid:bbbbbbbb-0000-4000-8000-000000000002",
    )
    cyclic = transaction(
        create(
            observation("x", subject={"reference": b}), a, ifNoneExist=f"subject={b}&code=29463-7"
        ),
        request("PUT", f"Patient?link={a}", with_mrn("CYCLE")) | {"fullUrl": b},
    )
    response = await post(fhir, cyclic)
    assert response.status_code == 400, response.text
    assert "depend on each other" in issues(response.json())[0]["diagnostics"]
    assert await count(fhir, "Patient") == 0
    acyclic = transaction(
        create(with_mrn("CRIT"), PAT),
        create(
            observation("x", subject={"reference": PAT}), ifNoneExist=f"subject={PAT}&code=29463-7"
        ),
    )
    response = await post(fhir, acyclic)
    assert response.status_code == 200, response.text
    assert [e["response"]["status"] for e in response.json()["entry"]] == ["201 Created"] * 2


async def test_bad_bundles_are_clear_400s(fhir: RunningServer) -> None:
    known = await stored(fhir, "BAD")
    cases: list[tuple[Any, str]] = [
        ({"resourceType": "Patient"}, "Bundle"),
        ({"resourceType": "Bundle", "type": "collection"}, "'collection'"),
        (transaction({"resource": with_mrn("X")}), "no request"),
        (transaction(request("FETCH", "Patient")), "unknown request method"),
        (transaction(request("POST", "Patient")), "needs its resource"),
        (
            transaction(create(observation("x", subject={"reference": "urn:uuid:nobody"}))),
            "names no entry",
        ),
        (transaction(create(with_mrn("D1"), PAT), create(with_mrn("D2"), PAT)), "same fullUrl"),
        (
            transaction(
                request("DELETE", f"Patient/{known['id']}"),
                request("PUT", f"Patient/{known['id']}", known),
            ),
            "both act on",
        ),
        (transaction(request("PATCH", f"Patient/{known['id']}", with_mrn("P"))), "Binary"),
        (transaction(create({"resourceType": "NoSuchType"})), "NoSuchType"),
    ]
    for bundle, words in cases:
        response = await post(fhir, bundle)
        assert response.status_code == 400 or (
            "NoSuchType" in words and response.status_code == 404
        ), (words, response.text)
        assert words in json.dumps(response.json()), (words, response.text)
    assert (await fhir.client.get("/Patient/_history")).json()["total"] == 1


async def test_too_many_entries_is_413(fhir: RunningServer) -> None:
    limit = fhir.settings.max_bundle_entries
    bundle = transaction(*[request("GET", "Patient/x")] * (limit + 1))
    response = await post(fhir, bundle)
    assert response.status_code == 413, response.text
    assert str(limit) in issues(response.json())[0]["diagnostics"]


async def test_prefer_return_minimal_and_operation_outcome(fhir: RunningServer) -> None:
    minimal = await post(fhir, transaction(create(with_mrn("MIN"))), Prefer="return=minimal")
    entry = minimal.json()["entry"][0]
    assert "resource" not in entry and entry["response"]["status"] == "201 Created"
    assert entry["response"]["location"].startswith(f"{fhir.base}/Patient/")
    outcome = await post(
        fhir, transaction(create(with_mrn("OO"))), Prefer="return=OperationOutcome"
    )
    entry = outcome.json()["entry"][0]
    assert entry["response"]["outcome"]["resourceType"] == "OperationOutcome"


async def test_concurrent_transactions_on_one_resource_exactly_one_wins(
    fhir: RunningServer,
) -> None:
    target = await stored(fhir, "RACE")

    def contender(family: str) -> dict[str, Any]:
        return transaction(
            create(with_mrn(f"SIDE-{family}")),
            request(
                "PUT",
                f"Patient/{target['id']}",
                {**target, "name": [{"family": family}]},
                ifMatch='W/"1"',
            ),
        )

    responses = await asyncio.gather(*(post(fhir, contender(f"F{i}")) for i in range(4)))
    codes = sorted(r.status_code for r in responses)
    assert codes.count(200) == 1, [r.text for r in responses]
    assert all(code in (409, 412) for code in codes if code != 200)
    history = (await fhir.client.get(f"/Patient/{target['id']}/_history")).json()
    assert history["total"] == 2
    assert sum([await count(fhir, "Patient", identifier=f"{MRN}|SIDE-F{i}") for i in range(4)]) == 1


async def test_concurrent_conditional_creates_in_transactions_create_once(
    fhir: RunningServer,
) -> None:
    bundle = transaction(create(with_mrn("ONCE"), PAT, ifNoneExist=f"identifier={MRN}|ONCE"))
    responses = await asyncio.gather(*(post(fhir, bundle) for _ in range(5)))
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
    statuses = sorted(r.json()["entry"][0]["response"]["status"] for r in responses)
    assert statuses == ["200 OK"] * 4 + ["201 Created"]
    assert await count(fhir, "Patient", identifier=f"{MRN}|ONCE") == 1
