"""Reindexing recomputes the search index of stored resources; the CLI refuses unknown types."""

from __future__ import annotations

import uuid

from typer.testing import CliRunner

from fhirgoal.app import build_service
from fhirgoal.auth.context import UNRESTRICTED
from fhirgoal.cli import app as cli
from fhirgoal.config import Settings
from fhirgoal.fhir.reindex import reindex
from fhirgoal.store.mongo import connect


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
