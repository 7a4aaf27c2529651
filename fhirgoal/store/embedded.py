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

It runs with authentication (`--auth`, SCRAM-SHA-256): anyone on the machine can reach a loopback
port, and SecantusDB has no Unix-socket listener. The first start on a data dir provisions one
user with a random password, kept in `<data-dir>/embedded-credentials.json` (mode 0600): the
database is started once without `--auth` on a fresh loopback port for the `createUser`, stopped,
and started again with it (a window of about two seconds, once per data dir). A command that can
read the data dir can therefore reach the database, and nothing else on the machine can.

Supervision (issue 12): `supervise()` watches the child from a thread that waits on it, so a dead
database is reaped at once (never a zombie) and restarted on the same port, where the driver
finds it again by itself, after a pause that doubles with each recent death. More than `restarts`
deaths within `window` seconds and it gives up:
`on_give_up` is called (the CLI then stops the server, which exits non-zero so that its own
supervisor can act).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import structlog
from pymongo import MongoClient
from pymongo.errors import PyMongoError

from fhirgoal.core.errors import FhirgoalError

STATE_FILE = "embedded.json"
CREDENTIALS_FILE = "embedded-credentials.json"
# How long a database whose starter died may take to shut down before it is killed.
ORPHAN_GRACE_SECONDS = 10.0
log = structlog.get_logger(__name__)
_PR_SET_PDEATHSIG = 1


