"""The same period and data give the same document, byte for byte (signature and PDF included),
stored under the same ids; new data gives a new document identifier under the same Composition
identifier, dated by the new data, not by the clock."""

from __future__ import annotations

import copy
import random
from typing import Any

from fhirgoal.clinical.resources import rating_scale_response
from fhirgoal.core.access import UNRESTRICTED
from fhirgoal.demo import CLIENTS, client_resources
from fhirgoal.fhir.service import FhirService
from tests.conftest import RunningServer
from tests.evidence.conftest import OPERATION, PERIOD, composition_of, outputs


async def load_client(demo: RunningServer, pid: str) -> None:
    """A copy of the demo's first client under another id (its own data to change)."""
    service: FhirService = demo.app.state.fhir
    client = {**copy.deepcopy(CLIENTS[0]), "id": pid}
    for resource in client_resources(client, random.Random(7)):
        await service.update(UNRESTRICTED, resource["resourceType"], resource["id"], resource, None)


def body(**values: str) -> dict[str, Any]:
    return {
        "resourceType": "Parameters",
        "parameter": [{"name": k, "valueString": v} for k, v in values.items()],
    }


async def test_same_inputs_same_document_and_new_data_a_new_identifier(
    demo: RunningServer,
) -> None:
    pid = "same-again"
    await load_client(demo, pid)
    path = f"/Patient/{pid}/{OPERATION}"
    first = await demo.client.get(path, params=PERIOD)
    second = await demo.client.get(path, params=PERIOD)
    assert first.status_code == 200 and first.content == second.content

    stored = outputs(await demo.client.post(path, json=body(**PERIOD)))
    again = outputs(await demo.client.post(path, json=body(**PERIOD)))
    preview = outputs(first)
    for name in ("document", "documentReference", "pdf"):
        assert stored[name]["id"] == again[name]["id"] == preview[name]["id"]
        content = {k: v for k, v in again[name].items() if k != "meta"}
        assert content == {k: v for k, v in preview[name].items() if k != "meta"}, name
    assert again["document"]["meta"]["versionId"] == "2"  # replaced, not added

    before = preview["document"]
    await demo.app.state.fhir.update(
        UNRESTRICTED, "QuestionnaireResponse", f"{pid}-extra-ors",
        {**rating_scale_response(f"{pid}-extra-ors", "ors", pid, [8, 8, 8, 8],
                                 "2026-10-26T15:00:00+00:00"), "id": f"{pid}-extra-ors"},
        None,
    )  # fmt: skip
    after = outputs(await demo.client.get(path, params=PERIOD))["document"]
    assert after["identifier"] != before["identifier"]
    assert composition_of(after)["identifier"] == composition_of(before)["identifier"]
    assert after["timestamp"] > before["timestamp"]
    newest = max(e["resource"]["meta"]["lastUpdated"] for e in after["entry"][1:]
                 if e["resource"]["resourceType"] != "Device" and "meta" in e["resource"])  # fmt: skip
    assert after["timestamp"] == newest
