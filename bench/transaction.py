"""Benchmark a transaction Bundle against the same resources as separate creates (issue 13).

One treatment plan as an EHR sends it: 1 CarePlan, 5 GAS Goals and 20 GAS ratings (a baseline and
three follow-ups per goal, so the goal-status rules run for every rating), either as one
transaction (`POST /fhir`, urn:uuid placeholders linking them) or as 26 creates one after the
other from one client (each rating naming its goal's server-assigned id). Rounds interleave the
two; each round reports the transaction's latency against the sequential total of the creates,
and the CPU time the server process and the embedded database process spent on each.

    python bench/transaction.py [--rounds 30]

The server runs as its own process (`fhirgoal serve`, authorization off as in the other REST
benchmarks) on the embedded database this script starts (or MONGODB_URI, without database CPU).
Targets: the transaction costs no more CPU than the separate creates, and its p50 is at most 0.5
of their sequential total.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import DatabaseCpu, cpu_seconds, database, save_results, shut_down, start_server

from fhirgoal.clinical.resources import gas_goal, gas_rating
from fhirgoal.store.embedded import free_port

FHIR_JSON = {"Content-Type": "application/fhir+json", "Prefer": "return=minimal"}
PATIENT = "bench-client"
THERAPIST = "Practitioner/bench-therapist"
LEVELS = ["much less", "less", "expected", "more", "much more"]
GOALS, RATINGS_PER_GOAL = 5, 4


def plan(goal_refs: list[str], plan_ref: str | None) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The CarePlan and the goals (with their ratings after them), naming goals by `goal_refs`."""
    goals = []
    for g in range(GOALS):
        goal = gas_goal("x", PATIENT, f"goal {g}", LEVELS, start="2026-01-05")
        del goal["id"]
        goals.append(goal)
    care_plan = {
        "resourceType": "CarePlan",
        "status": "active",
        "intent": "plan",
        "subject": {"reference": f"Patient/{PATIENT}"},
        "goal": [{"reference": ref} for ref in goal_refs] if goal_refs else None,
    }
    if not goal_refs:
        del care_plan["goal"]
    return care_plan, goals


def ratings(goal_refs: list[str]) -> list[dict[str, Any]]:
    out = []
    for goal in goal_refs:
        for n in range(RATINGS_PER_GOAL):
            rating = gas_rating(
                "x",
                PATIENT,
                "x",
                min(2, -1 + n),
                f"2026-01-{5 + 7 * n:02d}",
                baseline=n == 0,
                performer=THERAPIST,
            )
            del rating["id"]
            rating["focus"] = [{"reference": goal}]
            out.append(rating)
    return out


