"""The entries of a batch or transaction Bundle, read and checked before anything runs.

https://hl7.org/fhir/R4/bundle.html (Bundle.entry.request: method, url, ifNoneMatch,
ifModifiedSince, ifMatch, ifNoneExist; bundle.html#bundle-unique: fullUrl unique) and
https://hl7.org/fhir/R4/http.html#transaction (each entry is one interaction, its url relative
to the base: `Type`, `Type/id`, `Type/id/_history/vid`, `Type?criteria`). A request that cannot
be one of the interactions below is the entry's 400, with the entry named.

Reads are what the single-request API serves: read, vread, type search, type and instance
history, and also the system level (`?_type=...` search, `_history`) and the Patient
compartment (`Patient/id/Type?...`). `HEAD` is `GET` without the body (http.html#read): the
entry's response carries status, etag and lastModified, no resource.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qsl

from fhirgoal.core.errors import FhirError, Issue
from fhirgoal.core.jsonio import loads

METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE"})
PLACEHOLDER_PREFIXES = ("urn:uuid:", "urn:oid:")
_JSON_PATCH = "application/json-patch+json"
_SERVICE_PARAMS = {"_format", "_pretty"}


def is_placeholder(value: str) -> bool:
    return value.startswith(PLACEHOLDER_PREFIXES)


@dataclass
class Entry:
    """One entry's request, parsed. `interaction` names what it does."""

    index: int
    full_url: str | None
    method: str
    url: str  # as sent, relative to the base
    # create update patch delete read vread search history; search-system history-system
    interaction: str
    resource_type: str  # "" for the system-level interactions
    compartment: str | None = None  # "Patient/id" of a compartment search
    id: str | None = None
    version_id: str | None = None
    params: list[tuple[str, str]] = field(default_factory=list)  # criteria or search
    conditional: bool = False  # update/patch/delete by criteria
    resource: dict[str, Any] | None = None
    patch: Any = None  # the JSON Patch operations of a patch
    if_match: str | None = None
    if_none_match: str | None = None
    if_modified_since: datetime | None = None
    if_none_exist: list[tuple[str, str]] | None = None

    @property
    def label(self) -> str:
        """How an OperationOutcome names the entry."""
        named = f" ({self.full_url})" if self.full_url else ""
        return f"Bundle.entry[{self.index}]{named}"

    @property
    def writes(self) -> bool:
        return self.method in ("POST", "PUT", "PATCH", "DELETE")

    @property
    def path(self) -> str:
        """The request path under /fhir (for the audit record)."""
        return "/fhir/" + self.url.split("?", 1)[0]

    @property
    def query(self) -> bytes:
        return self.url.split("?", 1)[1].encode() if "?" in self.url else b""


def entry_error(index: int, full_url: str | None, error: FhirError) -> FhirError:
    """`error` with each issue naming the entry: diagnostics prefixed, expressions placed under
    `Bundle.entry[i].resource` (an issue without one points at the entry itself)."""
    named = f" ({full_url})" if full_url else ""
    where = f"Bundle.entry[{index}]"
    issues = []
    for issue in error.issues:
        expression = where
        if issue.expression:
            head, _, rest = issue.expression.partition(".")
            expression = f"{where}.resource.{rest}" if rest and head[:1].isupper() else where
        issues.append(
            Issue(f"{where}{named}: {issue.diagnostics}", expression, issue.code, issue.severity)
        )
    return FhirError(error.category, issues=issues, headers=error.headers)


