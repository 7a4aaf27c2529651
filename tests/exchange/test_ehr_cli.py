"""`fhirgoal ehr add|list|remove` and `fhirgoal sync run|status|unmatched` as processes, against
the database of a running fhirgoal (no background sync: the commands do the work)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from pathlib import Path

from tests.auth.conftest import TEST_KEK, run_smart
from tests.conftest import fresh_settings, running
from tests.exchange.ehr_pair import CLIENT_ID, MRN, patient, register_fhirgoal
from tests.helpers import create


def cli(
    mongo_uri: str, db: str, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = os.environ | {
        "MONGODB_URI": mongo_uri,
        "FHIRGOAL_DB": db,
        "FHIRGOAL_KEY_ENCRYPTION_KEY": TEST_KEK,
        "COLUMNS": "200",  # rich tables on one line
        **(env or {}),
    }
    return subprocess.run(
        [sys.executable, "-m", "fhirgoal.cli", *args],
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def test_ehr_and_sync_commands(mongo_uri: str, tmp_path: Path) -> None:
    settings = fresh_settings(
        mongo_uri,
        prefix="fg",
        outbox_worker=False,
        sync_pull_seconds=0,
        key_encryption_key=TEST_KEK,
    )
    async with run_smart(mongo_uri) as ehr, running(settings) as fhirgoal:
        db = fhirgoal.settings.db

        async def run(*args: str) -> subprocess.CompletedProcess[str]:
            return await asyncio.to_thread(cli, mongo_uri, db, *args)

        jwks_file = tmp_path / "jwks.json"
        added = await run(
            "ehr", "add", "--name", "clinic", "--base", ehr.base, "--client-id", CLIENT_ID,
            "--jwks-out", str(jwks_file), "--patient-system", MRN, "--alg", "RS384",
            "--send", "goal,phq9",
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        jwks = json.loads(jwks_file.read_text())
        [key] = jwks["keys"]
        assert key["kty"] == "RSA" and key["alg"] == "RS384" and "d" not in key
        again = await run("ehr", "add", "--name", "clinic", "--base", ehr.base, "--client-id", "x")
        assert again.returncode == 2 and "exists" in again.stderr
        bad = await run("ehr", "add", "--name", "b", "--base", ehr.base, "--client-id", "x",
                        "--send", "goal,weather")  # fmt: skip
        assert bad.returncode == 2 and "weather" in bad.stderr
        # a built-in mapping by name is kept by name; an unknown one is refused, nothing stored
        dialect = await run("ehr", "add", "--name", "dialect", "--base", ehr.base,
                            "--client-id", "y", "--mapping", "example-ehr",
                            "--no-user-tokens")  # fmt: skip
        assert dialect.returncode == 0, dialect.stderr
        unknown = await run("ehr", "add", "--name", "nowhere", "--base", ehr.base,
                            "--client-id", "z", "--mapping", "no-such-dialect")  # fmt: skip
        assert unknown.returncode == 2 and "no-such-dialect" in unknown.stderr
        listed = await run("ehr", "list")
        assert listed.returncode == 0, listed.stderr
        assert "clinic" in listed.stdout and key["kid"] in listed.stdout
        assert '"d"' not in listed.stdout and "sealed" not in listed.stdout
        assert "send goal,phq9" in listed.stdout
        assert "mapping example-ehr" in listed.stdout and "nowhere" not in listed.stdout
        by_name = {line.split("\t")[0]: line for line in listed.stdout.splitlines()}
        assert by_name["clinic"].endswith("user tokens when aud names the EHR")
        assert by_name["dialect"].endswith("user tokens off")
        assert (await run("ehr", "remove", "dialect")).returncode == 0
        await register_fhirgoal(ehr, jwks)

        async with await ehr.as_scope("system/*.cruds") as ehr_http:
            their = (await ehr_http.post("/Patient", json=patient("MRN-1"))).json()
            goal = {
                "resourceType": "Goal",
                "lifecycleStatus": "active",
                "description": {"text": "Return to work"},
                "subject": {"reference": f"Patient/{their['id']}"},
            }
            assert (await ehr_http.post("/Goal", json=goal)).status_code == 201
        await create(fhirgoal.client, patient("MRN-1"))
        stranger = await create(fhirgoal.client, patient("MRN-404", family="Nobody"))

        synced = await run("sync", "run", "--ehr", "clinic")
        assert synced.returncode == 0, synced.stderr
        output = synced.stdout + synced.stderr
        assert "clinic: pulled 2 resource(s): 2 written" in output, output
        assert "1 patient(s) linked" in output
        goals = (await fhirgoal.client.get("/Goal")).json()
        assert [e["resource"]["description"]["text"] for e in goals["entry"]] == ["Return to work"]

        unmatched = await run("sync", "unmatched")
        assert unmatched.returncode == 0, unmatched.stderr
        assert f"Patient/{stranger['id']}" in unmatched.stdout
        assert f"{MRN}|MRN-404" in unmatched.stdout

        status = await run("sync", "status")
        assert status.returncode == 0, status.stderr
        row = next(line for line in status.stderr.splitlines() if "clinic" in line)
        assert "1 Goal" in row and "1 Patient" in row, status.stderr
        assert "last pull" in status.stderr

        removed = await run("ehr", "remove", "clinic")
        assert removed.returncode == 0, removed.stderr
        assert "removed EHR connection clinic" in removed.stdout
        assert "clinic" not in (await run("ehr", "list")).stdout
