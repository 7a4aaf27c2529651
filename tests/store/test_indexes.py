"""Start-up indexes (store/repository.py ensure_indexes) on the real database."""

from __future__ import annotations

import uuid

from pymongo import ASCENDING

from fhirgoal.store.mongo import connect
from fhirgoal.store.repository import Repository


async def test_one_index_serves_every_search_key_and_old_per_field_indexes_go(
    mongo_uri: str,
) -> None:
    db_name = f"test_{uuid.uuid4().hex[:12]}"
    client = connect(mongo_uri)
    try:
        # a database from before: one index per key field
        for name in ("tok", "ref", "miss"):
            await client[db_name]["Goal"].create_index([(name, ASCENDING)], name=name)
        repo = Repository(client, db_name)
        await repo.ensure_indexes(["Goal", "Flag"], pending_types=frozenset({"Flag"}))
        dropped = await repo.drop_unused_indexes(["Goal", "Flag"], frozenset({"Flag"}))
        assert sorted(dropped) == ["Goal.miss", "Goal.ref", "Goal.tok"]
        goal = {spec["name"] async for spec in await client[db_name]["Goal"].list_indexes()}
        flag = {spec["name"] async for spec in await client[db_name]["Flag"].list_indexes()}
        assert goal == {"_id_", "lastUpdated", "searchKeys"}
        assert flag == {"_id_", "lastUpdated", "searchKeys", "pend"}
    finally:
        await client.drop_database(db_name)
        await client.close()
