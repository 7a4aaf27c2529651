"""History for instance, type and system, with _since, _count and paging."""

from __future__ import annotations

from tests.conftest import RunningServer
from tests.helpers import FHIR_JSON, clock_past, patient


async def test_instance_history_lists_every_version_newest_first(fhir: RunningServer) -> None:
    pid = (await fhir.client.post("/Patient", json=patient("V1"), headers=FHIR_JSON)).json()["id"]
    for family in ("V2", "V3"):
        await fhir.client.put(
            f"/Patient/{pid}", json={**patient(family), "id": pid}, headers=FHIR_JSON
        )
    bundle = (await fhir.client.get(f"/Patient/{pid}/_history")).json()
    assert bundle["type"] == "history" and bundle["total"] == 3
    assert [e["resource"]["meta"]["versionId"] for e in bundle["entry"]] == ["3", "2", "1"]
    assert [e["request"]["method"] for e in bundle["entry"]] == ["PUT", "PUT", "POST"]
    assert bundle["entry"][2]["response"]["status"] == "201 Created"
    assert bundle["entry"][0]["response"]["etag"] == 'W/"3"'


async def test_history_since_and_count_paging(fhir: RunningServer) -> None:
    v1 = (await fhir.client.post("/Patient", json=patient("V1"), headers=FHIR_JSON)).json()
    pid = v1["id"]
    await clock_past(v1["meta"]["lastUpdated"])  # v2 is stamped later: _since tells them apart
    v2 = await fhir.client.put(
        f"/Patient/{pid}", json={**patient("V2"), "id": pid}, headers=FHIR_JSON
    )
    since = v2.json()["meta"]["lastUpdated"]
    recent = (await fhir.client.get(f"/Patient/{pid}/_history", params={"_since": since})).json()
    assert [e["resource"]["meta"]["versionId"] for e in recent["entry"]] == ["2"]
    for i in range(4):
        await fhir.client.post("/Patient", json=patient(f"Other{i}"), headers=FHIR_JSON)
    seen = []
    url: str | None = "/Patient/_history?_count=2"
    while url:
        page = (await fhir.client.get(url)).json()
        assert page["total"] == 6
        seen += [(e["resource"]["id"], e["resource"]["meta"]["versionId"]) for e in page["entry"]]
        url = next((link["url"] for link in page["link"] if link["relation"] == "next"), None)
        if len(seen) == 2:  # a write during paging does not shift later pages
            await fhir.client.post("/Patient", json=patient("Late"), headers=FHIR_JSON)
    assert len(seen) == 6 and len(set(seen)) == 6


async def test_system_history_spans_types(fhir: RunningServer) -> None:
    # The built-in catalog (profiles/) was written at start-up: look only at what follows it.
    created = (await fhir.client.post("/Patient", json=patient(), headers=FHIR_JSON)).json()
    pid, start = created["id"], created["meta"]["lastUpdated"]
    goal = {"resourceType": "Goal", "lifecycleStatus": "active", "description": {"text": "Sleep 7 hours"},
            "subject": {"reference": f"Patient/{pid}"}}  # fmt: skip
    await fhir.client.post("/Goal", json=goal, headers=FHIR_JSON)
    bundle = (await fhir.client.get("/_history", params={"_since": start})).json()
    assert [e["resource"]["resourceType"] for e in bundle["entry"]] == ["Goal", "Patient"]
    assert bundle["total"] == 2


async def test_history_rejects_unknown_parameters(fhir: RunningServer) -> None:
    assert (await fhir.client.get("/Patient/_history", params={"colour": "x"})).status_code == 400
    assert (
        await fhir.client.get("/Patient/_history", params={"_since": "soon"})
    ).status_code == 400
    assert (await fhir.client.get("/Patient/nope/_history")).status_code == 404
