"""Fixtures for the SMART tests: the app in `smart` mode over real HTTP, real signed tokens.

`smart` runs the server with FHIRGOAL_AUTH=smart on its own database; `mint` signs access tokens
with the server's own key ring (the same path the token endpoint uses), for a registered client,
so that scope enforcement can be tested apart from the OAuth flows (which have their own tests).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI
from pymongo import MongoClient

from fhirgoal.auth.clients import Client, ClientExists
from fhirgoal.config import Settings
from fhirgoal.core.access import UNRESTRICTED
from fhirgoal.fhir.service import FhirService
from tests.auth.flows import PASSWORD, REDIRECT, Browser
from tests.conftest import fresh_settings, running, serve_app

TEST_CLIENT = "test-app"
# the signing keys' encryption key of test servers (never a key file in the working directory)
TEST_KEK = "dGVzdC1rZXktZW5jcnlwdGlvbi1rZXktMzItYnl0ZXM="
AUDIT_CLIENT = "audit-admin"  # registered for the audit trail by name


@dataclass
class SmartServer:
    base: str  # FHIR base
    origin: str  # scheme://host:port
    settings: Settings
    app: FastAPI
    http: httpx.AsyncClient  # no credentials

    @property
    def service(self) -> FhirService:
        service: FhirService = self.app.state.fhir
        return service

    async def mint(
        self,
        scope: str,
        patient: str | None = None,
        fhir_user: str | None = None,
        client_id: str = TEST_CLIENT,
        lifetime: int | None = None,
        **claims: Any,
    ) -> str:
        body: dict[str, Any] = {
            "iss": self.base,
            "aud": self.base,
            "sub": client_id,
            "client_id": client_id,
            "scope": scope,
        }
        if patient:
            body["patient"] = patient
        if fhir_user:
            body["fhirUser"] = fhir_user
        body.update(claims)
        token: str = await self.app.state.smart.issuer.sign(body, lifetime)
        return token

    def client(self, token: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            base_url=self.base, timeout=30, headers={"Authorization": f"Bearer {token}"}
        )

    async def as_scope(self, scope: str, patient: str | None = None) -> httpx.AsyncClient:
        return self.client(await self.mint(scope, patient))

    async def seed(self, resource: dict[str, Any]) -> dict[str, Any]:
        """Store a resource as the server would, bypassing authorization (test set-up only)."""
        rt = resource["resourceType"]
        if "id" in resource:
            outcome = await self.service.update(UNRESTRICTED, rt, resource["id"], resource, None)
        else:
            outcome = await self.service.create(UNRESTRICTED, rt, resource, None, self.base)
        assert outcome.version is not None and outcome.version.resource is not None
        return outcome.version.resource


@asynccontextmanager
async def run_smart(
    mongo_uri: str, drop_database: bool = True, **overrides: Any
) -> AsyncIterator[SmartServer]:
    """A server in `smart` mode (unless `overrides` say otherwise) on its own database (or the
    `db` of `overrides`, for a restart), with the test clients registered; stopped and its
    database dropped afterwards unless `drop_database` is False."""
    values: dict[str, Any] = {
        "auth": "smart",
        "audit_flush_seconds": 0.1,
        "key_encryption_key": TEST_KEK,
        **overrides,
    }
    settings = fresh_settings(mongo_uri, prefix="auth", **values)
    async with running(settings, drop_database) as server:
        app: FastAPI = server.app
        if server.settings.auth == "smart":
            for client in (
                Client(client_id=TEST_CLIENT, scopes="patient/*.cruds user/*.cruds system/*.cruds"),
                Client(client_id=AUDIT_CLIENT, scopes="system/AuditEvent.rs user/AuditEvent.rs"),
            ):
                with contextlib.suppress(ClientExists):  # registered before a restart
                    await app.state.smart.clients.register(client)
        origin = server.base.removesuffix("/fhir")
        yield SmartServer(server.base, origin, server.settings, app, server.client)


@pytest.fixture
def db_env(mongo_uri: str) -> Iterator[dict[str, str]]:
    """The environment of a `fhirgoal` command on a fresh database (dropped afterwards)."""
    name = f"cli_{uuid.uuid4().hex[:10]}"
    yield {"MONGODB_URI": mongo_uri, "FHIRGOAL_DB": name, "FHIRGOAL_KEY_ENCRYPTION_KEY": TEST_KEK}
    with MongoClient(mongo_uri) as client:
        client.drop_database(name)


@pytest.fixture
async def smart(mongo_uri: str) -> AsyncIterator[SmartServer]:
    async with run_smart(mongo_uri) as server:
        yield server


@pytest.fixture
async def browser(smart: SmartServer) -> AsyncIterator[Browser]:
    """lee's browser, for the app `webapp` (public, PKCE); lee's patients pa and pb seeded."""
    await smart.app.state.smart.clients.register(
        Client(
            client_id="webapp",
            scopes="openid fhirUser launch launch/patient offline_access patient/*.rs user/*.rs",
            redirect_uris=[REDIRECT],
        )
    )
    await smart.app.state.smart.users.add(
        "lee",
        PASSWORD,
        "Practitioner/doc",
        "openid fhirUser launch launch/patient offline_access patient/*.rs user/Observation.rs",
    )
    await smart.seed({"resourceType": "Practitioner", "id": "doc"})
    # both in lee's caseload (FHIRGOAL_USER_ACCESS=caseload, the default; test_caseload.py)
    doc = [{"reference": "Practitioner/doc"}]
    await smart.seed({"resourceType": "Patient", "id": "pa", "generalPractitioner": doc,
                      "name": [{"family": "Aalto", "given": ["Ann"]}]})  # fmt: skip
    await smart.seed(
        {
            "resourceType": "Patient",
            "id": "pb",
            "name": [{"family": "Berg"}],
            "generalPractitioner": doc,
        }
    )
    async with httpx.AsyncClient(base_url=smart.origin, timeout=30) as http:
        yield Browser(smart, http)


class IssuerHost:
    """A real HTTP server standing in for another party: serves a JWKS and answers RFC 7662
    introspection from `active_tokens`. Counts the requests it gets."""

    def __init__(self) -> None:
        self.jwks: dict[str, Any] = {"keys": []}
        self.active_tokens: dict[str, dict[str, Any]] = {}
        self.jwks_hits = 0
        self.introspection_auth: list[str | None] = []
        self.url = ""
        self.introspection_url = ""

    def app(self) -> Any:
        from urllib.parse import parse_qsl

        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        async def jwks(request: Request) -> JSONResponse:
            self.jwks_hits += 1
            return JSONResponse(self.jwks)

        async def introspect(request: Request) -> JSONResponse:
            self.introspection_auth.append(request.headers.get("authorization"))
            form = dict(parse_qsl((await request.body()).decode()))
            return JSONResponse(self.active_tokens.get(form.get("token", ""), {"active": False}))

        return Starlette(
            routes=[Route("/jwks", jwks), Route("/introspect", introspect, methods=["POST"])]
        )


@pytest.fixture
async def jwks_host() -> AsyncIterator[IssuerHost]:
    host = IssuerHost()
    server, task, port = await serve_app(host.app(), lifespan="off")
    host.url = f"http://127.0.0.1:{port}/jwks"
    host.introspection_url = f"http://127.0.0.1:{port}/introspect"
    yield host
    server.should_exit = True
    await task
