"""A delivery that fails for a reason retrying cannot change (exchange/ehr_http.py: the EHR's
403 for scope, 400/422 for content; a mapping that cannot express it) is parked as dead at once,
visible in `fhirgoal sync status` and as an AuditEvent, and `fhirgoal sync retry` puts it back
once the cause is fixed (transient failures keep the backoff: tests/exchange/test_ehr_hostile.py).
Two real fhirgoal servers, the CLI as processes."""

from __future__ import annotations

import asyncio
import subprocess
from typing import Any

from fhirgoal.exchange.connections import DEFAULT_SCOPES
from fhirgoal.exchange.ehr_audit import DCM
from fhirgoal.store.outbox import OUTBOX
from tests.exchange.ehr_pair import CLIENT_ID, Pair, ehr_pair, patient, phq9_total
from tests.exchange.test_ehr_cli import cli
from tests.exchange.test_ehr_conflicts import deliver
from tests.helpers import create

SETTINGS = {"outbox_worker": False, "sync_pull_seconds": 0}
NO_OBSERVATION_WRITES = DEFAULT_SCOPES.replace("system/Observation.cruds", "system/Observation.rs")


async def set_scopes(pair: Pair, scopes: str) -> None:
    """The EHR's administrator changes what fhirgoal's registration allows."""
    clients = pair.ehr.app.state.smart.clients
    await clients.collection.update_one({"_id": CLIENT_ID}, {"$set": {"scopes": scopes}})


async def item_of(pair: Pair, ref: str) -> dict[str, Any]:
    [doc] = [
        d
        async for d in pair.service.database[OUTBOX].find(
            {"dest": pair.connection.dest, "ref": ref}
        )
    ]
    return doc


async def test_a_refusal_for_scope_is_dead_at_once_and_sync_retry_puts_it_back(
    mongo_uri: str,
) -> None:
    async with ehr_pair(mongo_uri, **SETTINGS) as pair:
        await set_scopes(pair, NO_OBSERVATION_WRITES)
        await pair.ehr_create(patient("MRN-1"))
        ours = await create(pair.fhirgoal.client, patient("MRN-1"))
        await pair.pull()
        total = await create(pair.fhirgoal.client, phq9_total(ours["id"], 14))
        ref = f"Observation/{total['id']}"

        assert await deliver(pair) == 1
        dead = await item_of(pair, ref)
        assert (dead["state"], dead["attempts"]) == ("dead", 1), dead
        assert "HTTP 403" in dead["error"]
        assert await deliver(pair) == 0  # not retried

        # visible as FHIR: the delivery's AuditEvent, a serious failure (8), not retried
        events = await pair.fhirgoal.client.get(
            "/AuditEvent", params={"type": f"{DCM}|110106", "outcome": "8"}
        )
        assert events.status_code == 200, events.text
        [event] = [e["resource"] for e in events.json()["entry"]]
        assert "HTTP 403" in event["outcomeDesc"] and "not retried" in event["outcomeDesc"]

        db = pair.fhirgoal.settings.db

        async def run(*args: str) -> subprocess.CompletedProcess[str]:
            return await asyncio.to_thread(cli, mongo_uri, db, *args)

        status = await run("sync", "status")
        assert status.returncode == 0, status.stderr
        out = " ".join((status.stdout + status.stderr).split())
        assert f"dead (1 attempt(s)): {dead['_id']}" in out and "HTTP 403" in out

        # asked wrongly: nothing changes
        assert (await run("sync", "retry")).returncode == 2
        wrong = await run("sync", "retry", "--item", "EhrConnection/clinic|nothing")
        assert wrong.returncode == 2 and "no dead item" in wrong.stderr

        # the EHR's administrator fixes the registration; a human puts the item back
        await set_scopes(pair, DEFAULT_SCOPES)
        retried = await run("sync", "retry", "--ehr", "clinic", "--item", dead["_id"])
        assert retried.returncode == 0, retried.stderr
        assert "1 dead item(s) put back" in retried.stdout
        back = await item_of(pair, ref)
        assert (back["state"], back["attempts"]) == ("pending", 0) and back["revived"]

        # the next pass delivers it (with a new token: the one refused with 403 was dropped)
        assert await deliver(pair) == 1
        assert (await item_of(pair, ref))["state"] == "delivered"
        [copy] = await pair.in_ehr("Observation", total["id"])
        assert copy["valueInteger"] == 14
