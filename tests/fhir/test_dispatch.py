"""The pure-ASGI InteractionRouter (fhirgoal.fhir.dispatch) answers exactly as FastAPI's routes."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from starlette.types import Receive, Scope, Send

from fhirgoal.app import create_app
from fhirgoal.config import Settings
from fhirgoal.fhir.conformance import load_conformance
from fhirgoal.fhir.dispatch import InteractionRouter
from fhirgoal.fhir.rest import create, delete, patch, read, search, vread
from fhirgoal.store.mongo import connect
from tests.conftest import RunningServer, serve_app
from tests.helpers import FHIR_JSON, patient


def router() -> InteractionRouter:
    conformance = load_conformance(Settings().conformance_dir)
    return InteractionRouter(app=fastapi_routes, is_type=conformance.is_stored)


async def fastapi_routes(scope: Scope, receive: Receive, send: Send) -> None:
    raise AssertionError("match() alone is tested here")


@pytest.mark.parametrize(
    ("method", "path", "handler", "arguments"),
    [
        ("GET", "/fhir/Patient/p1", read, ["Patient", "p1"]),
        ("GET", "/fhir/Patient/p1/_history/2", vread, ["Patient", "p1", "2"]),
        ("POST", "/fhir/Observation", create, ["Observation"]),
        ("GET", "/fhir/Goal", search, ["Goal"]),
        ("PATCH", "/fhir/Goal/g.1", patch, ["Goal", "g.1"]),
        ("DELETE", "/fhir/Goal/g-1", delete, ["Goal", "g-1"]),
    ],
)
def test_everyday_interactions_are_dispatched_directly(
    method: str, path: str, handler: object, arguments: list[str]
) -> None:
    assert router().match(method, path) == (handler, arguments)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/fhir/metadata"),
        ("GET", "/fhir/_history"),
        ("GET", "/fhir/Patient/_history"),
        ("GET", "/fhir/Patient/p1/_history"),
        ("POST", "/fhir/Patient/_search"),
        ("GET", "/fhir/Patient/_search"),
        ("POST", "/fhir/Patient/$validate"),
        ("GET", "/fhir/Patient/p1/$everything"),
        ("GET", "/fhir/Patient/p1/Observation"),  # compartment search
        ("GET", "/fhir/Unknown/x"),
        ("GET", "/fhir/Patient/"),
        ("GET", "/fhir/Patient/p1/_history/"),
        ("HEAD", "/fhir/Patient/p1"),
        ("POST", "/fhir/Patient/p1"),
        ("GET", "/fhir"),
        ("GET", "/fhir/"),
        ("GET", "/docs"),
        ("GET", "/fhir/.well-known/smart-configuration"),
    ],
)
def test_every_other_request_is_left_to_fastapi(method: str, path: str) -> None:
    assert router().match(method, path) is None


@pytest.fixture
async def fastapi_only(fhir: RunningServer) -> AsyncIterator[tuple[str, httpx.AsyncClient]]:
    """A second server on the same database whose requests all go through FastAPI's routes."""
    app = create_app(fhir.settings)
    app.user_middleware = [m for m in app.user_middleware if m.cls is not InteractionRouter]
    server, task, port = await serve_app(app)
    base = f"http://127.0.0.1:{port}/fhir"
    async with httpx.AsyncClient(base_url=base, timeout=30) as client:
        yield base, client
    server.should_exit = True
    await task


async def test_responses_are_those_of_the_fastapi_routes(
    fhir: RunningServer, fastapi_only: tuple[str, httpx.AsyncClient]
) -> None:
    other_base, other = fastapi_only
    created = (await fhir.client.post("/Patient", json=patient(), headers=FHIR_JSON)).json()
    pid = created["id"]
    await fhir.client.put("/Patient/gone", json=patient(id="gone"), headers=FHIR_JSON)
    await fhir.client.delete("/Patient/gone")
    requests: list[tuple[str, str, dict[str, str], bytes]] = [
        ("GET", f"/Patient/{pid}", {}, b""),
        ("GET", "/Patient/unknown", {}, b""),
        ("GET", "/Patient/gone", {}, b""),
        ("GET", f"/Patient/{pid}/_history/1", {}, b""),
        ("GET", f"/Patient/{pid}/_history/9", {}, b""),
        ("GET", f"/Patient/{pid}/_history/x", {}, b""),
        ("GET", f"/Patient/{pid}", {"Accept": "application/fhir+xml"}, b""),
        ("GET", f"/Patient/{pid}?_format=xml", {}, b""),
        ("GET", "/Patient?family=Rivera", {}, b""),
        ("GET", "/Patient?colour=blue", {}, b""),
        ("GET", "/Unknown/x", {}, b""),
        ("HEAD", f"/Patient/{pid}", {}, b""),
        ("POST", "/Patient", FHIR_JSON, b'{"resourceType": "Patient", "colour": "blue"}'),
        ("POST", "/Patient", FHIR_JSON, b"not json"),
        ("PUT", f"/Patient/{pid}", {**FHIR_JSON, "If-Match": 'W/"7"'},
         f'{{"resourceType": "Patient", "id": "{pid}"}}'.encode()),
        ("PUT", f"/Patient/{pid}", FHIR_JSON, b'{"resourceType": "Patient", "id": "other"}'),
        ("PATCH", f"/Patient/{pid}", {"Content-Type": "application/xml"}, b"<x/>"),
        ("DELETE", "/Patient/unknown", {}, b""),
        ("DELETE", "/Patient?family=Nobody", {}, b""),
    ]  # fmt: skip
    for method, path, headers, body in requests:
        ours = await fhir.client.request(method, path, headers=headers, content=body)
        theirs = await other.request(method, path, headers=headers, content=body)
        assert ours.status_code == theirs.status_code, (method, path, ours.text)
        assert ours.content == theirs.content.replace(other_base.encode(), fhir.base.encode())
        assert ours.headers.get("content-type") == theirs.headers.get("content-type")
        assert ours.headers.get("etag") == theirs.headers.get("etag")
        assert ours.headers.get("last-modified") == theirs.headers.get("last-modified")
    for client in (fhir.client, other):
        response = await client.post("/Patient", json=patient(), headers=FHIR_JSON)
        assert response.status_code == 201
        assert {"etag", "last-modified", "location"} <= set(response.headers)


async def test_a_database_failure_is_a_503_outcome(fhir: RunningServer) -> None:
    await fhir.client.put("/Patient/a", json=patient(id="a"), headers=FHIR_JSON)
    b = (await fhir.client.post("/Patient", json=patient(), headers=FHIR_JSON)).json()["id"]
    mongo = connect(fhir.settings.mongodb_uri or "")
    try:
        # No two current Patients may now have come from the same kind of request: swapping
        # Patient b's version (made by POST) for one made by PUT fails in the database.
        await mongo[fhir.settings.db]["Patient"].create_index("op", unique=True)
    finally:
        await mongo.close()
    response = await fhir.client.put(f"/Patient/{b}", json=patient(id=b), headers=FHIR_JSON)
    assert response.status_code == 503
    outcome = response.json()
    assert outcome["resourceType"] == "OperationOutcome"
    assert "correlation id" in outcome["issue"][0]["diagnostics"]
