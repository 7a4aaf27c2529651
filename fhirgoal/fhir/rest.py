"""HTTP interactions -> service calls: https://hl7.org/fhir/R4/http.html

Handlers stay thin: negotiate the format, read the body within the size limit, call the service,
render its Outcome. Responses are pre-serialized bytes (never a pydantic re-dump, which would turn
72.50 into 72.5 and emit nulls).
"""

from __future__ import annotations

from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl

from fastapi import APIRouter, Request, Response

from fhirgoal.core import jsonio
from fhirgoal.core.access import AccessContext
from fhirgoal.core.errors import FhirError, informational_outcome
from fhirgoal.fhir import binary, bundles
from fhirgoal.fhir.bundles import http_date
from fhirgoal.fhir.fhirpath_patch import is_fhirpath_patch
from fhirgoal.fhir.outcome import Outcome
from fhirgoal.fhir.search.engine import SearchPage
from fhirgoal.fhir.service import FhirService
from fhirgoal.fhir.transaction import BundleProcessor

FHIR_JSON = "application/fhir+json"
_JSON_TYPES = {"application/fhir+json", "application/json", "text/json"}
JSON_PATCH = "application/json-patch+json"
# http.html#patch: JSON Patch, and FHIRPath Patch as a Parameters resource (fhirpatch.html)
_PATCH_TYPES = {JSON_PATCH, FHIR_JSON}
_ACCEPTABLE = {
    "*/*",
    "application/*",
    "application/fhir+json",
    "application/json",
    "text/json",
    "json",
}
_FORMATS = {"json", "application/json", "application/fhir+json"}
_SERVICE_PARAMS = {"_format", "_pretty"}

router = APIRouter()


# ---- request plumbing ------------------------------------------------------------------------
def service(request: Request) -> FhirService:
    service: FhirService = request.app.state.fhir
    return service


def access(request: Request) -> AccessContext:
    context: AccessContext = request.app.state.access_for(request)
    return context


def base_url(request: Request) -> str:
    """The FHIR base URL of this server, fixed by configuration (Settings.public_fhir_base):
    FHIRGOAL_BASE_URL or the serve address, never a request's Host header (which a caller chooses:
    it would become Location headers, Bundle links and, through auth/, tokens' iss/aud)."""
    base: str = request.app.state.fhir_base
    return base


def negotiate(request: Request, any_accept: bool = False) -> None:
    """406 unless the client accepts FHIR JSON (Accept header or _format, http.html#mime-type).
    `any_accept`: a read of a Binary, whose content answers any Accept (fhir/binary.py)."""
    # Most requests have no query string: not parsing one saves half of this function's cost.
    fmt = request.query_params.get("_format") if request.scope.get("query_string") else None
    if fmt is not None and fmt.split(";")[0].strip() not in _FORMATS:
        raise FhirError(
            "not-acceptable", f"_format={fmt} is not supported; this server speaks JSON"
        )
    accept = request.headers.get("accept")
    if not accept or any_accept:
        return
    kinds = {part.split(";")[0].strip().lower() for part in accept.split(",")}
    if not kinds & _ACCEPTABLE:
        raise FhirError("not-acceptable", f"cannot answer with {accept}; use {FHIR_JSON}")


def _media_type(request: Request) -> str:
    content_type = request.headers.get("content-type", "")
    media, _, params = content_type.partition(";")
    charset = params.lower().replace(" ", "")
    if "charset=" in charset and "charset=utf-8" not in charset:
        raise FhirError("unsupported-media-type", "only UTF-8 bodies are accepted")
    return media.strip().lower()


