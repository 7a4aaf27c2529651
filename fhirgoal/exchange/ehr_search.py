"""Searches of an EHR made by the sync: the pages of one search, followed by their `next` links.

Issue 15 (inbound pulls and identity matching, exchange/ehr_inbound.py and ehr_identity.py). A
search is `GET <base>/<type>?...` (https://hl7.org/fhir/R4/http.html#search); its pages are
searchset Bundles whose `next` link (https://hl7.org/fhir/R4/bundle.html#searchset, #paging) is
followed only while it stays on the EHR's base, so that a hostile or misconfigured EHR cannot
send the connection's token elsewhere. Entries with `search.mode = outcome` (an
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
    url: str | None = f"{connection.base}/{rt}"
    query: list[tuple[str, str]] | None = params
    while url is not None:
        response = await client.request("GET", url, headers={"Accept": FHIR_JSON}, params=query)
        if response.status_code != 200:
            raise PullError(f"EHR {connection.name}: GET {url}: HTTP {response.status_code}")
        try:
            bundle = loads(response.content)
        except FhirError:
            raise PullError(f"EHR {connection.name}: GET {url}: not JSON") from None
        if not isinstance(bundle, dict) or bundle.get("resourceType") != "Bundle":
            raise PullError(f"EHR {connection.name}: GET {url}: not a Bundle")
        yield [
            dict(entry["resource"])
            for entry in bundle.get("entry") or []
            if isinstance(entry.get("resource"), dict)
            and entry["resource"].get("resourceType") == rt
            and (entry.get("search") or {}).get("mode", "match") != "outcome"
        ]
        url, query = None, None
        for link in bundle.get("link") or []:
            target = link.get("url")
            on_base = isinstance(target, str) and target.startswith(
                (f"{connection.base}/", f"{connection.base}?")
            )
            if link.get("relation") == "next" and on_base:
                url = target
