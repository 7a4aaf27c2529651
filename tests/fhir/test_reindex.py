"""Reindexing recomputes the search index of stored resources, by itself when the stored index
format is not the current one; the CLI refuses unknown types."""

from __future__ import annotations

import uuid

from typer.testing import CliRunner

from fhirgoal.bootstrap import build_service
from fhirgoal.cli import app as cli
from fhirgoal.config import Settings
from fhirgoal.core.access import UNRESTRICTED
from fhirgoal.fhir.reindex import INDEX_FORMAT, reindex, upgrade_index
from fhirgoal.store.mongo import connect
from fhirgoal.store.repository import META_COLLECTION


async def test_reindex_restores_a_lost_index_and_skips_deleted(mongo_uri: str) -> None:
    settings = Settings(mongodb_uri=mongo_uri, db=f"reindex_{uuid.uuid4().hex[:10]}", auth="off")
    client = connect(mongo_uri)
    try:
        service = await build_service(settings, client)
        patient = {
            "resourceType": "Patient",
            "id": "p1",
            "gender": "female",
            "name": [{"family": "Ng"}],
        }
        await service.update(UNRESTRICTED, "Patient", "p1", patient, None)
        await service.update(UNRESTRICTED, "Patient", "p2", {**patient, "id": "p2"}, None)
        await service.delete(UNRESTRICTED, "Patient", "p2")
        # simulate an index built by an older release: nothing searchable
        await client[settings.db]["Patient"].update_many({}, {"$set": {"tok": [], "str": []}})
        page = await service.search(
            UNRESTRICTED, "Patient", [("gender", "female")], "http://x/fhir"
        )
        assert page.total == 0
        assert await reindex(service, ["Patient"]) == 1
        page = await service.search(UNRESTRICTED, "Patient", [("family", "ng")], "http://x/fhir")
        assert [v.id for v in page.matches] == ["p1"]
    finally:
        await client.drop_database(settings.db)
        await client.close()


def test_reindex_cli_rejects_unknown_types(mongo_uri: str, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setenv("MONGODB_URI", mongo_uri)
    monkeypatch.setenv("FHIRGOAL_DB", f"reindex_{uuid.uuid4().hex[:10]}")
    result = CliRunner().invoke(cli, ["reindex", "--type", "Spaceship"])
    assert result.exit_code == 2
    assert "Spaceship" in result.output


async def test_a_database_in_an_older_index_format_is_reindexed_at_start_up(
    mongo_uri: str,
) -> None:
    settings = Settings(mongodb_uri=mongo_uri, db=f"reindex_{uuid.uuid4().hex[:10]}", auth="off")
    client = connect(mongo_uri)
    db = client[settings.db]
    try:
        service = await build_service(settings, client)
        assert await service.repo.index_format() == INDEX_FORMAT  # a new database records it
        coding = {"system": "http://loinc.org", "code": "29463-7"}
        observation = {
            "resourceType": "Observation", "id": "o1", "status": "final",
            "code": {"coding": [coding]}, "subject": {"reference": "Patient/p1"},
            "valueQuantity": {"value": 72.5, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"},
        }  # fmt: skip
        await service.update(UNRESTRICTED, "Patient", "p1", {"resourceType": "Patient", "id": "p1", "name": [{"family": "Ng"}]}, None)  # fmt: skip
        await service.update(UNRESTRICTED, "Observation", "o1", observation, None)
        # what format 1 left behind: every key in the indexed arrays, no copies, `miss` indexed,
        # no recorded format
        await db["Observation"].update_many(
            {},
            {
                "$set": {"tok": ["code#29463-7", "code|http://loinc.org|29463-7"]},
                "$unset": {"tokx": "", "numx": "", "strx": "", "refx": ""},
            },
        )
        await db["Patient"].update_many({}, {"$unset": {"strx": ""}})
        await db["Observation"].create_index("miss", name="miss")
        await db["Observation"].create_index("ref", name="ref")  # format 2's single-field index
        await db[META_COLLECTION].delete_many({})
        queries = [
            ("code", "http://loinc.org|29463-7"),
            ("value-quantity", "72.5|http://unitsofmeasure.org|kg"),
            ("subject:missing", "false"),
        ]
        stale = await service.search(UNRESTRICTED, "Observation", queries, "http://x/fhir")
        assert stale.total == 0

        restarted = await build_service(settings, client)
        assert await restarted.repo.index_format() == INDEX_FORMAT
        found = await restarted.search(UNRESTRICTED, "Observation", queries, "http://x/fhir")
        assert [v.id for v in found.matches] == ["o1"]
        exact = [("family:exact", "Ng")]
        assert [v.id for v in (await restarted.search(UNRESTRICTED, "Patient", exact, "http://x/fhir")).matches] == ["p1"]  # fmt: skip
        indexes = [index["name"] async for index in await db["Observation"].list_indexes()]
        assert "miss" not in indexes and "ref" not in indexes and {"ref_id", "tok"} <= set(indexes)

        # a recorded older format is upgraded too; the current one is left alone
        await db["Observation"].update_many({}, {"$unset": {"tokx": ""}})
        await restarted.repo.set_index_format(INDEX_FORMAT - 1)
        again = await build_service(settings, client)
        assert [v.id for v in (await again.search(UNRESTRICTED, "Observation", queries[:1], "http://x/fhir")).matches] == ["o1"]  # fmt: skip
        assert await upgrade_index(again) == 0
    finally:
        await client.drop_database(settings.db)
        await client.close()
