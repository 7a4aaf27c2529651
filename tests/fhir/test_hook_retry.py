"""After-write rules that lose a race with a concurrent write run again (fhir/service.py)."""

from __future__ import annotations

from typing import Any

from fhirgoal.core.errors import FhirError
from fhirgoal.fhir.hooks import WriteEvent
from fhirgoal.fhir.service import AFTER_HOOK_ATTEMPTS
from fhirgoal.store.mongo import connect
from tests.conftest import RunningServer


class ConflictingRule:
    """Loses `conflicts` races (as a rule does whose Flag another request just changed)."""

    resource_types = ("Task",)

    def __init__(self, conflicts: int) -> None:
        self.conflicts = conflicts
        self.runs = 0

    def interested(self, event: WriteEvent) -> bool:
        return True

    async def before_write(self, event: WriteEvent) -> None:
        return None

    async def after_write(self, event: WriteEvent) -> None:
        self.runs += 1
        if self.runs <= self.conflicts:
            raise FhirError("precondition-failed", "Flag/x was changed by another request")


TASK: dict[str, Any] = {"resourceType": "Task", "status": "requested", "intent": "order"}


async def pending_mark(fhir: RunningServer, rid: str) -> bool:
    mongo = connect(fhir.settings.mongodb_uri or "")
    try:
        doc = await mongo[fhir.settings.db]["Task"].find_one({"_id": rid}, {"pend": 1})
        return bool(doc and doc.get("pend"))
    finally:
        await mongo.close()


async def test_a_rule_that_lost_a_race_runs_again_and_the_write_is_finished(
    fhir: RunningServer,
) -> None:
    rule = ConflictingRule(conflicts=AFTER_HOOK_ATTEMPTS - 1)
    fhir.app.state.fhir.hooks.register(rule)
    created = await fhir.client.post("/Task", json=TASK)
    assert created.status_code == 201
    assert rule.runs == AFTER_HOOK_ATTEMPTS
    assert not await pending_mark(fhir, created.json()["id"])


async def test_a_rule_that_keeps_losing_is_left_to_the_sweep(fhir: RunningServer) -> None:
    rule = ConflictingRule(conflicts=AFTER_HOOK_ATTEMPTS)
    fhir.app.state.fhir.hooks.register(rule)
    created = await fhir.client.post("/Task", json=TASK)
    assert created.status_code == 201  # the write stands
    assert rule.runs == AFTER_HOOK_ATTEMPTS
    assert await pending_mark(fhir, created.json()["id"])
