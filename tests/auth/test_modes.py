"""FHIRGOAL_AUTH modes: `smart` by default; `off` only for loopback callers and interfaces."""

from __future__ import annotations

import httpx
from typer.testing import CliRunner

from fhirgoal.app import create_app
from fhirgoal.cli import app as cli
from fhirgoal.config import Settings
from tests.conftest import RunningServer


def test_smart_is_the_default_mode() -> None:
    assert Settings.model_fields["auth"].default == "smart"


async def test_auth_off_refuses_callers_that_are_not_on_this_machine() -> None:
    app = create_app(Settings(auth="off", mongodb_uri="mongodb://127.0.0.1:1"))
    transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://fhir.test") as client:
        response = await client.get("/fhir/Patient")
    assert response.status_code == 403
    assert "loopback" in response.json()["issue"][0]["diagnostics"]


def test_serve_refuses_auth_off_on_a_public_interface() -> None:
    result = CliRunner().invoke(
        cli, ["serve", "--host", "0.0.0.0", "--port", "1"], env={"FHIRGOAL_AUTH": "off"}
    )
    assert result.exit_code == 2
    assert "loopback" in result.output


async def test_auth_off_metadata_declares_no_security(fhir: RunningServer) -> None:
    statement = (await fhir.client.get("/metadata")).json()
    assert "security" not in statement["rest"][0]