class EmbeddedUnavailable(FhirgoalError, RuntimeError):
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
    """Whether `pid` runs; a zombie (exited, not yet reaped by its parent) does not."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    with contextlib.suppress(OSError, IndexError):
        # /proc/<pid>/stat: "pid (comm) state ..."; comm may contain spaces, not ')'
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def _await_exit(pid: int, seconds: float) -> None:
    """Until `pid` (not our child) has exited; SIGKILL after `seconds`."""
    deadline = time.monotonic() + seconds
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + seconds
        time.sleep(0.05)


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


def uri_for(port: int, credentials: tuple[str, str] | None = None) -> str:
    """The embedded server's URI. Retryable writes are off: they guard against a replica-set
    election or a dropped connection between a write and its acknowledgement, neither of which a
    single local process has, and SecantusDB keeps a record of every retryable write that it
    prunes with a scan of up to 10,000 records on each write (0.3 of its CPU per insert,
    measured, and growing into a sort once the cap is reached). Retryable reads are off for the
    first of those reasons, which lets a read by id go as one `find` command rather than through a
    retryable cursor (store/batching.py)."""
    user = f"{credentials[0]}:{credentials[1]}@" if credentials else ""
    options = "directConnection=true&retryWrites=false&retryReads=false"
    if credentials:
        options += "&authSource=admin&authMechanism=SCRAM-SHA-256"
    return f"mongodb://{user}127.0.0.1:{port}/?{options}"


def redacted(uri: str) -> str:
    """`uri` without its password, for logs and messages."""
    if "@" not in uri:
        return uri
    scheme, rest = uri.split("://", 1)
    userinfo, host = rest.split("@", 1)
    return f"{scheme}://{userinfo.split(':', 1)[0]}:***@{host}"


class EmbeddedDatabase:
    """Start (or find) the SecantusDB process serving `data_dir`, and keep it running."""

    def __init__(self, data_dir: Path, port: int | None = None, startup_timeout: float = 60.0):
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.startup_timeout = startup_timeout
        self.process: subprocess.Popen[bytes] | None = None
        self.uri: str | None = None
        self.failed = False  # supervision gave up: the database kept dying
        self._stopping = threading.Event()
        self._lock = threading.Lock()  # the child is replaced by the watcher, stopped by stop()

    @property
    def state_path(self) -> Path:
        return self.data_dir / STATE_FILE

    @property
    def credentials_path(self) -> Path:
        return self.data_dir / CREDENTIALS_FILE

    def _credentials(self) -> tuple[str, str] | None:
        try:
            stored = json.loads(self.credentials_path.read_text())
            return str(stored["username"]), str(stored["password"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def _running_instance(self) -> str | None:
        """The URI of the database another live command started on this data dir, if any. One
        whose starter died (killed: the database got SIGTERM with it and is shutting down) is
        waited for, or killed, so that it cannot be found now and vanish a moment later."""
        try:
            state = json.loads(self.state_path.read_text())
            pid, port = int(state["pid"]), int(state["port"])
            owner = int(state.get("owner", 0))
        except (OSError, ValueError, KeyError, TypeError):
            return None
        if not _pid_alive(pid):
            return None
        if owner and not _pid_alive(owner):
            _await_exit(pid, ORPHAN_GRACE_SECONDS)
            return None
        uri = uri_for(port, self._credentials())
        return uri if _answers(uri) else None

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
        credentials = self._credentials() or self._provision()
        self.port = self.port or free_port()
        self._stopping.clear()
        self.uri = self._launch(self.port, credentials)
        return self.uri

    def _launch(self, port: int, credentials: tuple[str, str] | None, record: bool = True) -> str:
        """Start the child on `port` and wait until it answers; its URI. `record` writes the
        state file through which other commands find it."""
        log_file = open(self.data_dir / "embedded.log", "ab")  # noqa: SIM115 (owned by the child)
        command = [
            sys.executable, "-m", "secantus",
            "--host", "127.0.0.1", "--port", str(port),
            "--storage-path", str(self.data_dir / "db"),
            "--log-level", "WARNING",
            "--standalone",
        ]  # fmt: skip
        if credentials:
            command.append("--auth")
        process = subprocess.Popen(
            command,
            stdout=log_file,
            stderr=log_file,
            stdin=subprocess.DEVNULL,
            preexec_fn=_die_with_parent,
        )
        log_file.close()
        self.process = process
        uri = uri_for(port, credentials)
        deadline = time.monotonic() + self.startup_timeout
        while not _answers(uri):
            if process.poll() is not None:
                raise EmbeddedUnavailable(
                    f"the embedded database exited with {process.returncode}; "
                    f"see {self.data_dir / 'embedded.log'}"
                )
            if time.monotonic() > deadline:
                self._terminate(process)
                raise EmbeddedUnavailable("the embedded database did not start in time")
            time.sleep(0.1)
        if record:
            self.state_path.write_text(
                json.dumps({"pid": process.pid, "port": port, "owner": os.getpid()})
            )
        return uri

    def _provision(self) -> tuple[str, str]:
        """Create the database's one user (first start on this data dir); its credentials."""
        credentials = ("fhirgoal", secrets.token_urlsafe(32))
        uri = self._launch(free_port(), None, record=False)
        client: MongoClient[dict[str, object]] = MongoClient(uri, serverSelectionTimeoutMS=5000)
        try:
            users = client.admin.command("usersInfo", credentials[0]).get("users", [])
            if users:
                client.admin.command("dropUser", credentials[0])
            client.admin.command(
                "createUser",
                credentials[0],
                pwd=credentials[1],
                roles=[{"role": "root", "db": "admin"}],
            )
        finally:
            client.close()
            if self.process is not None:
                self._terminate(self.process)
                self.process = None
        descriptor = os.open(self.credentials_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as out:
            json.dump({"username": credentials[0], "password": credentials[1]}, out)
        os.chmod(self.credentials_path, 0o600)
        return credentials

    def supervise(
        self,
        restarts: int = 5,
        window: float = 300.0,
        on_give_up: Callable[[], None] | None = None,
        backoff: float = 0.5,
    ) -> None:
        """Restart the child whenever it dies (see the module docstring); a no-op for a found
        instance, which belongs to another command."""
        if self.process is None:
            return
        watcher = threading.Thread(
            target=self._watch,
            args=(restarts, window, on_give_up, backoff),
            name="embedded-database-watch",
            daemon=True,
        )
        watcher.start()

    def _watch(
        self,
        restarts: int,
        window: float,
        on_give_up: Callable[[], None] | None,
        backoff: float,
    ) -> None:
        deaths: list[float] = []
        while True:
            process = self.process
            if process is None:
                return
            code = process.wait()  # reaps the child: never a zombie
            if self._stopping.is_set():
                return
            now = time.monotonic()
            deaths = [t for t in deaths if now - t < window] + [now]
            log.error("the embedded database exited", returncode=code, deaths=len(deaths))
            if len(deaths) > restarts:
                log.critical(
                    "the embedded database keeps dying; giving up",
                    restarts=restarts,
                    window_seconds=window,
                    log=str(self.data_dir / "embedded.log"),
                )
                self.failed = True
                if on_give_up is not None:
                    on_give_up()
                return
            # a pause that doubles with each recent death, so a crash loop does not spin
            if self._stopping.wait(backoff * 2 ** (len(deaths) - 1)):
                return
            with self._lock:
                if self._stopping.is_set():
                    return
                try:
                    assert self.port is not None
                    self._launch(self.port, self._credentials())
                    log.warning("the embedded database was restarted", port=self.port)
                except EmbeddedUnavailable as exc:
                    log.error("restarting the embedded database failed", error=str(exc))
                    time.sleep(1.0)

    @staticmethod
    def _terminate(process: subprocess.Popen[bytes], timeout: float = 3.0) -> None:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def stop(self) -> None:
        """Stop the process this object started (a found instance belongs to someone else)."""
        self._stopping.set()
        with self._lock:
            if self.process is None:
                return
            self._terminate(self.process)
            with contextlib.suppress(OSError):
                self.state_path.unlink()
            self.process = None

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
