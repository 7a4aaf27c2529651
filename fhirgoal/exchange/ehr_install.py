"""EHR sync in a process: plugged into the service, and the pulls of a serving process.

Issue 15. `install` gives the service the outbound half (exchange/ehr_outbound.py: an outbox
source and its delivery handler; the outbox worker, exchange/delivery.py, delivers); `PullLoop`
runs the inbound half (exchange/ehr_inbound.py) every `sync_pull_seconds` in `fhirgoal serve`;
`fhirgoal sync run` does one pass of both and exits (cli_ehr.py).
"""

from __future__ import annotations

import asyncio

import httpx
import structlog
from pymongo.errors import PyMongoError

from fhirgoal.config import Settings
from fhirgoal.core.errors import FhirgoalError
from fhirgoal.core.tasks import stop_task
from fhirgoal.exchange.ehr_inbound import Puller
from fhirgoal.exchange.ehr_outbound import EhrDelivery
from fhirgoal.exchange.ehr_outbound import install as install_outbound
from fhirgoal.exchange.ehr_sync import EHR_SYNC, EhrSync
from fhirgoal.fhir.service import FhirService

log = structlog.get_logger(__name__)


async def install(service: FhirService, settings: Settings) -> EhrSync:
    """EHR sync plugged into `service`, its connections read and its indexes ensured."""
    sync = EhrSync(service, settings)
    install_outbound(sync)
    await sync.ensure_indexes()
    await sync.refresh()
    return sync


def sync_of(service: FhirService) -> EhrSync:
    """The EhrSync `install` plugged into `service`."""
    handler = service.outbox.handlers.get(EHR_SYNC)
    if not isinstance(handler, EhrDelivery):
        raise RuntimeError("EHR sync is not installed on this service")
    return handler.sync


class PullLoop:
    """Pulls of every connection every `sync_pull_seconds` (0: none). Pulls are idempotent, so
    replicas pulling the same EHR at once cost requests, not correctness."""

    def __init__(self, sync: EhrSync) -> None:
        self.sync = sync
        self.puller = Puller(sync)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        if self.sync.settings.sync_pull_seconds > 0:
            self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None
        await self.sync.close()

    async def _run(self) -> None:
        while True:
            try:
                await self.sync.refresh()
                for connection in self.sync.connections:
                    try:
                        await self.puller.pull(connection)
                    except (FhirgoalError, httpx.HTTPError) as error:
                        log.error("EHR pull failed", connection=connection.name, error=repr(error))
            except PyMongoError as error:
                log.error("EHR pulls failed; trying again", error=repr(error))
            except Exception as error:  # the loop must outlive any one pass
                log.error("EHR pulls failed unexpectedly; trying again", exc_info=error)
            await asyncio.sleep(self.sync.settings.sync_pull_seconds)
