"""What an EHR's answers to the sync's requests mean (exchange/ehr_outbound.py, ehr_deletions.py).

Issue 15: a delivery that fails for a reason retrying cannot change is parked at once as dead,
with the reason, instead of retried for the 7 days of the dead-letter horizon; a transient one
keeps the backoff (exchange/delivery.py). By status (https://hl7.org/fhir/R4/http.html, RFC 9110
section 15):

- final: 400 (the EHR cannot parse or will not take the content: http.html#2.21.0.9 "400 Bad
  Request - resource could not be parsed or failed basic FHIR validation rules"), 422
  ("Unprocessable Entity - the proposed resource violated applicable FHIR profiles or server
  business rules"), 403 (the connection's scopes do not allow it), 405 (the EHR does not offer
  the interaction on that type). Each needs a human: a mapping fixed, a registration changed;
  then `fhirgoal sync retry` puts the items back.
- transient: no answer, 5xx, 429 (with Retry-After), 401 (the client asks for a new token once,
  exchange/backend_auth.py), 409/412 (a concurrent edit: a re-read settles it), and anything
  else. A token request the EHR refuses stays transient too: it stops every item of the
  connection alike, and once the EHR's registration is fixed they all go without a retry.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import httpx

from fhirgoal.core.errors import FhirError
from fhirgoal.core.jsonio import loads
from fhirgoal.exchange.delivery import retry_after
from fhirgoal.fhir.outbox import Sent
from fhirgoal.fhir.search.dates import parse_range

FHIR_JSON = "application/fhir+json"
FINAL_STATUSES = frozenset({400, 403, 405, 422})


class EhrClient(Protocol):
    """What makes the sync's requests to an EHR: the connection's Backend Services client
    (exchange/backend_auth.py), or a user's token for one delivery (exchange/user_tokens.py)."""

    async def request(
        self,
        method: str,
        url: str,
        *,
        headers: dict[str, str] | None = None,
        content: bytes | None = None,
        params: Sequence[tuple[str, str]] | None = None,
    ) -> httpx.Response: ...


class Refused(Exception):
    """The EHR answered a request with an error (or did not answer)."""

    def __init__(self, sent: Sent) -> None:
        super().__init__(sent.error)
        self.sent = sent


def failure(method: str, url: str, response: httpx.Response) -> Sent:
    """A failed request as a delivery outcome: the status and the EHR's diagnostics, any
    Retry-After wait, and whether retrying can help."""
    reason = f"{method} {url}: HTTP {response.status_code}"
    try:
        body = loads(response.content)
        details = [i.get("diagnostics", "") for i in body.get("issue", []) if isinstance(i, dict)]
        if any(details):
            reason += ": " + "; ".join(d for d in details if d)[:500]
    except (FhirError, AttributeError):
        pass
    wait = None
    if response.status_code in (429, 503):
        wait = retry_after(response.headers.get("retry-after"), datetime.now(UTC))
    return Sent(error=reason, retry_after=wait, final=response.status_code in FINAL_STATUSES)


def ehr_version(response: httpx.Response, body: dict[str, Any] | None) -> tuple[str, str, str]:
    """(id, versionId, lastUpdated) of what the EHR stored, from the body or the headers."""
    if body and body.get("id") and (body.get("meta") or {}).get("versionId"):
        meta = body["meta"]
        return str(body["id"]), str(meta["versionId"]), str(meta.get("lastUpdated", ""))
    location = response.headers.get("location") or response.headers.get("content-location") or ""
    parts = location.rstrip("/").split("/")
    if "_history" in parts:
        at = parts.index("_history")
        return parts[at - 1], parts[at + 1], response.headers.get("last-modified", "")
    etag = response.headers.get("etag", "").removeprefix("W/").strip('"')
    return (parts[-1] if parts else ""), etag, ""


def resource_body(response: httpx.Response) -> dict[str, Any] | None:
    """The resource an answer carries, if it carries one."""
    if not response.content:
        return None
    try:
        body = loads(response.content)
    except FhirError:
        return None
    return dict(body) if isinstance(body, dict) and "resourceType" in body else None


def instant(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return parse_range(text)[0]
    except FhirError:
        return None
