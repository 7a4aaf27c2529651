"""Start-up and shutdown, shared by the server (app.py's lifespan), the CLI and the demo loader.

- `embedded_database`: the one place the embedded database (store/embedded.py) is started when no
  MONGODB_URI is set, supervised when the caller serves, and stopped when the caller is done.
- `build_service`: the FHIR service over a connected database, with its indexes, the index layout
  upgraded, the built-in catalogue loaded and writes a crash interrupted finished.
- `export_runner`: the Bulk Data export jobs of a serving process.
- `delivery_worker`: the outbox's delivery worker of a serving process (exchange/delivery.py).
- `ehr_pulls`: the inbound EHR pulls of a serving process (exchange/ehr_install.py).
- `ehr_push`: push in of a serving process: the EHRs' notifications, the pulls they ask for and
  the EHR-side Subscriptions (exchange/ehr_push.py).
- `wait_for_database`, `sweep_pending`, `close_within`: the lifespan's waits and background work.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from functools import cache
from pathlib import Path
from typing import Any

import structlog
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError

from fhirgoal.clinical.install import install_clinical, instrument_texts
from fhirgoal.config import Settings
from fhirgoal.core.access import UNRESTRICTED
from fhirgoal.core.errors import FhirError
from fhirgoal.evidence.install import install_evidence
from fhirgoal.exchange.delivery import DeliveryWorker
from fhirgoal.exchange.ehr_install import PullLoop, sync_of
from fhirgoal.exchange.ehr_install import install as install_ehr_sync
from fhirgoal.exchange.ehr_push import PushLoop as PushIn
from fhirgoal.exchange.subscriptions import install as install_subscriptions
from fhirgoal.fhir import everything, export, validate_operation
from fhirgoal.fhir.catalog import load_catalog, read_catalog
from fhirgoal.fhir.conformance import Conformance, load_conformance
from fhirgoal.fhir.export_jobs import ExportRunner
from fhirgoal.fhir.profiles import ProfileSet
from fhirgoal.fhir.reindex import upgrade_index
from fhirgoal.fhir.search.registry import SearchRegistry
from fhirgoal.fhir.service import FhirService
from fhirgoal.fhir.validation import Validator
from fhirgoal.store.embedded import EmbeddedDatabase, redacted
from fhirgoal.store.exports import ExportStore
from fhirgoal.store.repository import Repository

log = structlog.get_logger(__name__)

# How long start-up waits for the database to answer (it may still be starting), and how long the
# application's shutdown may take (after uvicorn's grace period; SIGTERM must finish in 15 s).
STARTUP_DATABASE_WAIT = 60.0
SHUTDOWN_SECONDS = 3.0


@contextmanager
def embedded_database(
    settings: Settings,
    *,
    supervise: bool = False,
    on_give_up: Callable[[], None] | None = None,
) -> Iterator[tuple[Settings, EmbeddedDatabase | None]]:
    """`settings` with a database URI: MONGODB_URI when set (nothing is started), else the embedded
    database on FHIRGOAL_DATA_DIR, started here (or found running there) and stopped on leaving.
    A server passes `supervise=True` so a dead database is restarted (store/embedded.py).
    Raises EmbeddedUnavailable when it cannot be started."""
    if settings.mongodb_uri:
        yield settings, None
        return
    embedded = EmbeddedDatabase(settings.data_dir)
    uri = embedded.start()
    try:
        log.info("embedded database started", uri=redacted(uri), data_dir=str(settings.data_dir))
        if supervise:
            embedded.supervise(
                settings.db_restarts,
                settings.db_restart_window_seconds,
                on_give_up=on_give_up,
                backoff=settings.db_restart_backoff_seconds,
            )
        yield settings.model_copy(update={"mongodb_uri": uri}), embedded
    finally:
        embedded.stop()


async def build_service(
    settings: Settings, client: AsyncMongoClient[dict[str, Any]]
) -> FhirService:
    """The FHIR service over a connected database, indexes ensured (shared by app, CLI, demo)."""
    conformance = load_conformance(settings.conformance_dir)
    repository = Repository(client, settings.db)
    validator = validator_for(conformance, settings.profiles_dir)
    service = FhirService(
        settings, conformance, search_registry(conformance), validator, repository
    )
    # the generic FHIR operations; clinical/ and evidence/ add their own, and a serving process
    # $export
    everything.register(service.operations)
    validate_operation.register(service.operations, conformance.stored_types)
    install_clinical(service)
    install_evidence(service)
    subscriptions = install_subscriptions(service, settings)
    await install_ehr_sync(service, settings)  # outbound source + delivery, connections read
    pending_types = frozenset(service.hooks.types_with_hooks())
    await repository.ensure_indexes(list(conformance.stored_types), pending_types)
    await service.audit_log.ensure_indexes()
    await service.outbox.store.ensure_indexes()
    await upgrade_index(service, pending_types)
    await load_catalog(service, settings.profiles_dir, instrument_texts(settings))
    finished = await service.finish_pending(UNRESTRICTED)
    if finished:
        log.warning("finished writes a crash had interrupted", count=finished)
    await subscriptions.refresh()
    return service


def delivery_worker(service: FhirService, settings: Settings) -> DeliveryWorker | None:
    """The outbox's delivery worker of a serving process (exchange/delivery.py), started; None
    when FHIRGOAL_OUTBOX_WORKER is off."""
    if not settings.outbox_worker:
        return None
    worker = DeliveryWorker(service.outbox, settings)
    worker.start()
    return worker


def ehr_pulls(service: FhirService) -> PullLoop:
    """The EHR pulls of a serving process (exchange/ehr_install.py), started (they do nothing
    when FHIRGOAL_SYNC_PULL_SECONDS is 0)."""
    pulls = PullLoop(sync_of(service))
    pulls.start()
    return pulls


def ehr_push(service: FhirService) -> PushIn:
    """Push in of a serving process (exchange/ehr_push.py), started: its receiver answers
    `POST /sync/notify/<connection>`."""
    push = PushIn(sync_of(service))
    push.start()
    return push


async def export_runner(service: FhirService, settings: Settings) -> ExportRunner:
    """The Bulk Data export runner of a serving process, its kick-off operations registered
    (fhir/export.py); the caller starts and stops it. `access_for_owner` is set by auth/."""
    store = ExportStore(service.database)
    await store.ensure_indexes()
    runner = ExportRunner(
        service,
        store,
        retention=timedelta(seconds=settings.export_retention_seconds),
        lease_seconds=settings.export_lease_seconds,
        file_lines=settings.export_file_lines,
    )
    export.register(service.operations, runner)
    return runner


@cache  # one per conformance directory and profile set: built once per process
def validator_for(conformance: Conformance, profiles_dir: Path) -> Validator:
    return Validator(conformance, ProfileSet(read_catalog(profiles_dir)))


@cache
def search_registry(conformance: Conformance) -> SearchRegistry:
    return SearchRegistry(conformance)


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


async def close_within(seconds: float, shutdown: Awaitable[None]) -> None:
    """Run `shutdown`, giving up after `seconds` (the database may be gone or hung): what is not
    flushed by then is what the README says a crash can lose (buffered read audits)."""
    try:
        # wait_for on purpose: the shutdown runs as its own task, so whatever of it does not
        # give way to cancellation (a hung database) is left behind when the time is up.
        await asyncio.wait_for(shutdown, seconds)
    except (TimeoutError, PyMongoError) as error:
        log.error("shutdown did not finish in time", seconds=seconds, error=repr(error))
