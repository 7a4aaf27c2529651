"""Deliveries to an EHR that fails, throttles, times out and applies writes whose answers are
lost (tests/exchange/ehr_proxy.py in front of it): every rating reaches the EHR exactly once
(checked there by the identifier fhirgoal assigns, and by the copy's history)."""

from __future__ import annotations

from functools import partial

from fhirgoal.store.outbox import OUTBOX
from tests.exchange.ehr_pair import Pair, ehr_pair, patient, phq9_total
from tests.exchange.ehr_proxy import Step, proxy
from tests.helpers import create, wait_until

PLAN = [
    Step(status=500, forward=True),  # applied by the EHR, the answer lost
    Step(status=429, forward=False, headers={"Retry-After": "1"}),
    Step(forward=True, stall=3.0),  # applied, answered after fhirgoal's 2 s timeout
    Step(status=503, forward=False),
    Step(status=500, forward=True),
]


async def delivered_states(pair: Pair) -> dict[str, int]:
    counts: dict[str, int] = {}
    async for doc in pair.service.database[OUTBOX].find({"dest": pair.connection.dest}):
        counts[doc["state"]] = counts.get(doc["state"], 0) + 1
    return counts


async def test_every_total_reaches_a_hostile_ehr_once(mongo_uri: str) -> None:
    front = partial(proxy, plan=PLAN)
    async with ehr_pair(mongo_uri, front=front, sync_pull_seconds=0) as pair:
        await pair.ehr_create(patient("MRN-5"))
        local = await create(pair.fhirgoal.client, patient("MRN-5"))
        assert (await pair.pull()).linked == 1
        totals = [
            await create(pair.fhirgoal.client, phq9_total(local["id"], n)) for n in (4, 9, 14)
        ]

        async def all_there() -> bool:
            return all([await pair.in_ehr("Observation", t["id"]) for t in totals])

        await wait_until(all_there, within=60, what="every total in the EHR")
        await wait_until(lambda: _settled(pair), within=30, what="every item settled as delivered")
        for total in totals:
            [copy] = await pair.in_ehr("Observation", total["id"])  # one copy each
            assert await pair.ehr_history("Observation", copy["id"]) == 1  # applied once
            assert copy["valueInteger"] == total["valueInteger"]
        # every hostile step was met, two of them writes the EHR applied but fhirgoal never heard
        assert pair.front.plan == []
        answered = [w.answered for w in pair.front.writes]
        assert {500, 429, 503} <= set(answered) and len(answered) >= len(PLAN) + 1
        assert await delivered_states(pair) == {"delivered": 3}


async def _settled(pair: Pair) -> bool:
    return await delivered_states(pair) == {"delivered": 3}
