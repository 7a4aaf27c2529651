"""Benchmark the clinical core (issue 4): `$gas-tscore` and `$progress` for a client with 5 GAS
goals and 100 sessions, p50/p99 latency and the server's CPU per request.

    python bench/clinical.py [--sessions 100] [--requests 200]

The client's record is written through the FHIR API as an EHR would: 5 GAS goals, then per
session an ORS and an SRS QuestionnaireResponse (the server extracts and interprets them) and,
every third session, a practitioner rating of every goal (the server updates the goals' status).
The seeding time per write is reported too. The server runs as its own process, on the embedded
database unless MONGODB_URI is set. Target: `$progress` p50 under 100 ms.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import Served, database, measured, save_results, served, summarize

from fhirgoal.clinical.resources import gas_goal, gas_rating, rating_scale_response
from fhirgoal.core.jsonio import dumps

GOALS = 5
START = datetime(2024, 1, 8, 15, 0, tzinfo=UTC)
LEVELS = ["much less", "less", "expected", "more", "much more"]


def marks(total: float) -> list[Decimal]:
    first = Decimal(f"{total / 4:.1f}")
    return [first, first, first, Decimal(f"{total:.1f}") - 3 * first]


def record(sessions: int) -> list[dict[str, Any]]:
    """The client's record in the order an EHR would send it."""
    out: list[dict[str, Any]] = [
        {"resourceType": "Patient", "id": "bench-client", "birthDate": "1985-03-02"},
        {"resourceType": "Practitioner", "id": "bench-therapist"},
    ]
    for g in range(GOALS):
        out.append(gas_goal(f"bench-goal-{g}", "bench-client", f"goal {g}", LEVELS,
                            start="2024-01-08", importance=1 + g % 3, difficulty=1 + (g + 1) % 3))  # fmt: skip
    for n in range(sessions):
        when = (START + timedelta(weeks=n)).isoformat()
        ors = 16 + 14 * n / max(1, sessions - 1)
        out.append(rating_scale_response(f"bench-ors-{n}", "ors", "bench-client", marks(ors), when))
        srs = 33.0 if n % 17 == 5 else 38.0
        out.append(rating_scale_response(f"bench-srs-{n}", "srs", "bench-client", marks(srs), when))
        if n % 3 == 0:
            for g in range(GOALS):
                level = min(2, -1 + (n // 3 + g) // 8) if g != 4 else -1  # goal 4 stalls
                out.append(gas_rating(f"bench-r{g}-{n}", "bench-client", f"bench-goal-{g}", level,
                                      when, baseline=n == 0, performer="Practitioner/bench-therapist"))  # fmt: skip
    return out


async def seed(server: Served, resources: list[dict[str, Any]]) -> dict[str, Any]:
    requests = [
        server.request("PUT", f"/fhir/{r['resourceType']}/{r['id']}", dumps(r)) for r in resources
    ]
    result = await server.run(requests, len(requests), 1)
    bad = {s: c for s, c in result.statuses.items() if s not in (200, 201)}
    if bad:
        raise SystemExit(f"seeding failed: {bad}")
    return summarize("seed (PUT, hooks)", 1, result, None)


async def bench(uri: str, sessions: int, total: int) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    async with served(uri, "clinical") as server:
        rows.append(await seed(server, record(sessions)))
        system = dumps({"resourceType": "Parameters", "parameter": [
            {"name": "goal", "part": [{"name": "level", "valueDecimal": Decimal(lvl)},
                                      {"name": "weight", "valueDecimal": Decimal(w)}]}
            for lvl, w in ((-1, 2), (0, 3), (1, 1), ("-0.5", 4), (2, 6))]})  # fmt: skip
        cases = [
            ("$gas-tscore (given)", server.request("POST", "/fhir/$gas-tscore", system)),
            ("$gas-tscore (patient)",
             server.request("GET", "/fhir/Patient/bench-client/$gas-tscore?date=2030-01-01")),
            ("$progress", server.request("GET", "/fhir/Patient/bench-client/$progress?date=2030-01-01")),
        ]  # fmt: skip
        for name, request in cases:
            await server.run([request], 5, 1)  # warm
            result, cpu = await measured(server.process.pid, server.run([request], total, 1))
            if set(result.statuses) != {200}:
                raise SystemExit(f"{name}: {result.statuses}")
            rows.append(summarize(name, 1, result, cpu))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--requests", type=int, default=200)
    args = parser.parse_args()
    with database() as db:
        rows = asyncio.run(bench(db.uri, args.sessions, args.requests))
    print(f"{'operation':<24}{'requests':>9}{'p50 ms':>9}{'p99 ms':>9}{'CPU ms/req':>12}")
    for row in rows:
        cpu = row.get("server_cpu_ms_per_request", "")
        print(
            f"{row['operation']:<24}{row['requests']:>9}{row['p50_ms']:>9}{row['p99_ms']:>9}{cpu:>12}"
        )
    print("target: $progress p50 < 100 ms (5 goals, 100 sessions)")
    save_results("clinical", {"rows": rows})


if __name__ == "__main__":
    main()
