"""The isolation matrix shared by test_patient_isolation.py (a patient's token) and
test_caseload.py (a practitioner's caseload): a token that may not see patient B tries every
interaction and search feature on B's data; nothing of B's comes back, and nothing tells B's
resources exist (https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html,
https://hl7.org/fhir/R4/compartmentdefinition-patient.html)."""

from __future__ import annotations

import json
from typing import Any

import httpx

from fhirgoal.core.access import UNRESTRICTED
from tests.auth.conftest import SmartServer
from tests.helpers import FHIR_JSON, observation, patch

SURVEY = {
    "coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "survey"}
    ]
}
# Every id of B's data contains this marker, so one substring check per response suffices.
MARK = "bbbb"
B = "p-bbbb"


def b_records(own: str) -> list[dict[str, Any]]:
    """B's goal, encounter and observation (in two versions), and one observation of the visible
    patient `own` that points at B's goal: includes must not follow it."""
    return [
        {"resourceType": "Goal", "id": "goal-bbbb", "lifecycleStatus": "active",
         "description": {"text": "B's goal"}, "subject": {"reference": f"Patient/{B}"}},
        {"resourceType": "Encounter", "id": "enc-bbbb", "status": "finished",
         "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
         "subject": {"reference": f"Patient/{B}"}},
        observation(B, id="obs-bbbb", category=[SURVEY],
                    encounter={"reference": "Encounter/enc-bbbb"}),
        observation(B, "80.0", id="obs-bbbb", category=[SURVEY]),  # v2
        observation(own, id="obs-a", category=[SURVEY], focus=[{"reference": "Goal/goal-bbbb"}]),
    ]  # fmt: skip


# Searches every token of the matrix runs; each test module adds those its own data needs.
SEARCHES = [
    "/Observation",
    f"/Observation?subject=Patient/{B}",
    f"/Observation?patient={B}",
    "/Observation?_id=obs-bbbb",
    "/Observation?_total=accurate",
    "/Observation?_summary=count",
    f"/Observation?subject:Patient._id={B}",
    f"/Observation?encounter:Encounter.subject=Patient/{B}",
    "/Patient",
    "/Patient?_has:Observation:patient:_id=obs-bbbb",
    "/Observation?_id=obs-a&_include=Observation:focus",
    "/Observation?_include=Observation:*&_include:iterate=Goal:*",
    "/Observation?_revinclude:iterate=Observation:focus&_include=Observation:subject",
    "/Goal",
    f"/Goal?subject=Patient/{B}",
    "/Encounter",
    f"/Patient/{B}/Observation",
    f"/Patient/{B}/Goal",
    f"/Patient/{B}/Encounter?_include=Encounter:subject",
    "/",
    "/?_id=obs-bbbb",
    "/Observation/_history",
    "/Goal/_history",
    "/_history",
]


def ids(response: httpx.Response) -> set[str]:
    return {e["resource"]["id"] for e in response.json().get("entry", [])}


def assert_nothing_of_b(response: httpx.Response) -> None:
    """No resource of B's in the body (the visible obs-a refers to B's goal by id: that is not
    B's data)."""
    body = response.json() if response.content else {}
    resources = [e["resource"] for e in body.get("entry", [])] if "entry" in body else [body]
    for resource in resources:
        assert MARK not in resource.get("id", ""), (response.request.url, resource)
        assert B not in json.dumps(resource.get("subject", {})), resource


async def search_showing_nothing_of_b(client: httpx.AsyncClient, path: str) -> httpx.Response:
    """GET `path`: a 200 with nothing of B's in it."""
    response = await client.get(path)
    assert response.status_code == 200, response.text
    assert_nothing_of_b(response)
    return response


async def assert_reads_of_b_are_404(client: httpx.AsyncClient, *more: str) -> None:
    """Reads of B's resources answer as for an id that does not exist; B's history, 404."""
    for path in ("Patient/p-bbbb", "Observation/obs-bbbb", "Goal/goal-bbbb", "Encounter/enc-bbbb",
                 *more):  # fmt: skip
        rt = path.split("/")[0]
        seen = await client.get(f"/{path}")
        unknown = await client.get(f"/{rt}/no-such-bbbb")
        assert seen.status_code == unknown.status_code == 404, seen.text
        assert set(seen.json()) == set(unknown.json())
    for path in (
        f"Patient/{B}/$everything",
        "Observation/obs-bbbb/_history/1",
        "Observation/obs-bbbb/_history/2",
        "Observation/obs-bbbb/_history",
    ):
        response = await client.get(f"/{path}")
        assert response.status_code == 404, (path, response.text)


async def assert_writes_to_b_change_nothing(
    smart: SmartServer, client: httpx.AsyncClient, own: str
) -> None:
    """Update, patch and delete of B's resources answer 404; a conditional delete matching only
    B's deletes nothing (204: nothing matched for this token); B's observation stays at v2."""
    body = observation(own, id="obs-bbbb")
    assert (await client.put("/Observation/obs-bbbb", json=body)).status_code == 404
    cancel = [{"op": "replace", "path": "/status", "value": "cancelled"}]
    assert (await patch(client, "/Observation/obs-bbbb", cancel)).status_code == 404
    assert (await client.delete("/Observation/obs-bbbb")).status_code == 404
    assert (await client.delete(f"/Patient/{B}")).status_code == 404
    assert (await client.delete(f"/Observation?subject=Patient/{B}")).status_code == 204
    current = await smart.service.read(UNRESTRICTED, "Observation", "obs-bbbb")
    assert current.version is not None and current.version.version == 2


async def assert_conditional_create_does_not_leak_b(
    smart: SmartServer, client: httpx.AsyncClient, own: str
) -> None:
    """If-None-Exist matching only B's resource: it is not seen, so `own`'s resource is created,
    and B's is untouched."""
    created = await client.post(
        "/Observation",
        json=observation(own),
        headers={**FHIR_JSON, "If-None-Exist": "_id=obs-bbbb"},
    )
    assert created.status_code == 201
    assert_nothing_of_b(created)
    b = await smart.service.repo.current(UNRESTRICTED, "Observation", "obs-bbbb")
    assert b is not None and b.version == 2
