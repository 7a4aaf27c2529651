"""Repository.scan_bounded (and list_bounded) on the real database: every live resource of the range exactly once,
read in commands an index bounds (windows of the last-updated instant, or batches of members),
and `deleted_since` the same way."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from fhirgoal.bootstrap import build_service
from fhirgoal.config import Settings
from fhirgoal.core.access import UNRESTRICTED
from fhirgoal.fhir.service import FhirService
from fhirgoal.store.mongo import connect
from fhirgoal.store.repository import Version

START = datetime(2026, 6, 1, tzinfo=UTC)
TARGET = 40


@pytest.fixture
async def service(mongo_uri: str) -> AsyncIterator[FhirService]:
    settings = Settings(mongodb_uri=mongo_uri, db=f"test_{uuid.uuid4().hex[:12]}", auth="off")
    client = connect(mongo_uri)
    try:
        yield await build_service(settings, client)
    finally:
        await client.drop_database(settings.db)
        await client.close()


def observation(n: int, patients: list[str]) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": f"o{n}",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "8302-2" if n % 3 else "x"}]},
        "subject": {"reference": patients[0]},
        "performer": [{"reference": p} for p in patients[1:]],
    }


async def load(service: FhirService, count: int, spacing: timedelta) -> list[datetime]:
    """`count` Observations, one every `spacing` from START, of patients p0..p9 (every fifth
    also performed by the next patient: in two compartments); their instants."""
    versions: list[tuple[Version, dict[str, Any]]] = []
    instants = []
    for n in range(count):
        patients = [f"Patient/p{n % 10}"] + ([f"Patient/p{(n + 1) % 10}"] if n % 5 == 0 else [])
        instants.append(START + n * spacing)
        versions.append(service.first_version(observation(n, patients), instants[-1]))
    await service.store_first_versions(versions)
    return instants


async def batches(service: FhirService, query: dict[str, Any], **options: Any) -> list[list[str]]:
    """The ids of each batch of the walk; `list_bounded` (ids and texts only) walks the same
    batches, with the texts `scan_bounded`'s versions hold."""
    until = options.pop("until", START + timedelta(days=1))
    scan = service.repo.scan_bounded(UNRESTRICTED, "Observation", query, until, **options)
    versions = [batch async for batch in scan]
    listing = service.repo.list_bounded(UNRESTRICTED, "Observation", query, until, **options)
    listed = [batch async for batch in listing]
    assert [[(v.id, v.text) for v in batch] for batch in versions] == [
        [(item.id, item.text) for item in batch] for batch in listed
    ]
    assert all(item.resource["id"] == item.id for batch in listed for item in batch)
    return [[v.id for v in batch] for batch in versions]


async def test_windows_read_each_resource_in_range_once_in_bounded_commands(
    service: FhirService,
) -> None:
    # two a second for five minutes, read back from a day later: the write marks keep the
    # window grown over the empty day from swallowing them
    instants = await load(service, 600, timedelta(milliseconds=500))
    read = await batches(service, {}, target=TARGET)
    ids = [rid for batch in read for rid in batch]
    assert sorted(ids) == sorted(f"o{n}" for n in range(600))
    assert len(ids) == len(set(ids))
    assert len(read) >= 600 // (2 * TARGET)
    assert max(len(batch) for batch in read) <= 2 * TARGET

    # (after, until]: both ends exact
    after, until = instants[100], instants[499]
    ranged = await batches(service, {}, after=after, until=until, target=TARGET)
    assert sorted(rid for b in ranged for rid in b) == sorted(f"o{n}" for n in range(101, 500))

    # the rest of the query is checked on each window; deleted resources are not read
    await service.repo.collection("Observation").update_many(
        {"_id": {"$in": ["o1", "o2"]}}, {"$set": {"del": True}}
    )
    coded = await batches(service, {"tok": "code#8302-2"}, after=after, until=until, target=TARGET)
    expected = {f"o{n}" for n in range(101, 500) if n % 3}
    assert sorted(rid for b in coded for rid in b) == sorted(expected)
    everything = await batches(service, {}, target=TARGET)
    assert {"o1", "o2"}.isdisjoint(rid for b in everything for rid in b)


async def test_members_are_read_in_batches_each_resource_once(service: FhirService) -> None:
    await load(service, 400, timedelta(milliseconds=5))
    members = [f"Patient/p{i}" for i in range(10)]
    read = await batches(service, {"comp": {"$in": members}}, target=TARGET)
    ids = [rid for batch in read for rid in batch]
    # every fifth is in two members' compartments, possibly two batches': written once
    assert sorted(ids) == sorted(f"o{n}" for n in range(400))
    assert len(read) > 1
    some = await batches(service, {"comp": {"$in": members[:2]}}, target=TARGET)
    assert sorted(rid for b in some for rid in b) == sorted(
        f"o{n}" for n in range(400) if n % 10 in (0, 1) or (n % 5 == 0 and (n + 1) % 10 in (0, 1))
    )


async def test_deleted_since_reads_tombstones_by_window(service: FhirService) -> None:
    await load(service, 200, timedelta(milliseconds=10))
    for n in range(0, 200, 7):  # deleted (two versions: the removed one in history)
        current = await service.repo.current(UNRESTRICTED, "Observation", f"o{n}")
        assert current is not None
        tombstone = Version(
            "Observation", current.id, 2, START + timedelta(hours=1, seconds=n), "DELETE", None
        )
        assert await service.repo.replace(UNRESTRICTED, current, tombstone, {})
    found = [
        v.id
        for batch in [
            b
            async for b in service.repo.deleted_since(
                UNRESTRICTED,
                "Observation",
                START + timedelta(hours=1, seconds=100),
                START + timedelta(hours=1, seconds=20),
                {"comp": {"$in": ["Patient/p1", "Patient/p8"]}},
                target=3,
            )
        ]
        for v in batch
    ]
    # deleted in (20 s, 100 s] and, by the removed version, in p1's or p8's compartment
    expected = [
        f"o{n}"
        for n in range(0, 200, 7)
        if 20 < n <= 100 and (n % 10 in (1, 8) or (n % 5 == 0 and (n + 1) % 10 in (1, 8)))
    ]
    assert sorted(found) == sorted(expected) and expected
