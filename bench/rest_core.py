"""Benchmark the REST core (issue 2): create / read / update throughput, p50/p99 latency with 1
and 8 concurrent clients, the server process's CPU time per request, and, in the same run, the raw
PyMongo insert_one / find_one rate on the same database. When the bench starts the embedded
database, the database process's CPU per request is reported too, and one more reference row,
"raw insert, indexed": insert_one of the very documents the server stored (resource text plus
search keys) into a collection with the server's indexes, which is what a create costs the
database alone.

    python bench/rest_core.py [--requests 2000] [--concurrency 1 8] [--rounds 3]

Each concurrency is measured `--rounds` times (creates, reads, updates, then the raw driver rows);
figures are medians over the rounds, and the ratios are taken within each round before their
median: the machine's speed drifts between minutes by more than the effects measured.

With MONGODB_URI unset it starts the embedded database in a temporary directory. The server runs
as its own process (`fhirgoal serve`), so its CPU time is read from /proc without the load
generator's. Targets: server CPU per read <= 0.5 ms, per create <= 1.5 ms; create throughput >= 60%
and read throughput >= 70% of the raw driver rate.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from loadgen import Result, render_request, run

from fhirgoal.store.embedded import EmbeddedDatabase, free_port
from fhirgoal.store.mongo import connect

TICKS = os.sysconf("SC_CLK_TCK")


WELLBEING = "https://example.org/fhir/CodeSystem/wellbeing-survey"


def observation(n: int, rid: str | None = None) -> dict[str, Any]:
    """A survey Observation shaped like an ORS result (a value and four components, so the R4
    invariants about components run) but not coded as one: the clinical rules that an ORS write
    triggers are measured by bench/clinical.py; this benchmark measures the REST core."""
    resource: dict[str, Any] = {"resourceType": "Observation"}
    if rid:
        resource["id"] = rid
    resource.update(
        {
            "status": "final",
            "category": [{"coding": [{"system": "http://terminology.hl7.org/CodeSystem/observation-category", "code": "survey"}]}],
            "code": {"coding": [{"system": WELLBEING, "code": "total"}], "text": "Wellbeing total"},
            "subject": {"reference": f"Patient/p{n % 500}"},
            "encounter": {"reference": f"Encounter/e{n}"},
            "effectiveDateTime": f"2026-{1 + n % 12:02d}-{1 + n % 28:02d}T10:00:00+01:00",
            "performer": [{"reference": f"Patient/p{n % 500}"}],
            "valueQuantity": {"value": 23.5, "unit": "{score}", "system": "http://unitsofmeasure.org", "code": "{score}"},
            "component": [
                {"code": {"coding": [{"system": WELLBEING, "code": item}]},
                 "valueQuantity": {"value": 5.9, "unit": "{score}", "system": "http://unitsofmeasure.org", "code": "{score}"}}
                for item in ("individually", "interpersonally", "socially", "overall")
            ],
        }
    )  # fmt: skip
    return resource


@dataclass(frozen=True)
class Database:
    uri: str
    pid: int | None  # the embedded database's process, when this bench started it


@contextmanager
def database() -> Iterator[Database]:
    """MONGODB_URI when set, else an embedded database in a temporary directory, stopped after."""
    uri = os.environ.get("MONGODB_URI")
    if uri:
        yield Database(uri, None)
        return
    with tempfile.TemporaryDirectory() as tmp:
        embedded = EmbeddedDatabase(Path(tmp))
        try:
            started = embedded.start()
            yield Database(started, embedded.process.pid if embedded.process else None)
        finally:
            embedded.stop()


async def shut_down(uri: str, db: str, *servers: subprocess.Popen[bytes]) -> None:
    """Stop the benchmark's servers and drop its database."""
    for server in servers:
        server.terminate()
        server.wait(timeout=30)
    client = connect(uri)
    await client.drop_database(db)
    await client.close()


def save_results(name: str, payload: Any) -> Path:
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    path = out / f"{name}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(payload, indent=1))
    return path


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


