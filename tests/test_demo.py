"""The demo data set loads through the validating service, is complete, and loads only once."""

from __future__ import annotations

import uuid
from typing import Any

from fhirgoal.bootstrap import build_service
from fhirgoal.config import Settings
from fhirgoal.core.access import UNRESTRICTED
from fhirgoal.demo import CLIENTS, demo_resources, write_demo
from fhirgoal.store.mongo import connect


async def test_demo_data_loads_once_and_every_client_has_a_plan_goals_and_sessions(
    mongo_uri: str,
) -> None:
    settings = Settings(mongodb_uri=mongo_uri, db=f"demo_{uuid.uuid4().hex[:10]}", auth="off")
    client = connect(mongo_uri)
    try:
        service = await build_service(settings, client)
        written = await write_demo(service)
        assert written == len(demo_resources()) > 100
        assert await write_demo(service) == 0
        for person in CLIENTS:
            pid = person["id"]
            for rt, minimum in (
                ("CarePlan", 1),
                ("Goal", 2),
                ("Encounter", 12),
                ("Observation", 24 + 2 * 5),
            ):
                page = await service.search(
                    UNRESTRICTED,
                    rt,
                    [("patient", pid), ("_count", "100")],
                    "http://test/fhir",
                    False,
                )
                assert page.total is not None and page.total >= minimum, (pid, rt, page.total)
            tscores = await service.find_resources(UNRESTRICTED, "Observation", [
                ("subject", f"Patient/{pid}"),
                ("code", "https://fhirgoal.org/fhir/CodeSystem/fhirgoal-measures|gas-tscore")])  # fmt: skip
            assert len(tscores) == 1
            for goal in await service.find_resources(UNRESTRICTED, "Goal", [("patient", pid)]):
                assert goal.resource is not None and "achievementStatus" in goal.resource
            plan = (await service.read(UNRESTRICTED, "CarePlan", f"{pid}-plan")).version
            assert plan is not None and plan.resource is not None
            assert plan.resource["category"][0]["coding"][0]["code"] == "assess-plan"
            assert plan.resource["text"]["status"] == "generated"
        # The story the demo tells: Blair's alliance dip opened a Flag that closed again, Blair is
        # not on track (ORS still clinical, no reliable change) and the sleep goal stalled; Alex's
        # work goal was achieved and sustained.
        flags = await service.find_resources(UNRESTRICTED, "Flag", [("patient", "demo-blair")])
        alliance = [
            f.resource for f in flags if f.resource and "alliance" in str(f.resource["code"])
        ]
        assert [f["status"] for f in alliance] == ["inactive"]
        assert await status(service, "demo-blair-goal-2") == "no-change"
        assert await status(service, "demo-alex-goal-1") == "sustaining"
    finally:
        await client.drop_database(settings.db)
        await client.close()


async def status(service: Any, gid: str) -> str:
    goal = (await service.read(UNRESTRICTED, "Goal", gid)).version.resource
    return str(goal["achievementStatus"]["coding"][0]["code"])
