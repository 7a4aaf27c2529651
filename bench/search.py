"""Benchmark the FHIR search engine (issue 3): latency, throughput and server CPU of typical
searches, measured at two data sizes in one run so that growth with the data set shows.

    python bench/search.py [--patients 500] [--per-patient 100] [--requests 400] [--concurrency 1 8]
                           [--budget 30] [--write create|update]

Data: N patients, each with 3 Goals and M Observations (ORS/SRS session scores with 4 components
each, weekly, and GAS follow-up ratings whose `focus` is a Goal); patients start at staggered
weeks, so the whole set spans about two years. Resources are written in-process through the
FhirService (validation and index extraction: the real write path) by 8 concurrent tasks, so the
repository's batching applies: Patients and Goals with `update` (fixed ids, which references
name), Observations with `create` (as POST: no read before the write) or, with --write update,
`update` with fixed ids too (as PUT: one read of the current version per write). First 10% of the
patients are loaded and measured (5,000 Observations by default), then the rest (50,000), and
measured again. The JSON results are written after each size, so an interrupted run keeps them.

The server runs as its own process (`fhirgoal serve`, as in bench/rest_core.py), so its CPU time
per request is read from /proc. Queries, each pre-rendered over many patients and date windows:
  a  Observation by patient + code + date range, a page of 20
  b  Goal by patient with _revinclude=Observation:focus ("unsupported" if the server says 400)
  c  _summary=count: one patient's Observations, and all ORS totals (broad)
With MONGODB_URI unset it starts the embedded database in a temporary directory, and its CPU
time per request is reported too. Each query, size and concurrency gets `--requests` requests or
`--budget` seconds, whichever ends first (the table shows how many were sent).

Targets: p50(50k) / p50(5k) < 2.0 for each query and concurrency; server CPU per page of 20
(query a) at 50k < 3 ms, net of what the idle server spends over the same time (its driver's
monitors: about 2 ms per second, which dominates when requests take seconds).
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import random
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

import httpx
import orjson
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import cpu_seconds, start_server, summarize
from loadgen import Result, render_request, run

from fhirgoal.bootstrap import build_service
from fhirgoal.clinical.codes import GAS_ANSWERS, LOINC, MEASURES, UCUM
from fhirgoal.clinical.resources import RATING_SCALE_ITEMS, SURVEY
from fhirgoal.config import Settings
from fhirgoal.core.access import UNRESTRICTED
from fhirgoal.fhir.service import FhirService
from fhirgoal.store.embedded import EmbeddedDatabase, free_port
from fhirgoal.store.mongo import connect

ORS_ITEMS = [item.removeprefix("ors-") for item in RATING_SCALE_ITEMS["ors"]]
SRS_ITEMS = [item.removeprefix("srs-") for item in RATING_SCALE_ITEMS["srs"]]
GOALS_PER_PATIENT = 3
GAS_EVERY = 4  # sessions between GAS reviews (one rating per goal)
FIRST_WEEK = datetime(2024, 6, 3, 9, 0, tzinfo=UTC)  # a Monday
STAGGER_WEEKS = 64  # patients start over ~15 months; with ~37 weekly sessions: ~2 years in all
LOAD_TASKS = 8
BASE_URL = "http://bench.invalid/fhir"  # only used by If-None-Exist, which the loader never sends
WARMUP = 50  # requests per query and size before measuring (at most `--budget` / 10 seconds)
IDLE_SECONDS = 10  # to measure the idle server's CPU, subtracted from the requests' share
SEED = 3

Resource = dict[str, Any]


# ---- data ------------------------------------------------------------------------------------
def ref(rt: str, rid: str) -> dict[str, str]:
    return {"reference": f"{rt}/{rid}"}


def score(value: float) -> Decimal:
    return Decimal(f"{min(max(value, 0.0), 10.0):.1f}")


def first_session(i: int) -> datetime:
    return FIRST_WEEK + timedelta(weeks=i % STAGGER_WEEKS, days=i % 5, hours=i % 8)


def patient(i: int) -> Resource:
    return {
        "resourceType": "Patient", "id": f"p{i}",
        "identifier": [{"system": "https://fhirgoal.org/fhir/bench-mrn", "value": f"MRN{i:06d}"}],
        "name": [{"given": [f"Given{i}"], "family": f"Family{i % 97}"}],
        "gender": ("female", "male", "other")[i % 3],
        "birthDate": f"{1950 + i % 55}-{1 + i % 12:02d}-{1 + i % 28:02d}",
    }  # fmt: skip


def goal(i: int, g: int) -> Resource:
    return {
        "resourceType": "Goal", "id": f"p{i}-g{g}", "lifecycleStatus": "active",
        "achievementStatus": {"coding": [{"system": "http://terminology.hl7.org/CodeSystem/goal-achievement", "code": "in-progress"}]},
        "description": {"text": f"Goal {g} of patient {i}"}, "subject": ref("Patient", f"p{i}"),
        "startDate": first_session(i).date().isoformat(),
    }  # fmt: skip


def scale_observation(
    oid: str, code: str, items: list[str], scores: list[Decimal], pid: str, when: datetime
) -> Resource:
    return {
        "resourceType": "Observation", "id": oid, "status": "final", "category": [SURVEY],
        "code": {"coding": [{"system": MEASURES, "code": code}], "text": code.upper()},
        "subject": ref("Patient", pid), "effectiveDateTime": when.isoformat(),
        "performer": [ref("Patient", pid)],
        "valueQuantity": {"value": sum(scores, Decimal("0.0")), "unit": "{score}", "system": UCUM, "code": "{score}"},
        "component": [
            {"code": {"coding": [{"system": MEASURES, "code": f"{code.split('-')[0]}-{item}"}]},
             "valueQuantity": {"value": s, "unit": "{score}", "system": UCUM, "code": "{score}"}}
            for item, s in zip(items, scores, strict=True)
        ],
    }  # fmt: skip


def gas_rating(oid: str, pid: str, gid: str, when: datetime, level: int) -> Resource:
    answer, text = GAS_ANSWERS[level]
    return {
        "resourceType": "Observation", "id": oid, "status": "final", "category": [SURVEY],
        "code": {"coding": [{"system": LOINC, "code": "107333-7", "display": "GAS practitioner follow-up"}]},
        "subject": ref("Patient", pid), "focus": [ref("Goal", gid)],
        "effectiveDateTime": when.isoformat(), "performer": [ref("Practitioner", "t1")],
        "valueCodeableConcept": {"coding": [{"system": LOINC, "code": answer, "display": text}]},
    }  # fmt: skip


def session_observations(i: int, n: int, rng: random.Random) -> list[Resource]:
    """Session n of patient i: ORS and SRS totals, and every GAS_EVERY sessions a rating per goal."""
    pid, when = f"p{i}", first_session(i) + timedelta(weeks=n, minutes=rng.randint(-20, 20))
    ors_mean = 4.5 + 2.5 * min(1.0, n / 30) + rng.uniform(-0.5, 0.5)
    ors = [score(ors_mean + rng.uniform(-1.2, 1.2)) for _ in ORS_ITEMS]
    srs = [score(9.2 + rng.uniform(-0.6, 0.6)) for _ in SRS_ITEMS]
    found = [
        scale_observation(f"{pid}-s{n:03d}-ors", "ors-total", ORS_ITEMS, ors, pid, when),
        scale_observation(f"{pid}-s{n:03d}-srs", "srs-total", SRS_ITEMS, srs, pid, when),
    ]
    if n % GAS_EVERY == GAS_EVERY - 1:
        for g in range(GOALS_PER_PATIENT):
            level = max(-2, min(2, -1 + n // 12 + rng.choice((-1, 0, 0, 1))))
            found.append(gas_rating(f"{pid}-s{n:03d}-gas{g}", pid, f"{pid}-g{g}", when, level))
    return found


def patient_resources(i: int, per_patient: int) -> list[Resource]:
    """Patient i, its goals and exactly `per_patient` Observations, deterministic."""
    rng = random.Random(SEED * 1_000_003 + i)
    observations: list[Resource] = []
    n = 0
    while len(observations) < per_patient:
        observations += session_observations(i, n, rng)
        n += 1
    goals = [goal(i, g) for g in range(GOALS_PER_PATIENT)]
    return [patient(i), *goals, *observations[:per_patient]]


# ---- loading ---------------------------------------------------------------------------------
@dataclass
class Plan:
    patients: int
    per_patient: int  # Observations
    write: str  # how Observations are written: create | update


@dataclass
class Processes:
    """The processes whose CPU time is read from /proc: this one, the server, the database."""

    server: int
    database: int | None  # None with MONGODB_URI (the database may be anywhere)
    server_idle: float = 0.0  # CPU seconds per second the idle server spends (driver monitors)

    async def measure_idle(self, seconds: float = IDLE_SECONDS) -> None:
        before = cpu_seconds(self.server)
        await asyncio.sleep(seconds)
        self.server_idle = (cpu_seconds(self.server) - before) / seconds

    def cpu(self) -> tuple[float, float, float | None]:
        database = cpu_seconds(self.database) if self.database else None
        return cpu_seconds(os.getpid()), cpu_seconds(self.server), database


def cpu_ms_per(before: float | None, after: float | None, count: int) -> float | None:
    if before is None or after is None:
        return None
    return round((after - before) * 1000 / max(1, count), 3)


@dataclass
class LoadStats:
    resources: int
    seconds: float
    loader_cpu_ms: float | None  # per resource
    database_cpu_ms: float | None  # per resource

    @property
    def rate(self) -> float:
        return self.resources / self.seconds if self.seconds else 0.0


async def write_one(service: FhirService, resource: Resource, how: str) -> None:
    """Observations as `how` says (create / update); everything else by update, keeping its id."""
    rt, rid = resource["resourceType"], resource["id"]
    if how == "create" and rt == "Observation":
        body = {key: value for key, value in resource.items() if key != "id"}
        outcome = await service.create(UNRESTRICTED, rt, body, None, BASE_URL)
    else:
        outcome = await service.update(UNRESTRICTED, rt, rid, resource, None)
    if outcome.status not in (200, 201):
        raise SystemExit(f"writing {rt}/{rid} answered {outcome.status}")


async def write_all(
    service: FhirService, resources: list[Resource], how: str, label: str, processes: Processes
) -> LoadStats:
    """Write every resource through the service from LOAD_TASKS concurrent tasks."""
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn())
    with Progress(*columns, TimeElapsedColumn()) as progress:
        task = progress.add_task(label, total=len(resources))

        async def writer(chunk: list[Resource]) -> None:
            for resource in chunk:
                await write_one(service, resource, how)
                progress.advance(task)

        # Patients and Goals first: a GAS rating must focus on a Goal that exists (of its subject).
        phases = [[r for r in resources if r["resourceType"] != "Observation"]]
        phases.append([r for r in resources if r["resourceType"] == "Observation"])
        started, (loader, _, database) = time.perf_counter(), processes.cpu()
        for phase in phases:
            await asyncio.gather(*(writer(phase[k::LOAD_TASKS]) for k in range(LOAD_TASKS)))
    seconds, (loader_after, _, database_after) = time.perf_counter() - started, processes.cpu()
    return LoadStats(
        len(resources),
        seconds,
        cpu_ms_per(loader, loader_after, len(resources)),
        cpu_ms_per(database, database_after, len(resources)),
    )


async def load_patients(
    service: FhirService, patients: range, plan: Plan, label: str, processes: Processes
) -> LoadStats:
    resources = [r for i in patients for r in patient_resources(i, plan.per_patient)]
    stats = await write_all(service, resources, plan.write, label, processes)
    print(
        f"{label}: {stats.resources} resources in {stats.seconds:.1f} s = {stats.rate:.0f}/s; "
        f"CPU per resource: loader {stats.loader_cpu_ms} ms, database {stats.database_cpu_ms} ms"
    )
    return stats


# ---- queries ---------------------------------------------------------------------------------
def path(rt: str, params: list[tuple[str, str]]) -> str:
    return f"/fhir/{rt}?{urlencode(params, quote_via=quote)}"


def window(i: int, shift_weeks: int) -> tuple[str, str]:
    """A one-year date window starting a few weeks into patient i's sessions."""
    start = (first_session(i) + timedelta(weeks=shift_weeks)).date()
    return start.isoformat(), start.replace(year=start.year + 1).isoformat()


