"""The ASGI application: routers, lifespan (database, indexes), one error path.

FHIR base at /fhir (https://hl7.org/fhir/R4/http.html#general), operational probes at /healthz
(the process is up) and /readyz (the database answers).
"""

from __future__ import annotations

import asyncio
import gc
import ipaddress
from collections.abc import AsyncIterator, Awaitable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from functools import cache, lru_cache
from pathlib import Path
from typing import Any

import structlog
from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from fhirgoal import __version__
from fhirgoal.auth.bearer import unauthorized
from fhirgoal.auth.middleware import BearerAuth
from fhirgoal.auth.runtime import AuthRuntime
from fhirgoal.clinical.install import install_clinical, instrument_texts
from fhirgoal.config import Settings
from fhirgoal.core.access import UNRESTRICTED, AccessContext
from fhirgoal.core.errors import FhirError, category_for_status
from fhirgoal.fhir.capability import build_capability
from fhirgoal.fhir.catalog import load_catalog, read_catalog
from fhirgoal.fhir.conformance import Conformance, load_conformance
from fhirgoal.fhir.dispatch import InteractionRouter
from fhirgoal.fhir.profiles import ProfileSet
from fhirgoal.fhir.reindex import upgrade_index
from fhirgoal.fhir.rest import FHIR_JSON, base_url, negotiate
from fhirgoal.fhir.rest import router as fhir_router
from fhirgoal.fhir.rest_operations import router as operations_router
from fhirgoal.fhir.search.registry import SearchRegistry
from fhirgoal.fhir.service import FhirService
from fhirgoal.fhir.validation import Validator
from fhirgoal.guard import RequestGuard, database_unavailable, error_response
from fhirgoal.logs import configure_logging
from fhirgoal.store.embedded import EmbeddedDatabase, redacted
from fhirgoal.store.mongo import connect
from fhirgoal.store.repository import Repository

log = structlog.get_logger(__name__)


