"""Authorization off (FHIRGOAL_AUTH=off): everything is allowed, but only to callers on this machine.

The CLI refuses to serve that mode on anything but a loopback interface (`is_loopback`), and
`LoopbackOnly` refuses every caller whose address is not loopback, whatever the interface.
"""

from __future__ import annotations

import ipaddress
from functools import lru_cache

from starlette.types import ASGIApp, Receive, Scope, Send

from fhirgoal.core.errors import FhirError
from fhirgoal.guard import error_response


@lru_cache(maxsize=1024)  # asked for every request when authorization is off
def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class LoopbackOnly:
    """Refuse every caller that is not on this machine (pure ASGI: no per-request task overhead)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            client = scope.get("client")
            if client and not is_loopback(client[0]):
                error = FhirError(
                    "forbidden", "authorization is off: only loopback callers are served"
                )
                await error_response(error)(scope, receive, send)
                return
        await self.app(scope, receive, send)
