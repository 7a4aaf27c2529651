"""Benchmark Bulk Data export (issue 16): resources per second and the server's memory growth.

    python bench/export.py [--patients 500] [--per-patient 100] [--runs 3]

Loads the data set of bench/search.py (N patients with Goals and M Observations each: ORS/SRS
scores and GAS ratings; 50,000 Observations by default) straight into the store, as the server's
own records are stored (`FhirService.first_version` + `store_first_versions`: the same documents,
text and search index, that a write stores, without validation and without the clinical rules that
an ORS write triggers, so that 50,000 load in seconds rather than half an hour: this bench measures
the export, bench/search.py the writes). Then it starts `fhirgoal serve` as its own process and
runs `--runs` system-level exports of the Observations (`$export?_type=Observation`) one after the
other, each timed from kick-off until its status says complete (the poll runs every 50 ms, so the
figure is at most that much high), and downloads the files of the last one, checking the line
count. The server's memory: its peak resident set (VmHWM) before the first export and after the
last, and its resident set (VmRSS) sampled every 20 ms while the exports run.

Targets: at least 5,000 resources/s on the embedded database; peak RSS growth under 100 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import cpu_seconds, database, save_results, start_server
from search import patient_resources

from fhirgoal.bootstrap import build_service
from fhirgoal.config import Settings
from fhirgoal.fhir.service import FhirService
from fhirgoal.store.embedded import free_port
from fhirgoal.store.mongo import connect
from fhirgoal.store.repository import Version

ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}


# resources per insert: a bigger one can outlast the 10 s socket timeout on a busy machine
LOAD_BATCH = 250


def memory_mb(pid: int, name: str = "VmHWM") -> float:
    """VmHWM (peak resident set) or VmRSS (resident set now) of a process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{name}:"):
            return int(line.split()[1]) / 1024
    raise SystemExit(f"no {name} in /proc")


async def sample_rss(pid: int, peak: list[float]) -> None:
    """Keep the highest VmRSS seen in `peak[0]` until cancelled."""
    while True:
        peak[0] = max(peak[0], memory_mb(pid, "VmRSS"))
        await asyncio.sleep(0.02)


async def load(service: FhirService, patients: int, per_patient: int) -> None:
    started, stored = time.perf_counter(), 0
    batch: list[tuple[Version, dict[str, Any]]] = []
    for i in range(patients):
        for resource in patient_resources(i, per_patient):
            # an instant per resource, as writes have (a shared one would be a bulk import's)
            batch.append(service.first_version(resource, datetime.now(UTC)))
            if len(batch) >= LOAD_BATCH:
                await service.store_first_versions(batch)
                stored, batch = stored + len(batch), []
    if batch:
        await service.store_first_versions(batch)
        stored += len(batch)
    seconds = time.perf_counter() - started
    print(f"loaded {stored} resources in {seconds:.1f} s = {stored / seconds:.0f}/s")


async def one_export(client: httpx.AsyncClient) -> tuple[float, dict[str, Any]]:
    started = time.perf_counter()
    kick = await client.get("/$export", params={"_type": "Observation"}, headers=ASYNC)
    if kick.status_code != 202:
        raise SystemExit(f"kick-off answered {kick.status_code}: {kick.text}")
    while True:
        status = await client.get(kick.headers["Content-Location"])
        if status.status_code == 200:
            return time.perf_counter() - started, status.json()
        if status.status_code != 202:
            raise SystemExit(f"status answered {status.status_code}: {status.text}")
        await asyncio.sleep(0.05)


async def bench(
    uri: str, database_pid: int | None, patients: int, per_patient: int, runs: int
) -> dict[str, Any]:
    db = f"bench_export_{int(time.time())}"
    client = connect(uri)
    service = await build_service(Settings(mongodb_uri=uri, db=db), client)
    port = free_port()
    server = start_server(uri, port, db)
    peak_rss = [0.0]
    sampler: asyncio.Task[None] | None = None
    try:
        await load(service, patients, per_patient)
        expected = await service.repo.count_all("Observation")
        rss_before = memory_mb(server.pid)
        rss_idle = peak_rss[0] = memory_mb(server.pid, "VmRSS")
        sampler = asyncio.create_task(sample_rss(server.pid, peak_rss))
        rows = []
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/fhir", timeout=60) as http:
            for run in range(runs):
                server_cpu = cpu_seconds(server.pid)
                database_cpu = cpu_seconds(database_pid) if database_pid else None
                seconds, manifest = await one_export(http)
                count = sum(item["count"] for item in manifest["output"])
                if count != expected:
                    raise SystemExit(f"exported {count} Observations, {expected} stored")
                row = {
                    "run": run + 1,
                    "resources": count,
                    "seconds": round(seconds, 2),
                    "per_s": round(count / seconds),
                    "server_cpu_s": round(cpu_seconds(server.pid) - server_cpu, 2),
                }
                if database_cpu is not None and database_pid:
                    row["database_cpu_s"] = round(cpu_seconds(database_pid) - database_cpu, 2)
                rows.append(row)
                print(row)
            started, lines = time.perf_counter(), 0
            for item in manifest["output"]:
                async with http.stream("GET", item["url"]) as response:
                    async for line in response.aiter_lines():
                        lines += bool(line)
            download = time.perf_counter() - started
            if lines != expected:
                raise SystemExit(f"downloaded {lines} lines, {expected} expected")
        rss_after = memory_mb(server.pid)
    finally:
        if sampler is not None:
            sampler.cancel()
        server.terminate()
        server.wait(timeout=30)
        await client.drop_database(db)
        await client.close()
    return {
        "runs": rows,
        "download_per_s": round(expected / download),
        "peak_rss_mb_before": round(rss_before, 1),
        "peak_rss_mb_after": round(rss_after, 1),
        "peak_rss_growth_mb": round(rss_after - rss_before, 1),
        "rss_mb_idle": round(rss_idle, 1),
        "rss_mb_sampled_peak": round(peak_rss[0], 1),
        "rss_sampled_growth_mb": round(peak_rss[0] - rss_idle, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument("--per-patient", type=int, default=100)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    with database() as db:
        result = asyncio.run(bench(db.uri, db.pid, args.patients, args.per_patient, args.runs))
    print(result)
    print(f"results: {save_results('export', result)}")


if __name__ == "__main__":
    main()
