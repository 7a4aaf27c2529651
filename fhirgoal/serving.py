"""How the HTTP server is run: uvicorn with deadlines on slow clients and a bounded shutdown.

uvicorn bounds only the idle time between two requests of a connection (`timeout_keep_alive`); a
client that opens a connection and then sends its request line, headers or body a byte at a time
(slowloris, https://en.wikipedia.org/wiki/Slowloris_(computer_security)) holds the connection,
and the request's task, for as long as it likes. `DeadlineProtocol` gives each request two
deadlines, measured from the request's first byte and from the end of its headers:

- the headers must be complete within `header_timeout_seconds`, else 408 and the connection closes;
- the body must be complete within `body_timeout_seconds`, else 408 (when the application has not
  answered yet) and the connection closes; an application waiting for the body then sees the
  client as gone (http.disconnect), which the request guard logs as one line.

A timer is a loop.call_later per request phase, so the cost is a few microseconds per request.
A connection that sends nothing at all is closed after the header deadline too.

`timeout_graceful_shutdown` bounds how long SIGTERM waits for requests in flight (uvicorn waits
forever by default), so that shutdown finishes in well under 15 s (issue 12).
"""

from __future__ import annotations

import asyncio
import signal
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from fhirgoal.config import Settings

# Written straight to the transport: there is no request cycle to answer through.
_TIMEOUT_BODY = (
    b'{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"timeout",'
    b'"diagnostics":"the request was not received in time"}]}'
)
_TIMEOUT_RESPONSE = (
    b"HTTP/1.1 408 Request Timeout\r\ncontent-type: application/fhir+json\r\n"
    b"content-length: " + str(len(_TIMEOUT_BODY)).encode() + b"\r\nconnection: close\r\n\r\n"
) + _TIMEOUT_BODY


class DeadlineProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with per-request header and body deadlines."""

    header_timeout = 10.0
    body_timeout = 30.0

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._deadline: asyncio.TimerHandle | None = None
        self._reading_headers = True

    def _arm(self, seconds: float, reading_headers: bool) -> None:
        self._disarm()
        self._reading_headers = reading_headers
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _expired(self) -> None:
        self._deadline = None
        if self.transport.is_closing():
            return
        cycle = self.cycle
        # Answer 408 unless an answer is being sent on the connection (the request's own, or
        # the previous one's while the next request's headers trickle in).
        if self._reading_headers:
            answering = cycle is not None and not cycle.response_complete
        else:
            answering = cycle is None or cycle.response_started
        if not answering:
            self.transport.write(_TIMEOUT_RESPONSE)
        if cycle is not None:
            cycle.keep_alive = False
        self.transport.close()

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm(self.header_timeout, reading_headers=True)

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._deadline is None:
            self._arm(self.header_timeout, reading_headers=True)

    def on_headers_complete(self) -> None:
        super().on_headers_complete()
        if self._has_body():
            self._arm(self.body_timeout, reading_headers=False)
        else:
            self._disarm()

    def on_message_complete(self) -> None:
        self._disarm()
        super().on_message_complete()

    def _has_body(self) -> bool:
        for name, value in self.headers:
            if name == b"content-length":
                return value.strip() not in (b"0", b"")
            if name == b"transfer-encoding":
                return True
        return False


class Server(uvicorn.Server):
    """uvicorn's server, except that SIGTERM ends `run()` like any graceful stop. uvicorn re-raises
    a captured SIGTERM once it has shut down, which kills the process with the signal before the
    CLI's own clean-up (stopping the embedded database) and exit status can happen."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM:
            self._captured_signals.remove(sig)


def protocol_for(settings: Settings) -> type[DeadlineProtocol]:
    """The protocol class with this configuration's deadlines."""
    return type(
        "ConfiguredDeadlineProtocol",
        (DeadlineProtocol,),
        {
            "header_timeout": settings.header_timeout_seconds,
            "body_timeout": settings.body_timeout_seconds,
        },
    )


def server_config(app: Any, settings: Settings, **options: Any) -> uvicorn.Config:
    """uvicorn's configuration for `app` under `settings` (the CLI and the tests share it)."""
    options.setdefault("access_log", False)
    return uvicorn.Config(
        app,
        http=protocol_for(settings),
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,
        **options,
    )


__all__ = ["DeadlineProtocol", "Server", "protocol_for", "server_config"]
