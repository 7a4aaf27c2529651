"""The app as a confidential client (SMART App Launch 2.2, client-authentication.html): with
FHIRGOAL_APP_PRIVATE_KEY_FILE it authenticates by private_key_jwt and publishes its public key at
/app/jwks; with FHIRGOAL_APP_CLIENT_SECRET by client_secret_basic. Launched in a real browser
against fhirgoal's own authorization server, where the app is registered at start-up as the
confidential client its credentials make it (the keys by `jwks_url`, the secret by its hash)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from joserfc.jwk import ECKey, RSAKey

from fhirgoal.config import Settings
from fhirgoal.webapp.client_auth import CredentialsError, load_credentials
from tests.auth.conftest import SmartServer, run_smart
from tests.webapp.conftest import open_patient, with_demo

SECRET = "a-secret-the-ehr-administrator-gave-the-app-0123456789"


@pytest.fixture(params=["private_key_jwt", "client_secret_basic"])
async def confidential(
    request: pytest.FixtureRequest, mongo_uri: str, tmp_path: Path
) -> AsyncIterator[tuple[str, SmartServer]]:
    if request.param == "private_key_jwt":
        key_file = tmp_path / "app-key.pem"
        key_file.write_bytes(ECKey.generate_key("P-384").as_pem(private=True))
        overrides: dict[str, Any] = {"app_private_key_file": key_file}
    else:
        overrides = {"app_client_secret": SECRET}
    async with run_smart(mongo_uri, **overrides) as server:
        yield request.param, await with_demo(server)


async def test_the_app_signs_in_as_a_confidential_client(
    confidential: tuple[str, SmartServer], page: Any
) -> None:
    method, server = confidential
    registered = await server.app.state.smart.db["auth_clients"].find_one({"_id": "fhirgoal-app"})
    published = (await server.http.get(f"{server.origin}/app/jwks")).json()
    if method == "private_key_jwt":
        assert registered["jwks_url"] == f"{server.origin}/app/jwks"
        [key] = published["keys"]
        assert key["kty"] == "EC" and key["alg"] == "ES384" and "d" not in key
    else:
        assert registered["secret_hash"] and SECRET not in str(registered)
        assert published == {"keys": []}

    await open_patient(page, server, "demo-blair")  # EHR launch, sign-in, consent, overview
    assert "Blair" in await page.locator(".patient-banner").inner_text()
    used = await server.app.state.smart.db["auth_refresh"].count_documents(
        {"client_id": "fhirgoal-app"}
    )
    assert used == 1

    # the registration is confidential: the public way in (client_id alone) is shut
    form = {"grant_type": "refresh_token", "refresh_token": "x", "client_id": "fhirgoal-app"}
    refused = await server.http.post(f"{server.origin}/auth/token", data=form)
    assert refused.status_code == 401
    assert method in refused.json()["error_description"]


def test_credentials_from_settings(tmp_path: Path) -> None:
    rsa = tmp_path / "rsa.json"
    rsa.write_text(json.dumps(RSAKey.generate_key(2048, auto_kid=True).as_dict(private=True)))
    loaded = load_credentials(Settings(app_private_key_file=rsa))
    assert loaded.method == "private_key_jwt" and loaded.algorithm == "RS384"
    form, auth = loaded.authenticate({"grant_type": "refresh_token"}, "https://as.example/token")
    assert auth is None and form["client_assertion"].count(".") == 2
    assert "d" not in loaded.public_jwks()["keys"][0]

    secret = load_credentials(Settings(app_client_secret="s:e c/r"))
    form, auth = secret.authenticate({"grant_type": "refresh_token"}, "https://as.example/token")
    assert "client_id" not in form and auth is not None  # Basic, one method per request

    assert load_credentials(Settings()).method == "none"

    p256 = tmp_path / "p256.pem"
    p256.write_bytes(ECKey.generate_key("P-256").as_pem(private=True))
    public = tmp_path / "public.json"
    public.write_text(json.dumps({"keys": [RSAKey.generate_key(2048).as_dict(private=False)]}))
    for wrong in (
        Settings(app_private_key_file=p256),
        Settings(app_private_key_file=public),
        Settings(app_private_key_file=tmp_path / "missing.pem"),
        Settings(app_private_key_file=rsa, app_client_secret="both"),
    ):
        with pytest.raises(CredentialsError):
            load_credentials(wrong)
