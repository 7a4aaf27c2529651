"""No client can stall the server, and the server outlives its database (issue 12).

Against `fhirgoal serve` as a real process with its embedded database: half-sent requests, slow
headers and bodies, the database killed or hung, SIGTERM. A probe keeps asking for
/fhir/metadata throughout and must always be answered within a second.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import stat
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from pymongo import MongoClient
from pymongo.errors import OperationFailure

from fhirgoal.store.embedded import free_port
from tests.helpers import wait_until_blocking
from tests.serve_process import ServeProcess, ready, wait_until_gone

pytestmark = pytest.mark.skipif(
    bool(os.environ.get("MONGODB_URI")), reason="exercises the embedded database"
)


OUTAGE_ANSWER_SECONDS = 5.0  # under the 8 s restart pause below


class Probe:
    """GET /fhir/metadata in a loop from a thread; the slowest answer seen."""

    def __init__(self, origin: str) -> None:
        self.origin = origin
        self.slowest = 0.0
        self.answered = 0
        self.failures: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                started = time.monotonic()
                try:
                    status = client.get(f"{self.origin}/fhir/metadata").status_code
                    if status != 200:
                        self.failures.append(f"status {status}")
                except httpx.HTTPError as error:
                    self.failures.append(repr(error))
                self.slowest = max(self.slowest, time.monotonic() - started)
                self.answered += 1
                time.sleep(0.05)  # the probe's pace (a request every 50 ms), not a wait

    def wait_for_answers(self, count: int) -> None:
        """Until the probe has been answered (or failed) `count` more times."""
        target = self.answered + count
        wait_until_blocking(lambda: self.answered >= target, what=f"{count} probe answers")

    def __enter__(self) -> Probe:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def half_sent(port: int, path: str, content_type: str = "application/fhir+json") -> None:
    """A request that announces 100 bytes of body, sends 11 and hangs up."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        head = (
            f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: {content_type}\r\n"
            "Content-Length: 100\r\n\r\n"
        )
        sock.sendall(head.encode() + b'{"resource')
        time.sleep(0.02)  # the client's part: it hangs up a moment after the partial body