def by_code_and_date(i: int, shift_weeks: int) -> str:
    low, high = window(i, shift_weeks)
    return path(
        "Observation",
        [
            ("patient", f"p{i}"),
            ("code", f"{MEASURES}|ors-total"),
            ("date", f"ge{low}"),
            ("date", f"lt{high}"),
            ("_count", "20"),
        ],
    )


def goals_with_ratings(i: int, _: int) -> str:
    return path("Goal", [("patient", f"p{i}"), ("_revinclude", "Observation:focus")])


def count_for_patient(i: int, _: int) -> str:
    return path("Observation", [("patient", f"p{i}"), ("_summary", "count")])


def count_broad(_: int, __: int) -> str:
    return path("Observation", [("code", f"{MEASURES}|ors-total"), ("_summary", "count")])


QUERIES: dict[str, Callable[[int, int], str]] = {
    "a patient+code+date": by_code_and_date,
    "b goal+revinclude": goals_with_ratings,
    "c count patient": count_for_patient,
    "c count ors (broad)": count_broad,
}


def rendered(query: Callable[[int, int], str], patients: int, total: int, host: str) -> list[bytes]:
    """`total` requests over randomly chosen patients (and date windows), reproducibly."""
    rng = random.Random(SEED)
    return [
        render_request("GET", query(rng.randrange(patients), rng.randrange(13)), host)
        for _ in range(total)
    ]


