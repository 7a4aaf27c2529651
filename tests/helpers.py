"""What the tests share: resource builders, FHIR REST writes that must succeed, OperationOutcome
readers, and waiting on an observable condition instead of sleeping for a guessed time."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from fhirgoal.core.jsonio import dumps, loads

FHIR_JSON = {"Content-Type": "application/fhir+json"}
JSON_PATCH = {"Content-Type": "application/json-patch+json"}  # RFC 6902


def patient(family: str = "Rivera", **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "name": [{"family": family, "given": ["Alex"]}], **extra}


def observation(patient_id: str, value: str = "72.50", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {
            "coding": [{"system": "http://loinc.org", "code": "29463-7"}],
            "text": "Body weight",
        },
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": "2026-01-05T10:00:00.120+01:00",
        "valueQuantity": {
            "value": float(value),
            "unit": "kg",
            "system": "http://unitsofmeasure.org",
            "code": "kg",
        },
        **extra,
    }


def raw_observation(patient_id: str, value: str = "72.50") -> bytes:
    """Observation JSON text with the decimal exactly as written (floats would lose '72.50')."""
    return (
        '{"resourceType":"Observation","status":"final",'
        '"code":{"coding":[{"system":"http://loinc.org","code":"29463-7"}],"text":"Body weight"},'
        f'"subject":{{"reference":"Patient/{patient_id}"}},'
        '"effectiveDateTime":"2026-01-05T10:00:00.120+01:00",'
        f'"valueQuantity":{{"value":{value},"unit":"kg","system":"http://unitsofmeasure.org","code":"kg"}}}}'
    ).encode()


def issues(body: dict[str, Any]) -> list[dict[str, Any]]:
    assert body["resourceType"] == "OperationOutcome", body
    return body["issue"]


def expressions(body: dict[str, Any]) -> list[str]:
    return [e for issue in issues(body) for e in issue.get("expression", [])]


def diagnostics(body: dict[str, Any]) -> str:
    return " ".join(issue.get("diagnostics", "") for issue in issues(body))


# ---- writes through the REST API (https://hl7.org/fhir/R4/http.html) ---------------------------
async def put(client: httpx.AsyncClient, resource: dict[str, Any]) -> httpx.Response:
    """PUT `resource` to its own id, its decimals as written (jsonio.dumps keeps Decimal text);
    the answer as it is, for tests about what the server refuses or how it answers."""
    path = f"/{resource['resourceType']}/{resource['id']}"
    return await client.put(path, content=dumps(resource), headers=FHIR_JSON)


async def store(client: httpx.AsyncClient, resource: dict[str, Any]) -> dict[str, Any]:
    """PUT `resource` (update, or update as create: 200 or 201), asserted; the stored resource."""
    response = await put(client, resource)
    assert response.status_code in (200, 201), response.text
    return dict(loads(response.content))


async def create(
    client: httpx.AsyncClient, resource: dict[str, Any], **headers: str
) -> dict[str, Any]:
    """POST `resource` to its type (create: 201), asserted; the stored resource."""
    response = await client.post(
        f"/{resource['resourceType']}", content=dumps(resource), headers={**FHIR_JSON, **headers}
    )
    assert response.status_code == 201, response.text
    return dict(loads(response.content))


async def patch(
    client: httpx.AsyncClient, path: str, operations: list[dict[str, Any]]
) -> httpx.Response:
    """A JSON Patch (https://hl7.org/fhir/R4/http.html#patch); the answer as it is."""
    return await client.patch(path, content=dumps(operations), headers=JSON_PATCH)


# ---- waiting for something to happen -----------------------------------------------------------
POLL_SECONDS = 0.05


async def wait_until(
    condition: Callable[[], bool | Awaitable[bool]],
    within: float = 10.0,
    what: str = "",
) -> None:
    """Return once `condition()` (sync or async) is true; fail the test if it is still false
    after `within` seconds. For events the code under test has no hook for: a background flush,
    a cache refresh, a process's restart."""
    deadline = time.monotonic() + within
    while True:
        met = condition()
        if inspect.isawaitable(met):
            met = await met
        if met:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what or condition}")
        await asyncio.sleep(POLL_SECONDS)


async def clock_past(instant: str) -> None:
    """Until this host's clock (the test server's too) has passed `instant` by a millisecond,
    lastUpdated's precision (fhir/instants.py): a write from then on is stamped later."""
    later = datetime.fromisoformat(instant) + timedelta(milliseconds=1)
    await wait_until(lambda: datetime.now(UTC) >= later, within=5, what=f"the clock past {instant}")


def wait_until_blocking(
    condition: Callable[[], bool], within: float = 10.0, what: str = ""
) -> None:
    """`wait_until` for synchronous tests (processes and sockets driven from plain functions)."""
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {within} s: {what or condition}")
        time.sleep(POLL_SECONDS)


# How long a test waits for a Bulk export to finish: generous, for a loaded machine (a test
# checks what an export holds, never how fast it is; bench/export.py does).
EXPORT_WAIT_SECONDS = 120.0


async def export_manifest(
    client: Any, status_url: str, within: float = EXPORT_WAIT_SECONDS
) -> dict[str, Any]:
    """Poll a Bulk export's status URL until its manifest (200); every answer before it must be
    202 with Retry-After and X-Progress. Fails the test after `within` seconds."""
    deadline = time.monotonic() + within
    while True:
        status = await client.get(status_url)
        if status.status_code == 200:
            assert "Expires" in status.headers
            body: dict[str, Any] = status.json()
            return body
        assert status.status_code == 202, status.text
        assert "Retry-After" in status.headers and "X-Progress" in status.headers
        if time.monotonic() > deadline:
            raise AssertionError(f"the export did not finish within {within:.0f} s")
        await asyncio.sleep(POLL_SECONDS)


def finished_encounter(pid: str) -> dict[str, Any]:
    """A finished ambulatory Encounter of patient `pid` (what the Subscription tests watch)."""
    return {
        "resourceType": "Encounter",
        "status": "finished",
        "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
        "subject": {"reference": f"Patient/{pid}"},
    }
