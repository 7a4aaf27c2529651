"""Search speed side by side (issue 17): fhirgoal against the raw MongoDB driver on one database.

    python bench/search_vs_driver.py [--patients 100 1000] [--per-patient 50] [--rounds 3]
                                     [--clients 1 8] [--requests 400] [--queries patient ...]

Data: P patients with M Observations each, dated weekly, written through the FhirService (the real
write path) into fhirgoal's collections, and the same Observations as plain documents into a
`raw_observation` collection with the best indexes for the queries below. Of each patient's
Observations, four in five are vital signs (four codes in turn) and one in five rates the
patient's Goal (`focus`, with a code of no clinical rule, so no after-write work is measured).
Both sizes are loaded in turn (5,000 then 50,000 Observations by default) and measured at each.

The searches (issue 17: those EHRs and the app make most), patients chosen round-robin, each
against the raw driver's nearest equivalent turned into a list:

  patient       Observation?subject=Patient/pN&_count=20        find({subject.reference}).limit(20)
  patient-paged the same page                                     .sort(_id).limit(21): what
                a page must cost the driver too, to have a next page (fhirgoal's order is the
                id's, and it reads one row more to know whether one follows)
  compartment   Patient/pN/Observation?_count=20                  the same
  code          ...&code=http://loinc.org|29463-7 (1 in 5)       find({subject, code}).limit(20)
  date-range    ...&date=ge<the patient's middle week>            find({subject, date >=}).limit(20)
  date-sort     ...&_sort=-date&_count=20                         .sort(date -1).limit(20)
  date-sort-2   the second page of date-sort (its next link)      find({subject, date <}).sort.limit
  revinclude    Goal?_id=gN&_revinclude=Observation:focus        find_one(goal) + find({focus})
  count         Observation?subject=Patient/pN&_summary=count     count_documents({subject})

Each round runs, per search and client count, fhirgoal then the driver with the same clients and
request count; ratios are taken within each round (as bench/rest_core.py does), the median
reported. Per request: fhirgoal's server CPU, and for both the embedded database's CPU (the
process this bench started).

Targets at 8 clients (issue 17): fhirgoal's rate at least 0.5 of the driver's; database CPU per
page under 5 ms; server CPU per page under 2 ms; p50 growth from 5,000 to 50,000 under 1.5x.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (
    DatabaseCpu,
    Result,
    Served,
    cpu_seconds,
    database,
    save_results,
    serve,
    shut_down,
    summarize,
    timed,
)

from fhirgoal.bootstrap import build_service
from fhirgoal.config import Settings
from fhirgoal.core.access import UNRESTRICTED
from fhirgoal.fhir.service import FhirService
from fhirgoal.store.mongo import connect

LOAD_TASKS = 8
SEARCH_NAMES = ["patient", "patient-paged", "compartment", "code", "date-range", "date-sort",
                "date-sort-2", "revinclude", "count"]  # fmt: skip


VITALS = ["29463-7", "8867-4", "8310-5", "9279-1"]  # weight, heart rate, temperature, breaths
RATING = {"system": "https://example.org/fhir/CodeSystem/bench", "code": "goal-rating"}
WEIGHT = "29463-7"


def week_date(week: int) -> str:
    return f"{2024 + week // 52}-{1 + (week % 52) // 5 % 12:02d}-{1 + week % 28:02d}T10:00:00Z"


def observation(patient: int, week: int) -> dict[str, Any]:
    rating = week % 5 == 4
    code = (
        {"coding": [RATING]}
        if rating
        else {"coding": [{"system": "http://loinc.org", "code": VITALS[week % 5 % 4]}]}
    )
    body: dict[str, Any] = {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category",
                                  "code": "survey" if rating else "vital-signs"}]}],
        "code": code,
        "subject": {"reference": f"Patient/p{patient}"},
        "effectiveDateTime": week_date(week),
        "valueQuantity": {"value": 60 + (patient * 7 + week) % 40, "unit": "kg",
                          "system": "http://unitsofmeasure.org", "code": "kg"},
    }  # fmt: skip
    if rating:
        body["focus"] = [{"reference": f"Goal/g{patient}"}]
    return body


def goal(patient: int) -> dict[str, Any]:
    return {"resourceType": "Goal", "id": f"g{patient}", "lifecycleStatus": "active",
            "description": {"text": "walk daily"}, "subject": {"reference": f"Patient/p{patient}"}}  # fmt: skip


async def load(
    service: FhirService, raw: Any, raw_goals: Any, patients: range, per_patient: int
) -> float:
    """Write the patients, their Goals and Observations; the seconds it took."""
    started = time.perf_counter()
    for p in patients:
        await service.update(
            UNRESTRICTED, "Patient", f"p{p}", {"resourceType": "Patient", "id": f"p{p}"}, None
        )
        await service.update(UNRESTRICTED, "Goal", f"g{p}", goal(p), None)
        await raw_goals.insert_one({**goal(p), "_id": f"g{p}"})
    work = [(p, w) for p in patients for w in range(per_patient)]

    async def writer(chunk: list[tuple[int, int]]) -> None:
        for p, w in chunk:
            body = observation(p, w)
            outcome = await service.create(UNRESTRICTED, "Observation", body, None, "http://b")
            assert outcome.status == 201 and outcome.version is not None
            await raw.insert_one({**body, "id": outcome.version.id})

    await asyncio.gather(*(writer(work[k::LOAD_TASKS]) for k in range(LOAD_TASKS)))
    return time.perf_counter() - started


@dataclass(frozen=True)
class Search:
    """One search: fhirgoal's request for patient n, and the driver's equivalent."""

    name: str
    path: Callable[[int], str]
    driver: Callable[[int], Awaitable[Any]]


def searches(raw: Any, raw_goals: Any, per_patient: int, page_two: dict[int, str],
             page_two_date: dict[int, str]) -> list[Search]:  # fmt: skip
    middle = week_date(per_patient // 2)[:10]

    def subject(n: int) -> dict[str, Any]:
        return {"subject.reference": f"Patient/p{n}"}

    async def listed(cursor: Any) -> list[Any]:
        found = [doc async for doc in cursor]
        assert found
        return found

    async def revinclude(n: int) -> None:
        assert await raw_goals.find_one({"_id": f"g{n}"})
        await listed(raw.find({"focus.reference": f"Goal/g{n}"}).limit(1000))

    async def count(n: int) -> None:
        assert await raw.count_documents(subject(n))

    by_date = [("effectiveDateTime", -1)]
    return [
        Search("patient", lambda n: f"/fhir/Observation?subject=Patient/p{n}&_count=20",
               lambda n: listed(raw.find(subject(n)).limit(20))),
        Search("patient-paged", lambda n: f"/fhir/Observation?subject=Patient/p{n}&_count=20",
               lambda n: listed(raw.find(subject(n)).sort("_id", 1).limit(21))),
        Search("compartment", lambda n: f"/fhir/Patient/p{n}/Observation?_count=20",
               lambda n: listed(raw.find(subject(n)).limit(20))),
        Search("code", lambda n: f"/fhir/Observation?subject=Patient/p{n}&code=http://loinc.org|{WEIGHT}&_count=20",
               lambda n: listed(raw.find({**subject(n), "code.coding.code": WEIGHT}).limit(20))),
        Search("date-range", lambda n: f"/fhir/Observation?subject=Patient/p{n}&date=ge{middle}&_count=20",
               lambda n: listed(raw.find({**subject(n), "effectiveDateTime": {"$gte": middle}}).limit(20))),
        Search("date-sort", lambda n: f"/fhir/Observation?subject=Patient/p{n}&_sort=-date&_count=20",
               lambda n: listed(raw.find(subject(n)).sort(by_date).limit(20))),
        Search("date-sort-2", lambda n: page_two[n],
               lambda n: listed(raw.find({**subject(n), "effectiveDateTime": {"$lt": page_two_date[n]}}).sort(by_date).limit(20))),
        Search("revinclude", lambda n: f"/fhir/Goal?_id=g{n}&_revinclude=Observation:focus", revinclude),
        Search("count", lambda n: f"/fhir/Observation?subject=Patient/p{n}&_summary=count", count),
    ]  # fmt: skip


async def second_pages(served: Served, patients: int) -> tuple[dict[int, str], dict[int, str]]:
    """Each patient's date-sort second page (its next link, as a path) and, for the driver, the
    date the first page ended on."""
    pages, dates = {}, {}
    async with httpx.AsyncClient(base_url=f"http://{served.host}") as client:
        for n in range(patients):
            first = await client.get(
                f"/fhir/Observation?subject=Patient/p{n}&_sort=-date&_count=20"
            )
            bundle = first.json()
            link = next(x["url"] for x in bundle["link"] if x["relation"] == "next")
            parts = urlsplit(link)
            pages[n] = f"{parts.path}?{parts.query}"
            dates[n] = bundle["entry"][-1]["resource"]["effectiveDateTime"]
    return pages, dates


async def measure_round(
    served: Served, db_pid: int | None, patients: int, clients: int, requests: int,
    search: Search,
) -> list[dict[str, Any]]:  # fmt: skip
    rows = []
    paths = [served.request("GET", search.path(p)) for p in range(patients)]
    db_cpu = DatabaseCpu(db_pid)
    server_before = cpu_seconds(served.process.pid)
    db_cpu.start()
    result = await served.run(paths, requests, clients)
    row = summarize("fhirgoal", clients, result,
                    cpu_seconds(served.process.pid) - server_before, db_cpu.stop())  # fmt: skip
    rows.append({**row, "search": search.name})
    if set(result.statuses) != {200}:
        raise SystemExit(f"fhirgoal answered {result.statuses} to {search.name}")
    db_cpu.start()
    driven: Result = await timed(clients, requests, lambda n: search.driver(n % patients))
    rows.append(
        {**summarize("driver", clients, driven, None, db_cpu.stop()), "search": search.name}
    )
    return rows


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"config": vars(args), "sizes": []}
    with database() as db:
        name = f"bench_vsdriver_{int(time.time())}"
        client = connect(db.uri)
        service = await build_service(Settings(mongodb_uri=db.uri, db=name), client)
        raw = client[name]["raw_observation"]
        raw_goals = client[name]["raw_goal"]
        for keys in (["subject.reference"], ["subject.reference", "_id"],
                     ["subject.reference", "code.coding.code"],
                     ["subject.reference", "effectiveDateTime"], ["focus.reference"]):  # fmt: skip
            await raw.create_index([(key, 1) for key in keys])
        served = serve(db.uri, name)
        loaded = 0
        try:
            for patients in args.patients:
                seconds = await load(
                    service, raw, raw_goals, range(loaded, patients), args.per_patient
                )
                loaded = patients
                size = patients * args.per_patient
                print(f"loaded to {size} Observations ({seconds:.0f} s)", flush=True)
                page_two, page_two_date = await second_pages(served, patients)
                chosen = [
                    s
                    for s in searches(raw, raw_goals, args.per_patient, page_two, page_two_date)
                    if s.name in args.queries
                ]
                rows = []
                for round_number in range(args.rounds):
                    for search in chosen:
                        for clients in args.clients:
                            for row in await measure_round(
                                served, db.pid, patients, clients, args.requests, search
                            ):
                                rows.append({**row, "round": round_number, "observations": size})
                results["sizes"].append({"observations": size, "rows": rows})
                print_size(size, rows, args.clients, [s.name for s in chosen])
        finally:
            await shut_down(db.uri, name, served.process)
            await client.close()
    results["growth"] = growth(results["sizes"], args.clients)
    for search_name, by_clients in results["growth"].items():
        for clients, ratio in by_clients.items():
            print(f"p50 growth {results['sizes'][0]['observations']} -> "
                  f"{results['sizes'][-1]['observations']}, {search_name}, {clients} clients: {ratio}")  # fmt: skip
    return results


def _median(rows: list[dict[str, Any]], operation: str, clients: int, figure: str) -> float:
    found = [r[figure] for r in rows if r["operation"] == operation and r["clients"] == clients]
    return round(statistics.median(found), 3) if found else float("nan")


def print_size(
    size: int, rows: list[dict[str, Any]], clients_list: list[int], names: list[str]
) -> None:
    for search_name in names:
        mine = [r for r in rows if r["search"] == search_name]
        for clients in clients_list:
            ratios, db_ratios = [], []
            for n in sorted({r["round"] for r in mine}):
                ours = [r for r in mine if r["round"] == n and r["clients"] == clients]
                rate = {r["operation"]: r["throughput_per_s"] for r in ours}
                ratios.append(rate["fhirgoal"] / rate["driver"])
                db = {r["operation"]: r["db_cpu_ms_per_request"] for r in ours}
                if db.get("fhirgoal") and db.get("driver"):
                    db_ratios.append(db["fhirgoal"] / db["driver"])
            db_ratio = f"{statistics.median(db_ratios):.2f}" if db_ratios else "n/a"
            print(
                f"{size} obs, {search_name:12s} {clients} clients: fhirgoal {_median(mine, 'fhirgoal', clients, 'throughput_per_s')}/s "
                f"(p50 {_median(mine, 'fhirgoal', clients, 'p50_ms')} ms, server CPU "
                f"{_median(mine, 'fhirgoal', clients, 'server_cpu_ms_per_request')} ms, db CPU "
                f"{_median(mine, 'fhirgoal', clients, 'db_cpu_ms_per_request')} ms); driver "
                f"{_median(mine, 'driver', clients, 'throughput_per_s')}/s (db CPU "
                f"{_median(mine, 'driver', clients, 'db_cpu_ms_per_request')} ms, fhirgoal/driver "
                f"{db_ratio}); rate ratio median {statistics.median(ratios):.2f} "
                f"{[round(r, 2) for r in ratios]}",
                flush=True,
            )  # fmt: skip


def growth(sizes: list[dict[str, Any]], clients_list: list[int]) -> dict[str, dict[int, float]]:
    if len(sizes) < 2:
        return {}
    first, last = sizes[0]["rows"], sizes[-1]["rows"]
    names = sorted({r["search"] for r in first} & {r["search"] for r in last})
    found: dict[str, dict[int, float]] = {}
    for search_name in names:
        before = [r for r in first if r["search"] == search_name]
        after = [r for r in last if r["search"] == search_name]
        found[search_name] = {
            c: round(
                _median(after, "fhirgoal", c, "p50_ms") / _median(before, "fhirgoal", c, "p50_ms"),
                2,
            )
            for c in clients_list
        }
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--patients", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--per-patient", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--queries", nargs="+", default=SEARCH_NAMES, choices=SEARCH_NAMES)
    args = parser.parse_args()
    results = asyncio.run(bench(args))
    print(f"results: {save_results('search_vs_driver', results)}")


if __name__ == "__main__":
    main()
