"""Benchmark SMART authorization (issue 5): token validation CPU, and read throughput with
authorization on (FHIRGOAL_AUTH=smart, audit included) against off, in one run.

    python bench/auth.py [--requests 1500] [--concurrency 1 8] [--rounds 7]

1. In process: microseconds of CPU to verify a server-issued RS384 and ES384 access token from
   scratch (signature, claims, scope parse, AccessContext), and for a token already seen (the LRU
   cache every request after the first takes).
2. Three `fhirgoal serve` processes on the same database: FHIRGOAL_AUTH=off, FHIRGOAL_AUTH=smart,
   and smart without the audit trail (which separates checking tokens from auditing). The smart
   tokens come from the real backend-services flow (client_credentials with a private_key_jwt
   assertion). Reads of the same Observations go to each in turn, `--rounds` times.
   The machine's speed drifts by more than the differences measured, even between runs seconds
   apart, so each round runs every mode once (starting with a different mode each round), each
   mode's rate is divided by the off rate of the same round, and the median of those ratios is
   the figure compared with the target: smart >= 0.85 of off. Throughput (median run), latency
   and the CPU per request of the server process and (when the bench started it) of the embedded
   database are reported too, counted until every audit event of the run is stored.
3. Paired: the same modes loaded all at once, `--requests` reads and `clients` clients each,
   `--rounds` times. Drift then slows every mode alike, so this is the steadier measure of what
   authorization and audit cost: each mode's rate over the off rate of the same moment, and the
   server CPU per read beyond off's (each server's read as its own load ends). The machine is
   more loaded than in the sequential runs, so CPU per read is higher for every mode.
4. The audit trail's search index is built after the load, in quiet time (store/append_log.py).
   After each audited run the bench waits until it is built and reports that work apart: its
   duration and CPU per audited read, and the "all-in" ratio, the audited rate had the requests
   also waited for their events to be indexed.

With MONGODB_URI unset it starts the embedded database in a temporary directory. The machine is
shared and has two cores for the database, both servers and the load generator: figures are
approximate; compare the two modes within one run.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
from joserfc import jwt
from joserfc.jwk import RSAKey
from pymongo import AsyncMongoClient

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import DatabaseCpu, cpu_seconds, observation, shut_down
from harness import start_server as start_fhirgoal
from loadgen import Result, render_request, run

from fhirgoal.auth.bearer import CachedAuthenticator
from fhirgoal.auth.clients import Client, ClientRegistry
from fhirgoal.auth.keys import KeyRing
from fhirgoal.auth.tokens import TokenIssuer
from fhirgoal.store.append_log import log_collection
from fhirgoal.store.embedded import EmbeddedDatabase, free_port
from fhirgoal.store.mongo import connect

BASE = "http://bench.invalid/fhir"
# the servers share one database and so one set of signing keys, encrypted with this key
BENCH_KEK = base64.b64encode(b"fhirgoal bench key-encryption k.").decode()


async def token_validation(uri: str, db_name: str, rounds: int = 300) -> dict[str, float]:
    client = connect(uri)
    figures: dict[str, float] = {}
    try:
        for alg in ("RS384", "ES384"):
            db = client[f"{db_name}_{alg.lower()}"]
            keys = KeyRing(db, bytes(32), alg)
            await keys.ensure()
            issuer = TokenIssuer(keys, 300)

            async def verify(token: str, base: str, issuer: TokenIssuer = issuer) -> Any:
                return await issuer.verify(token, issuer=base, audience=base)

            tokens = [
                await issuer.sign(
                    {"iss": BASE, "aud": BASE, "sub": "c", "client_id": "c",
                     "scope": "patient/*.rs user/Observation.cruds", "patient": f"p{n}"}
                )
                for n in range(rounds)
            ]  # fmt: skip
            cold = CachedAuthenticator(verify, None)
            started = time.process_time()
            for token in tokens:
                await cold.authenticate(token, BASE)
            figures[f"{alg} verify + context, first use (us)"] = round(
                (time.process_time() - started) / rounds * 1e6, 1
            )
            started = time.process_time()
            for _ in range(10):
                for token in tokens:
                    await cold.authenticate(token, BASE)
            figures[f"{alg} cached token (us)"] = round(
                (time.process_time() - started) / (10 * rounds) * 1e6, 2
            )
            await client.drop_database(f"{db_name}_{alg.lower()}")
    finally:
        await client.close()
    return figures


def start_server(
    uri: str, port: int, db: str, auth: str, audit: bool = True
) -> subprocess.Popen[bytes]:
    audited = "true" if audit else "false"
    env = {
        "FHIRGOAL_AUTH": auth,
        "FHIRGOAL_AUDIT": audited,
        "FHIRGOAL_KEY_ENCRYPTION_KEY": BENCH_KEK,
    }
    return start_fhirgoal(uri, port, db, env)


class BackendClient:
    """A backend-services client (SMART Backend Services), registered once; `token()` runs the
    real client_credentials + private_key_jwt flow. Access tokens are short-lived, and a bench
    with many rounds outlives one, so each run asks for a fresh token."""

    def __init__(self, uri: str, db: str, port: int, scope: str) -> None:
        self.uri, self.db, self.scope = uri, db, scope
        self.token_url = f"http://127.0.0.1:{port}/auth/token"
        self.key = RSAKey.generate_key(2048, parameters={"alg": "RS384"}, auto_kid=True)
        self.client_id = f"bench-{uuid.uuid4().hex[:8]}"

    async def register(self) -> BackendClient:
        mongo = connect(self.uri)
        try:
            public = {"keys": [self.key.as_dict(private=False)]}
            await ClientRegistry(mongo[self.db]).register(
                Client(self.client_id, self.scope, jwks=public)
            )
        finally:
            await mongo.close()
        return self

    async def token(self) -> str:
        now = int(time.time())
        claims = {"iss": self.client_id, "sub": self.client_id, "aud": self.token_url,
                  "exp": now + 240, "jti": uuid.uuid4().hex}  # fmt: skip
        assertion = jwt.encode(
            {"alg": "RS384", "kid": self.key.kid}, claims, self.key, algorithms=["RS384"]
        )
        async with httpx.AsyncClient() as http:
            response = await http.post(self.token_url, data={
                "grant_type": "client_credentials", "scope": self.scope,
                "client_assertion_type": "urn:ietf:params:oauth:client-assertion-type:jwt-bearer",
                "client_assertion": assertion,
            })  # fmt: skip
        response.raise_for_status()
        token: str = response.json()["access_token"]
        return token


@dataclass
class Measured:
    """One run of one mode: the load's result and the CPU it cost."""

    result: Result
    cpu: float
    db_cpu: float | None
    deferred: dict[str, Any] | None = None  # the audit index built after it (smart only)


