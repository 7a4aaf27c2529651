"""Binary on the RESTful API: raw content in and out.

https://hl7.org/fhir/R4/binary.html#rest : "when a read request is made for the binary resource
that doesn't explicitly specify the FHIR content types [...] the content should be returned using
the content type stated in the resource", and "when binary data is written to the server
(create/update - POST or PUT), the data is accepted as is and treated as the binary content of a
Binary, including when the content type is application/fhir+xml or application/fhir+json,
except for the special case where the content is actually a Binary resource".

So, for the Binary type only:
- a write whose body is a Binary resource (FHIR JSON) is an ordinary write; any other body, of any
  Content-Type, becomes a Binary with that `contentType` and the bytes as `data` (base64), and
  the `X-Security-Context` header, when sent, as its `securityContext` reference;
- a read or vread answers the resource as FHIR JSON when the client asks for FHIR (`_format`, or
  an Accept naming a FHIR or JSON type) and otherwise the decoded bytes with the stored
  Content-Type. Raw content is served with `nosniff` and a sandboxing Content-Security-Policy:
  it is whatever a client stored (an HTML page, a script), served from the API's own origin.

Searches, history and Bundles always carry the resource form.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from fhirgoal.core import jsonio
from fhirgoal.core.errors import FhirError
from fhirgoal.store.repository import Version

BINARY = "Binary"
SECURITY_CONTEXT_HEADER = "x-security-context"
# Accept/_format values that ask for the resource itself rather than its content.
_FHIR_KINDS = frozenset(
    {
        "application/fhir+json",
        "application/json",
        "text/json",
        "json",
        "application/fhir+xml",
        "application/xml",
        "text/xml",
        "xml",
    }
)
_JSON_BODIES = frozenset({"application/fhir+json", "application/json", "text/json"})
_RAW_HEADERS = {"X-Content-Type-Options": "nosniff", "Content-Security-Policy": "sandbox"}


def resource_from_body(
    body: bytes,
    content_type: str,
    security_context: str | None,
    max_depth: int,
    rid: str | None = None,
) -> dict[str, Any]:
    """The Binary a POST or PUT to the Binary type stores, from its body as sent (`rid`: the
    URL id of a PUT, which raw content has no other way to carry)."""
    media = content_type.partition(";")[0].strip().lower()
    if media in _JSON_BODIES:
        try:
            parsed = jsonio.loads(body, max_depth)
        except FhirError:
            parsed = None  # not JSON after all: content like any other
        if isinstance(parsed, dict) and parsed.get("resourceType") == BINARY:
            return parsed
    if not media:
        raise FhirError(
            "unsupported-media-type",
            "a Binary's content needs a Content-Type (it becomes Binary.contentType)",
        )
    resource: dict[str, Any] = {"resourceType": BINARY}
    if rid is not None:
        resource["id"] = rid
    resource["contentType"] = " ".join(content_type.split())  # a FHIR code: single spaces
    if security_context:
        resource["securityContext"] = {"reference": security_context.strip()}
    if body:
        resource["data"] = base64.b64encode(body).decode("ascii")
    return resource


def wants_content(request: Request) -> bool:
    """Does a read of a Binary ask for its content rather than for the FHIR resource?"""
    fmt = request.query_params.get("_format") if request.scope.get("query_string") else None
    if fmt is not None:
        return False  # `_format` names a FHIR format (rest.negotiate refuses any other)
    accept = request.headers.get("accept", "")
    kinds = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    return not kinds & _FHIR_KINDS


def content_response(version: Version, headers: dict[str, str]) -> Response:
    """The stored bytes with the stored Content-Type (and the caller's ETag etc.)."""
    resource = version.resource or {}
    try:
        content = base64.b64decode(resource.get("data", ""), validate=True)
    except (binascii.Error, ValueError):
        # validation admits only base64 text, so this is a stored resource that predates it
        raise FhirError("internal", f"Binary/{version.id} holds data that is not base64") from None
    return Response(
        content,
        status_code=200,
        headers={**headers, **_RAW_HEADERS},
        media_type=str(resource.get("contentType") or "application/octet-stream"),
    )