async def read_body(request: Request, allowed: set[str] | None, limit: int | None = None) -> bytes:
    """The body, refused with 413 past `limit` bytes (default: FHIRGOAL_MAX_BODY_BYTES);
    `allowed` media types (None: any, as sent)."""
    media = _media_type(request) if allowed is not None else ""
    if allowed is not None and media not in allowed:
        raise FhirError(
            "unsupported-media-type",
            f"Content-Type '{media or '(none)'}' is not accepted here; send {' or '.join(sorted(allowed))}",
        )
    if limit is None:
        limit = request.app.state.settings.max_body_bytes
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        raise FhirError("too-large", f"the body exceeds the limit of {limit} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise FhirError("too-large", f"the body exceeds the limit of {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


async def read_resource(
    request: Request, rt: str | None = None, rid: str | None = None, limit: int | None = None
) -> Any:
    """The resource a write sends to `rt` (`rid`: its URL id, for an update)."""
    negotiate(request)
    if rt == binary.BINARY:  # raw content, or a Binary resource (fhir/binary.py)
        return binary.resource_from_body(
            await read_body(request, None, limit),
            request.headers.get("content-type", ""),
            request.headers.get(binary.SECURITY_CONTEXT_HEADER),
            request.app.state.settings.max_json_depth,
            rid,
        )
    body = await read_body(request, _JSON_TYPES, limit)
    if not body.strip():
        raise FhirError("bad-request", "the request has no body")
    return jsonio.loads(body, request.app.state.settings.max_json_depth)


def form_pairs(
    request: Request, text: str, what: str, strict: bool = False
) -> list[tuple[str, str]]:
    """The name=value pairs of a form or query text, refused with a 400 past the parameter limit
    before they are all split out (a 4 MB `_search` body could hold a million)."""
    limit = request.app.state.settings.max_search_params
    try:
        return parse_qsl(text, keep_blank_values=True, strict_parsing=strict, max_num_fields=limit)
    except ValueError as exc:
        if "Max number of fields" in str(exc):
            raise FhirError("bad-request", f"{what} has more than {limit} parameters") from None
        raise FhirError("bad-request", f"{what} is not a valid form") from None


def search_params(request: Request) -> list[tuple[str, str]]:
    return [(k, v) for k, v in request.query_params.multi_items() if k not in _SERVICE_PARAMS]


def prefer(request: Request, name: str) -> str | None:
    for part in request.headers.get("prefer", "").split(";"):
        for item in part.split(","):
            key, _, value = item.strip().partition("=")
            if key.strip().lower() == name:
                return value.strip().strip('"').lower()
    return None


# ---- rendering -------------------------------------------------------------------------------
def fhir_response(status: int, body: Any = None, headers: dict[str, str] | None = None) -> Response:
    content = b"" if body is None else jsonio.dumps(body)
    return Response(
        content,
        status_code=status,
        headers=headers,
        media_type=FHIR_JSON if body is not None else None,
    )


def render(request: Request, outcome: Outcome) -> Response:
    """Status, ETag/Last-Modified/Location and the body the client's Prefer asks for."""
    headers = dict(outcome.headers)
    version = outcome.version
    if version is not None and version.comp:
        request.state.patients = version.comp  # for the audit record (auth/audit.py)
    if version is not None:
        headers["ETag"] = f'W/"{version.version}"'
        headers["Last-Modified"] = http_date(version)
        if outcome.status == 201 or request.method in ("PUT", "PATCH"):
            location = f"{base_url(request)}/{version.resource_type}/{version.id}/_history/{version.version}"
            headers["Location" if outcome.status == 201 else "Content-Location"] = location
    if outcome.body is not None:
        return fhir_response(outcome.status, outcome.body, headers)
    if outcome.status == 304:  # a conditional read: the client's copy is current
        return Response(status_code=304, headers=headers)
    if (
        request.method == "GET"
        and version is not None
        and version.resource_type == binary.BINARY
        and not version.deleted
        and binary.wants_content(request)
    ):
        return binary.content_response(version, headers)
    wanted = prefer(request, "return") if request.method != "GET" else None
    text = version.text if version is not None else None
    if wanted == "operationoutcome":
        text = outcome.message or (
            f"{version.resource_type}/{version.id} version {version.version}" if version else "done"
        )
        status = 200 if outcome.status == 204 else outcome.status
        body = informational_outcome(text)
        body["issue"] += [w.to_json("informational") for w in outcome.warnings]
        return fhir_response(status, body, headers)
    if text is None or request.method == "DELETE" or wanted == "minimal":
        return Response(status_code=outcome.status, headers=headers)
    return Response(
        text.encode(), status_code=outcome.status, headers=headers, media_type=FHIR_JSON
    )


def _lenient(request: Request) -> bool:
    return prefer(request, "handling") == "lenient"


# ---- routes ------------------------------------------------------------------------------------
def _history_params(request: Request) -> dict[str, str]:
    allowed = {"_since", "_count", "_offset", "_until", "_format", "_pretty"}
    params = dict(request.query_params)
    unknown = set(params) - allowed
    if unknown and not _lenient(request):
        raise FhirError(
            "not-supported", f"unsupported history parameter(s): {', '.join(sorted(unknown))}"
        )
    return params


async def _history(request: Request, rt: str | None, rid: str | None) -> Response:
    negotiate(request)
    svc = service(request)
    if rt is not None:
        svc.require_type(rt)
    base = base_url(request)
    params = _history_params(request)
    versions, total, links = await svc.history(access(request), rt, rid, params)
    url = "/".join(p for p in (base, rt, rid, "_history") if p)
    return fhir_response(200, bundles.history(base, url, versions, total, links))


@router.get("/_history", summary="history (system)")
async def system_history(request: Request) -> Response:
    return await _history(request, None, None)


@router.get("/{rt}/_history", summary="history (type)")
async def type_history(rt: str, request: Request) -> Response:
    return await _history(request, rt, None)


@router.get("/{rt}/{rid}/_history", summary="history (instance)")
async def instance_history(rt: str, rid: str, request: Request) -> Response:
    return await _history(request, rt, rid)


def _http_date(value: str | None) -> datetime | None:
    """An If-Modified-Since date; an invalid one is ignored, as RFC 9110 13.1.3 says."""
    if value is None:
        return None
    try:
        moment = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


@router.get("/{rt}/{rid}", summary="read")
async def read(rt: str, rid: str, request: Request) -> Response:
    negotiate(request, any_accept=rt == binary.BINARY)
    svc = service(request)
    svc.require_type(rt)
    headers = request.headers
    outcome = await svc.read(
        access(request),
        rt,
        rid,
        headers.get("if-none-match"),
        _http_date(headers.get("if-modified-since")),
    )
    return render(request, outcome)


@router.get("/{rt}/{rid}/_history/{vid}", summary="vread")
async def vread(rt: str, rid: str, vid: str, request: Request) -> Response:
    negotiate(request, any_accept=rt == binary.BINARY)
    svc = service(request)
    svc.require_type(rt)
    return render(request, await svc.vread(access(request), rt, rid, vid))


@router.post("/{rt}", summary="create")
async def create(rt: str, request: Request) -> Response:
    svc = service(request)
    svc.require_type(rt)
    resource = await read_resource(request, rt)
    condition = request.headers.get("if-none-exist")
    criteria = None
    if condition is not None:  # "identifier=x|1", "?identifier=..." or "Patient?identifier=..."
        criteria = form_pairs(request, condition.split("?", 1)[-1], "If-None-Exist")
    outcome = await svc.create(access(request), rt, resource, criteria, base_url(request))
    return render(request, outcome)


@router.put("/{rt}/{rid}", summary="update")
async def update(rt: str, rid: str, request: Request) -> Response:
    svc = service(request)
    svc.require_type(rt)
    resource = await read_resource(request, rt, rid)
    outcome = await svc.update(access(request), rt, rid, resource, request.headers.get("if-match"))
    return render(request, outcome)


@router.put("/{rt}", summary="conditional update")
async def conditional_update(rt: str, request: Request) -> Response:
    svc = service(request)
    svc.require_type(rt)
    resource = await read_resource(request, rt)
    outcome = await svc.conditional_update(
        access(request),
        rt,
        search_params(request),
        resource,
        request.headers.get("if-match"),
        base_url(request),
    )
    return render(request, outcome)


@router.patch("/{rt}/{rid}", summary="patch (JSON Patch or FHIRPath Patch)")
async def patch(rt: str, rid: str, request: Request) -> Response:
    svc = service(request)
    svc.require_type(rt)
    negotiate(request)
    body = await read_body(request, _PATCH_TYPES)
    document = jsonio.loads(body, request.app.state.settings.max_json_depth)
    if _media_type(request) == FHIR_JSON and not is_fhirpath_patch(document):
        raise FhirError(
            "bad-request",
            f"a {FHIR_JSON} patch is a FHIRPath Patch: a Parameters resource (send a JSON Patch "
            f"as {JSON_PATCH})",
        )
    outcome = await svc.patch(access(request), rt, rid, document, request.headers.get("if-match"))
    return render(request, outcome)


@router.delete("/{rt}/{rid}", summary="delete")
async def delete(rt: str, rid: str, request: Request) -> Response:
    negotiate(request)
    svc = service(request)
    svc.require_type(rt)
    outcome = await svc.delete(access(request), rt, rid, request.headers.get("if-match"))
    return render(request, outcome)


@router.delete("/{rt}", summary="conditional delete")
async def conditional_delete(rt: str, request: Request) -> Response:
    negotiate(request)
    svc = service(request)
    svc.require_type(rt)
    outcome = await svc.conditional_delete(
        access(request), rt, search_params(request), base_url(request)
    )
    return render(request, outcome)


async def _search(
    rt: str, request: Request, params: list[tuple[str, str]], compartment: str | None = None
) -> Response:
    negotiate(request)
    svc = service(request)
    svc.require_type(rt)
    base = base_url(request)
    page = await svc.search(access(request), rt, params, base, _lenient(request), compartment)
    url = f"{base}/{compartment}/{rt}" if compartment else f"{base}/{rt}"
    return _searchset(base, url, page)


def _searchset(base: str, url: str, page: SearchPage) -> Response:
    return fhir_response(200, bundles.searchset_page(base, url, page))


@router.post("", summary="batch / transaction")
@router.post("/", include_in_schema=False)
async def batch_or_transaction(request: Request) -> Response:
    """A batch or transaction Bundle (http.html#transaction, fhir/transaction.py)."""
    settings = request.app.state.settings
    bundle = await read_resource(request, limit=settings.max_bundle_bytes)
    if isinstance(bundle, dict):
        # the request's audit record names the interaction by the Bundle's type (auth/audit.py)
        request.state.bundle_type = bundle.get("type")
    client = request.client
    processor = BundleProcessor(
        service(request),
        access(request),
        base_url(request),
        prefer(request, "return"),
        client.host if client else None,
    )
    return fhir_response(200, await processor.process(bundle))


@router.get("", summary="search across types (_type)")
@router.get("/", include_in_schema=False)
async def system_search(request: Request) -> Response:
    negotiate(request)
    base = base_url(request)
    params = search_params(request)
    page = await service(request).search_system(access(request), params, base, _lenient(request))
    return fhir_response(200, bundles.system_searchset_page(base, params, page))


@router.get("/{compartment_type}/{cid}/{rt}", summary="compartment search")
async def compartment_search(
    compartment_type: str, cid: str, rt: str, request: Request
) -> Response:
    if compartment_type != "Patient":
        raise FhirError(
            "not-found", f"no {compartment_type} compartment; the Patient compartment is supported"
        )
    return await _search(rt, request, search_params(request), compartment=f"Patient/{cid}")


@router.get("/{rt}", summary="search")
async def search(rt: str, request: Request) -> Response:
    return await _search(rt, request, search_params(request))


@router.post("/{rt}/_search", summary="search (POST form)")
async def search_post(rt: str, request: Request) -> Response:
    body = await read_body(request, {"application/x-www-form-urlencoded"})
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise FhirError("bad-request", "the _search body is not a valid form") from None
    form = form_pairs(request, text, "the _search body", strict=bool(body))
    return await _search(rt, request, search_params(request) + form)
