"""Benchmark durable acknowledgement (issue 12): what journaled writes (write concern `j: true`,
a per-commit fsync in SecantusDB) cost in create and update throughput, latency and CPU, with 1
and 8 clients, against the same servers with FHIRGOAL_DB_JOURNAL=false (a crash may then lose
acknowledged writes: for measurement only).

    python bench/durability.py [--requests 400] [--updates 200] [--concurrency 1 8] [--rounds 5]
                               [--modes on off] [--baseline PATH]

Modes are `fhirgoal serve` processes on one database process, each with a database name of its
own (SecantusDB serialises the writes to a collection, a journaled commit's fsync included: on
shared collections the journaled server's fsyncs would hold up the others' writes too). They run
with FHIRGOAL_AUTH=off: no token checks, no AuditEvent, no Provenance, so what is measured is the
database's part. A create is then one journaled insert (concurrent creates share one insert_many,
store/batching.py, hence one fsync), an update two (the history copy, then the resource); with
auth on an audited write adds its Provenance and AuditEvent.

    on    this checkout, journaled writes (the default)
    off   this checkout, FHIRGOAL_DB_JOURNAL=false
    base  the checkout at --baseline PATH (e.g. a `git worktree` of an older commit), run from
          that directory so that `python -m fhirgoal.cli` imports its code

1. Paired: every mode loaded at once, `clients` clients each, `--rounds` times; the round ends
   for all of them when the first has sent `--requests` creates (then `--updates` updates, PUTs
   of the resources it created), so all are measured over the same seconds. The machine's drift
   (two cores, shared) then slows every mode alike: the figure is the median over rounds of the
   ratio on / mode taken within each round. Each server's CPU is its own process's; the
   database's CPU per request is the one database's over all modes' requests.
2. Sequential: each mode alone in turn (each round starting with the next mode): latency and
   database CPU per request of each mode by itself, and the same ratios, noisier.
3. Raw driver reference, each round: insert_one of the same Observations with `j: true` and
   `j: false` on the same database (alternating which goes first).

With MONGODB_URI unset it starts the embedded database (SCRAM, --standalone) in a temporary
directory, which must be on a real disk for the fsync to cost anything (the filesystem is
reported). Target (issue 12): create throughput at 8 clients at least 0.75 of the server before
the hardening, i.e. `on / base` with --baseline at commit 4d8cd66.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import orjson
from pymongo.asynchronous.collection import AsyncCollection

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (
    DatabaseCpu,
    Served,
    cpu_seconds,
    database,
    medians,
    observation,
    ratios_in_rounds,
    save_results,
    serve,
    shut_down,
    summarize,
    timed,
)
from loadgen import Result

from fhirgoal.store.mongo import connect

REFERENCE = "on"
EXPECTED = {"create": 201, "update": 200}


@dataclass(frozen=True)
class Server:
    mode: str
    served: Served

    @property
    def process(self) -> subprocess.Popen[bytes]:
        return self.served.process

    async def run(self, requests: list[bytes], total: int, clients: int, **options: Any) -> Result:
        return await self.served.run(requests, total, clients, **options)

    def creates(self, first: int, count: int) -> list[bytes]:
        return [
            self.served.request("POST", "/fhir/Observation", orjson.dumps(observation(n)))
            for n in range(first, first + count)
        ]

    def updates(self, ids: list[str]) -> list[bytes]:
        return [
            self.served.request(
                "PUT", f"/fhir/Observation/{rid}", orjson.dumps(observation(n, rid))
            )
            for n, rid in enumerate(ids)
        ]


@dataclass(frozen=True)
class Round:
    """One round at one concurrency: what each design loads, and how."""

    servers: list[Server]
    counts: dict[str, int]  # creates, then updates, per server
    clients: int
    number: int
    db_cpu: DatabaseCpu
    offset: int  # the first Observation number of the round's creates


def baseline_checked(path: Path) -> str:
    """The short commit of the checkout at `path`, once sure that a server run from there
    imports its code rather than this checkout's (the editable install maps `fhirgoal` here)."""
    found = subprocess.run(
        [sys.executable, "-c", "import fhirgoal; print(fhirgoal.__file__)"],
        cwd=path, env={**os.environ, "PYTHONPATH": str(path)}, capture_output=True, text=True,
        check=True,
    ).stdout.strip()  # fmt: skip
    if not Path(found).resolve().is_relative_to(path.resolve()):
        raise SystemExit(f"--baseline {path}: fhirgoal is imported from {found}")
    commit = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    return commit or str(path)