# ---- correctness -----------------------------------------------------------------------------
def get_json(port: int, target: str) -> tuple[int, Any]:
    response = httpx.get(f"http://127.0.0.1:{port}{target}", timeout=60)
    return response.status_code, orjson.loads(response.content)


def expect(checks: dict[str, Any], name: str, ok: bool, detail: Any) -> None:
    checks[name] = {"ok": ok, "detail": detail}
    if not ok:
        print(f"CHECK FAILED {name}: {detail}")


def verify(port: int, patients: int, per_patient: int) -> dict[str, Any]:
    """Light checks that the queries answer what the data set holds."""
    checks: dict[str, Any] = {}
    i = patients - 1
    status, bundle = get_json(port, by_code_and_date(i, 0))
    entries = bundle.get("entry", [])
    subjects = {e["resource"]["subject"]["reference"] for e in entries}
    expect(
        checks,
        "a: a page of ORS totals of one patient",
        status == 200
        and bundle.get("type") == "searchset"
        and bundle.get("total", 0) > 0
        and 0 < len(entries) <= 20
        and subjects == {f"Patient/p{i}"},
        {"status": status, "total": bundle.get("total"), "entries": len(entries)},
    )
    status, bundle = get_json(port, count_for_patient(i, 0))
    expect(
        checks,
        "c: count of one patient's Observations",
        status == 200 and bundle.get("total") == per_patient and "entry" not in bundle,
        {"status": status, "total": bundle.get("total"), "expected": per_patient},
    )
    expected = sum(
        1
        for r in patient_resources(0, per_patient)
        if r["resourceType"] == "Observation" and r["code"]["coding"][0]["code"] == "ors-total"
    )
    status, bundle = get_json(port, count_broad(0, 0))
    expect(
        checks,
        "c: count of all ORS totals",
        status == 200 and bundle.get("total") == expected * patients,
        {"status": status, "total": bundle.get("total"), "expected": expected * patients},
    )
    status, bundle = get_json(port, goals_with_ratings(i, 0))
    if status == 200:
        modes: dict[str, int] = {}
        for entry in bundle.get("entry", []):
            mode = entry.get("search", {}).get("mode", "?")
            modes[mode] = modes.get(mode, 0) + 1
        expect(
            checks,
            "b: goals with their ratings",
            modes.get("match") == GOALS_PER_PATIENT and modes.get("include", 0) > 0,
            {"status": status, "entries by mode": modes},
        )
    return checks


