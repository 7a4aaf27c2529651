"""What an interaction produced: the one shape every interaction and operation returns.

The service (service.py) and operation handlers (operations.py) produce it; rest.py turns it into
status, headers and body bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fhirgoal.core.errors import Issue
from fhirgoal.store.repository import Version


@dataclass
class Outcome:
    """What an interaction produced; rest.py turns it into status, headers and body."""

    status: int
    version: Version | None = None
    body: dict[str, Any] | None = None  # Bundles and OperationOutcomes
    message: str = ""
    headers: dict[str, str] = field(default_factory=dict)
    # What the server accepted but would not hold a resource claiming its profiles to, and what
    # the write's rules could not do (a calculatedExpression that failed): reported with
    # `Prefer: return=OperationOutcome`.
    warnings: list[Issue] = field(default_factory=list)