def transaction_bundle() -> dict[str, Any]:
    placeholders = [f"urn:uuid:{uuid.uuid4()}" for _ in range(GOALS)]
    care_plan, goals = plan(placeholders, None)
    entries = [
        {
            "fullUrl": f"urn:uuid:{uuid.uuid4()}",
            "resource": care_plan,
            "request": {"method": "POST", "url": "CarePlan"},
        }
    ]
    for placeholder, goal in zip(placeholders, goals, strict=True):
        entries.append(
            {"fullUrl": placeholder, "resource": goal, "request": {"method": "POST", "url": "Goal"}}
        )
    for rating in ratings(placeholders):
        entries.append({"resource": rating, "request": {"method": "POST", "url": "Observation"}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


async def separately(client: httpx.AsyncClient) -> None:
    """The same 26 resources as creates, one after the other: goals, the plan, the ratings."""
    _, goals = plan([], None)
    refs = []
    for goal in goals:
        response = await client.post("/Goal", json=goal, headers=FHIR_JSON)
        assert response.status_code == 201, response.text
        refs.append(response.headers["location"].split("/fhir/")[1].split("/_history")[0])
    care_plan, _ = plan(refs, None)
    response = await client.post("/CarePlan", json=care_plan, headers=FHIR_JSON)
    assert response.status_code == 201, response.text
    for rating in ratings(refs):
        response = await client.post("/Observation", json=rating, headers=FHIR_JSON)
        assert response.status_code == 201, response.text


async def as_transaction(client: httpx.AsyncClient) -> None:
    response = await client.post("", json=transaction_bundle(), headers=FHIR_JSON)
    assert response.status_code == 200, response.text[:500]


async def measure(pid: int, db_cpu: DatabaseCpu, work: Any) -> dict[str, float | None]:
    before = cpu_seconds(pid)
    db_cpu.start()
    started = time.perf_counter()
    await work
    elapsed = time.perf_counter() - started
    db = db_cpu.stop()
    return {
        "ms": elapsed * 1000,
        "server_cpu_ms": (cpu_seconds(pid) - before) * 1000,
        "db_cpu_ms": db * 1000 if db is not None else None,
    }


async def bench(rounds: int) -> dict[str, Any]:
    with database() as db:
        port, name = free_port(), f"bench_tx_{uuid.uuid4().hex[:8]}"
        server = start_server(db.uri, port, name)
        db_cpu = DatabaseCpu(db.pid)
        rows: list[dict[str, Any]] = []
        try:
            async with httpx.AsyncClient(
                base_url=f"http://127.0.0.1:{port}/fhir", timeout=60
            ) as client:
                for resource in (
                    {"resourceType": "Patient", "id": PATIENT, "birthDate": "1985-03-02"},
                    {"resourceType": "Practitioner", "id": "bench-therapist"},
                ):
                    await client.put(f"/{resource['resourceType']}/{resource['id']}", json=resource)
                for _ in range(3):  # warm-up: imports, caches, the database's pages
                    await as_transaction(client)
                    await separately(client)
                for n in range(rounds):
                    order = [("transaction", as_transaction), ("separate", separately)]
                    if n % 2:
                        order.reverse()
                    row: dict[str, Any] = {}
                    for label, work in order:
                        row[label] = await measure(server.pid, db_cpu, work(client))
                    rows.append(row)
        finally:
            await shut_down(db.uri, name, server)
    return report(rows)


def _median(rows: list[dict[str, Any]], label: str, figure: str) -> float | None:
    values = [row[label][figure] for row in rows if row[label][figure] is not None]
    return round(statistics.median(values), 2) if values else None


def _ratio(rows: list[dict[str, Any]], figure: str) -> float | None:
    values = [
        row["transaction"][figure] / row["separate"][figure]
        for row in rows
        if row["separate"][figure]
    ]
    return round(statistics.median(values), 3) if values else None


def report(rows: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "rounds": len(rows),
        "resources_per_unit": 1 + GOALS * (1 + RATINGS_PER_GOAL),
    }
    for label in ("transaction", "separate"):
        summary[label] = {
            figure: _median(rows, label, figure) for figure in ("ms", "server_cpu_ms", "db_cpu_ms")
        }
    summary["ratios"] = {
        figure: _ratio(rows, figure) for figure in ("ms", "server_cpu_ms", "db_cpu_ms")
    }
    tx, sep, ratio = summary["transaction"], summary["separate"], summary["ratios"]
    print(f"per plan of {summary['resources_per_unit']} resources, medians of {len(rows)} rounds")
    print(f"{'':14}{'p50 ms':>10}{'server CPU ms':>16}{'db CPU ms':>12}")
    for label, fig in (("transaction", tx), ("separate", sep)):
        print(f"{label:14}{fig['ms']:>10}{fig['server_cpu_ms']:>16}{fig['db_cpu_ms']!s:>12}")
    print(
        f"{'ratio (tx/sep)':14}{ratio['ms']:>10}{ratio['server_cpu_ms']:>16}{ratio['db_cpu_ms']!s:>12}"
    )
    print("targets: latency ratio <= 0.5; server and database CPU ratios <= 1.0")
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    summary = asyncio.run(bench(args.rounds))
    print(f"saved {save_results('transaction', summary)}")


if __name__ == "__main__":
    main()
