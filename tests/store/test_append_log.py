"""The append log (fhirgoal.store.append_log): records durable when appended, indexed later, and
never missed or doubled by a reader, a crash or a second replica."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pymongo.errors import BulkWriteError

from fhirgoal.bootstrap import build_service
from fhirgoal.config import Settings
from fhirgoal.core.access import UNRESTRICTED
from fhirgoal.fhir.service import FhirService
from fhirgoal.store.append_log import AppendLog
from fhirgoal.store.mongo import connect


@pytest.fixture
async def service(mongo_uri: str) -> AsyncIterator[FhirService]:
    settings = Settings(mongodb_uri=mongo_uri, db=f"test_{uuid.uuid4().hex[:12]}", auth="off")
    client = connect(mongo_uri)
    try:
        yield await build_service(settings, client)
    finally:
        await client.drop_database(settings.db)
        await client.close()


def events(count: int, action: str = "R") -> list[dict[str, Any]]:
    return [
        {"resourceType": "AuditEvent", "id": uuid.uuid4().hex, "action": action,
         "type": {"system": "http://terminology.hl7.org/CodeSystem/audit-event-type",
                  "code": "rest"},
         "recorded": "2026-11-23T10:00:00Z", "outcome": "0", "outcomeDesc": f"read {n}",
         "agent": [{"who": {"reference": "Practitioner/doc"}, "requestor": True}],
         "source": {"observer": {"display": "fhirgoal"}},
         "entity": [{"what": {"reference": f"Patient/p{n % 3}"}}]}
        for n in range(count)
    ]  # fmt: skip


async def indexed(service: FhirService) -> int:
    """AuditEvent documents stored, counted without catching the log up."""
    return await service.repo.collection("AuditEvent").count_documents({})


async def test_records_are_durable_when_appended_and_searchable_afterwards(
    service: FhirService,
) -> None:
    log = service.audit_log
    before = datetime.now(UTC) - timedelta(milliseconds=1)
    await log.append(events(5))
    [segment] = await log.segments.find({}).to_list()
    assert segment["n"] == 5 and await indexed(service) == 0
    # a search catches the log up first, then finds them through their search keys
    found = await service.find_resources(UNRESTRICTED, "AuditEvent", [("entity", "Patient/p1")])
    assert sorted(v.resource["outcomeDesc"] for v in found) == ["read 1", "read 4"]  # type: ignore[index]
    assert await log.segments.count_documents({}) == 0 and await indexed(service) == 5
    stamped = datetime.fromisoformat(found[0].resource["meta"]["lastUpdated"])  # type: ignore[index]
    assert stamped == segment["at"] and stamped >= before
    assert found[0].resource["meta"]["versionId"] == "1"  # type: ignore[index]


@pytest.mark.parametrize("reader", ["read", "count", "type history", "export"])
async def test_every_reader_of_the_type_sees_every_appended_record(
    service: FhirService, reader: str
) -> None:
    records = events(4)
    await service.audit_log.append(records)
    repo = service.repo
    if reader == "read":
        version = await repo.current(UNRESTRICTED, "AuditEvent", records[3]["id"])
        assert version is not None and version.resource["outcomeDesc"] == "read 3"  # type: ignore[index]
    elif reader == "count":
        assert await repo.count(UNRESTRICTED, "AuditEvent", {"tok": "action#R"}) == 4
    elif reader == "type history":
        page, total = await repo.type_history(
            UNRESTRICTED, ["AuditEvent"], None, datetime.now(UTC), 10, 0
        )
        assert total == 4 and len(page) == 4
    else:
        batches = [batch async for batch in repo.live_versions("AuditEvent")]
        assert sum(len(batch) for batch in batches) == 4


async def test_a_segment_indexed_twice_stores_each_record_once(service: FhirService) -> None:
    log = service.audit_log
    records = events(6)
    await log.append(records)
    # a crash midway through indexing: two of the six were stored, the segment was not deleted
    moment = datetime.now(UTC)
    await service.repo.insert_batch([service.first_version(r, moment) for r in records[:2]])
    # and two replicas catch up at the same moment
    other = AppendLog(service.repo, "AuditEvent", service.first_version)
    counts = await asyncio.gather(log.catch_up(), other.catch_up())
    assert max(counts) == 6
    assert await indexed(service) == 6
    assert await log.segments.count_documents({}) == 0


async def test_a_segment_that_cannot_be_indexed_is_kept_for_the_next_attempt(
    service: FhirService,
) -> None:
    log = service.audit_log
    await log.append(events(3))
    # the database refuses all but one: every AuditEvent has op "POST"
    await service.repo.collection("AuditEvent").create_index("op", unique=True)
    with pytest.raises(BulkWriteError):
        await log.catch_up()
    assert await log.segments.count_documents({}) == 1
    await service.repo.collection("AuditEvent").drop_index("op_1")
    assert await log.catch_up() == 3
    assert await indexed(service) == 3 and await log.segments.count_documents({}) == 0


async def test_the_background_indexes_when_the_load_is_light_and_waits_otherwise(
    service: FhirService,
) -> None:
    log = AppendLog(service.repo, "AuditEvent", service.first_version, light_load=50)
    await log.append(events(120))  # 120 records in the last second: busy
    assert await log.background_pass(elapsed=1.0) == 0
    assert await indexed(service) == 0
    await log.append(events(20))  # 20 in the next second: light
    assert await log.background_pass(elapsed=1.0) == 140
    assert await indexed(service) == 140 and await log.backlog() == 0


async def test_a_backlog_past_its_bound_is_indexed_whatever_the_load(
    service: FhirService,
) -> None:
    log = AppendLog(
        service.repo, "AuditEvent", service.first_version, light_load=10, max_backlog=150
    )
    for _ in range(3):
        await log.append(events(100))
    # busy (300 records in the second), and 300 wait: the oldest go until at most 150 wait
    assert await log.background_pass(elapsed=1.0) == 200
    assert await log.backlog() == 100


async def test_quiet_time_indexing_gives_way_to_load_and_resumes_where_it_stopped(
    service: FhirService,
) -> None:
    begun = asyncio.Event()

    def prepare(record: dict[str, Any], moment: datetime) -> Any:
        begun.set()
        return service.first_version(record, moment)

    log = AppendLog(service.repo, "AuditEvent", prepare, light_load=50)
    await log.append(events(200))
    log._activity = 0  # a quiet second has passed
    indexing = asyncio.create_task(log.background_pass(elapsed=1.0))
    await begun.wait()  # the first chunk is on its way
    log.announce(100)  # a burst of requests arrives
    stopped_after = await indexing
    assert 0 < stopped_after < 200
    [segment] = await log.segments.find({}).to_list()
    assert segment["done"] == stopped_after == await indexed(service)
    assert await log.backlog() == 200 - stopped_after
    # the next quiet pass goes on from there: nothing indexed twice, nothing left
    assert await log.background_pass(elapsed=1.0) == 0  # the burst counts as load
    assert await log.background_pass(elapsed=1.0) == 200 - stopped_after
    assert await indexed(service) == 200 and await log.backlog() == 0
