"""kill -9 of `fhirgoal serve` while it delivers to an EHR, then a restart: every total reaches
the EHR, none is applied twice (checked on the EHR by the identifier fhirgoal assigns and by each
copy's history). The connection is made with `fhirgoal ehr add`, as an administrator would."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

import httpx

from fhirgoal.store.embedded import free_port
from tests.auth.conftest import TEST_KEK, run_smart
from tests.exchange.ehr_pair import CLIENT_ID, MRN, patient, phq9_total, register_fhirgoal
from tests.exchange.ehr_proxy import proxy
from tests.helpers import FHIR_JSON, wait_until
from tests.serve_process import ServeProcess

ENV = {
    "FHIRGOAL_OUTBOX_LEASE_SECONDS": "4",
    "FHIRGOAL_OUTBOX_TIMEOUT_SECONDS": "2",
    "FHIRGOAL_OUTBOX_POLL_SECONDS": "0.1",
    "FHIRGOAL_OUTBOX_BACKOFF_BASE_SECONDS": "0.1",
    "FHIRGOAL_OUTBOX_CONCURRENCY": "2",
    "FHIRGOAL_SUBSCRIPTION_REFRESH_SECONDS": "0.5",
    "FHIRGOAL_SYNC_PULL_SECONDS": "0.5",
    "FHIRGOAL_KEY_ENCRYPTION_KEY": TEST_KEK,
}
TOTALS = 16


def cli(serve: ServeProcess, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MONGODB_URI"} | serve.env
    return subprocess.run(
        [sys.executable, "-m", "fhirgoal.cli", *args, "--data-dir", str(serve.data_dir)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_kill_9_during_delivery_then_restart_delivers_each_total_once(
    mongo_uri: str, tmp_path: Path
) -> None:
    async with run_smart(mongo_uri) as ehr, proxy(ehr.base, delay=0.15) as front:
        serve = ServeProcess(tmp_path / "data", free_port(), env=ENV).start()
        try:
            jwks_file = tmp_path / "fhirgoal-jwks.json"
            added = await asyncio.to_thread(
                cli, serve, "ehr", "add", "--name", "clinic", "--base", front.base,
                "--client-id", CLIENT_ID, "--jwks-out", str(jwks_file),
                "--patient-system", MRN,
            )  # fmt: skip
            assert added.returncode == 0, added.stderr
            await register_fhirgoal(ehr, json.loads(jwks_file.read_text()))
            async with (
                httpx.AsyncClient(base_url=serve.base, timeout=30) as fhirgoal,
                await ehr.as_scope("system/*.cruds") as ehr_http,
            ):
                assert (await ehr_http.post("/Patient", json=patient("MRN-8"))).status_code == 201
                local = (await fhirgoal.post("/Patient", json=patient("MRN-8"))).json()

                async def followed() -> bool:
                    body = (await fhirgoal.get(f"/Patient/{local['id']}")).json()
                    systems = {i["system"] for i in body["identifier"]}
                    return f"{front.base}/Patient" in systems

                await wait_until(followed, within=60, what="the patient linked by its MRN")
                ids = []
                for n in range(TOTALS):
                    body = json.dumps(phq9_total(local["id"], n))
                    created = await fhirgoal.post("/Observation", content=body, headers=FHIR_JSON)
                    assert created.status_code == 201, created.text
                    ids.append(created.json()["id"])

                async def copies(oid: str) -> list[dict[str, object]]:
                    identifier = f"{serve.base}/Observation|{oid}"
                    found = await ehr_http.get("/Observation", params={"identifier": identifier})
                    return [e["resource"] for e in found.json().get("entry", [])]

                async def some_delivered() -> bool:
                    return sum(1 for w in front.writes if w.answered < 300) >= 3

                await wait_until(some_delivered, within=60, what="deliveries under way")
                serve.kill_server()
                assert sum(1 for w in front.writes if w.answered < 300) < TOTALS
                serve.start()

                async def all_delivered() -> bool:
                    return all([await copies(oid) for oid in ids])

                await wait_until(all_delivered, within=90, what="every total in the EHR")
                for oid in ids:
                    [copy] = await copies(oid)  # exactly one copy of each
                    history = (await ehr_http.get(f"/Observation/{copy['id']}/_history")).json()
                    assert history["total"] == 1  # applied once
        finally:
            serve.kill_group()
