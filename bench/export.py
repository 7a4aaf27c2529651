"""Benchmark Bulk Data export (issue 16): resources per second, the server's memory growth, the
database's CPU per resource, and how long other requests wait while an export runs.

    python bench/export.py [--patients 500] [--per-patient 100] [--runs 3] [--rounds 1]
                           [--baseline OTHER_CHECKOUT] [--data-dir DIR]

Data: the data set of bench/search.py (N patients with 3 Goals and M Observations each: ORS/SRS
scores and GAS ratings; 50,000 Observations by default), stored straight into the store as the
server's own records are (`FhirService.first_version`: the same documents, text and search
index, that a write stores, without validation and without the clinical rules an ORS write
triggers: this bench measures the export, bench/search.py the writes), in batches of
`LOAD_BATCH`, the next batch built while the database stores the one before. Loading is still
the slow part (the embedded database spends ~2 ms of CPU per Observation on its index keys), so
the loaded data is kept and reused: the database `bench_export_<N>x<M>`, marked complete by a
document in its `fhirgoal_meta`, on the embedded database in a kept data directory (`--data-dir`,
default bench/results/export-data-<N>x<M>), or on MONGODB_URI's server.

Then it starts `fhirgoal serve` as its own process and runs `--runs` system-level exports of the
Observations (`$export?_type=Observation`) one after the other, each timed from kick-off until
its status says complete (polled every 50 ms, so the figure is at most that much high), checks
that the manifest counts every stored Observation, downloads the files of the last run (counting
the lines), and deletes each job. While each export runs, a reader reads one Observation by id
(`GET Observation/{id}`) every 20 ms; its latencies against the same reader's with no export
running show how long an export holds other requests up. The server's memory: its peak resident
set (VmHWM) before the first export and after the last, and its resident set sampled every 20 ms.

Rounds (bench/harness.py says why): `--rounds` times, a server of each checkout runs its `--runs`
exports in turn on the same data (with `--baseline`, another checkout's server first, e.g. the
main tree's); each figure is reported as its median over the rounds, and this checkout's
resources per second over the baseline's as the median of the ratios taken within each round.

Targets: at least 5,000 resources/s on the embedded database; peak RSS growth under 100 MB.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import RESULTS, Database, cpu_seconds, save_results, start_server
from search import patient_resources

from fhirgoal.bootstrap import build_service
from fhirgoal.config import Settings
from fhirgoal.fhir.service import FhirService
from fhirgoal.store.embedded import EmbeddedDatabase, free_port
from fhirgoal.store.mongo import connect
from fhirgoal.store.repository import META_COLLECTION, Version

ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}
LOAD_BATCH = 1000  # resources per insert_many (this bench's client has no socket timeout)
READ_PAUSE = 0.02  # seconds between the reader's requests
IDLE_READS = 200  # the reader's requests with no export running
MARK = "bench-export-data"
CHECKOUT = Path(__file__).resolve().parent.parent


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


# ---- the data, loaded once ---------------------------------------------------------------------
@contextmanager
def kept_database(data_dir: Path) -> Iterator[Database]:
    """MONGODB_URI when set, else the embedded database on `data_dir` (kept after the run)."""
    uri = os.environ.get("MONGODB_URI")
    if uri:
        yield Database(uri, None)
        return
    embedded = EmbeddedDatabase(data_dir)
    try:
        started = embedded.start()
        yield Database(started, embedded.process.pid if embedded.process else None)
    finally:
        embedded.stop()


async def ensure_loaded(service: FhirService, patients: int, per_patient: int) -> int:
    """Load the data set unless this database holds it already; the Observations stored."""
    meta = service.repo.collection(META_COLLECTION)
    # `marks`: loaded through a repository that leaves write marks (store/write_marks.py)
    wanted = {"patients": patients, "per_patient": per_patient, "marks": True}
    mark = await meta.find_one({"_id": MARK})
    if mark is not None and mark.get("data") == wanted:
        print(f"reusing the loaded data set ({mark['observations']} Observations)")
        return int(mark["observations"])
    for rt in ("Patient", "Goal", "Observation"):
        await service.repo.collection(rt).delete_many({})
    started, stored, observations = time.perf_counter(), 0, 0
    pending: asyncio.Task[None] | None = None
    batch: list[tuple[Version, dict[str, Any]]] = []
    for i in range(patients):
        for resource in patient_resources(i, per_patient):
            # an instant per resource, as writes have (a shared one would be a bulk import's)
            batch.append(service.first_version(resource, datetime.now(UTC)))
            observations += resource["resourceType"] == "Observation"
            if len(batch) >= LOAD_BATCH:
                if pending is not None:
                    await pending  # the database stores one batch while the next is built
                pending = asyncio.create_task(service.store_first_versions(batch))
                stored, batch = stored + len(batch), []
    if pending is not None:
        await pending
    if batch:
        await service.store_first_versions(batch)
        stored += len(batch)
    seconds = time.perf_counter() - started
    print(f"loaded {stored} resources in {seconds:.1f} s = {stored / seconds:.0f}/s")
    await meta.replace_one(
        {"_id": MARK}, {"data": wanted, "observations": observations}, upsert=True
    )
    return observations


# ---- one export, and a reader beside it ---------------------------------------------------------
async def one_export(client: httpx.AsyncClient) -> tuple[float, dict[str, Any], str]:
    started = time.perf_counter()
    kick = await client.get("/$export", params={"_type": "Observation"}, headers=ASYNC)
    if kick.status_code != 202:
        raise SystemExit(f"kick-off answered {kick.status_code}: {kick.text}")
    status_url = kick.headers["Content-Location"]
    while True:
        status = await client.get(status_url)
        if status.status_code == 200:
            return time.perf_counter() - started, status.json(), status_url
        if status.status_code != 202:
            raise SystemExit(f"status answered {status.status_code}: {status.text}")
        await asyncio.sleep(0.05)


async def read_while(
    client: httpx.AsyncClient, ids: list[str], latencies: list[float], count: int | None = None
) -> None:
    """Read Observations by id, one every READ_PAUSE seconds, until cancelled (or `count`)."""
    rng = random.Random(11)
    while count is None or len(latencies) < count:
        started = time.perf_counter()
        response = await client.get(f"/Observation/{rng.choice(ids)}")
        if response.status_code != 200:
            raise SystemExit(f"read answered {response.status_code}: {response.text}")
        latencies.append(time.perf_counter() - started)
        await asyncio.sleep(READ_PAUSE)


def percentiles(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    cut = (
        statistics.quantiles(ordered, n=100, method="inclusive")
        if len(ordered) > 1
        else ordered * 99
    )
    return {
        "reads": len(ordered),
        "p50_ms": round(cut[49] * 1000, 1),
        "p99_ms": round(cut[98] * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


async def bench(
    uri: str,
    database_pid: int | None,
    patients: int,
    per_patient: int,
    runs: int,
    rounds: int,
    baseline: Path | None,
) -> dict[str, Any]:
    db = f"bench_export_{patients}x{per_patient}"
    client = connect(uri, timeout=60)  # a busy database may answer its monitor late
    service = await build_service(Settings(mongodb_uri=uri, db=db), client)
    expected = await ensure_loaded(service, patients, per_patient)
    await client.close()
    if not runs:
        return {"observations": expected}
    ids = [
        r["id"]
        for i in range(min(patients, 20))
        for r in patient_resources(i, per_patient)
        if r["resourceType"] == "Observation"
    ]
    # each round runs every checkout's server in turn: drift slows them alike within a round
    checkouts = {"baseline": baseline, "this": CHECKOUT} if baseline else {"this": CHECKOUT}
    measured: dict[str, list[dict[str, Any]]] = {name: [] for name in checkouts}
    for round_number in range(rounds):
        for name, checkout in checkouts.items():
            result = await measure(uri, database_pid, db, checkout, runs, expected, ids)
            result["round"] = round_number + 1
            print(name, json.dumps(result))
            measured[name].append(result)
    summary: dict[str, Any] = {
        "observations": expected,
        "rounds": rounds,
        **{name: over_rounds(results) for name, results in measured.items()},
    }
    if baseline:
        summary["baseline_checkout"] = str(baseline)
        ratios = [
            this["per_s_median"] / base["per_s_median"]
            for this, base in zip(measured["this"], measured["baseline"], strict=True)
        ]
        summary["per_s_ratio_in_rounds"] = [round(r, 2) for r in ratios]
        summary["per_s_ratio_median"] = round(statistics.median(ratios), 2)
    return summary


def over_rounds(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Each figure's median over the rounds, and the rounds' resources per second."""
    figures = ("per_s_median", "server_cpu_ms_per_1000", "database_cpu_ms_per_1000",
               "download_per_s", "peak_rss_growth_mb", "rss_sampled_growth_mb")  # fmt: skip
    merged: dict[str, Any] = {}
    for figure in figures:
        found = [r[figure] for r in results if r.get(figure) is not None]
        if found:
            merged[figure] = round(statistics.median(found), 1)
    merged["per_s_rounds"] = [r["per_s_median"] for r in results]
    merged["peak_rss_growth_mb_max"] = max(r["peak_rss_growth_mb"] for r in results)
    merged["read_during_export_p99_ms"] = [r["read_during_export"]["p99_ms"] for r in results]
    merged["read_idle_p99_ms"] = [r["read_idle"]["p99_ms"] for r in results]
    return merged


