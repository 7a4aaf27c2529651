"""Benchmark the outbox (issue 15): what recording notifications costs a write, and how fast a
healthy receiver gets them.

    python bench/outbox.py [--requests 400] [--clients 8] [--rounds 3]

Three `fhirgoal serve` processes on one database process, each with a database of its own, all
FHIRGOAL_AUTH=off (the write's own cost, no audit records):

    none       no Subscription: a create as it was before the outbox
    recorded   an active Subscription that every create matches, delivery worker off
               (FHIRGOAL_OUTBOX_WORKER=false): the write's CPU with its outbox item recorded
    delivered  the same with the worker on, to a healthy receiver in this process (full-resource
               payload): items/s and the time from the write (the resource's meta.lastUpdated,
               stamped by the server as it writes) to the notification's arrival

Each round runs `--clients` clients sending `--requests` creates to each server in turn (the
order rotating by round); the figures are medians over rounds, and the CPU ratio
recorded / none is taken within each round. Targets: recorded / none server CPU per write at
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


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000 if ordered else 0.0


async def main(requests: int, clients: int, rounds: int) -> dict[str, Any]:
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
            "none": serve(db.uri, f"bench_outbox_none_{stamp}"),
            "recorded": serve(
                db.uri, f"bench_outbox_rec_{stamp}", {"FHIRGOAL_OUTBOX_WORKER": "false"}
            ),
            "delivered": serve(db.uri, f"bench_outbox_del_{stamp}"),
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
                order = MODES[round_number % 3 :] + MODES[: round_number % 3]
                for mode in order:
                    server = servers[mode]
                    base = round_number * requests
                    creates = [
                        server.request(
                            "POST", "/fhir/Observation", orjson.dumps(observation(base + n))
                        )
                        for n in range(requests)
                    ]
                    sink.delays.clear()
                    sink.first = sink.last = 0.0
                    sink.expected = requests
                    sink.all_in.clear()
                    result, cpu = await measured(
                        server.process.pid, server.run(creates, requests, clients)
                    )
                    row: dict[str, Any] = {
                        "round": round_number,
                        "mode": mode,
                        "writes_per_s": round(result.rate, 1),
                        "write_p50_ms": round(result.percentile(0.5), 2),
                        "write_p99_ms": round(result.percentile(0.99), 2),
                        "server_cpu_ms_per_write": round(cpu * 1000 / requests, 3),
                        "statuses": result.statuses,
                    }
                    if mode == "delivered":
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
    args = parser.parse_args()
    outcome = asyncio.run(main(args.requests, args.clients, args.rounds))
    print(orjson.dumps(outcome["summary"], option=orjson.OPT_INDENT_2).decode())
    print("saved", save_results("outbox", outcome))