# ---- measuring -------------------------------------------------------------------------------
@dataclass
class Limits:
    requests: int  # per query, size and concurrency
    budget: float  # seconds per query, size and concurrency (0: no limit)
    concurrency: list[int]


async def probe(port: int, request: bytes) -> int:
    result = await run("127.0.0.1", port, [request], 1, 1)
    return next(iter(result.statuses))


def merge(into: Result, part: Result) -> None:
    into.latencies += part.latencies
    into.elapsed += part.elapsed
    for status, count in part.statuses.items():
        into.statuses[status] = into.statuses.get(status, 0) + count


async def run_budgeted(
    port: int, requests: list[bytes], total: int, clients: int, budget: float
) -> Result:
    """Up to `total` requests in rounds of doubling size, stopping once `budget` seconds are
    spent (0: no limit), so that a slow database cannot stretch a run to hours."""
    result, size = Result(), clients
    while len(result.latencies) < total and (not budget or result.elapsed < budget):
        sent = len(result.latencies)
        if budget and sent:  # no round much longer than what is left of the budget
            fits = int(result.rate * (budget - result.elapsed))
            size = max(clients, min(size, fits))
        size = min(size, total - sent)
        part = await run(
            "127.0.0.1",
            port,
            lambda n, sent=sent: requests[(sent + n) % len(requests)],
            size,
            clients,
        )
        merge(result, part)
        size *= 2
    return result


