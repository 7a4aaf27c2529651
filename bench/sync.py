"""Benchmark EHR sync (issue 15): an inbound pull of many patients, and outbound delivery under
concurrent writers.

    python bench/sync.py [--patients 500] [--per-patient 20] [--writes 800] [--writers 8]
                         [--mapping example-ehr] [--bulk patient]

Two `fhirgoal serve` processes on one database process: the EHR (FHIRGOAL_AUTH=smart, fhirgoal
registered as a Backend Services client with `fhirgoal client register`) and fhirgoal
(FHIRGOAL_AUTH=off, the connection made with `fhirgoal ehr add`, no background pulls).

    inbound    the EHR holds `--patients` patients with `--per-patient` resources each (the
               patient, encounters, conditions, goals, care plans), loaded as transactions;
               fhirgoal holds the same patients by MRN. One pull (what `fhirgoal sync run` does,
               in this process): resources/s; then a second pull, which finds nothing new.
    outbound   `--writers` clients create `--writes` PHQ-9 totals for the linked patients in
               fhirgoal; its delivery worker sends each to the EHR (conditional create): items/s
               and the time from the write (fhirgoal's meta.lastUpdated) to the EHR's copy (its
               meta.lastUpdated). Target: p99 under 2 s at a healthy receiver.

With `--mapping` (a mapping folder, or the name of a built-in one) the connection speaks that
dialect: every resource goes through the mapping engine both ways (exchange/mapping.py), and the
delivered totals are looked for in the EHR under the code the mapping gives them.

With `--bulk patient` the connection pulls through the EHR's Bulk Data export (Patient/$export
narrowed to the followed patients, exchange/ehr_bulk.py) instead of searches.

Everything runs on the same machine: figures are for comparison, not capacity.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from harness import database, save_results, serve, shut_down

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from fhirgoal.config import Settings
from fhirgoal.exchange.backend_auth import BackendServicesClient
from fhirgoal.exchange.connections import new_key
from fhirgoal.exchange.mapping import Mapping, resolve_directory
from fhirgoal.fhir.search.dates import parse_range

KEK = "YmVuY2gta2V5LWVuY3J5cHRpb24ta2V5LTMyLWJ5dGU="
MRN = "urn:oid:2.16.840.1.113883.19.5"
SCOPES = "system/*.cruds"


def cli(uri: str, db: str, *args: str) -> str:
    env = os.environ | {
        "MONGODB_URI": uri,
        "FHIRGOAL_DB": db,
        "FHIRGOAL_KEY_ENCRYPTION_KEY": KEK,
        "FHIRGOAL_LOG_LEVEL": "WARNING",
        "COLUMNS": "200",
    }
    done = subprocess.run(
        [sys.executable, "-m", "fhirgoal.cli", *args], env=env, capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"fhirgoal {' '.join(args)}: {done.stderr}")
    return done.stdout


def patient_bundle(n: int, per_patient: int) -> dict[str, Any]:
    """A transaction: patient n and per_patient - 1 resources of its record."""
    pid = f"urn:uuid:00000000-0000-4000-8000-{n:012d}"
    subject = {"reference": pid}
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": pid,
            "resource": {
                "resourceType": "Patient",
                "identifier": [{"system": MRN, "value": f"MRN-{n}"}],
                "name": [{"family": f"Patient{n}"}],
            },
            "request": {"method": "POST", "url": "Patient"},
        }
    ]
    kinds = ["Encounter", "Condition", "Goal", "CarePlan"]
    for k in range(per_patient - 1):
        rt = kinds[k % len(kinds)]
        resource: dict[str, Any] = {"resourceType": rt, "subject": subject}
        if rt == "Encounter":
            resource |= {"status": "finished", "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"}}  # fmt: skip
        elif rt == "Condition":
            resource |= {"code": {"coding": [{"system": "http://hl7.org/fhir/sid/icd-10-cm", "code": "F41.1"}], "text": f"condition {k}"}}  # fmt: skip
        elif rt == "Goal":
            resource |= {"lifecycleStatus": "active", "description": {"text": f"goal {k}"}}
        else:
            resource |= {"status": "active", "intent": "plan"}
        entries.append({"resource": resource, "request": {"method": "POST", "url": rt}})
    return {"resourceType": "Bundle", "type": "transaction", "entry": entries}


async def load(http: Any, bundles: list[dict[str, Any]], url: str) -> None:
    gate = asyncio.Semaphore(4)

    async def one(bundle: dict[str, Any]) -> None:
        async with gate:
            for _ in range(10):  # a transaction that lost to a concurrent one is run again
                response = await http(bundle)
                if response.status_code != 409:
                    break
            if response.status_code != 200:
                raise RuntimeError(f"{url}: {response.status_code} {response.text[:300]}")

    await asyncio.gather(*(one(b) for b in bundles))


async def main(args: argparse.Namespace) -> dict[str, Any]:
    stamp = int(time.time())
    with database() as db, tempfile.TemporaryDirectory() as tmp:
        ehr_db, fg_db = f"bench_ehr_{stamp}", f"bench_fg_{stamp}"
        ehr = serve(db.uri, ehr_db, {"FHIRGOAL_AUTH": "smart", "FHIRGOAL_KEY_ENCRYPTION_KEY": KEK})
        fhirgoal = serve(
            db.uri,
            fg_db,
            {"FHIRGOAL_KEY_ENCRYPTION_KEY": KEK, "FHIRGOAL_SYNC_PULL_SECONDS": "0",
             "FHIRGOAL_SUBSCRIPTION_REFRESH_SECONDS": "1"},
        )  # fmt: skip
        ehr_base = f"http://127.0.0.1:{ehr.port}/fhir"
        fg_base = f"http://127.0.0.1:{fhirgoal.port}/fhir"
        try:
            # the loader: a backend client of the EHR like fhirgoal (this module's own client)
            loader_key = new_key("ES384")
            jwks = Path(tmp) / "loader.json"
            jwks.write_text(json.dumps({"keys": [loader_key.as_dict(private=False)]}))
            cli(db.uri, ehr_db, "client", "register", "--client-id", "loader",
                "--scopes", SCOPES, "--jwks-file", str(jwks))  # fmt: skip
            fg_jwks = Path(tmp) / "fhirgoal.json"
            dialect = []
            if args.mapping:
                dialect = ["--mapping", str(resolve_directory(args.mapping).resolve())]
            cli(db.uri, fg_db, "ehr", "add", "--name", "ehr", "--base", ehr_base,
                "--client-id", "fhirgoal", "--jwks-out", str(fg_jwks), "--patient-system", MRN,
                *dialect, *(["--bulk", args.bulk] if args.bulk else []))  # fmt: skip
            cli(db.uri, ehr_db, "client", "register", "--client-id", "fhirgoal",
                "--scopes", SCOPES, "--jwks-file", str(fg_jwks))  # fmt: skip
            async with httpx.AsyncClient(timeout=120) as http:
                loader = BackendServicesClient(ehr_base, "loader", loader_key, SCOPES, http)
                headers = {"Content-Type": "application/fhir+json"}
                started = time.perf_counter()
                await load(
                    lambda b: loader.request("POST", ehr_base, headers=headers, content=json.dumps(b).encode()),
                    [patient_bundle(n, args.per_patient) for n in range(args.patients)],
                    ehr_base,
                )  # fmt: skip
                locals_ = {
                    "resourceType": "Bundle",
                    "type": "batch",
                    "entry": [
                        {"resource": {"resourceType": "Patient", "identifier": [{"system": MRN, "value": f"MRN-{n}"}]},
                         "request": {"method": "POST", "url": "Patient"}}
                        for n in range(args.patients)
                    ],
                }  # fmt: skip
                response = await http.post(fg_base, json=locals_)
                assert response.status_code == 200, response.text[:300]
                local_ids = [
                    e["response"]["location"].split("Patient/")[1].split("/")[0]
                    for e in response.json()["entry"]
                ]
                print(
                    f"loaded {args.patients} x {args.per_patient} in {time.perf_counter() - started:.1f} s"
                )
                inbound = await pull(db.uri, fg_db, fg_base, http)
                print(json.dumps(inbound))
                outbound = await deliver(args, fg_base, ehr_base, loader, http, local_ids)
                print(json.dumps(outbound))
                if outbound["delivered"] < args.writes:
                    from fhirgoal.store.mongo import connect

                    mongo = connect(db.uri)
                    async for doc in mongo[fg_db]["fhirgoal_outbox"].find({}).limit(5):
                        print("undelivered:", doc)
                    print(
                        "outbox items:", await mongo[fg_db]["fhirgoal_outbox"].count_documents({})
                    )
                    await mongo.close()
        finally:
            await shut_down(db.uri, ehr.db, ehr.process)
            await shut_down(db.uri, fhirgoal.db, fhirgoal.process)
    return {"inbound": inbound, "outbound": outbound, "args": vars(args)}


async def pull(uri: str, db: str, base: str, http: httpx.AsyncClient) -> dict[str, Any]:
    """Two pulls as `fhirgoal sync run` makes them (in this process, on fhirgoal's database)."""
    from fhirgoal.bootstrap import build_service
    from fhirgoal.exchange.ehr_inbound import Puller
    from fhirgoal.exchange.ehr_install import sync_of
    from fhirgoal.store.mongo import connect

    port = int(base.split(":")[2].split("/")[0])
    settings = Settings(mongodb_uri=uri, db=db, key_encryption_key=KEK, port=port)
    client = connect(uri, timeout=10.0)
    try:
        sync = sync_of(await build_service(settings, client))
        [connection] = sync.connections
        started = time.perf_counter()
        if os.environ.get("BENCH_SYNC_PROFILE"):
            import cProfile
            import pstats

            profile = cProfile.Profile()
            profile.enable()
            first = await Puller(sync).pull(connection)
            profile.disable()
            pstats.Stats(profile).sort_stats("cumulative").print_stats(40)
        else:
            first = await Puller(sync).pull(connection)
        first_s = time.perf_counter() - started
        started = time.perf_counter()
        second = await Puller(sync).pull(connection)
        second_s = time.perf_counter() - started
        await sync.close()
    finally:
        await client.close()
    return {
        "fetched": first.fetched,
        "exported": first.exported,
        "written": first.written,
        "linked": first.linked,
        "held": first.held,
        "seconds": round(first_s, 1),
        "resources_per_s": round(first.fetched / first_s, 1),
        "again_written": second.written,
        "again_seconds": round(second_s, 1),
    }


async def deliver(
    args: argparse.Namespace,
    fg_base: str,
    ehr_base: str,
    ehr: BackendServicesClient,
    http: httpx.AsyncClient,
    patients: list[str],
) -> dict[str, Any]:
    written: dict[str, float] = {}
    queue = list(range(args.writes))

    async def writer() -> None:
        while queue:
            n = queue.pop()
            body = {
                "resourceType": "Observation", "status": "final",
                "code": {"coding": [{"system": "http://loinc.org", "code": "44261-6"}]},
                "subject": {"reference": f"Patient/{patients[n % len(patients)]}"},
                "effectiveDateTime": "2026-09-01T10:00:00Z",
                "valueQuantity": {"value": n % 28, "unit": "{score}", "system": "http://unitsofmeasure.org", "code": "{score}"},
            }  # fmt: skip
            response = await http.post(f"{fg_base}/Observation", json=body)
            assert response.status_code == 201, response.text[:300]
            created = response.json()
            written[created["id"]] = parse_range(created["meta"]["lastUpdated"])[0].timestamp()

    # the code the EHR files a PHQ-9 total under: LOINC, or what the mapping makes of it
    sent_code = "http://loinc.org|44261-6"
    if args.mapping:
        sample = {"resourceType": "Observation", "status": "final", "code": {"coding": [{"system": "http://loinc.org", "code": "44261-6"}]},
                  "subject": {"reference": "Patient/x"}, "valueQuantity": {"value": 1}}  # fmt: skip
        [mapped] = Mapping.load(resolve_directory(args.mapping)).outbound(sample)
        coding = mapped["code"]["coding"][0]
        sent_code = f"{coding['system']}|{coding['code']}"
    started = time.time()
    await asyncio.gather(*(writer() for _ in range(args.writers)))
    delays: list[float] = []
    arrived_last = 0.0
    deadline = time.time() + float(os.environ.get("BENCH_SYNC_WAIT", "600"))
    seen: set[str] = set()
    while len(seen) < args.writes and time.time() < deadline:
        await asyncio.sleep(1)
        url: str | None = f"{ehr_base}/Observation"
        params: list[tuple[str, str]] | None = [
            ("code", sent_code),
            ("_count", "500"),
        ]
        found = 0
        while url:
            page = (await ehr.request("GET", url, params=params)).json()
            params, url = (
                None,
                next(
                    (link["url"] for link in page.get("link", []) if link["relation"] == "next"),
                    None,
                ),
            )
            for entry in page.get("entry", []):
                resource = entry["resource"]
                local = next(
                    i["value"] for i in resource["identifier"] if i["system"].startswith(fg_base)
                )
                if local in seen:
                    continue
                seen.add(local)
                at = parse_range(resource["meta"]["lastUpdated"])[0].timestamp()
                delays.append(at - written[local])
                arrived_last = max(arrived_last, at)
                found += 1
    delays.sort()
    return {
        "writes": args.writes,
        "writers": args.writers,
        "delivered": len(seen),
        "items_per_s": round(len(seen) / (arrived_last - started), 1) if seen else 0,
        "p50_s": round(statistics.median(delays), 3) if delays else None,
        "p99_s": round(delays[int(0.99 * (len(delays) - 1))], 3) if delays else None,
        "max_s": round(delays[-1], 3) if delays else None,
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--patients", type=int, default=500)
    parser.add_argument("--per-patient", type=int, default=20)
    parser.add_argument("--writes", type=int, default=800)
    parser.add_argument("--writers", type=int, default=8)
    parser.add_argument("--mapping", help="the connection's mapping (folder or built-in name)")
    parser.add_argument("--bulk", help='pull through the EHR\'s Bulk export: "patient"')
    result = asyncio.run(main(parser.parse_args()))
    print(save_results("sync", result))
