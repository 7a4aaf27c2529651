"""`fhirgoal serve` as a real process (its own process group, with the embedded database as its
child), for tests about crashes, restarts, slow clients and a dying database."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from tests.helpers import wait_until_blocking


@dataclass
class ServeProcess:
    data_dir: Path
    port: int
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    # False: no --port/--data-dir options, so they must come from the environment (`env`);
    # `port` and `data_dir` are then only where the test expects the server and its log.
    flags: bool = True
    options: list[str] = field(default_factory=list)  # more options after `serve`
    # The program before `serve`; default: this interpreter's `-m fhirgoal.cli`.
    program: list[str] | None = None
    cwd: Path | None = None
    host: str = "127.0.0.1"  # where /readyz is reached

    @property
    def origin(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def base(self) -> str:
        return f"{self.origin}/fhir"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "serve.log"

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def database_pid(self) -> int:
        return int(json.loads((self.data_dir / "embedded.json").read_text())["pid"])

    def start(self, wait: float = 90.0) -> ServeProcess:
        env = {k: v for k, v in os.environ.items() if k != "MONGODB_URI"}
        env.setdefault("FHIRGOAL_AUTH", "off")
        env.update(self.env)
        command = [
            *(self.program or [sys.executable, "-m", "fhirgoal.cli"]),
            "serve",
            *self.options,
        ]
        if self.flags:
            command += ["--port", str(self.port), "--data-dir", str(self.data_dir)]
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self.process = subprocess.Popen(
                command, env=env, cwd=self.cwd, stdout=log, stderr=log, start_new_session=True
            )
        process = self.process

        def started() -> bool:
            if process.poll() is not None:
                raise AssertionError("serve exited")
            return ready(self)

        try:
            wait_until_blocking(started, within=wait, what="serve answered /readyz")
        except AssertionError as failure:
            self.kill_group()
            raise AssertionError(f"{failure}: {self.log_text()[-3000:]}") from None
        return self

    def kill_server(self) -> None:
        """SIGKILL of the server process alone (its database child follows it: PDEATHSIG)."""
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait()

    def kill_group(self) -> None:
        """SIGKILL of the server and its database at once."""
        if self.process is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait()

    def stop(self, timeout: float = 30.0) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill_group()
            raise


def ready(serve: ServeProcess) -> bool:
    """Whether the server answers /readyz with 200 (its database reachable)."""
    try:
        return httpx.get(f"{serve.origin}/readyz", timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def wait_until_gone(pid: int, timeout: float = 15.0) -> None:
    """Until `pid` has exited (and been reaped: a zombie still has a /proc entry)."""
    gone = Path(f"/proc/{pid}")
    wait_until_blocking(lambda: not gone.exists(), within=timeout, what=f"process {pid} gone")
