"""Searches of an EHR made by the sync: the pages of one search, followed by their `next` links.

Issue 15 (inbound pulls and identity matching, exchange/ehr_inbound.py and ehr_identity.py). A
search is `GET <base>/<type>?...` (https://hl7.org/fhir/R4/http.html#search); its pages are
searchset Bundles whose `next` link (https://hl7.org/fhir/R4/bundle.html#searchset, #paging) is
followed only while it stays on the EHR's base, so that a hostile or misconfigured EHR cannot
send the connection's token elsewhere; a type's history (`<type>/_history?_since=`, how a pull
sees deletions, exchange/ehr_deletions.py) is paged the same way. Entries with `search.mode = outcome` (an
OperationOutcome about the search) and entries of other types (`_include`d ones) are left out.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fhirgoal.core.errors import FhirError, FhirgoalError
from fhirgoal.core.jsonio import loads
from fhirgoal.exchange.backend_auth import BackendServicesClient
from fhirgoal.exchange.connections import EhrConnection

FHIR_JSON = "application/fhir+json"
IDENTIFIERS_PER_SEARCH = 50  # identifiers (or ids) in one search's OR list


class PullError(FhirgoalError, RuntimeError):
    """A search of a pull failed (the EHR refused it or answered what is not a Bundle)."""


def chunks(items: list[str], size: int = IDENTIFIERS_PER_SEARCH) -> list[list[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


async def search_pages(
    client: BackendServicesClient,
    connection: EhrConnection,
    rt: str,
    params: list[tuple[str, str]],
) -> AsyncIterator[list[dict[str, Any]]]:
    """The pages of a search: the resources of type `rt` in each (outcome entries left out);
    `next` links are followed only on the EHR's base."""
    async for bundle in _bundles(client, connection, f"{connection.base}/{rt}", params):
        yield [
            dict(entry["resource"])
            for entry in bundle.get("entry") or []
            if isinstance(entry, dict)
            and isinstance(entry.get("resource"), dict)
            and entry["resource"].get("resourceType") == rt
            and (entry.get("search") or {}).get("mode", "match") != "outcome"
        ]


async def history_pages(
    client: BackendServicesClient,
    connection: EhrConnection,
    rt: str,
    params: list[tuple[str, str]],
) -> AsyncIterator[list[dict[str, Any]]]:
    """The pages of a type's history (https://hl7.org/fhir/R4/http.html#history): the entries
    of each as they are (a deletion has `request.method` DELETE and no resource)."""
    url = f"{connection.base}/{rt}/_history"
    async for bundle in _bundles(client, connection, url, params):
        yield [dict(e) for e in bundle.get("entry") or [] if isinstance(e, dict)]


async def _bundles(
    client: BackendServicesClient,
    connection: EhrConnection,
    url: str,
    params: list[tuple[str, str]],
) -> AsyncIterator[dict[str, Any]]:
    """The Bundles of `url` and of the `next` links after it that stay on the EHR's base."""
    at: str | None = url
    query: list[tuple[str, str]] | None = params
    while at is not None:
        response = await client.request("GET", at, headers={"Accept": FHIR_JSON}, params=query)
        if response.status_code != 200:
            raise PullError(f"EHR {connection.name}: GET {at}: HTTP {response.status_code}")
        try:
            bundle = loads(response.content)
        except FhirError:
            raise PullError(f"EHR {connection.name}: GET {at}: not JSON") from None
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise PullError(f"EHR {connection.name}: GET {at}: not a Bundle")
        yield bundle
        at, query = None, None
        for link in bundle.get("link") or []:
            target = link.get("url") if isinstance(link, dict) else None
            on_base = isinstance(target, str) and target.startswith(
                (f"{connection.base}/", f"{connection.base}?")
            )
            if link.get("relation") == "next" and on_base:
                at = target