def start_server(
    uri: str,
    port: int,
    db: str,
    extra_env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """`fhirgoal serve` as its own process (auth off unless `extra_env` says otherwise), run
    from `cwd` when given (`-m` imports `fhirgoal` from there first: another checkout's code)."""
    env = {**os.environ, "MONGODB_URI": uri, "FHIRGOAL_DB": db, "FHIRGOAL_LOG_LEVEL": "WARNING"}
    env.setdefault("FHIRGOAL_AUTH", "off")
    env.update(extra_env or {})
    command = [sys.executable, "-m", "fhirgoal.cli", "serve", "--port", str(port)]
    process = subprocess.Popen(
        command, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    for _ in range(600):
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    process.kill()
    raise SystemExit("the server did not start")


def summarize(
    name: str, clients: int, result: Result, cpu: float | None, db_cpu: float | None = None
) -> dict[str, Any]:
    row = {
        "operation": name,
        "clients": clients,
        "requests": len(result.latencies),
        "throughput_per_s": round(result.rate, 1),
        "p50_ms": round(result.percentile(0.50), 2),
        "p99_ms": round(result.percentile(0.99), 2),
        "statuses": result.statuses,
    }
    if cpu is not None:
        row["server_cpu_ms_per_request"] = round(cpu * 1000 / max(1, len(result.latencies)), 3)
    if db_cpu is not None:
        row["db_cpu_ms_per_request"] = round(db_cpu * 1000 / max(1, len(result.latencies)), 3)
    return row


async def measured(pid: int, coro: Any) -> tuple[Result, float]:
    before = cpu_seconds(pid)
    result = await coro
    return result, cpu_seconds(pid) - before


class DatabaseCpu:
    """CPU seconds the embedded database spends between `start()` and `stop()` (None when the
    database is not this bench's own process)."""

    def __init__(self, pid: int | None) -> None:
        self.pid = pid
        self.before = 0.0

    def start(self) -> None:
        self.before = cpu_seconds(self.pid) if self.pid else 0.0

    def stop(self) -> float | None:
        return cpu_seconds(self.pid) - self.before if self.pid else None


async def raw_driver(
    uri: str, db: str, total: int, clients: int, db_cpu: DatabaseCpu
) -> list[dict[str, Any]]:
    client = connect(uri)
    collection = client[db]["raw_bench"]
    await collection.drop()
    docs = [{"_id": f"raw-{clients}-{n}", "res": observation(n)} for n in range(total)]
    # the server's own stored documents, into a collection indexed like the server's
    indexed = client[db]["raw_bench_indexed"]
    await indexed.drop()
    async for spec in await client[db]["Observation"].list_indexes():
        if spec["name"] != "_id_":
            await indexed.create_index(list(spec["key"].items()), name=spec["name"])
    stored = [doc async for doc in client[db]["Observation"].find({}, limit=total)]
    stored = [{**doc, "_id": f"indexed-{clients}-{n}"} for n, doc in enumerate(stored)]

    async def timed(name: str, count: int, make: Any) -> dict[str, Any]:
        result = Result()

        async def worker(indices: range) -> None:
            for n in indices:
                started = time.perf_counter()
                await make(n)
                result.latencies.append(time.perf_counter() - started)

        db_cpu.start()
        started = time.perf_counter()
        await asyncio.gather(*(worker(range(i, count, clients)) for i in range(clients)))
        result.elapsed = time.perf_counter() - started
        return summarize(name, clients, result, None, db_cpu.stop())

    rows = [
        await timed("raw insert_one", total, lambda n: collection.insert_one(docs[n])),
        await timed("raw find_one", total, lambda n: collection.find_one({"_id": docs[n]["_id"]})),
        await timed("raw insert, indexed", len(stored), lambda n: indexed.insert_one(stored[n])),
    ]
    await client.close()
    return rows


async def bench(
    database: Database, total: int, concurrency: list[int], rounds: int
) -> list[dict[str, Any]]:
    uri = database.uri
    db_cpu = DatabaseCpu(database.pid)
    db = f"bench_rest_{int(time.time())}"
    port = free_port()
    host = f"127.0.0.1:{port}"
    server = start_server(uri, port, db)
    rows: list[dict[str, Any]] = []
    try:
        warm = [
            render_request("POST", "/fhir/Observation", host, orjson.dumps(observation(n)))
            for n in range(200)
        ]
        await run("127.0.0.1", port, warm, 200, 4)
        for clients, round_number in itertools.product(concurrency, range(rounds)):
            first = len(rows)
            creates = [
                render_request("POST", "/fhir/Observation", host, orjson.dumps(observation(n)))
                for n in range(total)
            ]
            db_cpu.start()
            result, cpu = await measured(
                server.pid, run("127.0.0.1", port, creates, total, clients, keep_bodies=True)
            )
            rows.append(summarize("create", clients, result, cpu, db_cpu.stop()))
            ids = [orjson.loads(body)["id"] for body in result.bodies]
            reads = [render_request("GET", f"/fhir/Observation/{rid}", host) for rid in ids]
            db_cpu.start()
            result, cpu = await measured(server.pid, run("127.0.0.1", port, reads, total, clients))
            rows.append(summarize("read", clients, result, cpu, db_cpu.stop()))
            updates = [
                render_request(
                    "PUT", f"/fhir/Observation/{rid}", host, orjson.dumps(observation(n, rid))
                )
                for n, rid in enumerate(ids)
            ]
            db_cpu.start()
            result, cpu = await measured(
                server.pid, run("127.0.0.1", port, updates, total, clients)
            )
            rows.append(summarize("update", clients, result, cpu, db_cpu.stop()))
            rows += await raw_driver(uri, db, total, clients, db_cpu)
            for row in rows[first:]:
                row["round"] = round_number
    finally:
        await shut_down(uri, db, server)
    return rows


_FIGURES = ("throughput_per_s", "p50_ms", "p99_ms", "server_cpu_ms_per_request",
            "db_cpu_ms_per_request")  # fmt: skip


def medians(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per operation and concurrency: each figure's median over the rounds."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for each in rows:
        groups.setdefault((each["operation"], each["clients"]), []).append(each)
    merged = []
    for (operation, clients), group in groups.items():
        row: dict[str, Any] = {"operation": operation, "clients": clients}
        for figure in _FIGURES:
            values = [r[figure] for r in group if figure in r]
            if values:
                row[figure] = round(statistics.median(values), 3)
        row["rounds"] = [r["throughput_per_s"] for r in group]
        merged.append(row)
    return merged


def ratio(rows: list[dict[str, Any]], clients: int, operation: str, reference: str) -> float:
    """The median over rounds of `operation`'s throughput over `reference`'s in the same round:
    the machine's speed drifts between rounds by more than the ratios differ."""
    by = {(r["operation"], r["clients"], r["round"]): r["throughput_per_s"] for r in rows}
    rounds = sorted({r["round"] for r in rows})
    return round(
        statistics.median(
            by[(operation, clients, n)] / by[(reference, clients, n)] for n in rounds
        ),
        2,
    )


def report(rows: list[dict[str, Any]]) -> dict[str, Any]:
    merged = medians(rows)
    print(
        f"{'operation':<20}{'clients':>8}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'server CPU ms/req':>19}{'DB CPU ms/req':>15}   req/s of each round"
    )
    for row in merged:
        cpu = row.get("server_cpu_ms_per_request", "")
        db_cpu = row.get("db_cpu_ms_per_request", "")
        print(
            f"{row['operation']:<20}{row['clients']:>8}{row['throughput_per_s']:>10}{row['p50_ms']:>9}"
            f"{row['p99_ms']:>9}{cpu:>19}{db_cpu:>15}   "
            + " ".join(str(rate) for rate in row["rounds"])
        )
    by = {(r["operation"], r["clients"]): r for r in merged}
    checks = {}
    for clients in sorted({r["clients"] for r in rows}):
        checks[f"create/raw insert ({clients} clients)"] = ratio(
            rows, clients, "create", "raw insert_one"
        )
        checks[f"(create/raw insert, indexed) ({clients} clients)"] = ratio(
            rows, clients, "create", "raw insert, indexed"
        )
        checks[f"read/raw find ({clients} clients)"] = ratio(rows, clients, "read", "raw find_one")
        checks[f"server CPU per create ms ({clients} clients)"] = by[("create", clients)][
            "server_cpu_ms_per_request"
        ]
        checks[f"server CPU per read ms ({clients} clients)"] = by[("read", clients)][
            "server_cpu_ms_per_request"
        ]
    print()
    for name, value in checks.items():
        print(f"{name:<50}{value}")
    print(
        "targets: create/raw >= 0.60, read/raw >= 0.70, CPU per create <= 1.5 ms, per read <= 0.5 ms"
    )
    print("(figures: medians over the rounds; ratios: within each round, then the median)")
    print("(in brackets: for reference, not a target)")
    return checks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=3, help="repetitions; medians reported")
    args = parser.parse_args()
    with database() as db:
        rows = asyncio.run(bench(db, args.requests, args.concurrency, args.rounds))
    checks = report(rows)
    save_results("rest_core", {"rows": rows, "checks": checks})


if __name__ == "__main__":
    main()
