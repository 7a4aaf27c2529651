"""A deliberately small HTTP/1.1 keep-alive load generator for benchmarks.

The benchmark machine has two cores shared by the database, the server and the load generator, so
the generator must cost as little CPU as possible: requests are pre-rendered bytes, responses are
parsed just enough to find their end and status. Not a general HTTP client.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)
    bodies: list[bytes] = field(default_factory=list)
    elapsed: float = 0.0

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p))] * 1000 if ordered else 0.0

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0


def render_request(
    method: str, path: str, host: str, body: bytes = b"", headers: dict[str, str] | None = None
) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}", "Accept: application/fhir+json"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body:
        lines += ["Content-Type: application/fhir+json", f"Content-Length: {len(body)}"]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    body = await reader.readexactly(length) if length else b""
    return status, body


async def run(
    host: str,
    port: int,
    requests: list[bytes] | Callable[[int], bytes],
    total: int,
    concurrency: int,
    keep_bodies: bool = False,
    stop: asyncio.Event | None = None,
) -> Result:
    """Send `total` requests over `concurrency` keep-alive connections; measure each one. With
    `stop`, no request is started once it is set (loads run side by side end together)."""
    result = Result()
    counter = iter(range(total))

    def request_for(n: int) -> bytes:
        return requests(n) if callable(requests) else requests[n % len(requests)]

    async def worker() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            for n in counter:
                if stop is not None and stop.is_set():
                    break
                payload = request_for(n)
                started = time.perf_counter()
                writer.write(payload)
                status, body = await _read_response(reader)
                result.latencies.append(time.perf_counter() - started)
                result.statuses[status] = result.statuses.get(status, 0) + 1
                if keep_bodies:
                    result.bodies.append(body)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    result.elapsed = time.perf_counter() - started
    return result
