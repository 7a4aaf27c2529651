"""A Bulk Data export survives the death of its server (issue 16, Done when: "restart
mid-export"; https://hl7.org/fhir/uv/bulkdata/export.html). `fhirgoal serve` runs as a real
process in SMART mode; a payer with its own Backend Services keys kicks off an export, the server
is killed with SIGKILL while the job runs (its embedded database dies with it), and started
again: the job is taken over once its lease lapses, run again from the start with the payer's
access rebuilt from its token's recorded context, and its files are complete: every line parsed,
no resource twice, as many as the payer's own search finds."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc.jwk import ECKey, RSAKey

from fhirgoal.core.jsonio import loads
from fhirgoal.store.embedded import free_port
from tests.auth import jose
from tests.auth.conftest import TEST_KEK
from tests.helpers import observation, patient
from tests.serve_process import ServeProcess

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("MONGODB_URI")), reason="kills the embedded database with its server"
)

ASYNC = {"Prefer": "respond-async", "Accept": "application/fhir+json"}
PATIENTS = 10
PER_PATIENT = 200  # Observations: the run takes a while in files of 10 lines (200 files)


async def register(data_dir: Path, client_id: str, key: ECKey | RSAKey, scopes: str) -> None:
    jwks = data_dir / f"{client_id}-jwks.json"
    jwks.write_text(json.dumps(jose.public_jwks(key)))
    await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "fhirgoal.cli", "client", "register", "--client-id", client_id,
         "--jwks-file", str(jwks), "--scopes", scopes, "--data-dir", str(data_dir)],
        check=True, capture_output=True, env={k: v for k, v in os.environ.items() if k != "MONGODB_URI"},
    )  # fmt: skip


async def token(serve: ServeProcess, client_id: str, key: ECKey | RSAKey, scope: str) -> str:
    token_url = f"{serve.origin}/auth/token"
    form = jose.form_assertion(
        key, client_id, token_url, grant_type="client_credentials", scope=scope
    )
    async with httpx.AsyncClient(timeout=30) as client:
        response = await client.post(token_url, data=form)
    assert response.status_code == 200, response.text
    access_token: str = response.json()["access_token"]
    return access_token


async def seed(serve: ServeProcess, bearer: str) -> None:
    headers = {"Authorization": f"Bearer {bearer}"}
    async with httpx.AsyncClient(base_url=serve.base, timeout=120, headers=headers) as clinic:
        for p in range(PATIENTS):
            entries: list[dict[str, Any]] = [{"resource": patient(f"P{p}", id=f"p{p}")}]
            entries += [
                {"resource": observation(f"p{p}", id=f"p{p}-o{i}")} for i in range(PER_PATIENT)
            ]
            bundle = {
                "resourceType": "Bundle",
                "type": "transaction",
                "entry": [
                    {**e, "request": {"method": "PUT", "url": f"{e['resource']['resourceType']}/{e['resource']['id']}"}}
                    for e in entries
                ],
            }  # fmt: skip
            response = await clinic.post("/", json=bundle)
            assert response.status_code == 200, response.text


async def test_an_export_outlives_a_kill_9_of_its_server(tmp_path: Path) -> None:
    port = free_port()
    serve = ServeProcess(
        tmp_path,
        port,
        env={
            "FHIRGOAL_AUTH": "smart",
            "FHIRGOAL_BASE_URL": f"http://127.0.0.1:{port}/fhir",
            "FHIRGOAL_KEY_ENCRYPTION_KEY": TEST_KEK,
            "FHIRGOAL_EXPORT_LEASE_SECONDS": "5",  # the least allowed: the takeover comes soon
            "FHIRGOAL_EXPORT_FILE_LINES": "10",  # under load 50 (40 files) could all be written between two polls
        },
    ).start()
    try:
        clinic_key, payer_key = jose.rsa_key(), jose.ec_key()
        await register(tmp_path, "clinic", clinic_key, "system/*.cruds")
        await register(tmp_path, "payer", payer_key, "system/Patient.rs system/Observation.rs")
        await seed(serve, await token(serve, "clinic", clinic_key, "system/*.cruds"))
        bearer = await token(serve, "payer", payer_key, "system/Observation.rs")
        headers = {"Authorization": f"Bearer {bearer}"}
        async with httpx.AsyncClient(base_url=serve.base, timeout=30, headers=headers) as payer:
            kick = await payer.get("/$export", params={"_type": "Observation"}, headers=ASYNC)
            assert kick.status_code == 202, kick.text
            status_url = kick.headers["Content-Location"]
            progress = ""
            for _ in range(1000):  # until the run has written part of its output
                status = await payer.get(status_url)
                assert status.status_code == 202, f"finished before the kill: {status.text}"
                progress = status.headers["X-Progress"]
                if progress[0].isdigit() and int(progress.split()[0]) > 0:
                    break
                await asyncio.sleep(0.01)
            await asyncio.to_thread(serve.kill_server)  # mid-export, no clean shutdown
            restarted = datetime.now(UTC)
            await asyncio.to_thread(serve.start)

            manifest: dict[str, Any] = {}
            for _ in range(600):
                status = await payer.get(status_url)
                if status.status_code == 200:
                    manifest = status.json()
                    break
                assert status.status_code == 202, status.text  # never lost, never failed
                await asyncio.sleep(0.1)
            assert manifest, f"the job was not taken over (killed at {progress!r})"
            assert datetime.fromisoformat(manifest["transactionTime"]) > restarted  # run again
            exported: list[str] = []
            for item in manifest["output"]:
                response = await payer.get(item["url"])
                assert response.status_code == 200
                lines = [loads(line) for line in response.text.splitlines()]
                assert len(lines) == item["count"] <= 10
                exported += [r["id"] for r in lines if r["resourceType"] == "Observation"]
            assert len(exported) == len(set(exported)) == PATIENTS * PER_PATIENT
            total = (await payer.get("/Observation", params={"_summary": "count"})).json()
            assert total["total"] == len(exported)
    finally:
        serve.kill_group()
