"""The ASGI application factory: middleware, routes and the lifespan that opens the database.

FHIR base at /fhir (https://hl7.org/fhir/R4/http.html#general); the CapabilityStatement and the
operational probes (/healthz, /readyz) are in system_routes.py; start-up and shutdown work
(database, service, background sweep) in bootstrap.py; the error path in guard.py.
"""

from __future__ import annotations

import asyncio
import gc
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from fastapi import FastAPI, Request
from pymongo import AsyncMongoClient

from fhirgoal import __version__, webapp
from fhirgoal.auth.bearer import unauthorized
from fhirgoal.auth.loopback import LoopbackOnly
from fhirgoal.auth.middleware import BearerAuth
from fhirgoal.auth.runtime import AuthRuntime
from fhirgoal.bootstrap import (
    SHUTDOWN_SECONDS,
    STARTUP_DATABASE_WAIT,
    build_service,
    close_within,
    delivery_worker,
    ehr_pulls,
    ehr_push,
    embedded_database,
    export_runner,
    sweep_pending,
    wait_for_database,
)
from fhirgoal.config import Settings
from fhirgoal.core.access import UNRESTRICTED, AccessContext
from fhirgoal.core.tasks import stop_task
from fhirgoal.exchange.delivery import DeliveryWorker
from fhirgoal.exchange.ehr_install import PullLoop
from fhirgoal.exchange.ehr_push import PushLoop
from fhirgoal.fhir.conformance import load_conformance
from fhirgoal.fhir.dispatch import InteractionRouter
from fhirgoal.fhir.export_jobs import ExportRunner
from fhirgoal.fhir.rest import router as fhir_router
from fhirgoal.fhir.rest_export import router as export_router
from fhirgoal.fhir.rest_operations import router as operations_router
from fhirgoal.fhir.service import FhirService
from fhirgoal.guard import RequestGuard, install_error_handlers
from fhirgoal.logs import configure_logging
from fhirgoal.push_routes import router as push_router
from fhirgoal.store.mongo import connect
from fhirgoal.system_routes import router as system_router

log = structlog.get_logger(__name__)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    configure_logging(settings.log_level)
    conformance = load_conformance(settings.conformance_dir)
    runtime = AuthRuntime(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # `fhirgoal serve` starts the embedded database itself (and passes its URI); an app
        # created without a URI (a test, `uvicorn --factory`) starts and supervises it here.
        with embedded_database(settings, supervise=True) as (opened, _):
            assert opened.mongodb_uri
            client = connect(
                opened.mongodb_uri,
                opened.db_timeout_seconds,
                opened.db_socket_timeout_seconds,
                opened.db_journal,
            )
            sweeper: asyncio.Task[None] | None = None
            service: FhirService | None = None
            exports: ExportRunner | None = None
            worker: DeliveryWorker | None = None
            pulls: PullLoop | None = None
            push: PushLoop | None = None
            try:
                await wait_for_database(client, STARTUP_DATABASE_WAIT)
                service = app.state.fhir = await build_service(opened, client)
                exports = app.state.exports = await export_runner(service, opened)
                await runtime.start(service, exports)
                app.state.smart = runtime.smart
                # The conformance tables (schema, structure, search parameters) are hundreds of
                # thousands of long-lived objects; freezing them keeps the cyclic GC from
                # re-scanning them on every collection (measured: a large share of request CPU).
                gc.collect()
                gc.freeze()
                sweeper = asyncio.create_task(sweep_pending(service, opened))
                service.audit_log.start()
                exports.start()
                worker = delivery_worker(service, opened)
                pulls = ehr_pulls(service)
                push = app.state.ehr_push = ehr_push(service)
                yield
            finally:
                await stop_task(sweeper)
                if push is not None:
                    await push.stop()
                if pulls is not None:
                    await pulls.stop()
                if worker is not None:
                    await worker.stop()
                if exports is not None:
                    await exports.stop()
                # Bounded, so that SIGTERM finishes even with the database gone or hung.
                await close_within(SHUTDOWN_SECONDS, _close(runtime, service, client))

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
        log.warning("authorization is off (FHIRGOAL_AUTH=off): loopback callers only")
        app.add_middleware(LoopbackOnly)
        app.state.access_for = lambda request: UNRESTRICTED
    else:
        # BearerAuth puts each request's AccessContext into its state (auth/middleware.py).
        app.add_middleware(BearerAuth, runtime=runtime)
        app.state.access_for = _access_from_state
    app.add_middleware(RequestGuard)  # added last: outermost
    install_error_handlers(app)

    app.include_router(system_router)
    app.include_router(push_router)  # EHR notifications: the connection's secret, no token
    if settings.auth == "smart":
        from fhirgoal.auth.server import router as smart_router

        app.include_router(smart_router)  # before the FHIR routes: .well-known is not a type
    elif settings.auth == "external":
        from fhirgoal.auth import external_discovery

        app.state.external_authorization = runtime.external_authorization
        app.include_router(external_discovery.router)  # the EHR's authorization server
    app.include_router(export_router, prefix="/fhir")  # before `/{type}/{id}` takes `_export/..`
    app.include_router(operations_router, prefix="/fhir")
    app.include_router(fhir_router, prefix="/fhir")
    webapp.mount(app, settings)  # the clinician app under /app (fhirgoal/webapp)
    return app


async def _close(
    runtime: AuthRuntime, service: FhirService | None, client: AsyncMongoClient[dict[str, Any]]
) -> None:
    await runtime.stop()
    if service is not None:
        await service.audit_log.stop()
    await client.close()


def _access_from_state(request: Request) -> AccessContext:
    context: AccessContext | None = getattr(request.state, "access", None)
    if context is None:
        raise unauthorized(None, "this server needs a Bearer access token")
    return context


__all__ = ["create_app"]