def start(mode: str, uri: str, prefix: str, baseline: Path | None) -> Server:
    """A server of `mode` on its own database (name) of the one database process: SecantusDB
    serialises writes to a collection, fsync included, so on one collection a journaled
    server's fsyncs would hold up the other modes' writes too."""
    db = f"{prefix}_{mode}"
    if mode == "base":
        assert baseline is not None
        return Server(mode, serve(uri, db, {"PYTHONPATH": str(baseline)}, cwd=baseline))
    return Server(
        mode, serve(uri, db, {"FHIRGOAL_DB_JOURNAL": "true" if mode == "on" else "false"})
    )


def row_of(
    design: str,
    operation: str,
    mode: str,
    number: int,
    clients: int,
    result: Result,
    cpu: float | None,
    db_cpu: float | None,
) -> dict[str, Any]:
    expected = EXPECTED.get(operation)
    if expected and set(result.statuses) != {expected}:
        raise SystemExit(f"{design} {operation} ({mode}): unexpected statuses {result.statuses}")
    row = summarize(operation, clients, result, cpu, db_cpu)
    return {"design": design, "mode": mode, "round": number, **row}


def ids_of(result: Result) -> list[str]:
    return [orjson.loads(body)["id"] for body in result.bodies]


async def paired(round_: Round) -> list[dict[str, Any]]:
    """Every server loaded at once with `clients` clients: creates, then updates of the
    resources created; each load stops when the first server has sent its count."""
    servers, clients, db_cpu = round_.servers, round_.clients, round_.db_cpu
    rows: list[dict[str, Any]] = []
    created: dict[str, list[str]] = {}
    for operation, total in round_.counts.items():
        if not total:
            continue
        if operation == "create":
            loads = {s.mode: s.creates(round_.offset, total) for s in servers}
        else:
            loads = {s.mode: s.updates(created[s.mode]) for s in servers}
        for server in servers:  # warm each server's connections at this concurrency
            await server.run(loads[server.mode], min(100, total), clients)
        stop = asyncio.Event()
        measured: dict[str, tuple[Result, float]] = {}

        async def load(
            server: Server,
            requests: list[bytes],
            stop: asyncio.Event = stop,
            measured: dict[str, tuple[Result, float]] = measured,
            total: int = total,
        ) -> None:
            before = cpu_seconds(server.process.pid)
            result = await server.run(requests, total, clients, keep_bodies=True, stop=stop)
            stop.set()
            measured[server.mode] = (result, cpu_seconds(server.process.pid) - before)

        db_cpu.start()
        await asyncio.gather(*(load(s, loads[s.mode]) for s in servers))
        database_seconds = db_cpu.stop()
        everyone = sum(len(result.latencies) for result, _ in measured.values())
        for server in servers:
            result, cpu = measured[server.mode]
            share = None
            if database_seconds is not None:  # the database's CPU over every mode's requests
                share = database_seconds * len(result.latencies) / max(1, everyone)
            rows.append(
                row_of("paired", operation, server.mode, round_.number, clients, result, cpu, share)
            )
            if operation == "create":
                created[server.mode] = ids_of(result)
    return rows


