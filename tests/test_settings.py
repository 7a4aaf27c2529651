"""Settings reach the commands: FHIRGOAL_HOST/PORT/DATA_DIR drive `fhirgoal serve` (a real
process) unless an option is given, and FHIRGOAL_LOG_LEVEL configures logging for every command."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import httpx
import pytest
import structlog

from fhirgoal import cli
from fhirgoal.logs import configure_logging
from fhirgoal.store.embedded import free_port
from tests.serve_process import ServeProcess

embedded_only = pytest.mark.skipif(
    bool(os.environ.get("MONGODB_URI")), reason="exercises the embedded database's data dir"
)


def refused(url: str) -> bool:
    try:
        httpx.get(url, timeout=2)
    except httpx.ConnectError:
        return True
    return False


@embedded_only
def test_serve_takes_host_port_and_data_dir_from_the_environment(tmp_path: Path) -> None:
    port, data_dir, elsewhere = free_port(), tmp_path / "env-data", tmp_path / "cwd"
    elsewhere.mkdir()
    # 127.0.0.2 is loopback too (auth off needs loopback) but not the 127.0.0.1 default
    env = {"FHIRGOAL_HOST": "127.0.0.2", "FHIRGOAL_PORT": str(port)}
    env["FHIRGOAL_DATA_DIR"] = str(data_dir)
    server = ServeProcess(data_dir, port, env=env, flags=False, cwd=elsewhere, host="127.0.0.2")
    server.start()
    try:
        assert httpx.get(f"{server.base}/metadata", timeout=10).status_code == 200
        assert refused(f"http://127.0.0.1:{port}/readyz")  # not the default host
        assert (data_dir / "embedded.json").is_file()  # the database runs on FHIRGOAL_DATA_DIR
        assert not (elsewhere / "fhirgoal-data").exists()  # not the default ./fhirgoal-data
    finally:
        assert server.stop() == 0


@embedded_only
def test_serve_options_override_the_environment(tmp_path: Path) -> None:
    env_port, port = free_port(), free_port()
    env_data, data_dir = tmp_path / "env-data", tmp_path / "option-data"
    env = {
        "FHIRGOAL_HOST": "127.0.0.2",
        "FHIRGOAL_PORT": str(env_port),
        "FHIRGOAL_DATA_DIR": str(env_data),
    }
    server = ServeProcess(
        data_dir, port, env=env, options=["--host", "127.0.0.3"], host="127.0.0.3"
    )
    server.start()  # with --port and --data-dir
    try:
        assert httpx.get(f"{server.base}/metadata", timeout=10).status_code == 200
        assert refused(f"http://127.0.0.2:{env_port}/readyz")
        assert refused(f"http://127.0.0.2:{port}/readyz")
        assert (data_dir / "embedded.json").is_file()
        assert not env_data.exists()
    finally:
        assert server.stop() == 0


def test_log_level_configures_structlog_for_the_cli_commands(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("FHIRGOAL_LOG_LEVEL", "WARNING")
    try:
        cli._settings()  # every command builds its settings here
        wrapper = structlog.get_config()["wrapper_class"]
        assert wrapper is structlog.make_filtering_bound_logger(logging.WARNING)
    finally:
        configure_logging("INFO")
