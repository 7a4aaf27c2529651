"""Signing keys encrypted at rest (issue 12): no private key material in the database, keys stored
in the clear by older versions sealed at start-up, a key file (0600) when no key is configured,
and a wrong key a clear start-up error rather than a 500 per request."""

from __future__ import annotations

import base64
import stat
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import RSAKey

from fhirgoal.app import create_app
from fhirgoal.auth.keys import KEY_FILE, KeyEncryptionError, KeyRing, encryption_key
from fhirgoal.config import Settings
from fhirgoal.store.mongo import connect
from tests.auth.conftest import TEST_KEK, run_smart

PRIVATE_PARAMETERS = {"d", "p", "q", "dp", "dq", "qi"}


def private_material(value: Any) -> bool:
    if isinstance(value, dict):
        return bool(PRIVATE_PARAMETERS & value.keys()) or any(map(private_material, value.values()))
    if isinstance(value, list):
        return any(map(private_material, value))
    return False


async def test_no_private_key_is_stored_in_the_clear(mongo_uri: str) -> None:
    async with run_smart(mongo_uri) as smart:
        docs = [doc async for doc in smart.app.state.smart.db["auth_keys"].find()]
        assert docs and not any(private_material(doc) for doc in docs)
        assert all(doc["sealed"]["alg"] == "A256GCM" for doc in docs)
        async with await smart.as_scope("system/*.rs") as client:  # and tokens still work
            assert (await client.get("/Patient")).status_code == 200


async def test_plaintext_keys_are_sealed_at_start_up(mongo_uri: str) -> None:
    db_name = f"auth_{uuid.uuid4().hex[:12]}"
    legacy = RSAKey.generate_key(2048, parameters={"alg": "RS384", "use": "sig"}, private=True, auto_kid=True)  # fmt: skip
    mongo = connect(mongo_uri)
    await mongo[db_name]["auth_keys"].insert_one(
        {"_id": legacy.kid, "alg": "RS384", "jwk": legacy.as_dict(private=True),
         "created": datetime.now(UTC), "retired_at": None, "verify_until": None}
    )  # fmt: skip
    await mongo.close()
    async with run_smart(mongo_uri, db=db_name) as smart:
        [doc] = [d async for d in smart.app.state.smart.db["auth_keys"].find()]
        assert "jwk" not in doc and not private_material(doc) and doc["_id"] == legacy.kid
        token = await smart.mint("system/*.rs")
        assert token  # signed with the migrated key
        async with smart.client(token) as client:
            assert (await client.get("/Patient")).status_code == 200
        jwks = (await smart.http.get(f"{smart.origin}/auth/jwks")).json()
        assert [k["kid"] for k in jwks["keys"]] == [legacy.kid]


async def test_a_wrong_key_encryption_key_stops_the_start_up(mongo_uri: str) -> None:
    db_name = f"auth_{uuid.uuid4().hex[:12]}"
    mongo = connect(mongo_uri)
    await KeyRing(mongo[db_name], encryption_key(TEST_KEK, Path("unused"))).ensure()
    await mongo.close()
    other = base64.b64encode(b"another key-encryption key 32 b!").decode()
    settings = Settings(mongodb_uri=mongo_uri, db=db_name, auth="smart", key_encryption_key=other)
    app = create_app(settings)
    try:
        with pytest.raises(KeyEncryptionError, match="FHIRGOAL_KEY_ENCRYPTION_KEY"):
            async with app.router.lifespan_context(app):
                pass
    finally:
        mongo = connect(mongo_uri)
        await mongo.drop_database(db_name)
        await mongo.close()


async def test_a_malformed_key_encryption_key_is_a_clear_error(mongo_uri: str) -> None:
    settings = Settings(mongodb_uri=mongo_uri, db="unused", auth="smart", key_encryption_key="c2hvcnQ=")  # fmt: skip
    app = create_app(settings)
    with pytest.raises(KeyEncryptionError, match="32 bytes"):
        async with app.router.lifespan_context(app):
            pass


async def test_without_a_configured_key_a_0600_key_file_is_made(
    mongo_uri: str, tmp_path: Path
) -> None:
    async with run_smart(mongo_uri, key_encryption_key=None, data_dir=tmp_path) as smart:
        path = tmp_path / KEY_FILE
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert len(base64.urlsafe_b64decode(path.read_text().strip())) == 32
        assert path.read_text().strip() != TEST_KEK
        async with await smart.as_scope("system/*.rs") as client:
            assert (await client.get("/Patient")).status_code == 200
