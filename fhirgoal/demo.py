"""A realistic demo data set, written through the FHIR service (so every resource is validated).

Three clients of one therapist, each with a diagnosis, a treatment plan (US Core CarePlan shape:
narrative, status, intent, `assess-plan` category), two or three goals and twelve weekly sessions:
an Encounter with its duration, ORS and SRS results (total + one component per item, scored 0-10 to
one decimal) and, every third session, a GAS follow-up rating per goal (PCO-style: `focus` -> Goal,
LOINC answer list LL6900-6). Trajectories differ on purpose: Alex improves, Blair stalls on one goal
and has an alliance dip at session 6, Casey improves slowly. Ids are fixed, so loading twice adds
nothing.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from fhirgoal.auth.context import UNRESTRICTED
from fhirgoal.config import Settings
from fhirgoal.fhir.service import FhirService
from fhirgoal.store.mongo import connect

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"
MEASURES = "https://fhirgoal.org/fhir/CodeSystem/fhirgoal-measures"
SURVEY = {
    "coding": [
        {"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "survey"}
    ]
}
ORS_ITEMS = ["individually", "interpersonally", "socially", "overall"]
SRS_ITEMS = ["relationship", "goals-and-topics", "approach-or-method", "overall"]
GAS_ANSWERS = {  # LOINC answer list LL6900-6
    2: ("LA34479-8", "Much more than expected"),
    1: ("LA34480-6", "More than expected"),
    0: ("LA34481-4", "Expected outcome"),
    -1: ("LA34483-0", "Less than expected"),
    -2: ("LA34484-8", "Much less than expected"),
}
START = datetime(2026, 8, 3, 15, 0, tzinfo=UTC)

CLIENTS: list[dict[str, Any]] = [
    {
        "id": "demo-alex", "given": "Alex", "family": "Rivera", "gender": "female", "birthDate": "1991-04-12",
        "dx": ("F33.1", "Major depressive disorder, recurrent, moderate"),
        "goals": ["Return to work three days a week", "Walk outdoors 20 minutes, 4 days a week",
                  "Reconnect with two friends each month"],
        "ors": (17.5, 31.0), "gas": [[-1, -1, 0, 1], [-1, 0, 0, 1], [-1, -1, 0, 0]], "srs_dip": None,
    },
    {
        "id": "demo-blair", "given": "Blair", "family": "Chen", "gender": "male", "birthDate": "1984-11-02",
        "dx": ("F41.1", "Generalized anxiety disorder"),
        "goals": ["Use a breathing routine when anxious, 5 days a week", "Sleep 7 hours on most nights"],
        "ors": (21.0, 23.5), "gas": [[-1, 0, 0, 1], [-1, -1, -1, -1]], "srs_dip": 6,
    },
    {
        "id": "demo-casey", "given": "Casey", "family": "Okafor", "gender": "other", "birthDate": "2009-06-30",
        "dx": ("F43.10", "Post-traumatic stress disorder, unspecified"),
        "goals": ["Attend school every weekday", "Name and use two coping skills after a trigger"],
        "ors": (19.0, 27.0), "gas": [[-1, -1, 0, 0], [-2, -1, -1, 0]], "srs_dip": None,
    },
]  # fmt: skip


def _ref(rt: str, rid: str) -> dict[str, str]:
    return {"reference": f"{rt}/{rid}"}


def _score(value: float) -> Decimal:
    return Decimal(f"{min(max(value, 0.0), 10.0):.1f}")


def _narrative(text: str) -> dict[str, str]:
    return {"status": "generated", "div": f'<div xmlns="http://www.w3.org/1999/xhtml">{text}</div>'}


def _scale_observation(
    oid: str,
    code: str,
    display: str,
    items: list[str],
    scores: list[Decimal],
    pid: str,
    eid: str,
    when: datetime,
) -> dict[str, Any]:
    total = sum(scores, Decimal("0.0"))
    return {
        "resourceType": "Observation", "id": oid, "status": "final", "category": [SURVEY],
        "code": {"coding": [{"system": MEASURES, "code": code, "display": display}], "text": display},
        "subject": _ref("Patient", pid), "encounter": _ref("Encounter", eid),
        "effectiveDateTime": when.isoformat(), "performer": [_ref("Patient", pid)],
        "valueQuantity": {"value": total, "unit": "{score}", "system": UCUM, "code": "{score}"},
        "component": [
            {"code": {"coding": [{"system": MEASURES, "code": f"{code.split('-')[0]}-{item}"}]},
             "valueQuantity": {"value": score, "unit": "{score}", "system": UCUM, "code": "{score}"}}
            for item, score in zip(items, scores, strict=True)
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
    for gid, text in zip(goal_ids, client["goals"], strict=True):
        resources.append({
            "resourceType": "Goal", "id": gid, "lifecycleStatus": "active",
            "achievementStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/goal-achievement", "code": "in-progress"}]},
            "description": {"text": text}, "subject": _ref("Patient", pid),
            "startDate": START.date().isoformat(),
            "target": [{"dueDate": (START + timedelta(weeks=12)).date().isoformat()}],
            "addresses": [_ref("Condition", f"{pid}-dx")],
            "expressedBy": _ref("Practitioner", "demo-therapist"),
        })  # fmt: skip
    goals_html = "".join(f"<li>{g}</li>" for g in client["goals"])
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
        when = START + timedelta(weeks=n, minutes=rng.randint(-20, 20))
        eid = f"{pid}-s{n + 1:02d}"
        resources.append({
            "resourceType": "Encounter", "id": eid, "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "type": [{"coding": [{"system": "http://www.ama-assn.org/go/cpt", "code": "90837"}]}],
            "subject": _ref("Patient", pid),
            "participant": [{"individual": _ref("Practitioner", "demo-therapist")}],
            "period": {"start": when.isoformat(), "end": (when + timedelta(minutes=55)).isoformat()},
            "length": {"value": 55, "unit": "min", "system": UCUM, "code": "min"},
            "reasonReference": [_ref("Condition", f"{pid}-dx")],
        })  # fmt: skip
        ors_mean = (low + (high - low) * n / 11) / 4
        ors = [_score(ors_mean + rng.uniform(-1.2, 1.2)) for _ in ORS_ITEMS]
        resources.append(
            _scale_observation(
                f"{eid}-ors",
                "ors-total",
                "Outcome Rating Scale total",
                ORS_ITEMS,
                ors,
                pid,
                eid,
                when,
            )
        )
        srs_mean = 7.4 if n + 1 == client["srs_dip"] else 9.3
        srs = [_score(srs_mean + rng.uniform(-0.5, 0.5)) for _ in SRS_ITEMS]
        resources.append(
            _scale_observation(
                f"{eid}-srs",
                "srs-total",
                "Session Rating Scale total",
                SRS_ITEMS,
                srs,
                pid,
                eid,
                when,
            )
        )
        if n % 3 == 0 or n == 11:
            review = min(n // 3, 3)
            for gid, levels in zip(goal_ids, client["gas"], strict=True):
                answer, text = GAS_ANSWERS[levels[review]]
                resources.append({
                    "resourceType": "Observation", "id": f"{gid}-gas-{n + 1:02d}", "status": "final",
                    "category": [SURVEY],
                    "code": {"coding": [{"system": LOINC, "code": "112296-9" if n == 0 else "107333-7",
                                         "display": "GAS baseline" if n == 0 else "GAS practitioner follow-up"}]},
                    "subject": _ref("Patient", pid), "focus": [_ref("Goal", gid)], "encounter": _ref("Encounter", eid),
                    "effectiveDateTime": when.isoformat(), "performer": [_ref("Practitioner", "demo-therapist")],
                    "valueCodeableConcept": {"coding": [{"system": LOINC, "code": answer, "display": text}]},
                })  # fmt: skip
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
    if await service.repo.current(UNRESTRICTED, "Patient", CLIENTS[0]["id"]) is not None:
        return 0
    resources = demo_resources()
    for resource in resources:
        await service.update(UNRESTRICTED, resource["resourceType"], resource["id"], resource, None)
    return len(resources)


async def load_demo(settings: Settings) -> int:
    from fhirgoal.app import build_service

    assert settings.mongodb_uri, "the database must be running"
    client = connect(settings.mongodb_uri)
    try:
        return await write_demo(await build_service(settings, client))
    finally:
        await client.close()
