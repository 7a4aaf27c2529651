"""`fhirgoal client|user|key|launch` reach the server's database (MONGODB_URI, or the embedded one
on --data-dir, running or not) and leave what the authorization server reads."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from pymongo import MongoClient
from typer.testing import CliRunner

from fhirgoal.cli import app
from tests.auth import jose


def run(env: dict[str, str], *args: str, input: str | None = None) -> str:
    result = CliRunner().invoke(app, list(args), env=env, input=input)
    assert result.exit_code == 0, result.output
    return result.output


def test_client_register_list_and_revoke(db_env: dict[str, str], tmp_path: Path) -> None:
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps(jose.public_jwks(jose.ec_key())))
    run(
        db_env,
        "client",
        "register",
        "--client-id",
        "etl",
        "--jwks-file",
        str(jwks),
        "--scopes",
        "system/*.rs",
    )
    run(db_env, "client", "register", "--client-id", "web", "--redirect-uri", "https://app.example/cb", "--scopes", "launch patient/*.rs")  # fmt: skip
    listing = run(db_env, "client", "list")
    assert "etl\tconfidential\tactive\tsystem/*.rs" in listing
    assert "web\tpublic\tactive" in listing
    run(db_env, "client", "revoke", "etl")
    assert "etl\tconfidential\trevoked" in run(db_env, "client", "list")
    with MongoClient(db_env["MONGODB_URI"]) as client:
        doc = client[db_env["FHIRGOAL_DB"]]["auth_clients"].find_one({"_id": "etl"})
    assert doc is not None and doc["jwks"]["keys"][0]["kty"] == "EC" and doc["revoked"] is True


def test_client_register_refuses_bad_input(db_env: dict[str, str]) -> None:
    runner = CliRunner()
    for args in (
        ["client", "register", "--client-id", "x", "--scopes", "system/*.rs"],
        [
            "client",
            "register",
            "--client-id",
            "x",
            "--scopes",
            "system/Observation.sr",
            "--jwks-url",
            "https://k",
        ],
    ):
        result = runner.invoke(app, args, env=db_env)
        assert result.exit_code == 2, result.output


def test_user_add_hashes_the_password(db_env: dict[str, str]) -> None:
    run(db_env, "user", "add", "--username", "lee", "--practitioner", "Practitioner/doc", input="a-long-secret\na-long-secret\n")  # fmt: skip
    assert "lee\tPractitioner/doc\tactive" in run(db_env, "user", "list")
    with MongoClient(db_env["MONGODB_URI"]) as client:
        doc = client[db_env["FHIRGOAL_DB"]]["auth_users"].find_one({"_id": "lee"})
    assert doc is not None and doc["password"].startswith("$argon2id$")
    assert "a-long-secret" not in json.dumps(doc, default=str)
    run(db_env, "user", "revoke", "lee")
    assert "lee\tPractitioner/doc\trevoked" in run(db_env, "user", "list")


def test_user_add_for_a_client_on_their_own_record(db_env: dict[str, str]) -> None:
    from fhirgoal.auth.users import DEFAULT_PATIENT_SCOPES

    run(db_env, "user", "add", "--username", "alex", "--patient", "Patient/pa", input="a-long-secret\na-long-secret\n")  # fmt: skip
    assert "alex\tPatient/pa\tactive" in run(db_env, "user", "list")
    with MongoClient(db_env["MONGODB_URI"]) as client:
        doc = client[db_env["FHIRGOAL_DB"]]["auth_users"].find_one({"_id": "alex"})
    assert doc is not None and doc["scopes"] == DEFAULT_PATIENT_SCOPES  # patient/ scopes only
    for wrong in (["--patient", "Practitioner/x"], ["--patient", "Patient/pa", "--practitioner",
                  "Practitioner/doc"], []):  # fmt: skip
        result = CliRunner().invoke(
            app, ["user", "add", "--username", "x", *wrong], env=db_env,
            input="a-long-secret\na-long-secret\n",
        )  # fmt: skip
        assert result.exit_code != 0, result.output


def test_key_rotate_and_launch(db_env: dict[str, str]) -> None:
    first = run(db_env, "key", "rotate").split()[-1]
    second = run(db_env, "key", "rotate").split()[-1]
    assert first != second
    launch = run(db_env, "launch", "--patient", "pa").strip()
    with MongoClient(db_env["MONGODB_URI"]) as client:
        db = client[db_env["FHIRGOAL_DB"]]
        keys = {d["_id"]: d for d in db["auth_keys"].find()}
        assert keys[first]["retired_at"] is not None and keys[second]["retired_at"] is None
        assert db["auth_launch"].find_one({"_id": launch})["patient"] == "pa"


@pytest.mark.skipif(bool(os.environ.get("MONGODB_URI")), reason="exercises the embedded database")
def test_admin_commands_start_the_embedded_database_when_it_is_not_running(tmp_path: Path) -> None:
    env = {"MONGODB_URI": "", "FHIRGOAL_DB": "fhirgoal"}
    data_dir = str(tmp_path / "data")
    run(env, "client", "register", "--client-id", "web", "--redirect-uri", "https://a/cb", "--scopes", "patient/*.rs", "--data-dir", data_dir)  # fmt: skip
    assert "web\tpublic\tactive" in run(env, "client", "list", "--data-dir", data_dir)
    assert not (tmp_path / "data" / "embedded.json").exists()  # stopped again after the command
