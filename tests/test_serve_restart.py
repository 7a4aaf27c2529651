"""`fhirgoal serve` as a real process: kill it mid-write, restart it, find consistent data."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from fhirgoal.store.embedded import free_port
from tests.helpers import wait_until
from tests.serve_process import ServeProcess

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("MONGODB_URI")), reason="exercises the embedded database"
)


def start_serve(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    process = ServeProcess(data_dir, port).start().process
    assert process is not None
    return process


async def test_kill_mid_write_then_restart_keeps_history_consistent(tmp_path: Path) -> None:
    port = free_port()
    server = start_serve(tmp_path, port)
    base = f"http://127.0.0.1:{port}/fhir"
    headers = {"Content-Type": "application/fhir+json"}
    ids = []
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            for n in range(4):
                created = await client.post(
                    "/Patient",
                    json={"resourceType": "Patient", "name": [{"family": f"P{n}"}]},
                    headers=headers,
                )
                ids.append(created.json()["id"])

            acknowledged = dict.fromkeys(ids, 0)

            async def keep_updating(pid: str) -> None:
                n = 0
                while True:
                    n += 1
                    body = {"resourceType": "Patient", "id": pid, "name": [{"family": f"U{n}"}]}
                    updated = await client.put(f"/Patient/{pid}", json=body, headers=headers)
                    acknowledged[pid] += updated.status_code == 200

            writers = [asyncio.create_task(keep_updating(pid)) for pid in ids]
            await wait_until(
                lambda: min(acknowledged.values()) >= 3, within=30, what="updates acknowledged"
            )
            server.send_signal(signal.SIGKILL)  # no clean shutdown: requests are in flight
            server.wait()
            results = await asyncio.gather(*writers, return_exceptions=True)
            assert all(isinstance(r, httpx.HTTPError) for r in results)
    finally:
        if server.poll() is None:
            server.kill()
    server = start_serve(tmp_path, port)
    try:
        async with httpx.AsyncClient(base_url=base, timeout=10) as client:
            for pid in ids:
                current = await client.get(f"/Patient/{pid}")
                assert current.status_code == 200
                latest = int(current.json()["meta"]["versionId"])
                assert latest > 1
                history = (
                    await client.get(f"/Patient/{pid}/_history", params={"_count": "500"})
                ).json()
                versions = [int(e["resource"]["meta"]["versionId"]) for e in history["entry"]]
                assert versions == list(range(latest, 0, -1))
                assert history["total"] == latest
                updated = await client.put(
                    f"/Patient/{pid}",
                    json={"resourceType": "Patient", "id": pid},
                    headers={**headers, "If-Match": f'W/"{latest}"'},
                )
                assert updated.status_code == 200
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
