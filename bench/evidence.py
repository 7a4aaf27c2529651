"""Benchmark `Patient/{id}/$medical-necessity` (issue 16) for a client with 5 GAS goals and 100
sessions: p50/p99 latency and the server's CPU per request, as a preview (GET) of the signed
document alone, of the document and the PDF, and stored (POST, both).

    python bench/evidence.py [--sessions 100] [--requests 40]

The record is bench/clinical.py's (5 GAS goals, per session an ORS and an SRS, a practitioner
rating of every goal every third session) with what the evidence needs beside it: a diagnosis, a
treatment plan naming the goals and its author, and one finished Encounter per session. It is
written through the FHIR API; the server runs as its own process, on the embedded database unless
MONGODB_URI is set. Target: with the PDF, p50 under 1 s.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from clinical import GOALS, START, record, seed
from harness import database, measured, save_results, shut_down, start_server, summarize
from loadgen import render_request, run

from fhirgoal.core.jsonio import dumps
from fhirgoal.store.embedded import free_port

PID = "bench-client"
KEK = "YmVuY2gta2V5LWVuY3J5cHRpb24ta2V5LTMyLWJ5dGU="  # 32 bytes: no key file in the cwd


def evidence_record(sessions: int) -> list[dict[str, Any]]:
    out = record(sessions)
    out.append(
        {
            "resourceType": "Condition",
            "id": "bench-dx",
            "subject": {"reference": f"Patient/{PID}"},
            "clinicalStatus": {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/condition-clinical",
                        "code": "active",
                    }
                ]
            },
            "code": {
                "coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "F41.1"}],
                "text": "Generalized anxiety disorder",
            },
        }
    )
    out.append(
        {
            "resourceType": "CarePlan",
            "id": "bench-plan",
            "status": "active",
            "intent": "plan",
            "subject": {"reference": f"Patient/{PID}"},
            "author": {"reference": "Practitioner/bench-therapist"},
            "period": {"start": START.date().isoformat()},
            "addresses": [{"reference": "Condition/bench-dx"}],
            "goal": [{"reference": f"Goal/bench-goal-{g}"} for g in range(GOALS)],
        }
    )
    for n in range(sessions):
        begin = START + timedelta(weeks=n)
        out.append({
            "resourceType": "Encounter", "id": f"bench-s{n}", "status": "finished",
            "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
            "subject": {"reference": f"Patient/{PID}"},
            "participant": [{"individual": {"reference": "Practitioner/bench-therapist"}}],
            "period": {"start": begin.isoformat(), "end": (begin + timedelta(minutes=50)).isoformat()},
        })  # fmt: skip
    return out


async def bench(uri: str, sessions: int, total: int) -> list[dict[str, Any]]:
    db = f"bench_evidence_{int(time.time())}"
    port = free_port()
    host = f"127.0.0.1:{port}"
    server = start_server(uri, port, db, {"FHIRGOAL_KEY_ENCRYPTION_KEY": KEK})
    end = (START + timedelta(weeks=sessions)).date().isoformat()
    query = f"start={START.date().isoformat()}&end={end}"
    path = f"/fhir/Patient/{PID}/$medical-necessity"
    stored = dumps({"resourceType": "Parameters", "parameter": [
        {"name": "start", "valueDate": START.date().isoformat()}, {"name": "end", "valueDate": end}]})  # fmt: skip
    rows: list[dict[str, Any]] = []
    try:
        rows.append(await seed(port, host, evidence_record(sessions)))
        cases = [
            ("GET document", render_request("GET", f"{path}?{query}&format=document", host)),
            ("GET document + PDF", render_request("GET", f"{path}?{query}", host)),
            ("POST document + PDF", render_request("POST", path, host, stored)),
        ]
        for name, request in cases:
            await run("127.0.0.1", port, [request], 3, 1)  # warm (and the signing key made)
            result, cpu = await measured(server.pid, run("127.0.0.1", port, [request], total, 1))
            if set(result.statuses) != {200}:
                raise SystemExit(f"{name}: {result.statuses}")
            rows.append(summarize(name, 1, result, cpu))
    finally:
        await shut_down(uri, db, server)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--sessions", type=int, default=100)
    parser.add_argument("--requests", type=int, default=40)
    args = parser.parse_args()
    with database() as db:
        rows = asyncio.run(bench(db.uri, args.sessions, args.requests))
    print(f"{'operation':<24}{'requests':>9}{'p50 ms':>9}{'p99 ms':>9}{'CPU ms/req':>12}")
    for row in rows:
        cpu = row.get("server_cpu_ms_per_request", "")
        print(
            f"{row['operation']:<24}{row['requests']:>9}{row['p50_ms']:>9}{row['p99_ms']:>9}{cpu:>12}"
        )
    print(f"target: with the PDF p50 < 1000 ms ({GOALS} goals, {args.sessions} sessions)")
    save_results("evidence", {"rows": rows})


if __name__ == "__main__":
    main()