def read_entries(
    bundle: Any, max_entries: int, max_params: int, max_depth: int, base: str
) -> tuple[str, list[Entry | FhirError]]:
    """The Bundle's type and its entries, each parsed or the error that makes it unusable."""
    if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
        raise FhirError("invalid", "POST to the base takes a Bundle of type batch or transaction")
    kind = bundle.get("type")
    if kind not in ("batch", "transaction"):
        raise FhirError(
            "invalid",
            f"a Bundle of type {kind!r} cannot be processed: POST to the base takes a batch or "
            "transaction (store other Bundles with POST /fhir/Bundle)",
            "Bundle.type",
        )
    entries = bundle.get("entry", [])
    if not isinstance(entries, list):
        raise FhirError("invalid", "Bundle.entry must be an array", "Bundle.entry")
    if len(entries) > max_entries:
        raise FhirError(
            "too-large",
            f"the Bundle has {len(entries)} entries; at most {max_entries} are accepted",
        )
    parsed: list[Entry | FhirError] = []
    for index, raw in enumerate(entries):
        full_url = raw.get("fullUrl") if isinstance(raw, dict) else None
        full_url = full_url if isinstance(full_url, str) else None
        try:
            parsed.append(_entry(index, raw, max_params, max_depth, base))
        except FhirError as error:
            parsed.append(entry_error(index, full_url, error))
    return kind, parsed


def _entry(index: int, raw: Any, max_params: int, max_depth: int, base: str) -> Entry:
    if not isinstance(raw, dict):
        raise FhirError("invalid", "an entry must be an object")
    full_url = raw.get("fullUrl")
    if full_url is not None and not isinstance(full_url, str):
        raise FhirError("invalid", "fullUrl must be a string", "Bundle.entry.fullUrl")
    request = raw.get("request")
    if not isinstance(request, dict):
        raise FhirError("invalid", "the entry has no request (method and url)")
    method, url = request.get("method"), request.get("url")
    if method not in METHODS:
        raise FhirError("invalid", f"unknown request method {method!r}")
    if not isinstance(url, str) or not url.strip():
        raise FhirError("invalid", "the entry's request has no url")
    url = _relative(url.strip(), base)
    resource = raw.get("resource")
    if resource is not None and not isinstance(resource, dict):
        raise FhirError("invalid", "the entry's resource must be an object")
    path, _, query = url.partition("?")
    parts = [p for p in path.split("/") if p]
    pairs = query_pairs(query, max_params)
    if method in ("GET", "HEAD") and (not parts or parts == ["_history"]):
        system = Entry(index, full_url, method, url, "", "", params=pairs)
        system.interaction = "history-system" if parts else "search-system"
        return system
    if not parts or not parts[0][:1].isupper():
        raise FhirError(
            "not-supported", f"'{method} {url}' is not an interaction on a resource type"
        )
    entry = Entry(index, full_url, method, url, "", parts[0])
    entry.if_match = _text(request, "ifMatch")
    entry.if_none_match = _text(request, "ifNoneMatch")
    since = _text(request, "ifModifiedSince")
    if since is not None:
        entry.if_modified_since = _instant(since)
    condition = _text(request, "ifNoneExist")
    if method == "GET" or method == "HEAD":
        _read_shape(entry, parts, pairs, url)
        return entry
    if method == "POST":
        if len(parts) != 1 or query:
            raise FhirError("not-supported", f"POST {url}: a create is POST to a type")
        entry.interaction = "create"
        entry.resource = _resource(resource, entry.resource_type)
        if condition is not None:
            entry.if_none_exist = query_pairs(condition.split("?", 1)[-1], max_params)
            if not entry.if_none_exist:
                raise FhirError("invalid", "ifNoneExist has no criteria")
        return entry
    if len(parts) == 2 and not query:
        entry.id = parts[1]
    elif len(parts) == 1 and pairs:
        entry.conditional = True
        entry.params = pairs
    else:
        raise FhirError("not-supported", f"{method} {url}: expected Type/id or Type?criteria")
    if method == "PUT":
        entry.interaction = "update"
        entry.resource = _resource(resource, entry.resource_type)
    elif method == "PATCH":
        entry.interaction = "patch"
        entry.patch = _patch(resource, max_depth)
    else:
        entry.interaction = "delete"
    return entry


