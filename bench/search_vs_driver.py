"""Search speed side by side (issue 17): fhirgoal against the raw MongoDB driver on one database.

    python bench/search_vs_driver.py [--patients 100 1000] [--per-patient 50] [--rounds 5]
                                     [--clients 1 8] [--requests 800]

Data: P patients with M Observations each (body weight, dated weekly), written through the
FhirService (the real write path) into fhirgoal's collections, and the same Observations as plain
documents into a `raw_observation` collection with the best index for the query
(`subject.reference`). Both sizes are loaded in turn (5,000 then 50,000 Observations by default)
and measured at each.

The query is the one EHRs and the app make most: one patient's Observations, a page of 20
(`Observation?subject=Patient/pN&_count=20`, patients chosen round-robin), against the raw
driver's `find({"subject.reference": "Patient/pN"}).limit(20)` turned into a list. Each round runs
fhirgoal then the driver with the same clients and request count; ratios are taken within each
round (as bench/rest_core.py does), the median reported. Per request: fhirgoal's server CPU, and
for both the embedded database's CPU (the process this bench started).

Targets at 8 clients (issue 17): fhirgoal's rate at least 0.5 of the driver's; database CPU per
page under 5 ms; server CPU per page under 2 ms; p50 growth from 5,000 to 50,000 under 1.5x.
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
from harness import (
    DatabaseCpu,
    Result,
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


def observation(patient: int, week: int) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "vital-signs"}]}],
        "code": {"coding": [{"system": "http://loinc.org", "code": "29463-7"}], "text": "Body weight"},
        "subject": {"reference": f"Patient/p{patient}"},
        "effectiveDateTime": f"{2024 + week // 52}-{1 + (week % 52) // 5 % 12:02d}-{1 + week % 28:02d}T10:00:00Z",
        "valueQuantity": {"value": 60 + (patient * 7 + week) % 40, "unit": "kg",
                          "system": "http://unitsofmeasure.org", "code": "kg"},
    }  # fmt: skip


async def load(service: FhirService, raw: Any, patients: range, per_patient: int) -> float:
    """Write the patients and their Observations; the seconds it took."""
    started = time.perf_counter()
    for p in patients:
        await service.update(
            UNRESTRICTED, "Patient", f"p{p}", {"resourceType": "Patient", "id": f"p{p}"}, None
        )
    work = [(p, w) for p in patients for w in range(per_patient)]

    async def writer(chunk: list[tuple[int, int]]) -> None:
        for p, w in chunk:
            body = observation(p, w)
            outcome = await service.create(UNRESTRICTED, "Observation", body, None, "http://b")
            assert outcome.status == 201 and outcome.version is not None
            await raw.insert_one({**body, "id": outcome.version.id})

    await asyncio.gather(*(writer(work[k::LOAD_TASKS]) for k in range(LOAD_TASKS)))
    return time.perf_counter() - started


async def measure_round(
    served: Any, raw: Any, db_pid: int | None, patients: int, clients: int, requests: int
) -> list[dict[str, Any]]:
    rows = []
    paths = [
        served.request("GET", f"/fhir/Observation?subject=Patient/p{p}&_count=20")
        for p in range(patients)
    ]
    db_cpu = DatabaseCpu(db_pid)
    server_before = cpu_seconds(served.process.pid)
    db_cpu.start()
    result = await served.run(paths, requests, clients)
    rows.append(
        summarize(
            "fhirgoal",
            clients,
            result,
            cpu_seconds(served.process.pid) - server_before,
            db_cpu.stop(),
        )
    )
    if set(result.statuses) != {200}:
        raise SystemExit(f"fhirgoal answered {result.statuses}")

    async def driver(n: int) -> None:
        cursor = raw.find({"subject.reference": f"Patient/p{n % patients}"}).limit(20)
        found = [doc async for doc in cursor]
        assert found

    db_cpu.start()
    driven: Result = await timed(clients, requests, driver)
    rows.append(summarize("driver", clients, driven, None, db_cpu.stop()))
    return rows


async def bench(args: argparse.Namespace) -> dict[str, Any]:
    results: dict[str, Any] = {"config": vars(args), "sizes": []}
    with database() as db:
        name = f"bench_vsdriver_{int(time.time())}"
        client = connect(db.uri)
        service = await build_service(Settings(mongodb_uri=db.uri, db=name), client)
        raw = client[name]["raw_observation"]
        await raw.create_index("subject.reference")
        served = serve(db.uri, name)
        loaded = 0
        try:
            for patients in args.patients:
                seconds = await load(service, raw, range(loaded, patients), args.per_patient)
                loaded = patients
                size = patients * args.per_patient
                print(f"loaded to {size} Observations ({seconds:.0f} s)")
                rows = []
                for round_number in range(args.rounds):
                    for clients in args.clients:
                        for row in await measure_round(
                            served, raw, db.pid, patients, clients, args.requests
                        ):
                            rows.append({**row, "round": round_number, "observations": size})
                results["sizes"].append({"observations": size, "rows": rows})
                print_size(size, rows, args.clients)
        finally:
            await shut_down(db.uri, name, served.process)
            await client.close()
    results["growth"] = growth(results["sizes"], args.clients)
    for clients, ratio in results["growth"].items():
        print(f"p50 growth {results['sizes'][0]['observations']} -> "
              f"{results['sizes'][-1]['observations']} at {clients} clients: {ratio}")  # fmt: skip
    return results


def _median(rows: list[dict[str, Any]], operation: str, clients: int, figure: str) -> float:
    found = [r[figure] for r in rows if r["operation"] == operation and r["clients"] == clients]
    return round(statistics.median(found), 3) if found else float("nan")


def print_size(size: int, rows: list[dict[str, Any]], clients_list: list[int]) -> None:
    for clients in clients_list:
        ratios = []
        for n in sorted({r["round"] for r in rows}):
            ours = [r for r in rows if r["round"] == n and r["clients"] == clients]
            rate = {r["operation"]: r["throughput_per_s"] for r in ours}
            ratios.append(rate["fhirgoal"] / rate["driver"])
        print(
            f"{size} obs, {clients} clients: fhirgoal {_median(rows, 'fhirgoal', clients, 'throughput_per_s')}/s "
            f"(p50 {_median(rows, 'fhirgoal', clients, 'p50_ms')} ms, server CPU "
            f"{_median(rows, 'fhirgoal', clients, 'server_cpu_ms_per_request')} ms, db CPU "
            f"{_median(rows, 'fhirgoal', clients, 'db_cpu_ms_per_request')} ms); driver "
            f"{_median(rows, 'driver', clients, 'throughput_per_s')}/s (db CPU "
            f"{_median(rows, 'driver', clients, 'db_cpu_ms_per_request')} ms); ratio median "
            f"{statistics.median(ratios):.2f} {[round(r, 2) for r in ratios]}"
        )  # fmt: skip


def growth(sizes: list[dict[str, Any]], clients_list: list[int]) -> dict[int, float]:
    if len(sizes) < 2:
        return {}
    first, last = sizes[0]["rows"], sizes[-1]["rows"]
    return {
        c: round(
            _median(last, "fhirgoal", c, "p50_ms") / _median(first, "fhirgoal", c, "p50_ms"), 2
        )
        for c in clients_list
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--patients", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--per-patient", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--requests", type=int, default=800)
    args = parser.parse_args()
    results = asyncio.run(bench(args))
    print(f"results: {save_results('search_vs_driver', results)}")


if __name__ == "__main__":
    main()
