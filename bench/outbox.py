"""Benchmark the outbox (issue 15): what recording notifications costs a write, and how fast a
healthy receiver gets them.

    python bench/outbox.py [--requests 400] [--clients 8] [--rounds 3] [--chunks 4] [--code DIR]

Three `fhirgoal serve` processes on one database process, each with a database of its own, all
FHIRGOAL_AUTH=off (the write's own cost, no audit records):

    none       no Subscription: a create as it was before the outbox
    recorded   an active Subscription that every create matches, delivery worker off
               (FHIRGOAL_OUTBOX_WORKER=false): the write's CPU with its outbox item recorded
    delivered  the same with the worker on, to a healthy receiver in this process (full-resource
               payload): items/s and the time from the write (the resource's meta.lastUpdated,
               stamped by the server as it writes) to the notification's arrival

Each round runs `--clients` clients sending `--requests` creates to each server: none and
recorded alternately in `--chunks` chunks (none, recorded, recorded, none, ...: the machine is
shared and its load drifts within a round), then delivered; the figures are medians over rounds,
and the CPU ratio recorded / none is taken within each round. Targets: recorded / none server CPU per write at
most 1.20; write-to-delivery p99 under 2 s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import (
    Result,
    cpu_seconds,
    database,
    measured,
    observation,
    save_results,
    serve,
    shut_down,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.conftest import serve_app

MODES = ("none", "recorded", "delivered")


class Sink:
    """The healthy receiver: answers 204 at once, notes each notification's delay."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.keys: set[str] = set()
        self.first = self.last = 0.0
        self.expected = 0
        self.all_in = asyncio.Event()

    async def endpoint(self, request: Request) -> Response:
        body = await request.body()
        arrived = time.time()
        if body:
            written = orjson.loads(body)["meta"]["lastUpdated"]
            self.delays.append(arrived - datetime.fromisoformat(written).timestamp())
            self.keys.add(request.headers.get("idempotency-key", ""))
            self.first = self.first or arrived
            self.last = arrived
            if len(self.delays) >= self.expected:
                self.all_in.set()
        return Response(status_code=204)


def subscription(endpoint: str) -> bytes:
    return orjson.dumps(
        {
            "resourceType": "Subscription",
            "status": "active",
            "reason": "bench",
            "criteria": "Observation?category=survey",
            "channel": {
                "type": "rest-hook",
                "endpoint": endpoint,
                "payload": "application/fhir+json",
            },
        }
    )


def row_of(round_number: int, mode: str, result: Result, cpu: float, writes: int) -> dict[str, Any]:
    return {
        "round": round_number,
        "mode": mode,
        "writes_per_s": round(result.rate, 1),
        "write_p50_ms": round(result.percentile(0.5), 2),
        "write_p99_ms": round(result.percentile(0.99), 2),
        "server_cpu_ms_per_write": round(cpu * 1000 / writes, 3),
        "statuses": result.statuses,
    }


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000 if ordered else 0.0