async def sequential(round_: Round) -> list[dict[str, Any]]:
    """Each server alone in turn, starting with the next one each round: creates, then updates."""
    servers, clients, db_cpu = round_.servers, round_.clients, round_.db_cpu
    rows: list[dict[str, Any]] = []
    shift = round_.number % len(servers)
    for server in servers[shift:] + servers[:shift]:
        creates = server.creates(round_.offset, round_.counts["create"])
        await server.run(creates, min(100, len(creates)), clients)  # warm-up
        for operation, total in round_.counts.items():
            if not total:
                continue
            before = cpu_seconds(server.process.pid)
            db_cpu.start()
            result = await server.run(creates, total, clients, keep_bodies=True)
            database_seconds = db_cpu.stop()
            cpu = cpu_seconds(server.process.pid) - before
            rows.append(
                row_of("sequential", operation, server.mode, round_.number, clients, result, cpu,
                       database_seconds)
            )  # fmt: skip
            if operation == "create":
                creates = server.updates(ids_of(result))
    return rows


async def raw_driver(
    uri: str, db: str, total: int, clients: int, round_number: int, db_cpu: DatabaseCpu
) -> list[dict[str, Any]]:
    """insert_one with j: true and with j: false, `clients` at a time, on the same database."""
    rows = []
    order = [True, False] if round_number % 2 == 0 else [False, True]
    for journal in order:
        mongo = connect(uri, journal=journal)
        collection = mongo[db][f"raw_j_{str(journal).lower()}"]
        docs = [
            {"_id": f"raw-{clients}-{round_number}-{n}", "res": observation(n)}
            for n in range(total)
        ]
        await asyncio.gather(
            *(collection.insert_one({"_id": f"warm-{clients}-{round_number}-{i}"})
              for i in range(clients))
        )  # fmt: skip
        db_cpu.start()
        result = await timed(clients, total, partial(insert, collection, docs))
        mode = "on" if journal else "off"  # j: true / j: false
        rows.append(row_of("raw", "insert_one", mode, round_number, clients, result, None,
                           db_cpu.stop()))  # fmt: skip
        await mongo.close()
    return rows


async def insert(
    collection: AsyncCollection[dict[str, Any]], docs: list[dict[str, Any]], n: int
) -> None:
    await collection.insert_one(docs[n])


async def bench(
    uri: str,
    db_pid: int | None,
    modes: list[str],
    baseline: Path | None,
    counts: dict[str, int],
    concurrency: list[int],
    rounds: int,
) -> list[dict[str, Any]]:
    db = f"bench_durability_{int(time.time())}"
    db_cpu = DatabaseCpu(db_pid)
    servers = [start(mode, uri, db, baseline) for mode in modes]
    raw_db = f"{db}_raw"
    rows: list[dict[str, Any]] = []
    total = counts["create"]
    offset = itertools.count(0, total)
    try:
        for server in servers:  # the first requests of a process (imports, caches) left out
            await server.run(server.creates(0, 200), 200, 4)
        for clients, round_number in itertools.product(concurrency, range(rounds)):
            for design in (paired, sequential):
                each = Round(servers, counts, clients, round_number, db_cpu, next(offset))
                rows += await design(each)
            if {"on", "off"} <= set(modes):
                rows += await raw_driver(uri, raw_db, total, clients, round_number, db_cpu)
            print(f"{clients} clients, round {round_number + 1}/{rounds} done", file=sys.stderr)
    finally:
        await shut_down(uri, raw_db, *(server.process for server in servers))
        mongo = connect(uri)
        for server in servers:
            await mongo.drop_database(server.served.db)
        await mongo.close()
    return rows


