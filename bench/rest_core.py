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
import statistics
import sys
from pathlib import Path
from typing import Any

import orjson

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (
    Database,
    DatabaseCpu,
    database,
    measured,
    medians,
    observation,
    ratios_in_rounds,
    save_results,
    served,
    summarize,
    timed,
)

from fhirgoal.store.mongo import connect


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

    async def row(name: str, count: int, make: Any) -> dict[str, Any]:
        db_cpu.start()
        result = await timed(clients, count, make)
        return summarize(name, clients, result, None, db_cpu.stop())

    rows = [
        await row("raw insert_one", total, lambda n: collection.insert_one(docs[n])),
        await row("raw find_one", total, lambda n: collection.find_one({"_id": docs[n]["_id"]})),
        await row("raw insert, indexed", len(stored), lambda n: indexed.insert_one(stored[n])),
    ]
    await client.close()
    return rows


async def bench(
    database: Database, total: int, concurrency: list[int], rounds: int
) -> list[dict[str, Any]]:
    db_cpu = DatabaseCpu(database.pid)
    rows: list[dict[str, Any]] = []
    async with served(database.uri, "rest") as server:
        pid = server.process.pid

        def creates(count: int) -> list[bytes]:
            return [
                server.request("POST", "/fhir/Observation", orjson.dumps(observation(n)))
                for n in range(count)
            ]

        await server.run(creates(200), 200, 4)  # warm-up
        for clients, round_number in itertools.product(concurrency, range(rounds)):
            first = len(rows)
            db_cpu.start()
            result, cpu = await measured(
                pid, server.run(creates(total), total, clients, keep_bodies=True)
            )
            rows.append(summarize("create", clients, result, cpu, db_cpu.stop()))
            ids = [orjson.loads(body)["id"] for body in result.bodies]
            reads = [server.request("GET", f"/fhir/Observation/{rid}") for rid in ids]
            db_cpu.start()
            result, cpu = await measured(pid, server.run(reads, total, clients))
            rows.append(summarize("read", clients, result, cpu, db_cpu.stop()))
            updates = [
                server.request("PUT", f"/fhir/Observation/{rid}", orjson.dumps(observation(n, rid)))
                for n, rid in enumerate(ids)
            ]
            db_cpu.start()
            result, cpu = await measured(pid, server.run(updates, total, clients))
            rows.append(summarize("update", clients, result, cpu, db_cpu.stop()))
            rows += await raw_driver(database.uri, server.db, total, clients, db_cpu)
            for row in rows[first:]:
                row["round"] = round_number
    return rows


def ratio(rows: list[dict[str, Any]], clients: int, operation: str, reference: str) -> float:
    """The median over rounds of `operation`'s throughput over `reference`'s in the same round."""
    within = ratios_in_rounds(
        rows,
        {"operation": operation, "clients": clients},
        {"operation": reference, "clients": clients},
    )
    return round(statistics.median(within), 2)


def report(rows: list[dict[str, Any]]) -> dict[str, Any]:
    merged = medians(rows, ("operation", "clients"))
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