async def measure(
    uri: str,
    database_pid: int | None,
    db: str,
    checkout: Path,
    runs: int,
    expected: int,
    ids: list[str],
) -> dict[str, Any]:
    """`runs` exports on a server of `checkout` started for them (then stopped)."""
    port = free_port()
    server = start_server(uri, port, db, cwd=checkout)
    peak_rss = [0.0]
    sampler: asyncio.Task[None] | None = None
    try:
        rss_before = memory_mb(server.pid)
        rss_idle = peak_rss[0] = memory_mb(server.pid, "VmRSS")
        sampler = asyncio.create_task(sample_rss(server.pid, peak_rss))
        rows = []
        base = f"http://127.0.0.1:{port}/fhir"
        async with (
            httpx.AsyncClient(base_url=base, timeout=120) as http,
            httpx.AsyncClient(base_url=base, timeout=120) as reader,
        ):
            idle: list[float] = []
            await read_while(reader, ids, idle, IDLE_READS)
            during: list[float] = []
            for run in range(runs):
                server_cpu = cpu_seconds(server.pid)
                database_cpu = cpu_seconds(database_pid) if database_pid else None
                reading = asyncio.create_task(read_while(reader, ids, during))
                try:
                    seconds, manifest, status_url = await one_export(http)
                finally:
                    reading.cancel()
                count = sum(item["count"] for item in manifest["output"])
                if count != expected:
                    raise SystemExit(f"exported {count} Observations, {expected} stored")
                row: dict[str, Any] = {
                    "run": run + 1,
                    "resources": count,
                    "seconds": round(seconds, 2),
                    "per_s": round(count / seconds),
                    "server_cpu_ms_per_1000": round(
                        (cpu_seconds(server.pid) - server_cpu) * 1e6 / count, 1
                    ),
                }
                if database_cpu is not None and database_pid:
                    row["database_cpu_ms_per_1000"] = round(
                        (cpu_seconds(database_pid) - database_cpu) * 1e6 / count, 1
                    )
                rows.append(row)
                print(row)
                if run + 1 < runs:
                    await http.delete(status_url)
            started, lines = time.perf_counter(), 0
            for item in manifest["output"]:
                async with http.stream("GET", item["url"]) as response:
                    async for line in response.aiter_lines():
                        lines += bool(line)
            download = time.perf_counter() - started
            if lines != expected:
                raise SystemExit(f"downloaded {lines} lines, {expected} expected")
            await http.delete(status_url)
        rss_after = memory_mb(server.pid)
    finally:
        if sampler is not None:
            sampler.cancel()
        server.terminate()
        server.wait(timeout=30)

    def median_of(key: str) -> float | None:
        found = [row[key] for row in rows if key in row]
        return statistics.median(found) if found else None

    return {
        "runs": rows,
        "per_s_median": statistics.median(row["per_s"] for row in rows),
        "server_cpu_ms_per_1000": median_of("server_cpu_ms_per_1000"),
        "database_cpu_ms_per_1000": median_of("database_cpu_ms_per_1000"),
        "download_per_s": round(expected / download),
        "read_idle": percentiles(idle),
        "read_during_export": percentiles(during),
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
    parser.add_argument("--runs", type=int, default=3, help="exports per server start")
    parser.add_argument(
        "--rounds", type=int, default=1, help="server starts of each checkout, interleaved"
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        default=None,
        help="another checkout (e.g. the main tree) whose server runs in turn with this one's",
    )
    parser.add_argument("--data-dir", type=Path, default=None)
    args = parser.parse_args()
    data_dir = args.data_dir or RESULTS / f"export-data-{args.patients}x{args.per_patient}"
    data_dir.mkdir(parents=True, exist_ok=True)
    with kept_database(data_dir) as db:
        result = asyncio.run(
            bench(
                db.uri,
                db.pid,
                args.patients,
                args.per_patient,
                args.runs,
                args.rounds,
                args.baseline,
            )
        )
    print(json.dumps(result, indent=1))
    print(f"results: {save_results('export', result)}")


if __name__ == "__main__":
    main()