def ratios(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """`on`'s throughput over each other mode's, taken within each round: median and range."""
    groups = {(r["design"], r["operation"], r["mode"], r["clients"]) for r in rows}
    out = []
    for design, operation, mode, clients in sorted(
        (g for g in groups if g[2] != REFERENCE), key=lambda g: (g[3], g[0], g[1], g[2])
    ):
        same = {"design": design, "operation": operation, "clients": clients}
        values = ratios_in_rounds(rows, {**same, "mode": REFERENCE}, {**same, "mode": mode})
        if values:
            out.append({
                **same, "ratio": f"{REFERENCE}/{mode}", "median": round(statistics.median(values), 3),
                "min": round(min(values), 3), "max": round(max(values), 3),
                "rounds": [round(v, 3) for v in values],
            })  # fmt: skip
    return out


def filesystem(path: str) -> str:
    """The type of the filesystem holding `path` (an fsync on tmpfs costs nothing)."""
    best, kind = "", "?"
    for line in Path("/proc/mounts").read_text().splitlines():
        fields = line.split()
        mount = fields[1]
        inside = path == mount or path.startswith(mount.rstrip("/") + "/")
        if inside and len(mount) >= len(best):
            best, kind = mount, fields[2]
    return kind


def report(merged: list[dict[str, Any]], compared: list[dict[str, Any]]) -> None:
    print(
        f"{'design':<11}{'operation':<11}{'mode':<6}{'clients':>8}{'req/s':>9}{'p50 ms':>8}"
        f"{'p99 ms':>8}{'server CPU ms/req':>19}{'DB CPU ms/req':>15}   req/s of each round"
    )
    for row in sorted(merged, key=lambda r: (r["clients"], r["design"], r["operation"])):
        cpu = row.get("server_cpu_ms_per_request", "")
        db_cpu = row.get("db_cpu_ms_per_request", "")
        print(
            f"{row['design']:<11}{row['operation']:<11}{row['mode']:<6}{row['clients']:>8}"
            f"{row['throughput_per_s']:>9}{row['p50_ms']:>8}{row['p99_ms']:>8}{cpu:>19}"
            f"{db_cpu:>15}   " + " ".join(str(rate) for rate in row["rounds"])
        )
    print()
    print("throughput ratio, taken within each round: median [min - max] (each round)")
    for each in compared:
        print(
            f"  {each['design']:<11}{each['operation']:<11}{each['clients']} clients  "
            f"{each['ratio']:<8}{each['median']:.2f} [{each['min']:.2f} - {each['max']:.2f}]"
            f"  ({' '.join(f'{v:.2f}' for v in each['rounds'])})"
        )
    print(
        "(modes: on = j: true, off = FHIRGOAL_DB_JOURNAL=false, base = --baseline; raw: the "
        "driver's insert_one with j: true / j: false; paired: all modes loaded at once, DB CPU "
        "shared out by requests; target: create on/base >= 0.75 at 8 clients)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=400, help="creates per mode and round")
    parser.add_argument("--updates", type=int, default=200, help="updates per mode and round")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--rounds", type=int, default=5, help="repetitions; medians reported")
    parser.add_argument("--modes", nargs="+", choices=["on", "off", "base"], default=None)
    parser.add_argument("--baseline", type=Path, help="another checkout, run as mode base")
    args = parser.parse_args()
    modes = args.modes or (["on", "off", "base"] if args.baseline else ["on", "off"])
    if REFERENCE not in modes or len(modes) < 2:
        parser.error(f"--modes must include {REFERENCE} and another mode")
    baseline_commit = None
    if "base" in modes:
        if not args.baseline:
            parser.error("mode base needs --baseline PATH")
        baseline_commit = baseline_checked(args.baseline)
    with database() as db:
        data = "?" if db.pid is None else filesystem(os.path.realpath(tempfile.gettempdir()))
        rows = asyncio.run(
            bench(db.uri, db.pid, modes, args.baseline,
                  {"create": args.requests, "update": args.updates}, args.concurrency, args.rounds)
        )  # fmt: skip
    merged = medians(rows, ("design", "operation", "mode", "clients"))
    compared = ratios(rows)
    print(f"database filesystem: {data}; baseline: {baseline_commit}")
    report(merged, compared)
    path = save_results("durability", {
        "modes": modes, "baseline": baseline_commit, "filesystem": data,
        "arguments": vars(args) | {"baseline": str(args.baseline) if args.baseline else None},
        "rows": rows, "medians": merged, "ratios": compared,
    })  # fmt: skip
    print(f"saved {path}")


if __name__ == "__main__":
    main()
