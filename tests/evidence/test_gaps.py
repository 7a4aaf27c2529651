"""Too little data is a 422 naming each gap (and nothing stored); bad inputs are 400s."""

from __future__ import annotations

from typing import Any

import pytest

from fhirgoal.clinical.resources import rating_scale_response
from fhirgoal.core.access import UNRESTRICTED
from fhirgoal.fhir.service import FhirService
from tests.conftest import RunningServer
from tests.evidence.conftest import OPERATION, PERIOD


def post_body(**values: str) -> dict[str, Any]:
    return {
        "resourceType": "Parameters",
        "parameter": [{"name": k, "valueString": v} for k, v in values.items()],
    }


def gaps(response: Any) -> list[str]:
    assert response.status_code == 422, response.text
    issues = response.json()["issue"]
    assert all(i["code"] == "business-rule" for i in issues)
    return [i["expression"][0] for i in issues]


async def seed(demo: RunningServer, *resources: dict[str, Any]) -> None:
    service: FhirService = demo.app.state.fhir
    for resource in resources:
        await service.update(UNRESTRICTED, resource["resourceType"], resource["id"], resource, None)


async def test_a_client_with_nothing_gets_every_gap_and_nothing_is_stored(
    demo: RunningServer,
) -> None:
    await seed(demo, {"resourceType": "Patient", "id": "gap-empty"})
    response = await demo.client.post(f"/Patient/gap-empty/{OPERATION}", json=post_body(**PERIOD))
    assert gaps(response) == [
        "CarePlan",
        "Condition",
        "Observation",
        "Encounter",
        "CarePlan.author",
    ]
    assert "no treatment plan: Patient/gap-empty has no CarePlan" in response.text
    stored = await demo.client.get("/DocumentReference", params={"patient": "gap-empty"})
    assert stored.json().get("total", len(stored.json().get("entry", []))) == 0


async def test_a_plan_without_a_scaled_goal_is_the_one_gap(demo: RunningServer) -> None:
    pid = "gap-goal"
    when = "2026-09-01T10:00:00+00:00"
    await seed(
        demo,
        {"resourceType": "Patient", "id": pid, "birthDate": "1980-01-01"},
        {"resourceType": "Condition", "id": f"{pid}-dx", "subject": {"reference": f"Patient/{pid}"},
         "code": {"text": "Adjustment disorder"}},
        {"resourceType": "Goal", "id": f"{pid}-goal", "lifecycleStatus": "active",
         "description": {"text": "Feel better"}, "subject": {"reference": f"Patient/{pid}"}},
        {"resourceType": "CarePlan", "id": f"{pid}-plan", "status": "active", "intent": "plan",
         "subject": {"reference": f"Patient/{pid}"}, "author": {"reference": "Practitioner/demo-therapist"},
         "addresses": [{"reference": f"Condition/{pid}-dx"}], "goal": [{"reference": f"Goal/{pid}-goal"}]},
        {"resourceType": "Encounter", "id": f"{pid}-s1", "status": "finished",
         "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
         "subject": {"reference": f"Patient/{pid}"}, "period": {"start": when}},
        rating_scale_response(f"{pid}-ors", "ors", pid, [5, 5, 5, 5], when),
    )  # fmt: skip
    response = await demo.client.get(f"/Patient/{pid}/{OPERATION}", params=PERIOD)
    assert gaps(response) == ["CarePlan.goal"]
    assert f"CarePlan/{pid}-plan has no goal with Goal Attainment Scaling levels" in response.text


async def test_a_period_without_care_names_the_missing_plan_measures_and_sessions(
    demo: RunningServer,
) -> None:
    response = await demo.client.get(
        f"/Patient/demo-alex/{OPERATION}", params={"start": "2027-01-01", "end": "2027-03-31"}
    )
    assert gaps(response) == ["CarePlan", "Observation", "Encounter", "CarePlan.author"]


@pytest.mark.parametrize(
    ("params", "status", "said"),
    [
        ({"end": "2026-10-31"}, 400, "'start' (YYYY-MM-DD) is required"),
        ({"start": "2026-11-01", "end": "2026-10-31"}, 400, "is after end"),
        ({**PERIOD, "start": "20260801"}, 400, "start must be a date"),
        ({**PERIOD, "format": "xml"}, 400, "format must be document, pdf or both"),
        ({**PERIOD, "payer": "Patient/demo-alex"}, 400, "'payer' must reference a Organization"),
        ({**PERIOD, "payer": "Organization/nobody"}, 404, "Organization/nobody is not known"),
        ({**PERIOD, "carePlan": "CarePlan/demo-blair-plan"}, 422, "is not a plan of Patient/demo-alex"),
        ({**PERIOD, "colour": "red"}, 400, "unknown parameter 'colour'"),
    ],
)  # fmt: skip
async def test_bad_inputs_are_refused_with_an_outcome(
    demo: RunningServer, params: dict[str, str], status: int, said: str
) -> None:
    response = await demo.client.get(f"/Patient/demo-alex/{OPERATION}", params=params)
    assert response.status_code == status, response.text
    assert said in response.text


async def test_an_unknown_client_is_not_found(demo: RunningServer) -> None:
    response = await demo.client.get(f"/Patient/nobody/{OPERATION}", params=PERIOD)
    assert response.status_code == 404
