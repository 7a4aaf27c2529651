"""Goal.achievementStatus follows the GAS ratings, through FHIR writes only."""

from __future__ import annotations

from typing import Any

from fhirgoal.clinical.codes import DERIVED_STATUS_EXTENSION
from fhirgoal.clinical.resources import gas_goal, gas_rating
from tests.conftest import RunningServer, fresh_settings, running
from tests.helpers import store

LEVELS = ["much less", "less", "expected", "more", "much more"]
ACHIEVEMENT = "http://terminology.hl7.org/CodeSystem/goal-achievement"


async def status(fhir: RunningServer, gid: str = "g1") -> str | None:
    goal = (await fhir.client.get(f"/Goal/{gid}")).json()
    codings = (goal.get("achievementStatus") or {}).get("coding") or [{}]
    return codings[0].get("code")


async def rate(fhir: RunningServer, oid: str, level: Any, when: str, **kw: Any) -> None:
    kw.setdefault("performer", "Practitioner/t1")
    await store(fhir.client, gas_rating(oid, "p1", "g1", level, when, **kw))


async def rate_to_achieved(fhir: RunningServer) -> None:
    """A baseline below the expected level (-1), then a follow-up at it (0): g1 is achieved."""
    await rate(fhir, "b", -1, "2026-08-03", baseline=True)
    await rate(fhir, "f1", 0, "2026-08-24")


async def seed(fhir: RunningServer) -> None:
    await store(fhir.client, {"resourceType": "Patient", "id": "p1"})
    await store(fhir.client, gas_goal("g1", "p1", "Walk", LEVELS, start="2026-08-01"))


async def active_review_flags(fhir: RunningServer) -> list[dict[str, Any]]:
    bundle = (
        await fhir.client.get("/Flag", params={"patient": "Patient/p1", "status": "active"})
    ).json()
    return [e["resource"] for e in bundle.get("entry", [])]


async def test_status_follows_ratings_from_baseline_to_sustaining(fhir: RunningServer) -> None:
    await seed(fhir)
    assert await status(fhir) is None
    await rate(fhir, "b", -1, "2026-08-03", baseline=True)
    assert await status(fhir) == "in-progress"
    await rate(fhir, "f1", -1, "2026-08-24")
    assert await status(fhir) == "no-change"
    await rate(fhir, "f2", -2, "2026-09-14")
    assert await status(fhir) == "worsening"
    await rate(fhir, "f3", "-0.5", "2026-10-05")
    assert await status(fhir) == "improving"
    await rate(fhir, "f4", 0, "2026-10-26")
    assert await status(fhir) == "achieved"
    await rate(fhir, "f5", 1, "2026-11-16")
    assert await status(fhir) == "sustaining"
    goal = (await fhir.client.get("/Goal/g1")).json()
    marker = goal["achievementStatus"]["extension"][0]
    assert marker == {
        "url": DERIVED_STATUS_EXTENSION,
        "extension": [
            {"url": "code", "valueCode": "sustaining"},
            {"url": "rating", "valueReference": {"reference": "Observation/f5"}},
        ],
    }


async def test_each_status_change_leaves_a_provenance_naming_the_ratings(
    fhir: RunningServer,
) -> None:
    await seed(fhir)
    await rate_to_achieved(fhir)
    bundle = (
        await fhir.client.get(
            "/Provenance", params={"agent": "Device/fhirgoal", "_sort": "-_lastUpdated"}
        )
    ).json()
    assert bundle["total"] == 2
    latest = bundle["entry"][0]["resource"]
    assert latest["target"][0]["reference"].startswith("Goal/g1/_history/")
    assert [e["what"]["reference"] for e in latest["entity"]] == ["Observation/b", "Observation/f1"]
    assert "achieved" in latest["reason"][0]["text"]


async def test_a_patient_rating_does_not_override_the_practitioners(fhir: RunningServer) -> None:
    await seed(fhir)
    await rate(fhir, "b", -1, "2026-08-03", baseline=True)
    await rate(fhir, "f1", -1, "2026-08-24")
    await store(fhir.client, {"resourceType": "Patient", "id": "p1"})
    await rate(fhir, "pf", 2, "2026-08-25", rater="patient", performer="Patient/p1")
    assert await status(fhir) == "no-change"