@lru_cache(maxsize=1024)  # asked for every request when authorization is off
def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LoopbackOnly:
    """Refuse every caller that is not on this machine (pure ASGI: no per-request task overhead)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            client = scope.get("client")
            if client and not is_loopback(client[0]):
                error = FhirError(
                    "forbidden", "authorization is off: only loopback callers are served"
                )
                await error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)


async def build_service(
    settings: Settings, client: AsyncMongoClient[dict[str, Any]]
) -> FhirService:
    """The FHIR service over a connected database, indexes ensured (shared by app, CLI, demo)."""
    conformance = load_conformance(settings.conformance_dir)
    registry = _registry(conformance)
    repository = Repository(client, settings.db)
    validator = _validator(conformance, settings.profiles_dir)
    service = FhirService(settings, conformance, registry, validator, repository)
    install_clinical(service)
    pending_types = frozenset(service.hooks.types_with_hooks())
    await repository.ensure_indexes(list(conformance.stored_types), pending_types)
    await service.audit_log.ensure_indexes()
    await upgrade_index(service, pending_types)
    await load_catalog(service, settings.profiles_dir, instrument_texts(settings))
    finished = await service.finish_pending(UNRESTRICTED)
    if finished:
        log.warning("finished writes a crash had interrupted", count=finished)
    return service


@cache
def _validator(conformance: Conformance, profiles_dir: Path) -> Validator:
    return Validator(conformance, ProfileSet(read_catalog(profiles_dir)))


@cache
def _registry(conformance: Conformance) -> SearchRegistry:
    return SearchRegistry(conformance)


async def sweep_pending(service: FhirService, settings: Settings) -> None:
    """Finish, while running, the derived writes a database failure left pending (fhir/hooks.py):
    start-up does it after a crash; this covers a server that stays up. Only writes older than one
    interval are touched, so hooks still running in a request are never run twice at once."""
    interval = settings.pending_sweep_seconds
    while True:
        await asyncio.sleep(interval)
        try:
            cutoff = datetime.now(UTC) - timedelta(seconds=interval)
            finished = await service.finish_pending(UNRESTRICTED, older_than=cutoff)
            if finished:
                log.warning("finished derived writes left pending", count=finished)
        except (PyMongoError, FhirError) as error:
            log.error("pending sweep failed; retrying next interval", error=repr(error))


# How long start-up waits for the database to answer (it may still be starting), and how long the
# application's shutdown may take (after uvicorn's grace period; SIGTERM must finish in 15 s).
STARTUP_DATABASE_WAIT = 60.0
SHUTDOWN_SECONDS = 3.0


async def wait_for_database(client: AsyncMongoClient[dict[str, Any]], seconds: float) -> None:
    """Wait until the database answers a ping (each try is bounded by the client's timeout)."""
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        try:
            await client.admin.command("ping")
            return
        except PyMongoError as error:
            if asyncio.get_running_loop().time() > deadline:
                raise
            log.warning("waiting for the database", error=repr(error))
            await asyncio.sleep(0.5)


async def _close(
    runtime: AuthRuntime, service: FhirService | None, client: AsyncMongoClient[dict[str, Any]]
) -> None:
    await runtime.stop()
    if service is not None:
        await service.audit_log.stop()
    await client.close()


async def _within(seconds: float, shutdown: Awaitable[None]) -> None:
    try:
        await asyncio.wait_for(shutdown, seconds)
    except (TimeoutError, PyMongoError) as error:
        log.error("shutdown did not finish in time", seconds=seconds, error=repr(error))


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings.log_level)
    conformance = load_conformance(settings.conformance_dir)
    registry = _registry(conformance)
    runtime = AuthRuntime(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        embedded = None
        uri = settings.mongodb_uri
        if uri is None:
            embedded = EmbeddedDatabase(settings.data_dir)
            uri = embedded.start()
            embedded.supervise(
                settings.db_restarts,
                settings.db_restart_window_seconds,
                backoff=settings.db_restart_backoff_seconds,
            )
            log.info(
                "embedded database started", uri=redacted(uri), data_dir=str(settings.data_dir)
            )
        client = connect(
            uri,
            settings.db_timeout_seconds,
            settings.db_socket_timeout_seconds,
            settings.db_journal,
        )
        sweeper: asyncio.Task[None] | None = None
        service: FhirService | None = None
        try:
            await wait_for_database(client, STARTUP_DATABASE_WAIT)
            service = app.state.fhir = await build_service(settings, client)
            app.state.repository = app.state.fhir.repo
            await runtime.start(app.state.fhir)
            app.state.smart = runtime.smart
            # The conformance tables (schema, structure, search parameters) are hundreds of
            # thousands of long-lived objects; freezing them keeps the cyclic GC from re-scanning
            # them on every collection (measured: a large share of per-request CPU).
            gc.collect()
            gc.freeze()
            sweeper = asyncio.create_task(sweep_pending(app.state.fhir, settings))
            service.audit_log.start()
            yield
        finally:
            if sweeper is not None:
                sweeper.cancel()
            # Bounded, so that SIGTERM finishes even with the database gone or hung: what is not
            # flushed by then is what the README says a crash can lose (buffered read audits).
            await _within(SHUTDOWN_SECONDS, _close(runtime, service, client))
            if embedded is not None:
                embedded.stop()

    app = FastAPI(
        title="fhirgoal",
        version=__version__,
        description="FHIR R4 server for goals, Goal Attainment Scaling and session measures",
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.fhir_base = settings.public_fhir_base()  # never taken from a request (fhir/rest.py)
    app.state.auth_runtime = runtime
    # Added first, so it runs inside the authorization middleware, exactly where the routes do.
    app.add_middleware(InteractionRouter, is_type=conformance.is_stored)
    if settings.auth == "off":
        # Everything is allowed, but only to callers on this machine.
        log.warning("authorization is off (FHIRGOAL_AUTH=off): loopback callers only")
        app.add_middleware(LoopbackOnly)
        app.state.access_for = lambda request: UNRESTRICTED
    else:
        # BearerAuth puts each request's AccessContext into its state (auth/middleware.py).
        app.add_middleware(BearerAuth, runtime=runtime)
        app.state.access_for = _access_from_state
    app.add_middleware(RequestGuard)  # added last: outermost

    @app.exception_handler(FhirError)
    async def fhir_error(_: Request, exc: FhirError) -> Response:
        return error_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException) -> Response:
        category = category_for_status(exc.status_code)
        return error_response(FhirError(category, str(exc.detail)))

    @app.exception_handler(RequestValidationError)
    async def request_error(_: Request, exc: RequestValidationError) -> Response:
        return error_response(FhirError("bad-request", "the request is malformed"))

    @app.exception_handler(PyMongoError)
    async def database_error(request: Request, exc: PyMongoError) -> Response:
        return error_response(database_unavailable(request.url.path, exc))

    # Anything else is answered by RequestGuard (guard.py), the outermost middleware.

    @app.get("/fhir/metadata", summary="capabilities")
    async def metadata(request: Request) -> Response:
        negotiate(request)
        from fhirgoal.core.jsonio import dumps

        base = base_url(request)
        service: FhirService = request.app.state.fhir
        statement = build_capability(
            conformance, registry, base, service.operations, service.validator.profiles
        )
        if settings.auth == "smart":
            from fhirgoal.auth.server import capability_security

            statement["rest"][0]["security"] = capability_security(base)
        return Response(dumps(statement), media_type=FHIR_JSON)

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    @app.get("/readyz", include_in_schema=False)
    async def readyz(request: Request) -> Response:
        try:
            await request.app.state.repository.db.command("ping")
        except (PyMongoError, AttributeError):
            return Response(
                b'{"status":"unavailable"}', status_code=503, media_type="application/json"
            )
        return Response(b'{"status":"ready"}', media_type="application/json")

    if settings.auth == "smart":
        from fhirgoal.auth.server import router as smart_router

        app.include_router(smart_router)  # before the FHIR routes: .well-known is not a type
    app.include_router(operations_router, prefix="/fhir")
    app.include_router(fhir_router, prefix="/fhir")
    return app


def _access_from_state(request: Request) -> AccessContext:
    context: AccessContext | None = getattr(request.state, "access", None)
    if context is None:
        raise unauthorized(None, "this server needs a Bearer access token")
    return context


__all__ = ["create_app", "error_response", "is_loopback"]
