"""Pure-ASGI dispatch of the everyday FHIR interactions, in front of FastAPI's router.

Read, vread, create, update, patch, delete and search on `/fhir/{type}[/{id}[/_history/{vid}]]`
are most of the traffic, and FastAPI's routing (a regex per route, in order, then dependency
solving and its own exception wrappers) took a third of the server's CPU per read. This router
recognises those paths with one split, for stored resource types only, and calls the very handlers
the FastAPI routes are declared with (fhir/rest.py), so the two paths cannot drift apart; every
other request (operations, history, metadata, unknown types, odd paths, other methods) goes on to
FastAPI, which also keeps documenting all of them in the OpenAPI schema. (FastAPI's own
OpenTelemetry spans, if a deployment configures a tracer, name no `http.route` for these.)

It sits inside the authorization middleware, like the routes: errors are answered by the
application's own exception handlers (app.py), looked up the way Starlette's ExceptionMiddleware
does; anything without a handler propagates to the 500 handler exactly as from a route.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from fhirgoal.fhir import rest

Handler = Callable[..., Awaitable[Response]]

_PREFIX = "/fhir/"
# The handlers by path shape and method; each takes the path's parameters, then the request.
TYPE_LEVEL: dict[str, Handler] = {  # /fhir/{type}
    "GET": rest.search,
    "POST": rest.create,
    "PUT": rest.conditional_update,
    "DELETE": rest.conditional_delete,
}
INSTANCE_LEVEL: dict[str, Handler] = {  # /fhir/{type}/{id}
    "GET": rest.read,
    "PUT": rest.update,
    "PATCH": rest.patch,
    "DELETE": rest.delete,
}
VERSION_LEVEL: dict[str, Handler] = {"GET": rest.vread}  # /fhir/{type}/{id}/_history/{vid}


class InteractionRouter:
    def __init__(self, app: ASGIApp, is_type: Callable[[str], bool]) -> None:
        self.app = app
        self.is_type = is_type  # a stored resource type

    def match(self, method: str, path: str) -> tuple[Handler, list[str]] | None:
        """The handler and its path arguments, or None for requests left to FastAPI."""
        if not path.startswith(_PREFIX):
            return None
        parts = path[len(_PREFIX) :].split("/")
        if not self.is_type(parts[0]):
            return None
        count = len(parts)
        if count == 1:
            handler = TYPE_LEVEL.get(method)
        elif not _is_id(parts[1]):  # `_history`, `_search`, `$operation`: FastAPI's routes
            return None
        elif count == 2:
            handler = INSTANCE_LEVEL.get(method)
        elif count == 4 and parts[2] == "_history" and parts[3]:
            handler = VERSION_LEVEL.get(method)
            parts = [parts[0], parts[1], parts[3]]
        else:
            return None
        return None if handler is None else (handler, parts)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # A mounted app (root_path) routes on the path below its mount point: left to FastAPI.
        if scope["type"] != "http" or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        found = self.match(scope["method"], scope["path"])
        if found is None:
            await self.app(scope, receive, send)
            return
        handler, arguments = found
        request = Request(scope, receive, send)
        try:
            response = await handler(*arguments, request)
        except Exception as exc:
            answer = _exception_handler(request.app.exception_handlers, exc)
            if answer is None:
                raise
            response = await answer(request, exc)
        await response(scope, receive, send)


def _is_id(segment: str) -> bool:
    return bool(segment) and segment[0] not in "_$"


def _exception_handler(handlers: Mapping[Any, Any], exc: Exception) -> Any:
    """The app's handler for `exc`'s class or nearest base, as Starlette's ExceptionMiddleware
    finds it; None for the catch-all `Exception`, which the outermost middleware applies."""
    for cls in type(exc).__mro__:
        if cls is Exception:
            return None
        if cls in handlers:
            return handlers[cls]
    return None