async def test_a_clinicians_status_is_kept_and_a_review_flag_raised_then_closed(
    fhir: RunningServer,
) -> None:
    await seed(fhir)
    await rate(fhir, "b", -1, "2026-08-03", baseline=True)
    # Set after the first rating: the clinician's judgement (before it, a starting value).
    goal = (await fhir.client.get("/Goal/g1")).json()
    goal["achievementStatus"] = {"coding": [{"system": ACHIEVEMENT, "code": "not-achieved"}]}
    await store(fhir.client, goal)
    await rate(fhir, "f1", 0, "2026-08-24")
    assert await status(fhir) == "not-achieved"  # never overwritten
    flags = await active_review_flags(fhir)
    assert len(flags) == 1
    assert flags[0]["code"]["coding"][0]["code"] == "goal-status-review"
    assert "Achieved" in flags[0]["code"]["text"]
    # The clinician accepts the suggestion: the review closes.
    goal = (await fhir.client.get("/Goal/g1")).json()
    goal["achievementStatus"] = {"coding": [{"system": ACHIEVEMENT, "code": "achieved"}]}
    await store(fhir.client, goal)
    assert await active_review_flags(fhir) == []
    closed = (await fhir.client.get(f"/Flag/{flags[0]['id']}")).json()
    assert closed["status"] == "inactive" and "end" in closed["period"]


async def test_a_status_sent_before_the_first_rating_is_a_starting_value(
    fhir: RunningServer,
) -> None:
    """An EHR creates the goal `in-progress` (PCO examples do): the ratings take over."""
    await seed(fhir)
    goal = (await fhir.client.get("/Goal/g1")).json()
    goal["achievementStatus"] = {"coding": [{"system": ACHIEVEMENT, "code": "in-progress"}]}
    await store(fhir.client, goal)
    await rate(fhir, "b", -1, "2026-08-03", baseline=True)
    assert await status(fhir) == "in-progress"
    await rate(fhir, "f1", 0, "2026-08-24")
    assert await status(fhir) == "achieved"
    assert await active_review_flags(fhir) == []


async def test_retracting_a_rating_moves_the_status_back(fhir: RunningServer) -> None:
    await seed(fhir)
    await rate_to_achieved(fhir)
    assert await status(fhir) == "achieved"
    wrong = (await fhir.client.get("/Observation/f1")).json()
    wrong["status"] = "entered-in-error"
    await store(fhir.client, wrong)
    assert await status(fhir) == "in-progress"
    assert (await fhir.client.delete("/Observation/b")).status_code == 204
    assert await status(fhir) is None


async def test_a_clinician_editing_the_code_but_sending_the_mark_back_is_still_the_author(
    fhir: RunningServer,
) -> None:
    await seed(fhir)
    await rate_to_achieved(fhir)
    goal = (await fhir.client.get("/Goal/g1")).json()  # read-modify-write keeps the extension
    goal["achievementStatus"]["coding"] = [{"system": ACHIEVEMENT, "code": "not-achieved"}]
    await store(fhir.client, goal)
    assert await status(fhir) == "not-achieved"
    assert [f["code"]["coding"][0]["code"] for f in await active_review_flags(fhir)] == [
        "goal-status-review"
    ]


async def test_a_rating_cannot_reach_another_clients_goal(fhir: RunningServer) -> None:
    await seed(fhir)
    await store(fhir.client, {"resourceType": "Patient", "id": "p2"})
    intruder = gas_rating("x", "p2", "g1", 2, "2026-08-03", performer="Patient/p2")
    response = await fhir.client.put("/Observation/x", json=intruder)
    assert response.status_code == 422
    assert "Observation.focus" in response.text
    unknown = gas_rating("y", "p1", "nope", 2, "2026-08-03", performer="Patient/p1")
    other = await fhir.client.put("/Observation/y", json=unknown)
    assert other.status_code == 422
    assert (
        other.json()["issue"][0]["diagnostics"].replace("nope", "g1").replace("p1", "p2")
        == (response.json()["issue"][0]["diagnostics"])
    )  # an unknown goal and someone else's read the same
    assert (await fhir.client.get("/Observation/x")).status_code == 404
    assert await status(fhir) is None


async def test_client_search_limits_do_not_bind_the_servers_own_rules(mongo_uri: str) -> None:
    """An operator's tight FHIRGOAL_MAX_SEARCH_VALUES is for clients: the after-write rules,
    which search several rating codes at once, still run."""
    async with running(fresh_settings(mongo_uri, max_search_values=1)) as fhir:
        await seed(fhir)
        await rate_to_achieved(fhir)
        assert await status(fhir) == "achieved"
        refused = await fhir.client.get("/Observation", params={"code": "a,b"})
        assert refused.status_code == 400  # clients still get the limit
