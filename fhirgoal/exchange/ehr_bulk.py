"""Bulk pulls: many patients' records from an EHR through its Bulk Data `$export`.

Issue 15 ("incremental pull ... `_lastUpdated` / `_since`, or Bulk `$export` when the EHR offers
it"). SMART Bulk Data Access 2.0.0 (https://hl7.org/fhir/uv/bulkdata/export.html), as a client:

- **Kick-off** with `Prefer: respond-async`: a connection with `bulk = "patient"` posts
  `Patient/$export` with one `patient` parameter per followed patient (the spec's optional
  narrowing; fhirgoal's own server honours it); one with `bulk = "Group/<id>"` asks
  `GET Group/<id>/$export`, the form EHRs that export only pre-defined groups offer, and
  everything of a patient fhirgoal does not follow is left out here. `_type` is the types the
  connection pulls; `_since` the earliest of their cursors minus the overlap (what is fetched
  twice changes nothing). The answer is 202 with the status URL in `Content-Location`.
- **Status**: polled, honouring `Retry-After` (seconds or an HTTP date) and otherwise backing
  off from 0.5 to 10 s, for at most `sync_bulk_wait_seconds`; 200 is the manifest.
- **Files**: the manifest's `output` files of each type, read as they come (NDJSON, one resource a
  line, a line bounded by MAX_LINE_BYTES) and handed on in pages like a search's.
  `requiresAccessToken: true` sends the connection's token, and only to a file on the EHR's own
  base (as the pulls follow `next` links only there): a manifest pointing elsewhere gets no
  token, and the pull fails with the reason. `error` files are counted and logged.
- **Done**: the job is deleted at the EHR (`DELETE` on the status URL), successful or not.

A pull uses it for a group of patients (the ones followed since the last pull, or all the others)
of at least `sync_bulk_min_patients`: below that, searches cost less than an export's round trips
(exchange/ehr_inbound.py decides).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import structlog

from fhirgoal.core.errors import FhirError
from fhirgoal.core.jsonio import dumps, loads
from fhirgoal.exchange.backend_auth import BackendServicesClient
from fhirgoal.exchange.connections import EhrConnection
from fhirgoal.exchange.delivery import retry_after
from fhirgoal.exchange.ehr_search import FHIR_JSON, PullError
from fhirgoal.exchange.translate import patient_of
from fhirgoal.fhir.instants import instant_text

log = structlog.get_logger(__name__)

NDJSON = "application/fhir+ndjson"
MAX_LINE_BYTES = 16 * 1024 * 1024  # one resource; a longer line is a broken or hostile file
FIRST_WAIT, LONGEST_WAIT = 0.5, 10.0  # status polls without Retry-After, doubling
LONGEST_RETRY_AFTER = 60.0  # a server's Retry-After, believed up to this


@dataclass
class BulkJob:
    """One export at the EHR: its status URL and, once done, its manifest."""

    client: BackendServicesClient
    connection: EhrConnection
    status_url: str
    patients: frozenset[str]  # "Patient/<EHR id>": what is kept of the files
    manifest: dict[str, Any] = field(default_factory=dict)
    read: int = 0  # resources read from the files
    errors: int = 0  # lines of the manifest's error files

    # ---- the export ------------------------------------------------------------------------
    @classmethod
    async def start(
        cls,
        client: BackendServicesClient,
        connection: EhrConnection,
        ehr_ids: list[str],
        types: list[str],
        since: datetime | None,
    ) -> BulkJob:
        """Kick the export off (https://hl7.org/fhir/uv/bulkdata/export.html#bulk-data-kick-off-request)."""
        mode = connection.bulk_export
        headers = {"Accept": FHIR_JSON, "Prefer": "respond-async"}
        if mode == "patient":
            url = f"{connection.base}/Patient/$export"
            parameter: list[dict[str, Any]] = [
                {"name": "_outputFormat", "valueString": NDJSON},
                {"name": "_type", "valueString": ",".join(types)},
            ]
            if since is not None:
                parameter.append({"name": "_since", "valueInstant": instant_text(since)})
            parameter += [
                {"name": "patient", "valueReference": {"reference": f"Patient/{i}"}}
                for i in ehr_ids
            ]
            body = dumps({"resourceType": "Parameters", "parameter": parameter})
            response = await client.request(
                "POST", url, headers={**headers, "Content-Type": FHIR_JSON}, content=body
            )
        else:
            url = f"{connection.base}/{mode}/$export"
            params = [("_outputFormat", NDJSON), ("_type", ",".join(types))]
            if since is not None:
                params.append(("_since", instant_text(since)))
            response = await client.request("GET", url, headers=headers, params=params)
        if response.status_code != 202:
            raise PullError(f"EHR {connection.name}: {url}: {_refusal(response)}")
        status_url = response.headers.get("content-location", "")
        if not _on_base(status_url, connection):
            raise PullError(
                f"EHR {connection.name}: {url}: the status URL {status_url!r} is not on its base"
            )
        patients = frozenset(f"Patient/{i}" for i in ehr_ids)
        return cls(client, connection, status_url, patients)

    async def finished(self, within: float) -> dict[str, Any]:
        """Poll the status until the manifest (https://hl7.org/fhir/uv/bulkdata/export.html#response---complete-status)."""
        loop = asyncio.get_running_loop()
        deadline, pause = loop.time() + within, FIRST_WAIT
        name = self.connection.name
        while True:
            response = await self.client.request(
                "GET", self.status_url, headers={"Accept": "application/json"}
            )
            if response.status_code == 200:
                try:
                    manifest = loads(response.content)
                except FhirError:
                    raise PullError(f"EHR {name}: the export's manifest is not JSON") from None
                if not isinstance(manifest, dict) or not isinstance(manifest.get("output"), list):
                    raise PullError(f"EHR {name}: the export's manifest has no output list")
                self.manifest = manifest
                return manifest
            if response.status_code not in (202, 429, 503):
                raise PullError(f"EHR {name}: the export failed: {_refusal(response)}")
            asked = retry_after(response.headers.get("retry-after"), datetime.now(UTC))
            # an EHR's Retry-After is believed between FIRST_WAIT (a `0` must not make a poll
            # loop) and LONGEST_RETRY_AFTER
            wait = pause if asked is None else min(max(asked, FIRST_WAIT), LONGEST_RETRY_AFTER)
            pause = min(pause * 2, LONGEST_WAIT)
            if loop.time() + wait > deadline:
                raise PullError(f"EHR {name}: the export did not finish within {within:.0f} s")
            await asyncio.sleep(wait)

    async def close(self) -> None:
        """Delete the job at the EHR (its files too): done with it, whatever happened."""
        with contextlib.suppress(httpx.HTTPError, FhirError, PullError):
            await self.client.request("DELETE", self.status_url)

    # ---- the files -------------------------------------------------------------------------
    async def pages(self, rt: str, size: int) -> AsyncIterator[list[dict[str, Any]]]:
        """The resources of type `rt` in the files, in pages of `size`, those of patients not
        asked for left out."""
        page: list[dict[str, Any]] = []
        for url in self._files("output", rt):
            async for resource in self._resources(url):
                if resource.get("resourceType") != rt or not isinstance(resource.get("id"), str):
                    continue
                self.read += 1
                if patient_of(resource) not in self.patients:
                    continue
                page.append(resource)
                if len(page) >= size:
                    yield page
                    page = []
        if page:
            yield page

    async def count_errors(self) -> int:
        """The OperationOutcomes of the manifest's error files, logged; how many."""
        for url in self._files("error", None):
            async for outcome in self._resources(url):
                self.errors += 1
                if self.errors <= 5:
                    log.warning(
                        "EHR export reported an error",
                        connection=self.connection.name,
                        issue=dumps(outcome.get("issue") or [])[:500].decode(errors="replace"),
                    )
        return self.errors

    def _files(self, part: str, rt: str | None) -> list[str]:
        return [
            str(entry["url"])
            for entry in self.manifest.get(part) or []
            if isinstance(entry, dict)
            and isinstance(entry.get("url"), str)
            and (rt is None or entry.get("type") == rt)
        ]

    async def _resources(self, url: str) -> AsyncIterator[dict[str, Any]]:
        name = self.connection.name
        authorized = bool(self.manifest.get("requiresAccessToken"))
        if authorized and not _on_base(url, self.connection):
            raise PullError(
                f"EHR {name}: the export file {url} is not on its base: no token is sent there"
            )
        async with self.client.stream(
            url, headers={"Accept": NDJSON}, authorized=authorized
        ) as response:
            if response.status_code != 200:
                raise PullError(f"EHR {name}: GET {url}: HTTP {response.status_code}")
            async for line in _lines(response, MAX_LINE_BYTES):
                try:
                    resource = loads(line)
                except FhirError:
                    raise PullError(f"EHR {name}: {url}: a line is not JSON") from None
                if isinstance(resource, dict):
                    yield resource


async def _lines(response: httpx.Response, limit: int) -> AsyncIterator[bytes]:
    """The non-blank lines of a streamed body, each at most `limit` bytes."""
    pending = b""
    async for chunk in response.aiter_bytes():
        pending += chunk
        *complete, pending = pending.split(b"\n")
        for line in complete:
            if line.strip():
                yield line
        if len(pending) > limit:
            raise PullError(f"{response.url}: a line longer than {limit} bytes")
    if pending.strip():
        yield pending


def _on_base(url: str, connection: EhrConnection) -> bool:
    return url.startswith((f"{connection.base}/", f"{connection.base}?"))


def _refusal(response: httpx.Response) -> str:
    """HTTP status and, when the body is an OperationOutcome, its first diagnostics."""
    text = f"HTTP {response.status_code}"
    with contextlib.suppress(FhirError, AttributeError, IndexError, TypeError):
        outcome = loads(response.content)
        if isinstance(outcome, dict) and outcome.get("resourceType") == "OperationOutcome":
            issue = outcome["issue"][0]
            detail = issue.get("diagnostics") or (issue.get("details") or {}).get("text")
            if detail:
                text += f": {str(detail)[:300]}"
    return text
