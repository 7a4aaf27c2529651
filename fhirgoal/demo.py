"""A realistic demo data set, written through the FHIR service (so every resource is validated).

Three clients of one therapist, each with a diagnosis, a treatment plan (US Core CarePlan shape:
narrative, status, intent, `assess-plan` category), two or three GAS goals (five described levels,
importance x difficulty weights, PCO-compatible) and twelve weekly sessions: an Encounter with its
duration, ORS and SRS QuestionnaireResponses (the server extracts the scored Observations), a GAS
baseline at intake and practitioner follow-ups every third session, PHQ-9 at intake, mid-point and
end for Alex. Everything goes through the FHIR service, so the clinical rules run as they would for
an EHR: goal statuses follow the ratings, alerts open and close as Flags, and each client's GAS
T-score is stored at the last review. Trajectories differ on purpose: Alex improves, Blair stalls
on one goal and has an alliance dip at session 6, Casey (an adolescent: ORS cutoff 28) improves
slowly. Ids are fixed, so loading twice adds nothing.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from fhirgoal.clinical.codes import LOINC, UCUM
from fhirgoal.clinical.gas_operations import store_patient_tscore
from fhirgoal.clinical.resources import gas_goal, gas_rating, rating_scale_response
from fhirgoal.config import Settings
from fhirgoal.core.access import UNRESTRICTED
from fhirgoal.fhir.service import FhirService
from fhirgoal.store.mongo import connect

START = datetime(2026, 8, 3, 15, 0, tzinfo=UTC)


def _goal(
    text: str, levels: list[str], importance: int, difficulty: int, gas: list[int | str]
) -> dict[str, Any]:
    """A goal: its five described levels (-2..+2), weight, and the ratings at the five reviews."""
    return {
        "text": text,
        "levels": levels,
        "importance": importance,
        "difficulty": difficulty,
        "gas": gas,
    }


CLIENTS: list[dict[str, Any]] = [
    {
        "id": "demo-alex", "given": "Alex", "family": "Rivera", "gender": "female", "birthDate": "1991-04-12",
        "dx": ("F33.1", "Major depressive disorder, recurrent, moderate"),
        "goals": [
            _goal("Return to work three days a week",
                  ["Not working", "Works one day a week", "Works three days a week", "Works four days a week", "Back full time"],
                  3, 2, [-1, -1, 0, 1, 1]),
            _goal("Walk outdoors 20 minutes, 4 days a week",
                  ["Stays indoors", "Walks once a week", "Walks 4 days a week", "Walks 5-6 days a week", "Walks daily"],
                  2, 1, [-1, 0, 0, 1, 1]),
            _goal("Reconnect with two friends each month",
                  ["No contact with friends", "Contacts one friend a month", "Two friends a month", "Three friends a month", "Weekly social contact"],
                  2, 2, [-1, -1, "-0.5", 0, 0]),
        ],
        "ors": (17.5, 31.0), "srs_dip": None,
    },
    {
        "id": "demo-blair", "given": "Blair", "family": "Chen", "gender": "male", "birthDate": "1984-11-02",
        "dx": ("F41.1", "Generalized anxiety disorder"),
        "goals": [
            _goal("Use a breathing routine when anxious, 5 days a week",
                  ["Never uses it", "Uses it once or twice a week", "5 days a week", "Daily", "Daily, and teaches it to a partner"],
                  2, 1, [-1, 0, 0, 1, 1]),
            _goal("Sleep 7 hours on most nights",
                  ["Under 5 hours most nights", "5-6 hours most nights", "7 hours on most nights", "7 hours nearly every night", "7+ hours every night"],
                  3, 3, [-1, -1, -1, -1, -1]),
        ],
        "ors": (20.5, 21.5), "srs_dip": 6,
    },
    {
        "id": "demo-casey", "given": "Casey", "family": "Okafor", "gender": "other", "birthDate": "2009-06-30",
        "dx": ("F43.10", "Post-traumatic stress disorder, unspecified"),
        "goals": [
            _goal("Attend school every weekday",
                  ["Misses most days", "Attends 2-3 days a week", "Attends every weekday", "Every weekday plus one club", "Every day plus two activities"],
                  3, 2, [-1, -1, -1, 0, 0]),
            _goal("Name and use two coping skills after a trigger",
                  ["Cannot name a skill", "Names one, rarely uses it", "Uses two skills after most triggers", "Uses them without prompting", "Helps peers use them"],
                  2, 3, [-2, -1, -1, "-0.5", 0]),
        ],
        "ors": (19.0, 29.5), "srs_dip": None,
    },
]  # fmt: skip


def _ref(rt: str, rid: str) -> dict[str, str]:
    return {"reference": f"{rt}/{rid}"}


def _marks(total: float, rng: random.Random) -> list[Decimal]:
    """Four marks on 10 cm lines, scored 0-10 to one decimal, around total / 4."""
    return [
        Decimal(f"{min(max(total / 4 + rng.uniform(-0.8, 0.8), 0.0), 10.0):.1f}") for _ in range(4)
    ]


def _narrative(text: str) -> dict[str, str]:
    return {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{text}</div>'}


PHQ9_ANSWERS = [("LA6568-5", "Not at all"), ("LA6569-3", "Several days"),
                ("LA6570-1", "More than half the days"), ("LA6571-9", "Nearly every day")]  # fmt: skip


def _phq9(rid: str, pid: str, eid: str, when: str, scores: list[int]) -> dict[str, Any]:
    return {
        "resourceType": "QuestionnaireResponse", "id": rid,
        "questionnaire": "https://fhirgoal.org/fhir/Questionnaire/phq-9", "status": "completed",
        "subject": _ref("Patient", pid), "encounter": _ref("Encounter", eid), "authored": when,
        "author": _ref("Patient", pid),
        "item": [
            {"linkId": f"phq-9-{i + 1}", "answer": [{"valueCoding": {
                "system": LOINC, "code": PHQ9_ANSWERS[score][0], "display": PHQ9_ANSWERS[score][1]}}]}
            for i, score in enumerate(scores)
        ],
    }  # fmt: skip


def client_resources(client: dict[str, Any], rng: random.Random) -> list[dict[str, Any]]:
    pid = client["id"]
    code, label = client["dx"]
    resources: list[dict[str, Any]] = [
        {
            "resourceType": "Patient", "id": pid,
            "identifier": [{"system": "https://fhirgoal.org/fhir/demo-mrn", "value": pid.upper()}],
            "name": [{"given": [client["given"]], "family": client["family"]}],
            "gender": client["gender"], "birthDate": client["birthDate"],
            "generalPractitioner": [_ref("Practitioner", "demo-therapist")],
        },
        {
            "resourceType": "Condition", "id": f"{pid}-dx", "subject": _ref("Patient", pid),
            "clinicalStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-clinical", "code": "active"}]},
            "verificationStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-ver-status", "code": "confirmed"}]},
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/condition-category", "code": "encounter-diagnosis"}]}],
            "code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": code, "display": label}], "text": label},
            "onsetDateTime": (START - timedelta(days=120)).date().isoformat(),
            "recordedDate": START.date().isoformat(),
        },
    ]  # fmt: skip
    goal_ids = [f"{pid}-goal-{i + 1}" for i in range(len(client["goals"]))]
    for gid, goal in zip(goal_ids, client["goals"], strict=True):
        resources.append(
            gas_goal(
                gid, pid, goal["text"], goal["levels"],
                start=START.date().isoformat(), due=(START + timedelta(weeks=12)).date().isoformat(),
                importance=goal["importance"], difficulty=goal["difficulty"],
                expressed_by=f"Patient/{pid}", addresses=[f"Condition/{pid}-dx"],
            )
        )  # fmt: skip
    goals_html = "".join(f"<li>{g['text']}</li>" for g in client["goals"])
    resources.append({
        "resourceType": "CarePlan", "id": f"{pid}-plan", "status": "active", "intent": "plan",
        "text": _narrative(f"<p>Weekly 55-minute individual psychotherapy for 12 weeks for {label}.</p><ul>{goals_html}</ul>"),
        "category": [{"coding": [{"system": "http://hl7.org/fhir/us/core/CodeSystem/careplan-category", "code": "assess-plan"}]}],
        "title": "Outpatient psychotherapy plan", "subject": _ref("Patient", pid),
        "period": {"start": START.date().isoformat(), "end": (START + timedelta(weeks=12)).date().isoformat()},
        "author": _ref("Practitioner", "demo-therapist"), "addresses": [_ref("Condition", f"{pid}-dx")],
        "goal": [_ref("Goal", g) for g in goal_ids],
        "activity": [{"detail": {
            "kind": "Appointment",
            "code": {"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "90837", "display": "Psychotherapy, 60 minutes"}]},
            "status": "in-progress",
            "scheduledTiming": {"repeat": {"frequency": 1, "period": 1, "periodUnit": "wk",
                                           "boundsDuration": {"value": 12, "unit": "wk", "system": UCUM, "code": "wk"}}},
            "performer": [_ref("Practitioner", "demo-therapist")],
            "description": "Individual CBT-informed psychotherapy; ORS/SRS every session, GAS review every third session.",
        }}],
    })  # fmt: skip
    low, high = client["ors"]
    for n in range(12):
        moment = START + timedelta(weeks=n, minutes=rng.randint(-20, 20))
        when = moment.isoformat()
        eid = f"{pid}-s{n + 1:02d}"
        resources.append({
            "resourceType": "Encounter", "id": eid, "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "type": [{"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "90837"}]}],
            "subject": _ref("Patient", pid),
            "participant": [{"individual": _ref("Practitioner", "demo-therapist")}],
            "period": {"start": when, "end": (moment + timedelta(minutes=55)).isoformat()},
            "length": {"value": 55, "unit": "min", "system": UCUM, "code": "min"},
            "reasonReference": [_ref("Condition", f"{pid}-dx")],
        })  # fmt: skip
        ors_total = low + (high - low) * n / 11
        resources.append(
            rating_scale_response(
                f"{eid}-ors", "ors", pid, _marks(ors_total, rng), when, encounter=eid
            )
        )
        srs_total = 29.6 if n + 1 == client["srs_dip"] else 37.4
        resources.append(
            rating_scale_response(
                f"{eid}-srs", "srs", pid, _marks(srs_total, rng), when, encounter=eid
            )
        )
        if pid == "demo-alex" and n in (0, 5, 11):
            severity = {0: [2, 2, 2, 2, 1, 2, 1, 1, 0], 5: [1, 1, 2, 1, 1, 1, 1, 0, 0],
                        11: [1, 0, 1, 1, 0, 0, 1, 0, 0]}[n]  # fmt: skip
            resources.append(_phq9(f"{eid}-phq9", pid, eid, when, severity))
        if n % 3 == 0 or n == 11:
            review = min((n + 2) // 3, 4)
            for gid, goal in zip(goal_ids, client["goals"], strict=True):
                resources.append(
                    gas_rating(f"{gid}-gas-{n + 1:02d}", pid, gid, goal["gas"][review], when,
                               baseline=n == 0, performer="Practitioner/demo-therapist", encounter=eid)
                )  # fmt: skip
    return resources


def demo_resources(seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    shared: list[dict[str, Any]] = [
        {"resourceType": "Organization", "id": "demo-clinic", "active": True, "name": "Riverside Counselling"},
        {"resourceType": "Practitioner", "id": "demo-therapist", "active": True,
         "name": [{"given": ["Morgan"], "family": "Lee", "suffix": ["LCSW"]}],
         "identifier": [{"system": "http://hl7.org/fhir/sid/us-npi", "value": "1234567893"}]},
    ]  # fmt: skip
    return shared + [r for client in CLIENTS for r in client_resources(client, rng)]


async def write_demo(service: FhirService) -> int:
    """Write the demo set unless it is there already; returns how many resources were written."""
    if await service.current(UNRESTRICTED, "Patient", CLIENTS[0]["id"]) is not None:
        return 0
    resources = demo_resources()
    for resource in resources:
        await service.update(UNRESTRICTED, resource["resourceType"], resource["id"], resource, None)
    last_review = (START + timedelta(weeks=11, days=1)).date()
    for client in CLIENTS:
        pid = client["id"]
        await store_patient_tscore(service, UNRESTRICTED, pid, f"CarePlan/{pid}-plan", last_review)
    return len(resources)


async def load_demo(settings: Settings) -> int:
    from fhirgoal.bootstrap import build_service

    assert settings.mongodb_uri, "the database must be running"
    client = connect(settings.mongodb_uri, timeout=10.0)
    try:
        return await write_demo(await build_service(settings, client))
    finally:
        await client.close()


DEMO_USER = "demo"
DEMO_PRACTITIONER = "Practitioner/demo-therapist"
DEMO_LAUNCH_PATIENT = "demo-blair"


async def demo_access(settings: Settings) -> tuple[str, str]:
    """For `fhirgoal serve --demo` with the built-in authorization server: the demo therapist's
    login `demo` with a new random password (each start: nothing guessable is ever left in a
    database), and an EHR launch context (an hour) for a demo client, as `fhirgoal launch` makes.
    Returns the password and the `launch` value."""
    import secrets

    from fhirgoal.auth.state import create_launch
    from fhirgoal.auth.users import DEFAULT_USER_SCOPES, UserDirectory

    assert settings.mongodb_uri, "the database must be running"
    client = connect(settings.mongodb_uri, timeout=10.0)
    try:
        db = client.get_database(settings.db)
        users = UserDirectory(db)
        await users.collection.delete_one({"_id": DEMO_USER})
        password = secrets.token_urlsafe(9)
        await users.add(DEMO_USER, password, DEMO_PRACTITIONER, DEFAULT_USER_SCOPES)
        launch = await create_launch(db, DEMO_LAUNCH_PATIENT, fhir_user=DEMO_PRACTITIONER)
        return password, launch
    finally:
        await client.close()
