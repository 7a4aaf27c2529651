"""A unit of work reads its own writes and its earlier reads without asking the database again
(store/units.py `unit_documents`), and what it answers is what the database holds for it: after
an insert, a replace, a failed replace, a deletion and a batch insert (real database)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from typing import Any

import pytest
from pymongo import AsyncMongoClient, monitoring

from fhirgoal.core.access import UNRESTRICTED
from fhirgoal.fhir.instants import now
from fhirgoal.store.mongo import CODEC_OPTIONS
from fhirgoal.store.repository import Repository, Version
from fhirgoal.store.units import current_session, run_unit, unit_documents


class Finds(monitoring.CommandListener):
    def __init__(self) -> None:
        self.count = 0

    def started(self, event: monitoring.CommandStartedEvent) -> None:
        if event.command_name == "find":
            self.count += 1

    def succeeded(self, event: monitoring.CommandSucceededEvent) -> None: ...

    def failed(self, event: monitoring.CommandFailedEvent) -> None: ...


@pytest.fixture
async def repo(mongo_uri: str) -> AsyncIterator[tuple[Repository, Finds]]:
    finds = Finds()
    client: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(
        mongo_uri, tz_aware=True, type_registry=CODEC_OPTIONS.type_registry,
        event_listeners=[finds],
    )  # fmt: skip
    repository = Repository(client, f"test_{uuid.uuid4().hex[:12]}")
    await repository.ensure_indexes(["Patient"])
    try:
        yield repository, finds
    finally:
        await client.drop_database(repository.db.name)
        await client.close()


def version(rid: str, vid: int, family: str | None) -> Version:
    moment = now() + timedelta(milliseconds=vid)
    if family is None:
        return Version("Patient", rid, vid, moment, "DELETE", None)
    text = f'{{"resourceType":"Patient","id":"{rid}","name":[{{"family":"{family}"}}]}}'
    return Version("Patient", rid, vid, moment, "PUT", text)


async def in_unit(repo: Repository, work: Callable[[], Awaitable[Any]]) -> Any:
    return await run_unit(repo.client, repo.db, work, attempts=1)


def family(found: Version | None) -> str | None:
    if found is None or found.resource is None:
        return None
    return str(found.resource["name"][0]["family"])


async def test_a_unit_reads_its_own_writes_without_asking_again(
    repo: tuple[Repository, Finds],
) -> None:
    repository, finds = repo
    await repository.insert(UNRESTRICTED, version("a", 1, "Before"), {})

    async def work() -> list[str | None]:
        seen = [family(await repository.current(UNRESTRICTED, "Patient", "a"))]
        asked = finds.count
        seen.append(family(await repository.current(UNRESTRICTED, "Patient", "a")))
        assert finds.count == asked  # read once
        current = await repository.current(UNRESTRICTED, "Patient", "a")
        assert current is not None
        assert await repository.replace(UNRESTRICTED, current, version("a", 2, "After"), {})
        seen.append(family(await repository.current(UNRESTRICTED, "Patient", "a")))
        # a replace that lost (the version it expected is gone) leaves the database to answer
        assert not await repository.replace(UNRESTRICTED, current, version("a", 3, "Lost"), {})
        seen.append(family(await repository.current(UNRESTRICTED, "Patient", "a")))
        assert finds.count == asked + 1
        await repository.insert(UNRESTRICTED, version("b", 1, "New"), {})
        assert await repository.current(UNRESTRICTED, "Patient", "c") is None
        await repository.insert_batch([(version("c", 1, "Batch"), {})])
        seen += [family(await repository.current(UNRESTRICTED, "Patient", r)) for r in "bc"]
        newest = await repository.current(UNRESTRICTED, "Patient", "a")
        assert newest is not None and newest.version == 2
        assert await repository.replace(UNRESTRICTED, newest, version("a", 3, None), {})
        gone = await repository.current(UNRESTRICTED, "Patient", "a")
        assert gone is not None and gone.deleted and gone.version == 3
        assert unit_documents() is not None and current_session() is not None
        return seen

    assert await in_unit(repository, work) == ["Before", "Before", "After", "After", "New", "Batch"]
    assert unit_documents() is None  # nothing outlives the unit
    for rid, expected in (("a", None), ("b", "New"), ("c", "Batch")):
        stored = await repository.current(UNRESTRICTED, "Patient", rid)
        assert stored is not None and family(stored) == expected