async def measure_cell(
    port: int, processes: Processes, name: str, requests: list[bytes], clients: int, limits: Limits
) -> dict[str, Any]:
    before = processes.cpu()
    result = await run_budgeted(port, requests, limits.requests, clients, limits.budget)
    after = processes.cpu()
    row = summarize(name, clients, result, after[1] - before[1])
    busy = after[1] - before[1] - processes.server_idle * result.elapsed
    row["server_cpu_net_ms_per_request"] = cpu_ms_per(0.0, busy, len(result.latencies))
    row["database_cpu_ms_per_request"] = cpu_ms_per(before[2], after[2], len(result.latencies))
    return row


async def measure_size(
    port: int, processes: Processes, patients: int, observations: int, limits: Limits
) -> list[dict[str, Any]]:
    """Every query at every concurrency on the data loaded so far."""
    host = f"127.0.0.1:{port}"
    rows: list[dict[str, Any]] = []
    for name, query in QUERIES.items():
        requests = rendered(query, patients, limits.requests, host)
        if await probe(port, requests[0]) == 400:
            rows += [unsupported(name, clients, observations) for clients in limits.concurrency]
            continue
        await run_budgeted(port, requests, min(WARMUP, limits.requests), 1, limits.budget / 10)
        for clients in limits.concurrency:
            row = await measure_cell(port, processes, name, requests, clients, limits)
            rows.append({"size": observations, **row})
            print(f"  {observations} obs, {name}, {clients} clients: {row['requests']} requests, "
                  f"p50 {row['p50_ms']} ms")  # fmt: skip
    return rows


def unsupported(name: str, clients: int, observations: int) -> dict[str, Any]:
    return {"size": observations, "operation": name, "clients": clients, "unsupported": True}


