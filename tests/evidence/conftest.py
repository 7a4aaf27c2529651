"""Fixtures for the evidence tests: one server over real HTTP with the demo clients loaded
(loading takes seconds, so the package shares it; tests that write use their own ids or store
what any repeat would store again), and helpers to read the operation's answer."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fhirgoal.config import Settings
from fhirgoal.demo import write_demo
from fhirgoal.store.mongo import connect
from tests.conftest import RunningServer, start_server

# the signing keys' encryption key of test servers (never a key file in the working directory)
TEST_KEK = "dGVzdC1rZXktZW5jcnlwdGlvbi1rZXktMzItYnl0ZXM="
OPERATION = "$medical-necessity"
# the demo's twelve weekly sessions run from 2026-08-03 to 2026-10-19
PERIOD = {"start": "2026-08-01", "end": "2026-10-31"}


@pytest.fixture(scope="package")
async def demo(
    mongo_uri: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[RunningServer]:
    settings = Settings(
        mongodb_uri=mongo_uri,
        db=f"evidence_{uuid.uuid4().hex[:12]}",
        auth="off",
        key_encryption_key=TEST_KEK,
        data_dir=Path(tmp_path_factory.mktemp("evidence-data")),
    )
    server, task, port = await start_server(settings)
    await write_demo(server.config.app.state.fhir)
    base = f"http://127.0.0.1:{port}/fhir"
    async with httpx.AsyncClient(base_url=base, timeout=60) as client:
        yield RunningServer(base, settings, client, server.config.app)
    server.should_exit = True
    await task
    mongo = connect(mongo_uri)
    await mongo.drop_database(settings.db)
    await mongo.close()


def outputs(response: httpx.Response) -> dict[str, dict[str, Any]]:
    """The operation's Parameters as {name: resource}, after checking it succeeded."""
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["resourceType"] == "Parameters"
    return {p["name"]: p["resource"] for p in body["parameter"]}


def entries_by_url(bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["fullUrl"]: e["resource"] for e in bundle["entry"]}


def composition_of(bundle: dict[str, Any]) -> dict[str, Any]:
    composition: dict[str, Any] = bundle["entry"][0]["resource"]
    return composition


def sections_by_title(bundle: dict[str, Any]) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}

    def walk(sections: list[dict[str, Any]]) -> None:
        for section in sections:
            found[section["title"]] = section
            walk(section.get("section", []))

    walk(composition_of(bundle)["section"])
    return found