def partial_post(port: int, content_type: str, sent: bytes = b"") -> bytes:
    """POST /fhir/Patient announcing 100 bytes of body and sending only `sent`: the server's
    answer, until it closes the connection."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(
            b"POST /fhir/Patient HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            + f"Content-Type: {content_type}\r\nContent-Length: 100\r\n\r\n".encode()
            + sent
        )
        return answer_of(sock, 5)


def answer_of(sock: socket.socket, timeout: float) -> bytes:
    """Everything the server sends until it closes the connection."""
    sock.settimeout(timeout)
    received = b""
    while chunk := sock.recv(4096):
        received += chunk
    return received


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    serve = ServeProcess(
        tmp_path_factory.mktemp("served"),
        free_port(),
        env={
            "FHIRGOAL_HEADER_TIMEOUT_SECONDS": "1",
            "FHIRGOAL_BODY_TIMEOUT_SECONDS": "1",
            "FHIRGOAL_DB_RESTART_BACKOFF_SECONDS": "8",
        },
    ).start()
    yield serve
    serve.kill_group()


def test_clients_hanging_up_mid_body_cost_a_log_line_each_and_stall_no_one(
    served: ServeProcess,
) -> None:
    before = len(served.log_text())
    with Probe(served.origin) as probe:
        for _ in range(10):
            half_sent(served.port, "/fhir/Patient")
            half_sent(served.port, "/fhir/Observation/_search", "application/x-www-form-urlencoded")
        wait_until_blocking(
            lambda: served.log_text()[before:].count("client disconnected") >= 20,
            what="every hang-up logged",
        )
    assert probe.failures == [] and probe.slowest < 1.0, (probe.slowest, probe.failures)
    added = served.log_text()[before:]
    assert "Traceback" not in added
    assert added.count("client disconnected") == 20
    assert len(added) < 20 * 200


def test_slow_headers_get_408_and_the_connection_closes(served: ServeProcess) -> None:
    with (
        Probe(served.origin) as probe,
        socket.create_connection(("127.0.0.1", served.port)) as dribbling,
        socket.create_connection(("127.0.0.1", served.port)) as silent,
    ):
        dribbling.sendall(b"GET /fhir/metadata HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        started = time.monotonic()
        assert answer_of(dribbling, 5).startswith(b"HTTP/1.1 408 ")
        assert answer_of(silent, 5).startswith(b"HTTP/1.1 408 ")
        assert time.monotonic() - started < 3
    assert probe.failures == [] and probe.slowest < OUTAGE_ANSWER_SECONDS


def test_a_body_that_never_arrives_gets_408(served: ServeProcess) -> None:
    answer = partial_post(served.port, "application/fhir+json", b"{")
    assert answer.startswith(b"HTTP/1.1 408 ")
    assert b'"resourceType":"OperationOutcome"' in answer
    # nothing was stored
    assert httpx.get(f"{served.base}/Patient?_summary=count").json()["total"] == 0


def test_an_answer_given_before_the_body_arrived_is_not_followed_by_a_408(
    served: ServeProcess,
) -> None:
    answer = partial_post(served.port, "text/plain")
    assert answer.startswith(b"HTTP/1.1 415 ")
    assert b" 408 " not in answer


def test_the_embedded_database_needs_the_credentials_in_the_data_dir(
    served: ServeProcess,
) -> None:
    credentials = served.data_dir / "embedded-credentials.json"
    assert stat.S_IMODE(credentials.stat().st_mode) == 0o600
    port = int(json.loads((served.data_dir / "embedded.json").read_text())["port"])
    with MongoClient(f"mongodb://127.0.0.1:{port}/?directConnection=true") as outsider:
        with pytest.raises(OperationFailure) as refused:
            outsider["fhirgoal"]["Patient"].find_one()
        assert refused.value.code == 13  # Unauthorized


def test_a_dead_database_is_reaped_restarted_and_answered_for_meanwhile(
    served: ServeProcess,
) -> None:
    created = httpx.post(
        f"{served.base}/Patient",
        json={"resourceType": "Patient", "name": [{"family": "Before"}]},
        headers={"Content-Type": "application/fhir+json"},
    )
    assert created.status_code == 201
    pid = served.database_pid()
    os.kill(pid, signal.SIGKILL)
    wait_until_gone(pid, timeout=5)  # reaped by the server: no zombie
    # The restart waits 8 s (FHIRGOAL_DB_RESTART_BACKOFF_SECONDS): meanwhile, requests are
    # answered, each within the database timeout (2 s) and well before the database is back. The
    # bounds leave room for a loaded machine (CI never times things): what they catch is a request,
    # or the event loop, waiting for the restart.
    with Probe(served.origin) as probe:
        probe.wait_for_answers(5)  # the probe runs through the outage
        started = time.monotonic()
        read = httpx.get(f"{served.base}/Patient/{created.json()['id']}", timeout=10)
        assert time.monotonic() - started < OUTAGE_ANSWER_SECONDS
        assert read.status_code == 503, read.text
        assert read.headers["Retry-After"].isdigit()
        assert read.json()["resourceType"] == "OperationOutcome"
        assert httpx.get(f"{served.origin}/readyz", timeout=10).status_code == 503
        wait_until_blocking(lambda: ready(served), within=20, what="the server recovered")
    assert probe.failures == [] and probe.slowest < OUTAGE_ANSWER_SECONDS
    # the state file is written once the restart is seen
    wait_until_blocking(lambda: served.database_pid() != pid, what="the new database's pid")
    again = httpx.get(f"{served.base}/Patient/{created.json()['id']}")
    assert again.status_code == 200
    assert "the embedded database was restarted" in served.log_text()


def test_the_server_exits_nonzero_when_its_database_keeps_dying(tmp_path: Path) -> None:
    serve = ServeProcess(
        tmp_path,
        free_port(),
        env={"FHIRGOAL_DB_RESTARTS": "1", "FHIRGOAL_DB_RESTART_BACKOFF_SECONDS": "0.1"},
    ).start()
    try:
        first = serve.database_pid()
        os.kill(first, signal.SIGKILL)
        wait_until_blocking(
            lambda: serve.database_pid() != first and ready(serve),
            within=20,
            what="the database restarted once",
        )
        second = serve.database_pid()
        os.kill(second, signal.SIGKILL)
        assert serve.process is not None
        assert serve.process.wait(timeout=15) == 1
        wait_until_gone(second)
        assert "giving up" in serve.log_text()
    finally:
        serve.kill_group()


def test_sigterm_finishes_within_15_s_even_with_the_database_hung(tmp_path: Path) -> None:
    serve = ServeProcess(tmp_path, free_port()).start()
    database = serve.database_pid()
    try:
        os.kill(database, signal.SIGSTOP)
        in_flight = [
            threading.Thread(
                target=lambda: _ignore(lambda: httpx.get(f"{serve.base}/Patient", timeout=30)),
                daemon=True,
            )
            for _ in range(4)
        ]
        for thread in in_flight:
            thread.start()
        # lets the requests reach the hung database: nothing outside the process shows when they
        # have, and the subject is that SIGTERM ends them anyway
        time.sleep(0.5)
        started = time.monotonic()
        serve.stop(timeout=20)
        elapsed = time.monotonic() - started
        assert elapsed < 15, (elapsed, serve.log_text()[-2000:])
    finally:
        for sig in (signal.SIGCONT, signal.SIGKILL):
            with contextlib.suppress(ProcessLookupError):
                os.kill(database, sig)
        serve.kill_group()


def _ignore(call: Callable[[], object]) -> None:
    with contextlib.suppress(httpx.HTTPError):
        call()
