"""FHIR over HTTP for one launch, with its access token (https://hl7.org/fhir/R4/http.html).

The app is an ordinary SMART client of whatever server launched it, fhirgoal or another: it
sends `Authorization: Bearer`, refreshes the token a minute before it expires
(app-launch.html#step-7-refresh), and on a 401 refreshes once and retries. When no refresh is
possible (none was granted, it was revoked or expired) it raises NeedsRelaunch, which the pages
turn into a "sign in again" prompt; nothing is retried with a stale token.

Errors keep the server's OperationOutcome so that the pages can show each issue where it belongs
(its `expression`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from fhirgoal.webapp.client_auth import ClientCredentials
from fhirgoal.webapp.sessions import Launch
from fhirgoal.webapp.smart_client import LaunchError, TokenSet, refresh

REFRESH_MARGIN_SECONDS = 60
FHIR_JSON = "application/fhir+json"


class NeedsRelaunch(Exception):
    """The launch's authorization is over; the user must launch or sign in again."""


@dataclass
class FhirCallError(Exception):
    status: int
    outcome: dict[str, Any] = field(default_factory=dict)

    def __str__(self) -> str:
        return "; ".join(issue.text for issue in self.issues) or f"HTTP {self.status}"

    @property
    def issues(self) -> list[Issue]:
        found = []
        for issue in self.outcome.get("issue") or []:
            if not isinstance(issue, dict):
                continue
            text = issue.get("diagnostics") or (issue.get("details") or {}).get("text") or ""
            found.append(
                Issue(
                    severity=str(issue.get("severity", "error")),
                    text=str(text or issue.get("code", "error")),
                    expression=[str(e) for e in issue.get("expression") or []],
                )
            )
        return found


@dataclass(frozen=True)
class Issue:
    severity: str
    text: str
    expression: list[str]


class FhirApi:
    def __init__(
        self, http: httpx.AsyncClient, launch: Launch, credentials: ClientCredentials
    ) -> None:
        self.http = http
        self.launch = launch
        self.credentials = credentials

    async def _renew(self, stale: TokenSet) -> None:
        """Refresh the launch's tokens unless another request already replaced `stale` (compared
        as objects: two tokens issued in the same second can be the same text)."""
        async with self.launch.refreshing:
            if self.launch.tokens is not stale:
                return
            try:
                self.launch.tokens = await refresh(
                    self.http,
                    self.launch.endpoints,
                    credentials=self.credentials,
                    tokens=stale,
                )
            except LaunchError as exc:
                raise NeedsRelaunch(str(exc)) from None

    async def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        tokens = self.launch.tokens
        if tokens.expires_within(REFRESH_MARGIN_SECONDS):
            if tokens.refresh_token:
                await self._renew(tokens)
            elif tokens.expires_within(0):
                raise NeedsRelaunch("the access token has expired")
        # the base itself takes batches and transactions (http.html#transaction)
        url = f"{self.launch.iss}/{path.lstrip('/')}" if path else self.launch.iss
        headers = {"Accept": FHIR_JSON, **kwargs.pop("headers", {})}
        for attempt in (1, 2):
            used = self.launch.tokens
            headers["Authorization"] = f"Bearer {used.access_token}"
            response = await self.http.request(method, url, headers=headers, **kwargs)
            if response.status_code != 401:
                return response
            if attempt == 2 or not self.launch.tokens.refresh_token:
                break
            await self._renew(used)  # revoked or expired early: one fresh token, one more try
        raise NeedsRelaunch("the FHIR server no longer accepts this sign-in")

    @staticmethod
    def _body(response: httpx.Response) -> dict[str, Any]:
        if not response.content:
            return {}
        try:
            body = orjson.loads(response.content)
        except orjson.JSONDecodeError:
            return {}
        return body if isinstance(body, dict) else {}

    async def request(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        response = await self._send(method, path, **kwargs)
        body = self._body(response)
        if response.status_code >= 400:
            raise FhirCallError(response.status_code, body)
        return body

    async def read(self, path: str, params: dict[str, str] | None = None) -> dict[str, Any]:
        return await self.request("GET", path, params=params)

    async def search(self, resource_type: str, params: dict[str, str]) -> list[dict[str, Any]]:
        """The resources of a search's first page (callers ask for a `_count` that covers what
        they show)."""
        bundle = await self.read(resource_type, params)
        return [
            entry["resource"]
            for entry in bundle.get("entry") or []
            if isinstance(entry, dict) and isinstance(entry.get("resource"), dict)
        ]

    async def write(
        self, method: str, path: str, resource: dict[str, Any], if_match: str | None = None
    ) -> dict[str, Any]:
        """Create or update; `if_match` (a versionId) makes an update conditional on it."""
        headers = {"Content-Type": FHIR_JSON, "Prefer": "return=representation"}
        if if_match:
            headers["If-Match"] = f'W/"{if_match}"'
        return await self.request(method, path, content=orjson.dumps(resource), headers=headers)

    async def transaction(self, bundle: dict[str, Any]) -> dict[str, Any]:
        """POST a transaction Bundle to the base: all of it is stored or none (the server
        answers a failing entry with one OperationOutcome naming it)."""
        headers = {"Content-Type": FHIR_JSON}
        return await self.request("POST", "", content=orjson.dumps(bundle), headers=headers)
