"""Derived writes a failure left pending are finished by a running server, not only at start-up."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import httpx

from fhirgoal.clinical.resources import rating_scale_response
from fhirgoal.config import Settings
from fhirgoal.core.jsonio import dumps
from fhirgoal.store.mongo import connect
from tests.conftest import start_server


async def test_a_running_server_finishes_a_response_whose_extraction_was_interrupted(
    mongo_uri: str,
) -> None:
    settings = Settings(mongodb_uri=mongo_uri, db=f"test_{uuid.uuid4().hex[:12]}", auth="off",
                        pending_sweep_seconds=0.3)  # fmt: skip
    server, task, port = await start_server(settings)
    mongo = connect(mongo_uri)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}/fhir", timeout=30) as fhir:
            response = rating_scale_response("qr1", "ors", "p1", [Decimal(5)] * 4, "2026-09-01")
            stored = await fhir.put("/QuestionnaireResponse/qr1", content=dumps(response),
                                    headers={"Content-Type": "application/fhir+json"})  # fmt: skip
            assert stored.status_code == 201
            # Simulate a failure between storing the response and deriving its Observation: the
            # response keeps its pending mark (written a while ago), the Observation is missing.
            db = mongo[settings.db]
            await db["Observation"].delete_one({"_id": "qr1-ors-total"})
            earlier = datetime.now(UTC) - timedelta(seconds=5)
            await db["QuestionnaireResponse"].update_one(
                {"_id": "qr1"}, {"$set": {"pend": True, "lu": earlier}}
            )
            assert (await fhir.get("/Observation/qr1-ors-total")).status_code == 404
            for _ in range(50):
                await asyncio.sleep(0.1)
                if (await fhir.get("/Observation/qr1-ors-total")).status_code == 200:
                    break
            derived = await fhir.get("/Observation/qr1-ors-total")
            assert derived.status_code == 200
            assert derived.json()["valueQuantity"]["value"] == 20
            mark = await db["QuestionnaireResponse"].find_one({"_id": "qr1"}, {"pend": 1})
            assert mark is not None and "pend" not in mark
    finally:
        server.should_exit = True
        await task
        await mongo.drop_database(settings.db)
        await mongo.close()