def summarize(
    mode: str, clients: int, runs: list[Measured], baseline: list[Measured]
) -> dict[str, Any]:
    """A mode's figures over its runs: the median run's throughput, latency percentiles over all
    requests, CPU per request over all of them, and its ratio to the auth-off rate taken within
    each round (the machine drifts less within a round than across the whole bench), with the
    median of those ratios as the figure to compare with the target."""
    pooled = Result(latencies=[t for run in runs for t in run.result.latencies])
    requests = max(1, len(pooled.latencies))
    db_cpu = None if runs[0].db_cpu is None else sum(run.db_cpu or 0.0 for run in runs)
    row: dict[str, Any] = {
        "mode": mode,
        "clients": clients,
        "throughput_per_s": round(statistics.median(run.result.rate for run in runs), 1),
        "rounds": [round(run.result.rate, 1) for run in runs],
        "ratios": [
            run.result.rate / off.result.rate for run, off in zip(runs, baseline, strict=True)
        ],
        "p50_ms": round(pooled.percentile(0.5), 2),
        "p99_ms": round(pooled.percentile(0.99), 2),
        "cpu_ms_per_request": round(sum(run.cpu for run in runs) * 1000 / requests, 3),
        "db_cpu_ms_per_request": None if db_cpu is None else round(db_cpu * 1000 / requests, 3),
    }
    deferred = [run.deferred for run in runs if run.deferred is not None]
    if deferred:
        row["deferred"] = {
            "seconds": round(statistics.median(d["seconds"] for d in deferred), 2),
            "left": sum(d["left"] for d in deferred),
            "cpu_ms_per_read": round(statistics.median(d["cpu_ms_per_read"] for d in deferred), 3),
            "db_cpu_ms_per_read": None
            if deferred[0]["db_cpu_ms_per_read"] is None
            else round(statistics.median(d["db_cpu_ms_per_read"] for d in deferred), 3),
        }
        row["all_in_ratio"] = statistics.median(
            len(run.result.latencies)
            / (run.result.elapsed + run.deferred["seconds"])
            / off.result.rate
            for run, off in zip(runs, baseline, strict=True)
            if run.deferred is not None
        )
    return row


