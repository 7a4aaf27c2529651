"""Routes for extended operations: https://hl7.org/fhir/R4/operations.html#request

`[base]/$name`, `[base]/Type/$name` and `[base]/Type/id/$name`, GET or POST; the operation
registry (operations.py) decides what exists. Included before the interaction routes so that
`/Type/$name` is never taken for a read of a resource with id `$name`.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from fhirgoal.core.errors import FhirError
from fhirgoal.fhir.operations import Invocation, Level, Parameters
from fhirgoal.fhir.rest import access, base_url, read_resource, render, service

router = APIRouter()


async def _invoke(
    request: Request, level: Level, name: str, rt: str | None = None, rid: str | None = None
) -> Response:
    svc = service(request)
    operation = svc.operations.find(level, rt, name)
    if request.method == "GET":
        if operation.affects_state:
            raise FhirError("method-not-allowed", f"${name} changes data: invoke it with POST")
        parameters = Parameters.from_query(list(request.query_params.multi_items()))
    else:
        body = await read_resource(request)
        if (
            operation.resource_body
            and isinstance(body, dict)
            and body.get("resourceType")
            not in (
                None,
                "Parameters",
            )
        ):
            body = {
                "resourceType": "Parameters",
                "parameter": [{"name": "resource", "resource": body}],
            }
            query = list(request.query_params.multi_items())
            body["parameter"] += Parameters.from_query(query).as_json()
        parameters = Parameters.from_resource(body)
    invocation = Invocation(
        access(request),
        name,
        rt,
        rid,
        parameters,
        base_url(request),
        request.method,
        request.headers.get("prefer", ""),
    )
    return render(request, await operation.handler(svc, invocation))


@router.api_route("/${name}", methods=["GET", "POST"], summary="system-level operation")
async def system_operation(request: Request, name: str) -> Response:
    return await _invoke(request, "system", name)


@router.api_route("/{rt}/${name}", methods=["GET", "POST"], summary="type-level operation")
async def type_operation(request: Request, rt: str, name: str) -> Response:
    service(request).require_type(rt)
    return await _invoke(request, "type", name, rt)


@router.api_route("/{rt}/{rid}/${name}", methods=["GET", "POST"], summary="instance operation")
async def instance_operation(request: Request, rt: str, rid: str, name: str) -> Response:
    service(request).require_type(rt)
    return await _invoke(request, "instance", name, rt, rid)
