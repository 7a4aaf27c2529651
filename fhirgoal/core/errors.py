"""FHIR errors as OperationOutcome, with ONE status table.

https://hl7.org/fhir/R4/http.html#summary (status codes) and
https://hl7.org/fhir/R4/operationoutcome.html (issue severity / type codes).

Every failure in the server is raised as a `FhirError` naming a *category*; the table below is the
only place that decides the HTTP status and the OperationOutcome issue type for it. R4 draws the
line between 400 (cannot be parsed / fails basic FHIR rules) and 422 (violates a profile or a
business rule), which is why `invalid` and `processing` are separate categories.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

# category -> (HTTP status, OperationOutcome.issue.code)
STATUS_TABLE: dict[str, tuple[int, str]] = {
    "bad-request": (400, "invalid"),  # malformed request: bad parameter, bad header, bad JSON
    "invalid": (400, "invalid"),  # resource fails the R4 schema or structural rules
    "not-supported": (400, "not-supported"),  # unknown search parameter, unsupported modifier
    "unauthorized": (401, "login"),
    "forbidden": (403, "forbidden"),
    "not-found": (404, "not-found"),
    "method-not-allowed": (405, "not-supported"),
    "not-acceptable": (406, "not-supported"),
    "conflict": (409, "conflict"),  # concurrent writer won without If-Match
    "gone": (410, "deleted"),
    "precondition-failed": (412, "conflict"),  # stale If-Match, several conditional matches
    "too-large": (413, "too-costly"),
    "unsupported-media-type": (415, "not-supported"),
    "processing": (422, "processing"),  # profile / invariant / business-rule violation
    "internal": (500, "exception"),
    "unavailable": (503, "transient"),
}

# status -> category, derived from the table (the first category naming a status): how an error
# that arrives as a bare status (a framework's 404 or 405) is rendered
_CATEGORY_OF_STATUS = {status: c for c, (status, _) in reversed(STATUS_TABLE.items())}


def category_for_status(status: int) -> str:
    """The category of an HTTP error status; `bad-request` for a status the table lacks."""
    return _CATEGORY_OF_STATUS.get(status, "bad-request")


class FhirgoalError(Exception):
    """The base of the exceptions this package raises on purpose. FhirError (and its family)
    becomes an OperationOutcome; the others are caught where they are meaningful (InvalidToken,
    OAuthError: auth/; AlreadyExists: fhir/service.py; UserExists, ClientExists,
    KeyEncryptionError, EmbeddedUnavailable: start-up and the CLI; ScopeError: scope parsing)."""


@dataclass(frozen=True, slots=True)
class Issue:
    """One OperationOutcome.issue: what went wrong and where (FHIRPath `expression`)."""

    diagnostics: str
    expression: str | None = None
    code: str | None = None  # overrides the category's issue type (e.g. "required", "value")
    severity: str = "error"

    def to_json(self, default_code: str) -> dict[str, Any]:
        issue: dict[str, Any] = {
            "severity": self.severity,
            "code": self.code or default_code,
            "diagnostics": self.diagnostics,
        }
        if self.expression:
            issue["expression"] = [self.expression]
        return issue


@dataclass
class FhirError(FhirgoalError):
    """A failure that becomes an OperationOutcome response."""

    category: str
    diagnostics: str = ""
    expression: str | None = None
    issues: list[Issue] = field(default_factory=list)
    headers: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.category not in STATUS_TABLE:
            raise ValueError(f"unknown error category {self.category!r}")
        if not self.issues:
            self.issues = [Issue(self.diagnostics, self.expression)]
        Exception.__init__(self, self.diagnostics or self.issues[0].diagnostics)

    @property
    def status(self) -> int:
        return STATUS_TABLE[self.category][0]

    def outcome(self) -> dict[str, Any]:
        code = STATUS_TABLE[self.category][1]
        return {"resourceType": "OperationOutcome", "issue": [i.to_json(code) for i in self.issues]}

    def body(self) -> bytes:
        return orjson.dumps(self.outcome())


def informational_outcome(
    text: str, severity: str = "information", code: str = "informational"
) -> dict[str, Any]:
    """An OperationOutcome that reports success or a warning (Prefer: return=OperationOutcome)."""
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": severity, "code": code, "diagnostics": text}],
    }
