"""The one error path from an exception to an HTTP answer, and the guard around every request.

Errors are OperationOutcomes (https://hl7.org/fhir/R4/operationoutcome.html) with the status from
core/errors.py's table. `exception_response` decides the answer for anything raised: a FhirError
answers for itself; a database failure is 503 with `Retry-After` (the client should come back,
https://www.rfc-editor.org/rfc/rfc9110#section-10.2.3); anything else is 500 with a correlation id
and no internals, its traceback logged as plain text.

`install_error_handlers` routes what FastAPI catches itself (FhirError, Starlette's HTTP errors,
request validation, database errors) to the same answers.

`RequestGuard` is the outermost application middleware. A client that disconnects in the middle
of its request (starlette raises ClientDisconnect from wherever the body was being read) costs one
log line and no answer: there is no one to answer. An exception that escapes everything else is
answered here rather than by Starlette's last-resort handler, which answers and then re-raises it
to the server, which logs the whole traceback again.
"""

from __future__ import annotations

import uuid

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pymongo.errors import PyMongoError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fhirgoal.core.errors import FhirError, category_for_status

log = structlog.get_logger(__name__)

FHIR_JSON = "application/fhir+json"
# Seconds a client is asked to wait after a 503 while the database is unavailable.
RETRY_AFTER_SECONDS = 5


def error_response(error: FhirError) -> Response:
    return Response(
        error.body(), status_code=error.status, media_type=FHIR_JSON, headers=error.headers
    )


def database_unavailable(path: str, exc: BaseException) -> FhirError:
    correlation = str(uuid.uuid4())
    log.error("database error", correlation_id=correlation, path=path, error=repr(exc))
    return FhirError(
        "unavailable",
        f"the database is unavailable; retry later (correlation id {correlation})",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def internal_error(path: str, exc: BaseException) -> FhirError:
    correlation = str(uuid.uuid4())
    log.error("unhandled error", correlation_id=correlation, path=path, exc_info=exc)
    return FhirError("internal", f"internal error (correlation id {correlation})")


def exception_response(path: str, exc: BaseException) -> Response:
    """The answer to any exception raised while serving `path`."""
    if isinstance(exc, FhirError):
        return error_response(exc)
    if isinstance(exc, PyMongoError):
        return error_response(database_unavailable(path, exc))
    return error_response(internal_error(path, exc))


def install_error_handlers(app: FastAPI) -> None:
    """FastAPI's own exception handlers, answering as `exception_response` does."""

    async def fhir_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, FhirError)
        return error_response(exc)

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return error_response(FhirError(category_for_status(exc.status_code), str(exc.detail)))

    async def request_error(_: Request, exc: Exception) -> Response:
        return error_response(FhirError("bad-request", "the request is malformed"))

    async def database_error(request: Request, exc: Exception) -> Response:
        return error_response(database_unavailable(request.url.path, exc))

    app.add_exception_handler(FhirError, fhir_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, request_error)
    app.add_exception_handler(PyMongoError, database_error)
    # Anything else is answered by RequestGuard, the outermost middleware.


class RequestGuard:
    """Outermost middleware: disconnects cost one log line; nothing escapes to the server."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except ClientDisconnect:
            log.info("client disconnected before its request was read", path=scope.get("path"))
        except Exception as exc:  # the last place anything can be answered
            if started:
                log.error("error after the response started", path=scope.get("path"), exc_info=exc)
                return
            response = exception_response(scope.get("path", ""), exc)
            response.headers["connection"] = "close"
            await response(scope, receive, send)


__all__ = [
    "FHIR_JSON",
    "RequestGuard",
    "database_unavailable",
    "error_response",
    "exception_response",
    "install_error_handlers",
]