def _read_shape(entry: Entry, parts: list[str], pairs: list[tuple[str, str]], url: str) -> None:
    n = len(parts)
    if n == 1:
        entry.interaction, entry.params = "search", pairs
    elif n == 2 and parts[1] == "_history":
        entry.interaction, entry.params = "history", pairs
    elif n == 2 and parts[1] == "_search":
        entry.interaction, entry.params = "search", pairs
    elif n == 2:
        entry.interaction, entry.id = "read", parts[1]
    elif n == 3 and parts[2] == "_history":
        entry.interaction, entry.id, entry.params = "history", parts[1], pairs
    elif n == 4 and parts[2] == "_history":
        entry.interaction, entry.id, entry.version_id = "vread", parts[1], parts[3]
    elif n == 3 and parts[2][:1].isupper():  # compartment.html#search
        if parts[0] != "Patient":
            raise FhirError(
                "not-found", f"no {parts[0]} compartment; the Patient compartment is supported"
            )
        entry.interaction, entry.params = "search", pairs
        entry.compartment, entry.resource_type = f"Patient/{parts[1]}", parts[2]
    else:
        raise FhirError(
            "not-supported", f"{entry.method} {url} is not a read, vread, search or history"
        )


def _relative(url: str, base: str) -> str:
    """A request url relative to the base: this server's absolute base is taken off."""
    if url.startswith(base + "/"):
        return url[len(base) + 1 :]
    if "://" in url.split("?", 1)[0]:
        raise FhirError("not-supported", f"{url} is not on this server ({base})")
    return url.lstrip("/")


def query_pairs(query: str, max_params: int) -> list[tuple[str, str]]:
    """The name=value pairs of a query (service parameters such as _format left out)."""
    try:
        pairs = parse_qsl(query, keep_blank_values=True, max_num_fields=max_params)
    except ValueError:
        raise FhirError("bad-request", f"more than {max_params} search parameters") from None
    return [(k, v) for k, v in pairs if k not in _SERVICE_PARAMS]


def _text(request: dict[str, Any], name: str) -> str | None:
    value = request.get(name)
    if value is not None and not isinstance(value, str):
        raise FhirError("invalid", f"request.{name} must be a string")
    return value


def _instant(value: str) -> datetime:
    """request.ifModifiedSince: an R4 instant; an HTTP date is accepted too."""
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        try:
            moment = parsedate_to_datetime(value)
        except (TypeError, ValueError):
            raise FhirError(
                "invalid", f"request.ifModifiedSince {value!r} is not an instant"
            ) from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def _resource(resource: dict[str, Any] | None, rt: str) -> dict[str, Any]:
    if resource is None:
        raise FhirError("invalid", "a create or update entry needs its resource")
    if resource.get("resourceType") != rt:
        raise FhirError(
            "invalid",
            f"resourceType {resource.get('resourceType')!r} does not match the request's type {rt}",
        )
    return resource


def _patch(resource: dict[str, Any] | None, max_depth: int) -> Any:
    """The patch of a PATCH entry (http.html#patch): a FHIRPath Patch, the entry's resource
    being its Parameters (fhirpatch.html), or a JSON Patch in a Binary whose contentType is
    application/json-patch+json and whose data is the patch."""
    if resource is None:
        raise FhirError("invalid", "a PATCH entry needs its patch: a Parameters or a Binary")
    if resource.get("resourceType") == "Parameters":
        return resource
    if resource.get("resourceType") != "Binary":
        raise FhirError(
            "invalid",
            "a PATCH entry's resource must be a Parameters (FHIRPath Patch) or a Binary "
            "holding a JSON Patch",
        )
    content_type = str(resource.get("contentType", "")).split(";")[0].strip().lower()
    if content_type != _JSON_PATCH:
        raise FhirError("not-supported", f"the Binary's contentType must be {_JSON_PATCH}")
    try:
        data = base64.b64decode(str(resource.get("data", "")), validate=True)
    except (binascii.Error, ValueError):
        raise FhirError("invalid", "the Binary's data is not base64") from None
    return loads(data, max_depth)
