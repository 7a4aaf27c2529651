"""`fhirgoal payer add|list|submit|status|remove` as processes, against the database of a running
fhirgoal whose outbox worker delivers what `payer submit` records, to a payer endpoint that
authenticates fhirgoal with the key set `payer add` wrote."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

from fhirgoal.demo import write_demo
from tests.auth.conftest import run_smart
from tests.exchange.receiver import Answer
from tests.exchange.test_ehr_cli import cli
from tests.helpers import wait_until
from tests.payer.conftest import MRN, register_payer
from tests.payer.payer_endpoint import CLIENT_ID, payer_endpoint, tracking_number
from tests.payer.test_submit_attachment import FAST


async def test_payer_commands(mongo_uri: str, tmp_path: Path) -> None:
    async with (
        run_smart(mongo_uri, **FAST) as clinic,
        payer_endpoint([Answer(503, {"Retry-After": "1"})]) as payer,
    ):
        await write_demo(clinic.service)
        await register_payer(clinic, "acme")
        db = clinic.settings.db

        async def run(*args: str) -> subprocess.CompletedProcess[str]:
            return await asyncio.to_thread(cli, mongo_uri, db, *args)

        jwks_file = tmp_path / "acme-jwks.json"
        added = await run(
            "payer", "add", "--name", "acme", "--base", payer.base, "--client-id", CLIENT_ID,
            "--organization", "acme", "--jwks-out", str(jwks_file), "--alg", "RS384",
            "--organization-id", "1407071236", "--member-system", MRN,
            "--token-url", payer.token_url,
        )  # fmt: skip
        assert added.returncode == 0, added.stderr
        payer.jwks = json.loads(jwks_file.read_text())
        [key] = payer.jwks["keys"]
        assert key["kty"] == "RSA" and key["alg"] == "RS384" and "d" not in key
        twice = await run(
            "payer", "add", "--name", "acme2", "--base", payer.base, "--client-id", "x",
            "--organization", "acme",
        )  # fmt: skip
        assert twice.returncode == 2 and "Organization/acme's already" in twice.stderr
        listed = await run("payer", "list")
        assert listed.returncode == 0, listed.stderr
        assert f"acme\tOrganization/acme\t{payer.base}/$submit-attachment" in listed.stdout
        assert "http://hl7.org/fhir/sid/us-npi|1407071236" in listed.stdout

        submitted = await run(
            "payer", "submit", "--payer", "acme", "--patient", "demo-alex", "--claim", "CLM-9",
            "--start", "2026-08-01", "--end", "2026-10-31",
        )  # fmt: skip
        assert submitted.returncode == 0, submitted.stderr
        assert "tracking number CLM-9" in submitted.stderr

        async def taken() -> bool:
            return bool(payer.accepted)

        await wait_until(taken, within=30, what="the server delivers what the CLI recorded")
        assert [s.status for s in payer.submissions] == [503, 200]
        assert list(payer.accepted) == [tracking_number(payer.submissions[-1].parameters)]
        assert payer.refused_tokens == []

        status = await run("payer", "status")
        assert status.returncode == 0, status.stderr
        row = next(line for line in status.stderr.splitlines() if "acme" in line)
        assert [cell.strip() for cell in row.split("│")[1:6]] == ["acme", "0", "1", "0", "0"]

        unknown = await run(
            "payer",
            "submit",
            "--payer",
            "nobody",
            "--patient",
            "demo-alex",
            "--start",
            "2026-08-01",
        )
        assert unknown.returncode == 2 and "no payer connection named 'nobody'" in unknown.stderr
        removed = await run("payer", "remove", "acme")
        assert removed.returncode == 0, removed.stderr
        again = await run("payer", "remove", "acme")
        assert again.returncode == 2 and "no payer connection acme" in again.stderr