async def main(
    requests: int, clients: int, rounds: int, chunks: int, code: Path | None = None
) -> dict[str, Any]:
    sink = Sink()
    receiver, receiver_task, receiver_port = await serve_app(
        Starlette(routes=[Route("/{path:path}", sink.endpoint, methods=["POST", "PUT"])]),
        lifespan="off",
    )
    endpoint = f"http://127.0.0.1:{receiver_port}/hook"
    stamp = int(time.time())
    rows: list[dict[str, Any]] = []
    with database() as db:
        servers = {
            "none": serve(db.uri, f"bench_outbox_none_{stamp}", cwd=code),
            "recorded": serve(
                db.uri, f"bench_outbox_rec_{stamp}", {"FHIRGOAL_OUTBOX_WORKER": "false"}, code
            ),
            "delivered": serve(db.uri, f"bench_outbox_del_{stamp}", cwd=code),
        }
        try:
            for mode in ("recorded", "delivered"):
                server = servers[mode]
                answer = await server.run(
                    [server.request("POST", "/fhir/Subscription", subscription(endpoint))], 1, 1
                )
                assert answer.statuses == {201: 1}, answer.statuses
            await asyncio.sleep(1.5)  # the other replicas' refresh (subscription_refresh)
            for round_number in range(rounds):
                base = round_number * requests
                # none and recorded alternate in chunks (ABBA...): the machine is shared, and
                # its load drifts within a round more than the outbox's cost
                results: dict[str, Result] = {mode: Result() for mode in MODES[:2]}
                cpu_of = dict.fromkeys(MODES[:2], 0.0)
                size = requests // chunks
                for chunk in range(chunks):
                    order = MODES[:2] if chunk % 2 == 0 else MODES[1::-1]
                    for mode in order:
                        server = servers[mode]
                        first = base + chunk * size
                        creates = [
                            server.request(
                                "POST", "/fhir/Observation", orjson.dumps(observation(first + n))
                            )
                            for n in range(size)
                        ]
                        result, cpu = await measured(
                            server.process.pid, server.run(creates, size, clients)
                        )
                        merged = results[mode]
                        merged.latencies += result.latencies
                        merged.elapsed += result.elapsed
                        for status, count in result.statuses.items():
                            merged.statuses[status] = merged.statuses.get(status, 0) + count
                        cpu_of[mode] += cpu
                for mode in MODES[:2]:
                    rows.append(
                        row_of(round_number, mode, results[mode], cpu_of[mode], size * chunks)
                    )
                    print(rows[-1], flush=True)
                server = servers["delivered"]
                creates = [
                    server.request("POST", "/fhir/Observation", orjson.dumps(observation(base + n)))
                    for n in range(requests)
                ]
                sink.delays.clear()
                sink.first = sink.last = 0.0
                sink.expected = requests
                sink.all_in.clear()
                result, cpu = await measured(
                    server.process.pid, server.run(creates, requests, clients)
                )
                row = row_of(round_number, "delivered", result, cpu, requests)
                before = cpu_seconds(server.process.pid) - cpu
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(sink.all_in.wait(), 60)
                total_cpu = cpu_seconds(server.process.pid) - before
                row.update(
                    {
                        "delivered": len(sink.delays),
                        "delivery_p50_ms": round(percentile(sink.delays, 0.5), 1),
                        "delivery_p99_ms": round(percentile(sink.delays, 0.99), 1),
                        "items_per_s": round(
                            len(sink.delays) / max(1e-9, sink.last - sink.first), 1
                        ),
                        "server_cpu_ms_per_write_and_delivery": round(
                            total_cpu * 1000 / requests, 3
                        ),
                    }
                )
                rows.append(row)
                print(row, flush=True)
        finally:
            for server in servers.values():
                await shut_down(db.uri, server.db, server.process)
            receiver.should_exit = True
            await receiver_task
    ratios = []
    for r in range(rounds):
        cpu = {row["mode"]: row["server_cpu_ms_per_write"] for row in rows if row["round"] == r}
        ratios.append(round(cpu["recorded"] / cpu["none"], 3))
    summary: dict[str, Any] = {}
    for mode in MODES:
        mine = [row for row in rows if row["mode"] == mode]
        keys = [k for k in mine[0] if k not in ("round", "mode", "statuses")]
        summary[mode] = {k: statistics.median(row[k] for row in mine) for k in keys}
    summary["cpu_ratio_recorded_over_none"] = {
        "per_round": ratios,
        "median": statistics.median(ratios),
    }
    return {"clients": clients, "requests": requests, "rows": rows, "summary": summary}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chunks", type=int, default=4)
    parser.add_argument(
        "--code", type=Path, help="serve another checkout's code (e.g. main, for an A/B)"
    )
    args = parser.parse_args()
    outcome = asyncio.run(main(args.requests, args.clients, args.rounds, args.chunks, args.code))
    print(orjson.dumps(outcome["summary"], option=orjson.OPT_INDENT_2).decode())
    print("saved", save_results("outbox", outcome))
