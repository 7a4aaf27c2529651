"""Per-request access context, applied by the repository so that no route can forget it.

https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html . Today the only context is
`unrestricted` (FHIRGOAL_AUTH=off, loopback only); the SMART issue adds scope-derived contexts that
narrow every query (patient compartment, resource types, interactions) and deny by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Interactions in SMART v2 letters: c(reate) r(ead) u(pdate) d(elete) s(earch).
INTERACTIONS = frozenset("cruds")


@dataclass(frozen=True)
class AccessContext:
    """Who is asking and what they may touch."""

    subject: str = "anonymous"
    client_id: str | None = None
    unrestricted: bool = False

    def constrain(
        self, resource_type: str, interaction: str, query: dict[str, Any]
    ) -> dict[str, Any]:
        """Return `query` narrowed to what this context may see; raise FhirError when denied."""
        if interaction not in INTERACTIONS:
            raise ValueError(f"unknown interaction {interaction!r}")
        if self.unrestricted:
            return query
        from fhirgoal.fhir.errors import FhirError

        raise FhirError("forbidden", "this request is not authorized for that interaction")


UNRESTRICTED = AccessContext(subject="system", unrestricted=True)
