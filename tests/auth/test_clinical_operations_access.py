"""The clinical operations and derived writes under SMART scopes: a token for patient A learns
nothing of patient B through $progress, $gas-tscore or $extract, and the server's own derivations
still run for what A may write."""

from __future__ import annotations

from decimal import Decimal

from fhirgoal.clinical.resources import gas_goal, gas_rating, rating_scale_response
from fhirgoal.core.jsonio import dumps
from tests.auth.conftest import SmartServer

LEVELS = ["much less", "less", "expected", "more", "much more"]
JSON = {"Content-Type": "application/fhir+json"}


async def seed_client(smart: SmartServer, pid: str) -> None:
    await smart.seed({"resourceType": "Patient", "id": pid})
    await smart.seed(gas_goal(f"{pid}-g", pid, "Walk", LEVELS, start="2026-08-01"))
    await smart.seed(gas_rating(f"{pid}-r", pid, f"{pid}-g", -1, "2026-08-03", baseline=True,
                                performer=f"Patient/{pid}"))  # fmt: skip
    await smart.seed(rating_scale_response(f"{pid}-qr", "ors", pid, [Decimal(5)] * 4, "2026-08-03"))


async def test_operations_on_another_patient_answer_404(smart: SmartServer) -> None:
    await seed_client(smart, "pa")
    await seed_client(smart, "pb")
    async with await smart.as_scope("patient/*.cruds", patient="pa") as a:
        assert (await a.get("/Patient/pa/$progress")).status_code == 200
        assert (
            await a.get("/Patient/pa/$gas-tscore", params={"date": "2026-09-01"})
        ).status_code == 200
        for path in ("/Patient/{}/$progress", "/Patient/{}/$gas-tscore",
                     "/QuestionnaireResponse/{}-qr/$extract"):  # fmt: skip
            seen = await a.get(path.format("pb"))
            unknown = await a.get(path.format("nobody"))
            assert seen.status_code == unknown.status_code == 404, (path, seen.text)
            assert seen.text.replace("pb", "nobody") == unknown.text  # nothing tells them apart


async def test_storing_a_tscore_needs_write_scope(smart: SmartServer) -> None:
    await seed_client(smart, "pa")
    body = dumps({"resourceType": "Parameters", "parameter": [
        {"name": "date", "valueDate": "2026-09-01"}, {"name": "store", "valueBoolean": True}]})  # fmt: skip
    async with await smart.as_scope("patient/*.rs", patient="pa") as reader:
        response = await reader.post("/Patient/pa/$gas-tscore", content=body, headers=JSON)
        assert response.status_code == 403, response.text
    async with await smart.as_scope("patient/*.cruds", patient="pa") as writer:
        response = await writer.post("/Patient/pa/$gas-tscore", content=body, headers=JSON)
        assert response.status_code == 200, response.text


async def test_a_patients_own_response_is_extracted_under_a_patient_token(
    smart: SmartServer,
) -> None:
    await smart.seed({"resourceType": "Patient", "id": "pa"})
    scope = "patient/QuestionnaireResponse.cu patient/Observation.rs"
    async with await smart.as_scope(scope, patient="pa") as a:
        # A patient app creates (a PUT to a new id is not open to patient tokens).
        own = rating_scale_response("x", "ors", "pa", [Decimal(6)] * 4, "2026-08-10")
        del own["id"]
        stored = await a.post("/QuestionnaireResponse", content=dumps(own), headers=JSON)
        assert stored.status_code == 201, stored.text
        source = f"QuestionnaireResponse/{stored.json()['id']}"
        derived = (await a.get("/Observation", params={"derived-from": source})).json()
        assert derived["total"] == 1
        # ... but not a response about someone else.
        other = rating_scale_response("y", "ors", "pb", [Decimal(6)] * 4, "2026-08-10")
        del other["id"]
        refused = await a.post("/QuestionnaireResponse", content=dumps(other), headers=JSON)
        assert refused.status_code == 403, refused.text
