"""Test fixtures: a real MongoDB wire-protocol server over TCP and the app over real HTTP.

The session starts SecantusDB on a free loopback port unless MONGODB_URI names a real MongoDB.
Each test that asks for `fhir` gets its own database and its own uvicorn server on a free port.
"""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
import uvicorn

from fhirgoal.app import create_app
from fhirgoal.config import Settings
from fhirgoal.serving import server_config
from fhirgoal.store.embedded import EmbeddedDatabase
from fhirgoal.store.mongo import connect
from tests.helpers import wait_until

# A test still running after this long prints every asyncio task's stack (pytest-timeout prints
# only threads', and the tests' servers all run as tasks on the one session loop).
STALL_DUMP_SECONDS = float(os.environ.get("FHIRGOAL_TEST_STALL_DUMP_SECONDS", "240"))


def _awaited_frames(awaitable: Any) -> list[str]:
    """file:line of each coroutine frame a task is suspended in, outermost first (following
    `cr_await`; asyncio's own Task.print_stack shows only the outermost frame)."""
    lines: list[str] = []
    while awaitable is not None:
        frame = getattr(awaitable, "cr_frame", None) or getattr(awaitable, "gi_frame", None)
        if frame is None:
            lines.append(f"    awaiting {awaitable!r:.200}")
            break
        code = frame.f_code
        lines.append(f"    {code.co_filename}:{frame.f_lineno} in {code.co_name}")
        awaitable = getattr(awaitable, "cr_await", None) or getattr(awaitable, "gi_yieldfrom", None)
    return lines


def _dump_tasks(nodeid: str) -> None:
    out = [f"\n=== {nodeid} still running after {STALL_DUMP_SECONDS:.0f} s; asyncio tasks: ==="]
    for task in asyncio.all_tasks():
        out.append(f"- {task.get_name()}")
        out.extend(_awaited_frames(task.get_coro()))
    print("\n".join(out), file=sys.stderr, flush=True)


@pytest.fixture(autouse=True)
async def _tasks_dumped_if_stalled(request: pytest.FixtureRequest) -> AsyncIterator[None]:
    handle = asyncio.get_running_loop().call_later(
        STALL_DUMP_SECONDS, _dump_tasks, request.node.nodeid
    )
    yield
    handle.cancel()


@pytest.fixture(scope="session")
def mongo_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if os.environ.get("MONGODB_URI"):
        yield os.environ["MONGODB_URI"]
        return
    embedded = EmbeddedDatabase(tmp_path_factory.mktemp("embedded-db"))
    yield embedded.start()
    embedded.stop()


@dataclass
class RunningServer:
    base: str  # the FHIR base URL
    settings: Settings
    client: httpx.AsyncClient
    app: Any = None  # the running FastAPI application


def _bound_socket() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # Accepted connections inherit it. asyncio sets TCP_NODELAY itself only on sockets whose
    # `proto` is IPPROTO_TCP, and one made as above has proto 0: every response then waited on
    # Nagle's algorithm and the client's delayed ACK, about 44 ms per request (measured; 1.75 ms
    # with it). `fhirgoal serve` binds its own sockets and is not affected (about 1 ms).
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind(("127.0.0.1", 0))
    return sock


async def start_server(settings: Settings) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    """The app of `settings` on a free loopback port, which becomes the settings' serve address
    (the server's URLs come from its configuration, never from a request's Host header)."""
    sock = _bound_socket()
    settings.host, settings.port = "127.0.0.1", sock.getsockname()[1]
    return await serve_app(create_app(settings), sock=sock)


async def serve_app(
    app: Any, lifespan: str = "on", sock: socket.socket | None = None
) -> tuple[uvicorn.Server, asyncio.Task[None], int]:
    """Run an ASGI app with uvicorn in this event loop on a free loopback port, once started."""
    sock = sock or _bound_socket()
    port = sock.getsockname()[1]
    state = getattr(app, "state", None)
    settings = getattr(state, "settings", None) or Settings()
    config = server_config(app, settings, log_level="warning", lifespan=lifespan)
    server = uvicorn.Server(config)
    server.install_signal_handlers = lambda: None  # type: ignore[method-assign]
    task = asyncio.create_task(server.serve(sockets=[sock]))
    await wait_until(lambda: server.started or task.done(), within=120, what="uvicorn started")
    if task.done():
        task.result()  # start-up failed: its exception
    return server, task, port


def fresh_settings(mongo_uri: str, prefix: str = "test", **overrides: Any) -> Settings:
    """Settings for a test's own server: its own database, auth off unless `overrides` say."""
    values: dict[str, Any] = {"db": f"{prefix}_{uuid.uuid4().hex[:12]}", "auth": "off", **overrides}
    return Settings(mongodb_uri=mongo_uri, **values)


@asynccontextmanager
async def running(settings: Settings, drop_database: bool = True) -> AsyncIterator[RunningServer]:
    """The app of `settings` served over real HTTP, with a client on its FHIR base; stopped and
    its database dropped afterwards (unless `drop_database` is False: a restart follows)."""
    server, task, port = await start_server(settings)
    base = f"http://127.0.0.1:{port}/fhir"
    try:
        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            yield RunningServer(base, settings, client, server.config.app)
    finally:
        server.should_exit = True
        await task
        if drop_database:
            mongo = connect(settings.mongodb_uri or "")
            await mongo.drop_database(settings.db)
            await mongo.close()


@pytest.fixture
async def fhir(mongo_uri: str) -> AsyncIterator[RunningServer]:
    async with running(fresh_settings(mongo_uri, max_body_bytes=256 * 1024)) as server:
        yield server
