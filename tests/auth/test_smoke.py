from __future__ import annotations

from tests.auth.conftest import SmartServer


async def test_a_request_without_a_token_gets_401_with_a_bearer_challenge(
    smart: SmartServer,
) -> None:
    response = await smart.http.get("/Patient")
    assert response.status_code == 401
    assert response.headers["www-authenticate"].startswith("Bearer")
    assert response.json()["resourceType"] == "OperationOutcome"


async def test_a_minted_system_token_reads_and_writes(smart: SmartServer) -> None:
    async with await smart.as_scope("system/*.cruds") as client:
        created = await client.post(
            "/Patient", json={"resourceType": "Patient", "gender": "female"}
        )
        assert created.status_code == 201, created.text
        rid = created.json()["id"]
        assert (await client.get(f"/Patient/{rid}")).status_code == 200