async def reads(
    uri: str, total: int, concurrency: list[int], db_pid: int | None, rounds: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    db = f"bench_auth_{int(time.time())}"
    off_port, smart_port, bare_port = free_port(), free_port(), free_port()
    off = start_server(uri, off_port, db, "off")
    smart = start_server(uri, smart_port, db, "smart")
    # the same without the audit trail: separates token checking from auditing
    bare = start_server(uri, bare_port, db, "smart", audit=False)
    processes = {off_port: off, smart_port: smart, bare_port: bare}
    rows: list[dict[str, Any]] = []
    paired_rows: list[dict[str, Any]] = []
    database_cpu = DatabaseCpu(db_pid)
    mongo = connect(uri)
    try:
        seed = [
            render_request("POST", "/fhir/Observation", f"127.0.0.1:{off_port}",
                           orjson.dumps(observation(n)))
            for n in range(500)
        ]  # fmt: skip
        created = await run("127.0.0.1", off_port, seed, len(seed), 4, keep_bodies=True)
        ids = [orjson.loads(body)["id"] for body in created.bodies]
        # a token is for one server: its `aud` is that server's base URL
        smart_client = await BackendClient(uri, db, smart_port, "system/*.rs").register()
        bare_client = await BackendClient(uri, db, bare_port, "system/*.rs").register()
        modes = [
            ("off", off_port, None),
            ("smart, no audit", bare_port, bare_client),
            ("smart", smart_port, smart_client),
        ]
        for clients in concurrency:
            measured: dict[str, list[Measured]] = {mode: [] for mode, _, _ in modes}
            for round_number in range(rounds):
                # each round starts with the next mode, so no mode always follows another
                shift = round_number % len(modes)
                for mode, port, client in modes[shift:] + modes[:shift]:
                    bearer = await client.token() if client else None
                    measured[mode].append(
                        await measure(mode, port, bearer, processes[port], ids, total, clients,
                                      mongo, db, database_cpu)
                    )  # fmt: skip
            baseline = measured["off"]
            rows += [summarize(mode, clients, runs, baseline) for mode, runs in measured.items()]
            paired_rows.append(
                await paired(modes, processes, ids, total, clients, rounds, mongo, db)
            )
    finally:
        await mongo.close()
        await shut_down(uri, db, *processes.values())
    return rows, paired_rows


def reads_of(ids: list[str], port: int, bearer: str | None) -> list[bytes]:
    """A read of each seeded Observation, with the bearer token when there is one."""
    headers = {"Authorization": f"Bearer {bearer}"} if bearer else None
    host = f"127.0.0.1:{port}"
    return [render_request("GET", f"/fhir/Observation/{rid}", host, headers=headers) for rid in ids]


async def paired(
    modes: list[tuple[str, int, BackendClient | None]],
    processes: dict[int, subprocess.Popen[bytes]],
    ids: list[str],
    total: int,
    clients: int,
    rounds: int,
    mongo: AsyncMongoClient[dict[str, Any]],
    db: str,
) -> dict[str, Any]:
    """Every mode loaded at the same time, `clients` clients each: the machine's drift then
    slows all of them alike, so the rates' ratios and the servers' CPU differences per request
    are measured on the same footing (each server's CPU is read when its own load ends)."""
    rates: dict[str, list[float]] = {mode: [] for mode, _, _ in modes}
    cpu: dict[str, list[float]] = {mode: [] for mode, _, _ in modes}
    for _ in range(rounds):
        loads = []
        for mode, port, client in modes:
            requests = reads_of(ids, port, await client.token() if client else None)
            await run("127.0.0.1", port, requests, 200, clients)  # warm-up
            loads.append((mode, port, requests))
        await asyncio.sleep(1.5)
        await logged_events(mongo, db, until=200)
        await drained(mongo, db)  # the warm-up's events indexed first

        async def load(mode: str, port: int, requests: list[bytes]) -> None:
            before = cpu_seconds(processes[port].pid)
            result = await run("127.0.0.1", port, requests, total, clients)
            cpu[mode].append((cpu_seconds(processes[port].pid) - before) * 1000 / total)
            rates[mode].append(result.rate)

        await asyncio.gather(*(load(*arguments) for arguments in loads))
        await logged_events(mongo, db, until=total)
        await drained(mongo, db)
    median = statistics.median
    return {
        "clients": clients,
        "cpu_ms_per_request": {mode: round(median(values), 3) for mode, values in cpu.items()},
        "ratios": {
            mode: [rate / off for rate, off in zip(values, rates["off"], strict=True)]
            for mode, values in rates.items()
            if mode != "off"
        },
        "cpu_over_off": {
            mode: [c - off for c, off in zip(values, cpu["off"], strict=True)]
            for mode, values in cpu.items()
            if mode != "off"
        },
    }


async def measure(
    mode: str,
    port: int,
    bearer: str | None,
    process: subprocess.Popen[bytes],
    ids: list[str],
    total: int,
    clients: int,
    mongo: AsyncMongoClient[dict[str, Any]],
    db: str,
    database_cpu: DatabaseCpu,
) -> Measured:
    """One run of one mode: `total` reads of the seeded Observations by `clients` clients."""
    requests = reads_of(ids, port, bearer)
    await run("127.0.0.1", port, requests, 200, clients)  # warm-up
    await asyncio.sleep(1.5)
    audited = mode == "smart"
    if audited:  # the warm-up's events stored and indexed first
        await logged_events(mongo, db, until=200)
        await deferred_indexing(mongo, db, process.pid, database_cpu, 1)
    before = cpu_seconds(process.pid)
    database_cpu.start()
    result = await run("127.0.0.1", port, requests, total, clients)
    if audited:  # until its events are stored, inside the measurement
        await logged_events(mongo, db, until=total)
    cpu = cpu_seconds(process.pid) - before
    db_cpu = database_cpu.stop()
    if set(result.statuses) != {200}:
        raise SystemExit(f"{mode}: unexpected statuses {result.statuses}")
    deferred = None
    if audited:  # waited for here, before the next mode runs on the same machine
        deferred = await deferred_indexing(
            mongo, db, process.pid, database_cpu, len(result.latencies)
        )
    return Measured(result, cpu, db_cpu, deferred)


async def logged_events(
    mongo: AsyncMongoClient[dict[str, Any]], db: str, until: int, wait_seconds: float = 30.0
) -> int:
    """Wait until the audit log holds `until` events; how many it holds. Called when the log was
    empty before the requests counted, and ends well before its index is built in quiet time (at
    the earliest a second after the last request), so that work is counted apart. (Counting the
    indexed AuditEvents instead would cost the embedded database a scan of them each time.)"""
    deadline = time.perf_counter() + wait_seconds
    while True:
        segments = mongo[db][log_collection("AuditEvent")].find({}, {"n": 1})
        logged = sum([segment["n"] async for segment in segments])
        if logged >= until or time.perf_counter() > deadline:
            return logged
        await asyncio.sleep(0.05)


async def drained(
    mongo: AsyncMongoClient[dict[str, Any]], db: str, wait_seconds: float = 600.0
) -> int:
    """Wait until every audit log segment is indexed (or the wait is over); segments left."""
    segments = mongo[db][log_collection("AuditEvent")]
    deadline = time.perf_counter() + wait_seconds
    waiting = await segments.count_documents({})
    while waiting and time.perf_counter() < deadline:
        await asyncio.sleep(0.05)
        waiting = await segments.count_documents({})
    return waiting


async def deferred_indexing(
    mongo: AsyncMongoClient[dict[str, Any]],
    db: str,
    pid: int,
    database_cpu: DatabaseCpu,
    requests: int,
) -> dict[str, Any]:
    """Wait until the audit log's backlog is indexed; its duration and CPU per audited read."""
    started, before = time.perf_counter(), cpu_seconds(pid)
    database_cpu.start()
    waiting = await drained(mongo, db)
    db_cpu = database_cpu.stop()
    return {
        "seconds": round(time.perf_counter() - started, 2),
        "left": waiting,
        "cpu_ms_per_read": round((cpu_seconds(pid) - before) * 1000 / requests, 3),
        "db_cpu_ms_per_read": None if db_cpu is None else round(db_cpu * 1000 / requests, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--requests", type=int, default=1500)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    parser.add_argument(
        "--rounds", type=int, default=7, help="runs of each mode, interleaved; medians reported"
    )
    args = parser.parse_args()
    uri = os.environ.get("MONGODB_URI")
    with tempfile.TemporaryDirectory() as tmp:
        embedded = None if uri else EmbeddedDatabase(Path(tmp))
        uri = uri or embedded.start()  # type: ignore[union-attr]
        try:
            validation = asyncio.run(token_validation(uri, f"bench_keys_{int(time.time())}"))
            db_pid = embedded.process.pid if embedded and embedded.process else None
            rows, paired_rows = asyncio.run(
                reads(uri, args.requests, args.concurrency, db_pid, args.rounds)
            )
        finally:
            if embedded:
                embedded.stop()
    print("token validation (CPU per request)")
    for name, value in validation.items():
        print(f"  {name:<45}{value}")
    print()
    print(
        f"{'mode':<20}{'clients':>8}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'server CPU ms/req':>19}{'DB CPU ms/req':>15}   req/s of each round"
    )
    for row in rows:
        db_cpu = row["db_cpu_ms_per_request"]
        print(
            f"{row['mode']:<20}{row['clients']:>8}{row['throughput_per_s']:>10}{row['p50_ms']:>9}"
            f"{row['p99_ms']:>9}{row['cpu_ms_per_request']:>19}{'' if db_cpu is None else db_cpu:>15}"
            f"   {' '.join(str(rate) for rate in row['rounds'])}"
        )
    print()
    for row in rows:
        if "deferred" in row:
            deferred = row["deferred"]
            print(
                f"audit index built after the {row['clients']}-client run in "
                f"{deferred['seconds']} s ({deferred['left']} segments left): server CPU "
                f"{deferred['cpu_ms_per_read']} ms, DB CPU {deferred['db_cpu_ms_per_read']} ms "
                "per audited read"
            )
    print()
    print("read throughput / off, taken within each round: median (each round)")
    for row in rows:
        if row["mode"] != "off":
            ratios = row["ratios"]
            print(
                f"  {row['mode']:<16}{row['clients']} clients: {statistics.median(ratios):.2f}"
                f"  ({' '.join(f'{r:.2f}' for r in ratios)})  target >= 0.85"
            )
            if "all_in_ratio" in row:
                print(f"    all-in, index build included: {row['all_in_ratio']:.2f}")
    print()
    print("paired: every mode loaded at once, each with its clients: median (each round)")
    for row in paired_rows:
        cpu = row["cpu_ms_per_request"]
        print(f"  {row['clients']} clients each, server CPU ms/req: "
              + ", ".join(f"{mode} {value}" for mode, value in cpu.items()))  # fmt: skip
        for mode, ratios in row["ratios"].items():
            extra = row["cpu_over_off"][mode]
            print(
                f"    {mode:<16} rate / off {statistics.median(ratios):.2f}"
                f" ({' '.join(f'{r:.2f}' for r in ratios)}); server CPU over off"
                f" {statistics.median(extra):+.3f} ms ({' '.join(f'{c:+.3f}' for c in extra)})"
            )


if __name__ == "__main__":
    main()
