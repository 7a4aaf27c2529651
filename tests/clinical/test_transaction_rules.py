"""The clinical rules run for a transaction's entries as for single writes, inside the
transaction: their derived writes commit with it or are rolled back with it
(https://hl7.org/fhir/R4/http.html#transaction)."""

from __future__ import annotations

from typing import Any

from fhirgoal.clinical.resources import gas_goal, gas_rating
from tests.conftest import RunningServer

LEVELS = ["much less", "less", "expected", "more", "much more"]
GOAL = "urn:uuid:3f2b1c0e-7d6a-4e5f-8a9b-0c1d2e3f4a5b"


def plan(follow_up: Any) -> dict[str, Any]:
    goal = gas_goal("x", "p1", "Walk", LEVELS, start="2026-08-01")
    del goal["id"]
    entries: list[dict[str, Any]] = [
        {"fullUrl": GOAL, "resource": goal, "request": {"method": "POST", "url": "Goal"}}
    ]
    for oid, level, when, baseline in (
        ("b", -1, "2026-08-03", True),
        ("f", follow_up, "2026-08-24", False),
    ):
        rating = gas_rating(
            oid, "p1", "x", level, when, baseline=baseline, performer="Practitioner/t1"
        )
        del rating["id"]
        rating["focus"] = [{"reference": GOAL}]
        entries.append({"resource": rating, "request": {"method": "POST", "url": "Observation"}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


async def test_goal_status_follows_ratings_written_in_the_same_transaction(
    fhir: RunningServer,
) -> None:
    await fhir.client.put("/Patient/p1", json={"resourceType": "Patient", "id": "p1"})
    response = await fhir.client.post("", json=plan(-2))
    assert response.status_code == 200, response.text
    gid = response.json()["entry"][0]["resource"]["id"]
    goal = (await fhir.client.get(f"/Goal/{gid}")).json()
    assert goal["achievementStatus"]["coding"][0]["code"] == "worsening"
    # the rule decides the goal once, from both ratings, at the end of the transaction: one
    # derived update (not one per rating: a transaction's intermediate states are no one's)
    assert goal["meta"]["versionId"] == "2"
    derived = goal["achievementStatus"]["extension"][0]["extension"]
    assert [e.get("valueCode") for e in derived if e["url"] == "code"] == ["worsening"]
    # the derived status change leaves its Provenance (clinical/goal_status.py)
    found = (await fhir.client.get("/Provenance", params={"_total": "accurate"})).json()
    assert found["total"] == 1
    assert found["entry"][0]["resource"]["target"][0]["reference"] == f"Goal/{gid}/_history/2"


async def test_a_rejected_entry_rolls_back_the_rules_derived_writes(fhir: RunningServer) -> None:
    await fhir.client.put("/Patient/p1", json={"resourceType": "Patient", "id": "p1"})
    bundle = plan(-2)
    bundle["entry"].append(
        {
            "resource": {"resourceType": "Flag", "status": "bogus"},
            "request": {"method": "POST", "url": "Flag"},
        }
    )
    response = await fhir.client.post("", json=bundle)
    assert response.status_code == 400, response.text
    for rt in ("Goal", "Observation", "Flag", "Provenance"):
        found = (await fhir.client.get(f"/{rt}", params={"_total": "accurate"})).json()
        assert found["total"] == 0, (rt, found)
    assert (await fhir.client.get("/Goal/_history")).json()["total"] == 0


async def test_a_transactions_reads_see_what_the_rules_derived_from_its_writes(
    fhir: RunningServer,
) -> None:
    await fhir.client.put("/Patient/p1", json={"resourceType": "Patient", "id": "p1"})
    bundle = plan(-2)
    bundle["entry"].append({"request": {"method": "GET", "url": "Goal?subject=Patient/p1"}})
    response = await fhir.client.post("", json=bundle)
    assert response.status_code == 200, response.text
    found = response.json()["entry"][-1]["resource"]["entry"]
    assert [e["resource"]["achievementStatus"]["coding"][0]["code"] for e in found] == ["worsening"]
    assert found[0]["resource"]["meta"]["versionId"] == "2"