async def bench(
    uri: str, database_pid: int | None, plan: Plan, limits: Limits, target: Path
) -> dict[str, Any]:
    db = f"bench_search_{int(time.time())}"
    client = connect(uri)
    service = await build_service(Settings(mongodb_uri=uri, db=db), client)
    gc.collect()
    gc.freeze()  # as the app does: keep the GC off the conformance tables while loading
    port = free_port()
    server = start_server(uri, port, db)
    processes = Processes(server.pid, database_pid)
    await processes.measure_idle()
    small = max(1, plan.patients // 10)
    rows: list[dict[str, Any]] = []
    loads: list[dict[str, Any]] = []
    checks: dict[str, Any] = {}
    config = asdict(plan) | asdict(limits) | {"mongodb_uri_set": "MONGODB_URI" in os.environ}
    result = {"config": config, "loads": loads, "checks": checks, "rows": rows}
    try:
        for loaded, first in ((small, 0), (plan.patients, small)):
            observations = loaded * plan.per_patient
            label = f"loading to {observations} obs"
            stats = await load_patients(service, range(first, loaded), plan, label, processes)
            loads.append({"observations": observations, "resources": stats.resources,
                          "seconds": round(stats.seconds, 1), "per_s": round(stats.rate, 1),
                          "loader_cpu_ms_per_resource": stats.loader_cpu_ms,
                          "database_cpu_ms_per_resource": stats.database_cpu_ms})  # fmt: skip
            checks[str(observations)] = verify(port, loaded, plan.per_patient)
            rows += await measure_size(port, processes, loaded, observations, limits)
            write_json(result, target)
    finally:
        server.terminate()
        server.wait(timeout=30)
        await client.drop_database(db)
        await client.close()
    return result


# ---- reporting -------------------------------------------------------------------------------
def print_table(rows: list[dict[str, Any]]) -> None:
    print(
        f"\n{'obs':>7} {'query':<22}{'clients':>8}{'reqs':>6}{'req/s':>8}{'p50 ms':>10}"
        f"{'p99 ms':>10}{'server CPU':>11}{'net':>8}{'db CPU':>10}  statuses"
    )
    for row in rows:
        head = f"{row['size']:>7} {row['operation']:<22}{row['clients']:>8}"
        database = row.get("database_cpu_ms_per_request")
        if row.get("unsupported"):
            print(f"{head}  unsupported (400)")
            continue
        print(
            f"{head}{row['requests']:>6}{row['throughput_per_s']:>8}{row['p50_ms']:>10}"
            f"{row['p99_ms']:>10}{row['server_cpu_ms_per_request']:>11}"
            f"{row['server_cpu_net_ms_per_request']:>8}"
            f"{'' if database is None else database:>10}  {row['statuses']}"
        )
    print("(CPU: ms per request; net = less the idle server's CPU over the same time)")


def summary(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """p50 growth from the small to the large size, and CPU per request at the large size."""
    small, large = min(r["size"] for r in rows), max(r["size"] for r in rows)
    by = {(r["size"], r["operation"], r["clients"]): r for r in rows}
    out: dict[str, Any] = {}
    for (size, name, clients), row in by.items():
        if size != large:
            continue
        key = f"{name} ({clients} clients)"
        before = by.get((small, name, clients))
        if row.get("unsupported") or before is None or before.get("unsupported"):
            out[key] = "unsupported"
            continue
        out[key] = {
            "p50_ratio": round(row["p50_ms"] / before["p50_ms"], 2) if before["p50_ms"] else None,
            "cpu_ms_per_request": row["server_cpu_ms_per_request"],
            "net_cpu_ms_per_request": row["server_cpu_net_ms_per_request"],
        }
    return out


def print_summary(result: dict[str, Any], small: int, large: int) -> None:
    print(f"\n{'query':<36}{f'p50 {large}/{small}':>18}{f'CPU ms/req @{large}':>20}{'net':>8}")
    for key, value in result.items():
        if value == "unsupported":
            print(f"{key:<36}{'unsupported':>18}")
            continue
        ratio = value["p50_ratio"]
        flag = "" if ratio is None or ratio < 2.0 else " !"
        cpu, net = value["cpu_ms_per_request"], value["net_cpu_ms_per_request"]
        page = " !" if key.startswith("a ") and net >= 3.0 else ""
        print(f"{key:<36}{f'{ratio}{flag}':>18}{cpu:>20}{f'{net}{page}':>8}")
    print("targets: p50 ratio < 2.0; CPU per page of 20 (query a) at the large size < 3 ms")


def results_path() -> Path:
    out = Path(__file__).parent / "results"
    out.mkdir(exist_ok=True)
    return out / f"search-{datetime.now(UTC).strftime('%Y%m%dT%H%M%SZ')}.json"


def write_json(payload: dict[str, Any], target: Path) -> None:
    target.write_text(json.dumps(payload, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument("--per-patient", type=int, default=100)
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument(
        "--budget",
        type=float,
        default=30,
        help="seconds per query, size and concurrency (0: none)",
    )
    parser.add_argument("--write", choices=["create", "update"], default="create")
    args = parser.parse_args()
    plan = Plan(args.patients, args.per_patient, args.write)
    limits = Limits(args.requests, args.budget, args.concurrency)
    target = results_path()
    uri = os.environ.get("MONGODB_URI")
    with tempfile.TemporaryDirectory() as tmp:
        embedded = None if uri else EmbeddedDatabase(Path(tmp))
        uri = uri or embedded.start()  # type: ignore[union-attr]
        try:
            database_pid = embedded.process.pid if embedded and embedded.process else None
            result = asyncio.run(bench(uri, database_pid, plan, limits, target))
        finally:
            if embedded:
                embedded.stop()
    print_table(result["rows"])
    result["summary"] = summary(result["rows"])
    small = max(1, args.patients // 10) * args.per_patient
    print_summary(result["summary"], small, args.patients * args.per_patient)
    for size, checks in result["checks"].items():
        failed = [name for name, check in checks.items() if not check["ok"]]
        print(
            f"checks at {size} obs: {'all passed' if not failed else 'FAILED ' + ', '.join(failed)}"
        )
    write_json(result, target)
    print(f"results: {target}")


if __name__ == "__main__":
    main()
