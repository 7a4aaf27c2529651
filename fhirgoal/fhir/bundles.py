"""Searchset and history Bundles: https://hl7.org/fhir/R4/bundle.html ,
https://hl7.org/fhir/R4/search.html#bundle , https://hl7.org/fhir/R4/http.html#history
"""

from __future__ import annotations

from datetime import UTC
from typing import Any
from urllib.parse import urlencode

import orjson

from fhirgoal.core.errors import informational_outcome
from fhirgoal.fhir.instants import instant_text
from fhirgoal.fhir.search.engine import SearchPage
from fhirgoal.fhir.search.query import encode_cursor
from fhirgoal.store.repository import Version

_STATUS = {"POST": "201 Created", "PUT": "200 OK", "PATCH": "200 OK", "DELETE": "204 No Content"}


_WEEKDAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


def http_date(version: Version) -> str:
    """Last-Modified as an RFC 9110 IMF-fixdate, e.g. `Sun, 06 Nov 1994 08:49:37 GMT` (written
    out here: email.utils.format_datetime took 1% of a read's CPU)."""
    moment = version.last_updated.astimezone(UTC)
    return (
        f"{_WEEKDAYS[moment.weekday()]}, {moment.day:02d} {_MONTHS[moment.month - 1]} "
        f"{moment.year:04d} {moment.hour:02d}:{moment.minute:02d}:{moment.second:02d} GMT"
    )


def link(url: str, params: list[tuple[str, str]]) -> str:
    return f"{url}?{urlencode(params)}" if params else url


def searchset(
    base: str,
    url: str,
    versions: list[Version],
    total: int | None,
    links: dict[str, list[tuple[str, str]]],
    warnings: list[str],
    included: list[Version] | None = None,
) -> dict[str, Any]:
    entries: list[dict[str, Any]] = [
        {
            "fullUrl": f"{base}/{v.resource_type}/{v.id}",
            "resource": orjson.Fragment(v.text or "null"),  # searches never match deletions
            "search": {"mode": mode},
        }
        for mode, group in (("match", versions), ("include", included or []))
        for v in group
    ]
    if warnings:
        outcome = informational_outcome(
            "; ".join(warnings), severity="warning", code="not-supported"
        )
        entries.append({"resource": outcome, "search": {"mode": "outcome"}})
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "searchset"}
    if total is not None:
        bundle["total"] = total
    bundle["link"] = [{"relation": rel, "url": link(url, params)} for rel, params in links.items()]
    if entries:
        bundle["entry"] = entries
    return bundle


def searchset_page(base: str, url: str, page: SearchPage) -> dict[str, Any]:
    """The searchset Bundle of one page of a search, with its self/next/previous links."""
    compiled = page.compiled
    kept = [*compiled.used, ("_count", str(compiled.count))]
    here = [("_cursor", encode_cursor(compiled.cursor))] if compiled.cursor else []
    links: dict[str, list[tuple[str, str]]] = {"self": kept + here}
    if page.next_cursor:
        links["next"] = [*kept, ("_cursor", encode_cursor(page.next_cursor))]
    if page.previous_cursor:
        links["previous"] = [*kept, ("_cursor", encode_cursor(page.previous_cursor))]
    return searchset(base, url, page.matches, page.total, links, compiled.warnings, page.included)


def system_searchset_page(
    base: str, params: list[tuple[str, str]], page: SearchPage
) -> dict[str, Any]:
    """The searchset Bundle of a system-level search (`[base]?_type=...`), whose links keep the
    `_type` parameters the search was asked with."""
    types = [("_type", v) for k, v in params if k == "_type"]
    page.compiled.used = types + page.compiled.used
    return searchset_page(base, base, page)


def history_entry(base: str, v: Version, with_resource: bool = True) -> dict[str, Any]:
    """A version as an entry of a history Bundle: the resource (unless deleted, or left out),
    and the request and response that made it (bundle.html#history, bdl-3 and bdl-4: both are
    required there)."""
    entry: dict[str, Any] = {"fullUrl": f"{base}/{v.resource_type}/{v.id}"}
    if v.text is not None and with_resource:
        entry["resource"] = orjson.Fragment(v.text)
    method = v.method
    entry["request"] = {
        "method": method,
        "url": v.resource_type if method == "POST" else f"{v.resource_type}/{v.id}",
    }
    entry["response"] = {
        "status": "201 Created" if v.version == 1 and method != "DELETE" else _STATUS[method],
        "etag": f'W/"{v.version}"',
        "lastModified": instant_text(v.last_updated),
    }
    return entry


def history(
    base: str,
    url: str,
    versions: list[Version],
    total: int,
    links: dict[str, list[tuple[str, str]]],
) -> dict[str, Any]:
    entries = [history_entry(base, v) for v in versions]
    bundle: dict[str, Any] = {"resourceType": "Bundle", "type": "history", "total": total}
    bundle["link"] = [{"relation": rel, "url": link(url, params)} for rel, params in links.items()]
    if entries:
        bundle["entry"] = entries
    return bundle
