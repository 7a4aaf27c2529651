"""What an interaction produced: the one shape every interaction and operation returns.

The service (service.py) and operation handlers (operations.py) produce it; rest.py turns it into
status, headers and body bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fhirgoal.store.repository import Version


@dataclass
class Outcome:
    """What an interaction produced; rest.py turns it into status, headers and body."""

    status: int
    version: Version | None = None
    body: dict[str, Any] | None = None  # Bundles and OperationOutcomes
    message: str = ""
    headers: dict[str, str] = field(default_factory=dict)
