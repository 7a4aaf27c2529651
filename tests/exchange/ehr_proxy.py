"""A real HTTP proxy in front of the EHR server, scriptable to be hostile to fhirgoal's writes:
each write (POST, PUT) takes the next planned step, which may keep the write from the EHR and
answer an error (500, 429 with Retry-After), or pass it on and lose the answer (the EHR applied
it; fhirgoal hears 500, or nothing before its timeout). Reads pass through, unless
`reads_fail` says what they are answered instead (an EHR that cannot be read for a while). Every
write is recorded with what fhirgoal was answered."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tests.conftest import serve_app

_PASSED_BACK = ("content-type", "etag", "location", "last-modified", "retry-after")


@dataclass
class Step:
    status: int = 0  # 0: the EHR's own answer; else what fhirgoal is answered instead
    forward: bool = True  # whether the EHR gets the write
    stall: float = 0.0  # seconds before answering (past fhirgoal's timeout)
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Write:
    method: str
    path: str
    answered: int
    forwarded: bool
    at: float


@dataclass
class Proxy:
    base: str = ""  # the FHIR base fhirgoal uses
    plan: list[Step] = field(default_factory=list)
    delay: float = 0.0  # before each write is passed on (a slow EHR)
    reads_fail: int = 0  # 0: reads pass; else the status every FHIR read (GET) is answered
    writes: list[Write] = field(default_factory=list)


@asynccontextmanager
async def proxy(
    ehr_base: str, plan: list[Step] | None = None, delay: float = 0.0
) -> AsyncIterator[Proxy]:
    state = Proxy(plan=list(plan or []), delay=delay)
    origin = ehr_base.removesuffix("/fhir")
    http = httpx.AsyncClient(timeout=30)

    async def forward(request: Request) -> Response:
        body = await request.body()
        if request.method == "GET" and state.reads_fail and "/fhir/" in request.url.path:
            return Response(status_code=state.reads_fail)
        write = request.method in ("POST", "PUT")
        step = state.plan.pop(0) if write and state.plan else Step()
        if write and state.delay:
            await asyncio.sleep(state.delay)
        answer: httpx.Response | None = None
        if step.forward:
            headers = {
                k: v
                for k, v in request.headers.items()
                if k.lower() not in ("host", "content-length")
            }
            url = f"{origin}{request.url.path}"
            if request.url.query:
                url += f"?{request.url.query}"
            answer = await http.request(request.method, url, headers=headers, content=body)
        if step.stall:
            await asyncio.sleep(step.stall)
        status = step.status or (answer.status_code if answer is not None else 502)
        if write:
            state.writes.append(
                Write(request.method, request.url.path, status, step.forward, time.monotonic())
            )
        if step.status or answer is None:
            return Response(status_code=status, headers=step.headers)
        headers = {k: v for k, v in answer.headers.items() if k.lower() in _PASSED_BACK}
        return Response(answer.content, status_code=answer.status_code, headers=headers)

    methods = ["GET", "POST", "PUT", "DELETE", "PATCH"]
    app = Starlette(routes=[Route("/{path:path}", forward, methods=methods)])
    server, task, port = await serve_app(app, lifespan="off")
    state.base = f"http://127.0.0.1:{port}/fhir"
    try:
        yield state
    finally:
        server.should_exit = True
        await task
        await http.aclose()
