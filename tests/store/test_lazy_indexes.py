"""Collections and indexes of a resource type come with its first write (store/repository.py):
start-up builds none for the ~145 types, reads of a type never written create nothing, two first
writers share one build, and a restart indexes what an earlier process created."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from fhirgoal.core.access import UNRESTRICTED
from fhirgoal.core.fields import SEARCH_INDEXES
from fhirgoal.store.mongo import connect
from fhirgoal.store.repository import Repository, Version

TYPES = ["Location", "Basic", "Medication"]


@pytest.fixture
async def repository(mongo_uri: str) -> AsyncIterator[Repository]:
    client = connect(mongo_uri)
    repo = Repository(client, f"test_{uuid.uuid4().hex[:12]}")
    yield repo
    await client.drop_database(repo.db.name)
    await client.close()


def first_version(rt: str, rid: str) -> Version:
    text = f'{{"resourceType":"{rt}","id":"{rid}"}}'
    return Version(rt, rid, 1, datetime.now(UTC), "PUT", text)


async def index_names(repo: Repository, collection: str) -> set[str]:
    return {index["name"] async for index in await repo.db[collection].list_indexes()}


async def test_start_up_creates_no_resource_collection(repository: Repository) -> None:
    await repository.ensure_indexes(TYPES, frozenset({"Basic"}))
    assert set(TYPES) & set(await repository.db.list_collection_names()) == set()


async def test_reads_of_a_type_never_written_find_nothing_and_create_nothing(
    repository: Repository,
) -> None:
    await repository.ensure_indexes(TYPES)
    assert await repository.current(UNRESTRICTED, "Location", "x") is None
    assert await repository.find(UNRESTRICTED, "Location", {}, [("_id", 1)], 10) == []
    assert await repository.count(UNRESTRICTED, "Location", {}) == 0
    names = await repository.db.list_collection_names()
    assert "Location" not in names
    assert "Location_history" not in names


async def test_concurrent_first_writes_share_one_build(repository: Repository) -> None:
    await repository.ensure_indexes(TYPES, frozenset({"Basic"}))
    versions = [first_version("Basic", f"b{i}") for i in range(8)]
    await asyncio.gather(*(repository.insert(UNRESTRICTED, v, {}) for v in versions))
    assert await repository.count(UNRESTRICTED, "Basic", {}) == 8
    current = await index_names(repository, "Basic")
    assert {"lastUpdated", "pend", *SEARCH_INDEXES} <= current
    assert {"id_version", "lastUpdated", "comp"} <= await index_names(repository, "Basic_history")
    assert "Location" not in await repository.db.list_collection_names()


async def test_a_restart_indexes_the_collections_an_earlier_process_created(
    repository: Repository,
) -> None:
    await repository.ensure_indexes(TYPES)
    await repository.insert(UNRESTRICTED, first_version("Location", "l1"), {})
    await repository.db["Location"].drop_index("ref_id")  # as if a release had added this index
    restarted = Repository(repository.client, repository.db.name)
    await restarted.ensure_indexes(TYPES)
    assert "ref_id" in await index_names(restarted, "Location")
    assert await restarted.present_types(TYPES) == ["Location"]
