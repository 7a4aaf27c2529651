"""The embedded default database: SecantusDB (PyPI `secantusdb`) run as a separate process.

SecantusDB speaks the MongoDB wire protocol over TCP, so the server and the tests talk to it exactly
as they would to MongoDB. Its data lives in `<data-dir>/db`; a state file `<data-dir>/embedded.json`
records the running process so that a second command (an admin CLI, a restart after a crash) finds
it instead of fighting over the WiredTiger lock. The child is tied to its parent with
PR_SET_PDEATHSIG on Linux: if the server is killed, the database shuts down cleanly rather than
lingering.

It runs `--standalone`: by default SecantusDB presents itself as a one-member replica set and writes
an oplog entry (a BSON copy of the document) for every write, which only change streams and
point-in-time restore read; fhirgoal uses neither, and a standalone server skips the oplog
(measured: 0.15-0.45 ms less database CPU per insert, 15-20% of an indexed insert).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from pymongo import MongoClient
from pymongo.errors import PyMongoError

STATE_FILE = "embedded.json"
_PR_SET_PDEATHSIG = 1


class EmbeddedUnavailable(RuntimeError):
    """The embedded database cannot be started (extra not installed, port or data dir problem)."""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _die_with_parent() -> None:  # runs in the child between fork and exec
    with contextlib.suppress(OSError, AttributeError):
        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _answers(uri: str, timeout_ms: int = 500) -> bool:
    client: MongoClient[dict[str, object]] = MongoClient(
        uri, serverSelectionTimeoutMS=timeout_ms, connectTimeoutMS=timeout_ms
    )
    try:
        client.admin.command("ping")
        return True
    except PyMongoError:
        return False
    finally:
        client.close()


def uri_for(port: int) -> str:
    """The embedded server's URI. Retryable writes are off: they guard against a replica-set
    election or a dropped connection between a write and its acknowledgement, neither of which a
    single local process has, and SecantusDB keeps a record of every retryable write that it
    prunes with a scan of up to 10,000 records on each write (0.3 of its CPU per insert,
    measured, and growing into a sort once the cap is reached). Retryable reads are off for the
    first of those reasons, which lets a read by id go as one `find` command rather than through a
    retryable cursor (store/batching.py)."""
    return f"mongodb://127.0.0.1:{port}/?directConnection=true&retryWrites=false&retryReads=false"


class EmbeddedDatabase:
    """Start (or find) the SecantusDB process serving `data_dir`."""

    def __init__(self, data_dir: Path, port: int | None = None, startup_timeout: float = 60.0):
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.uri: str | None = None

    @property
    def state_path(self) -> Path:
        return self.data_dir / STATE_FILE

    def _running_instance(self) -> str | None:
        try:
            state = json.loads(self.state_path.read_text())
        except (OSError, ValueError):
            return None
        uri = uri_for(int(state["port"]))
        if _pid_alive(int(state["pid"])) and _answers(uri):
            return uri
        return None

    def start(self) -> str:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        existing = self._running_instance()
        if existing:
            self.uri = existing
            return existing
        try:
            import secantus  # noqa: F401
        except ImportError:
            raise EmbeddedUnavailable(
                "the embedded database is not installed: pip install 'fhirgoal[embedded]', "
                "or set MONGODB_URI to a MongoDB server"
            ) from None
        port = self.port or free_port()
        log = open(self.data_dir / "embedded.log", "ab")  # noqa: SIM115 (owned by the child)
        command = [
            sys.executable, "-m", "secantus",
            "--host", "127.0.0.1", "--port", str(port),
            "--storage-path", str(self.data_dir / "db"),
            "--log-level", "WARNING",
            "--standalone",
        ]  # fmt: skip
        self.process = subprocess.Popen(
            command, stdout=log, stderr=log, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent
        )
        log.close()
        uri = uri_for(port)
        deadline = time.monotonic() + self.startup_timeout
        while not _answers(uri):
            if self.process.poll() is not None:
                raise EmbeddedUnavailable(
                    f"the embedded database exited with {self.process.returncode}; "
                    f"see {self.data_dir / 'embedded.log'}"
                )
            if time.monotonic() > deadline:
                self.stop()
                raise EmbeddedUnavailable("the embedded database did not start in time")
            time.sleep(0.1)
        self.state_path.write_text(json.dumps({"pid": self.process.pid, "port": port}))
        self.uri = uri
        return uri

    def stop(self) -> None:
        """Stop the process this object started (a found instance belongs to someone else)."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        with contextlib.suppress(OSError):
            self.state_path.unlink()
        self.process = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
