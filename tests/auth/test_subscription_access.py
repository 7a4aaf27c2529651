"""Who may subscribe: a Subscription's notifications are matched against every write and can
carry the resource, so only a client that may search every resource of the criteria's type may
write one (a practitioner under the caseload policy, or a patient, may not)."""

from __future__ import annotations

from tests.auth.conftest import SmartServer
from tests.helpers import FHIR_JSON

SUBSCRIPTION = {
    "resourceType": "Subscription",
    "status": "requested",
    "reason": "ratings to the EHR",
    "criteria": "Observation?category=survey",
    "channel": {"type": "rest-hook", "endpoint": "http://127.0.0.1:9/hook", "payload": "application/fhir+json"},
}  # fmt: skip


async def test_only_a_client_that_sees_every_resource_of_the_type_subscribes(
    smart: SmartServer,
) -> None:
    async with smart.client(
        await smart.mint("user/*.cruds", fhir_user="Practitioner/doc")
    ) as practitioner:
        refused = await practitioner.post("/Subscription", json=SUBSCRIPTION, headers=FHIR_JSON)
        assert refused.status_code == 403, refused.text
        assert "system/Observation.rs" in refused.json()["issue"][0]["diagnostics"]
    async with await smart.as_scope("system/Subscription.cruds system/Observation.rs") as ehr:
        created = await ehr.post("/Subscription", json=SUBSCRIPTION, headers=FHIR_JSON)
        assert created.status_code == 201, created.text
        listed = (await ehr.get("/Subscription")).json()
        assert listed["total"] == 1  # the refused one was never stored
