"""Benchmark push in (issue 15): how long an edit made in the EHR takes to be applied in fhirgoal
when the EHR notifies it (exchange/ehr_subscribe.py, exchange/ehr_push.py), pulls off.

    python bench/push.py [--edits 50] [--patients 1]

Both servers run in this process, as the tests run them (tests/exchange/ehr_pair.py): the EHR
(FHIRGOAL_AUTH=smart, a topic-based Subscriptions notifier) and fhirgoal (its Backend Services
client, subscribed to the EHR's goal-change topic for the followed patients). One goal per
patient; each edit is a PUT of a goal in the EHR, one at a time, the next once the previous one
is in fhirgoal. Figures, p50 and p99:

    edit -> applied         from the EHR's answer to the PUT until fhirgoal serves the change
                            (polled every 10 ms): the EHR's outbox delivery, the notification,
                            fhirgoal reading the goal back from the EHR and writing it
    notification -> applied from the notification's arrival at fhirgoal to its answer (the read
                            from the EHR and the journaled write), as the receiver measures it

Everything shares one machine (and, here, one event loop): figures are for comparison.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import database, save_results

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.exchange.ehr_pair import ehr_pair, patient
from tests.helpers import create


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def wait_for(condition: Any, within: float = 60.0) -> None:
    deadline = time.monotonic() + within
    while not await condition():
        if time.monotonic() > deadline:
            raise TimeoutError("not within the time")
        await asyncio.sleep(0.01)


async def run(uri: str, edits: int, patients: int) -> dict[str, Any]:
    async with ehr_pair(uri, subscribe=True, sync_pull_seconds=0) as pair:
        goals = []
        for n in range(patients):
            mrn = f"MRN-{n}"
            ehr_patient = await pair.ehr_create(patient(mrn))
            await create(pair.fhirgoal.client, patient(mrn))
            goals.append(
                await pair.ehr_create(
                    {
                        "resourceType": "Goal",
                        "lifecycleStatus": "active",
                        "description": {"text": "edit 0"},
                        "subject": {"reference": f"Patient/{ehr_patient['id']}"},
                    }
                )
            )
        await pair.subscribe()
        await pair.pull()

        async def active() -> bool:
            found = (await pair.ehr_http.get("/Subscription")).json().get("entry", [])
            return bool(found) and all(e["resource"]["status"] == "active" for e in found)

        await wait_for(active)
        pair.push.receiver.latencies.clear()
        end_to_end = []
        for n in range(1, edits + 1):
            goal = goals[n % len(goals)]
            text = f"edit {n}"
            response = await pair.ehr_http.put(
                f"/Goal/{goal['id']}", json={**goal, "description": {"text": text}}
            )
            assert response.status_code == 200, response.text
            edited = time.perf_counter()

            async def applied(gid: str = goal["id"], text: str = text) -> bool:
                [copy] = await pair.in_fhirgoal("Goal", gid)
                return bool(copy["description"]["text"] == text)

            await wait_for(applied)
            end_to_end.append(time.perf_counter() - edited)
        received = list(pair.push.receiver.latencies)
    return {
        "edits": edits,
        "patients": patients,
        "edit_to_applied_p50_s": percentile(end_to_end, 0.5),
        "edit_to_applied_p99_s": percentile(end_to_end, 0.99),
        "edit_to_applied_mean_s": statistics.mean(end_to_end),
        "notification_to_applied_p50_s": percentile(received, 0.5),
        "notification_to_applied_p99_s": percentile(received, 0.99),
        "notifications": len(received),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--edits", type=int, default=50)
    parser.add_argument("--patients", type=int, default=1)
    args = parser.parse_args()
    with database() as db:
        figures = asyncio.run(run(db.uri, args.edits, args.patients))
    for name, value in figures.items():
        print(f"{name:32} {value:.3f}" if isinstance(value, float) else f"{name:32} {value}")
    print(f"saved to {save_results('push', figures)}")


if __name__ == "__main__":
    main()
