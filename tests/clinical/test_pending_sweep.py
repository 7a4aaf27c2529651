"""Derived writes a failure left pending are finished by a running server, not only at start-up."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from fhirgoal.clinical.resources import rating_scale_response
from fhirgoal.store.mongo import connect
from tests.conftest import fresh_settings, running
from tests.helpers import put, wait_until


async def test_a_running_server_finishes_a_response_whose_extraction_was_interrupted(
    mongo_uri: str,
) -> None:
    mongo = connect(mongo_uri)
    try:
        async with running(fresh_settings(mongo_uri, pending_sweep_seconds=0.3)) as fhir:
            response = rating_scale_response("qr1", "ors", "p1", [Decimal(5)] * 4, "2026-09-01")
            assert (await put(fhir.client, response)).status_code == 201
            # Simulate a failure between storing the response and deriving its Observation: the
            # response keeps its pending mark (written a while ago), the Observation is missing.
            db = mongo[fhir.settings.db]
            await db["Observation"].delete_one({"_id": "qr1-ors-total"})
            earlier = datetime.now(UTC) - timedelta(seconds=5)
            await db["QuestionnaireResponse"].update_one(
                {"_id": "qr1"}, {"$set": {"pend": True, "lu": earlier}}
            )
            assert (await fhir.client.get("/Observation/qr1-ors-total")).status_code == 404

            async def finished() -> bool:
                # the sweep derives the Observation, then clears the mark: wait for both
                found = await fhir.client.get("/Observation/qr1-ors-total")
                mark = await db["QuestionnaireResponse"].find_one({"_id": "qr1"}, {"pend": 1})
                return found.status_code == 200 and mark is not None and "pend" not in mark

            await wait_until(finished, within=5, what="the sweep derived the Observation")
            derived = await fhir.client.get("/Observation/qr1-ors-total")
            assert derived.status_code == 200
            assert derived.json()["valueQuantity"]["value"] == 20
    finally:
        await mongo.close()
