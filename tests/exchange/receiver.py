"""A real HTTP receiver for notifications (a small Starlette app under uvicorn), scriptable to be
hostile: each request takes the next planned answer (500, 429 with Retry-After, a stall past the
sender's timeout), then 200 once the plan is spent. It records every request it answers."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.conftest import serve_app


@dataclass
class Received:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    status: int  # what the receiver answered
    at: float  # time.monotonic()

    @property
    def key(self) -> str:
        return self.headers.get("idempotency-key", "")


@dataclass
class Answer:
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    stall: float = 0.0  # seconds to wait before answering (past the sender's timeout)


@dataclass
class Receiver:
    url: str = ""
    plan: list[Answer] = field(default_factory=list)
    requests: list[Received] = field(default_factory=list)

    @property
    def accepted(self) -> list[Received]:
        return [r for r in self.requests if 200 <= r.status < 300]

    def accepted_keys(self) -> set[str]:
        return {r.key for r in self.accepted}


@asynccontextmanager
async def receiver(plan: list[Answer] | None = None) -> AsyncIterator[Receiver]:
    state = Receiver(plan=list(plan or []))

    async def endpoint(request: Request) -> Response:
        answer = state.plan.pop(0) if state.plan else Answer()
        body = await request.body()
        if answer.stall:
            await asyncio.sleep(answer.stall)
        state.requests.append(
            Received(
                request.method,
                request.url.path,
                {k.lower(): v for k, v in request.headers.items()},
                body,
                answer.status,
                time.monotonic(),
            )
        )
        return Response(status_code=answer.status, headers=answer.headers)

    app = Starlette(routes=[Route("/{path:path}", endpoint, methods=["POST", "PUT", "DELETE"])])
    server, task, port = await serve_app(app, lifespan="off")
    state.url = f"http://127.0.0.1:{port}/hook"
    try:
        yield state
    finally:
        server.should_exit = True
        await task
