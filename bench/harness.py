"""What the benchmarks share: the database they run on, `fhirgoal serve` as its own process (so
that its CPU time is read from /proc apart from the load generator's), the CPU readings of the
server and the database, timed driver calls, result rows, and the figures over rounds.

Rounds: the machine's speed drifts between minutes by more than the effects measured (two cores,
shared), so each bench repeats its measurement `--rounds` times, reports each figure's median
over the rounds, and takes ratios within each round (where the drift slows both sides alike)
before their median.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadgen import Result, render_request, run

from fhirgoal.store.embedded import EmbeddedDatabase, free_port
from fhirgoal.store.mongo import connect

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the checkout, for tests/
from tests.serve_process import ServeProcess

TICKS = os.sysconf("SC_CLK_TCK")
RESULTS = Path(__file__).parent / "results"
FIGURES = ("throughput_per_s", "p50_ms", "p99_ms", "server_cpu_ms_per_request",
           "db_cpu_ms_per_request")  # fmt: skip
WELLBEING = "https://example.org/fhir/CodeSystem/wellbeing-survey"


def observation(n: int, rid: str | None = None) -> dict[str, Any]:
    """A survey Observation shaped like an ORS result (a value and four components, so the R4
    invariants about components run) but not coded as one: the clinical rules that an ORS write
    triggers are measured by bench/clinical.py; this is the REST core's write."""
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


# ---- the database and the servers -------------------------------------------------------------
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


def start_server(
    uri: str,
    port: int,
    db: str,
    extra_env: dict[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """`fhirgoal serve` as its own process on `uri`'s database `db` (auth off unless `extra_env`
    says otherwise), once it answers /readyz; run from `cwd` when given (`-m` imports `fhirgoal`
    from there first: another checkout's code). Its warnings go to bench/results/serve.log."""
    env = {"MONGODB_URI": uri, "FHIRGOAL_DB": db, "FHIRGOAL_LOG_LEVEL": "WARNING"}
    env.update(extra_env or {})
    RESULTS.mkdir(exist_ok=True)
    serve = ServeProcess(RESULTS, port, env, flags=False, options=["--port", str(port)], cwd=cwd)
    process = serve.start(wait=60).process
    assert process is not None
    return process


@dataclass(frozen=True)
class Served:
    """A server of this bench: its port, database name and process."""

    port: int
    db: str
    process: subprocess.Popen[bytes]

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def request(self, method: str, path: str, body: bytes = b"") -> bytes:
        return render_request(method, path, self.host, body)

    async def run(self, requests: list[bytes], total: int, clients: int, **options: Any) -> Result:
        """`total` of `requests` (cycled) sent by `clients` connections (bench/loadgen.py)."""
        return await run("127.0.0.1", self.port, requests, total, clients, **options)


def serve(
    uri: str, db: str, extra_env: dict[str, str] | None = None, cwd: Path | None = None
) -> Served:
    port = free_port()
    return Served(port, db, start_server(uri, port, db, extra_env, cwd))


@asynccontextmanager
async def served(uri: str, name: str) -> AsyncIterator[Served]:
    """One server on a database of its own (`bench_<name>_<time>`), stopped and dropped after."""
    server = serve(uri, f"bench_{name}_{int(time.time())}")
    try:
        yield server
    finally:
        await shut_down(uri, server.db, server.process)


async def shut_down(uri: str, db: str, *servers: subprocess.Popen[bytes]) -> None:
    """Stop the benchmark's servers and drop its database."""
    for server in servers:
        server.terminate()
        server.wait(timeout=30)
    client = connect(uri)
    await client.drop_database(db)
    await client.close()


def save_results(name: str, payload: Any) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"
    path.write_text(json.dumps(payload, indent=1))
    return path


# ---- CPU and time ------------------------------------------------------------------------------
def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime


async def measured(pid: int, coro: Awaitable[Result]) -> tuple[Result, float]:
    """The result of `coro` and the CPU seconds process `pid` spent meanwhile."""
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


async def timed(clients: int, count: int, make: Callable[[int], Awaitable[Any]]) -> Result:
    """`make(0)` to `make(count - 1)`, `clients` at a time: each call's latency and the whole."""
    result = Result()

    async def worker(indices: range) -> None:
        for n in indices:
            started = time.perf_counter()
            await make(n)
            result.latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker(range(i, count, clients)) for i in range(clients)))
    result.elapsed = time.perf_counter() - started
    return result


# ---- rows and figures over rounds --------------------------------------------------------------
def summarize(
    name: str, clients: int, result: Result, cpu: float | None, db_cpu: float | None = None
) -> dict[str, Any]:
    """One measurement's row: throughput, latency percentiles, statuses, CPU per request."""
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


def medians(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """One row per value of `keys` (e.g. operation and clients): each figure's median over the
    rounds, and the throughput of each round."""
    groups: dict[tuple[Any, ...], list[dict[str, Any]]] = {}
    for each in rows:
        groups.setdefault(tuple(each[k] for k in keys), []).append(each)
    merged = []
    for values, group in groups.items():
        row: dict[str, Any] = dict(zip(keys, values, strict=True))
        for figure in FIGURES:
            found = [r[figure] for r in group if figure in r]
            if found:
                row[figure] = round(statistics.median(found), 3)
        row["rounds"] = [r["throughput_per_s"] for r in group]
        merged.append(row)
    return merged


def ratios_in_rounds(
    rows: list[dict[str, Any]], numerator: dict[str, Any], denominator: dict[str, Any]
) -> list[float]:
    """The throughput of the row matching `numerator` over that of the row matching
    `denominator`, taken within each round both ran in, in round order."""

    def by_round(match: dict[str, Any]) -> dict[int, float]:
        return {
            r["round"]: r["throughput_per_s"]
            for r in rows
            if all(r.get(key) == value for key, value in match.items())
        }

    top, bottom = by_round(numerator), by_round(denominator)
    return [top[n] / bottom[n] for n in sorted(top.keys() & bottom.keys())]
