"""Plugs the clinical rules into the FHIR service: write hooks and operations.

The FHIR layer knows nothing clinical; this is the one place that says which rules watch which
writes (fhir/hooks.py) and which operations exist (fhir/operations.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fhirgoal.clinical import gas_operations
from fhirgoal.clinical.goal_status import GoalStatusHook
from fhirgoal.config import Settings
from fhirgoal.fhir.service import FhirService


def install_clinical(service: FhirService) -> None:
    """Register the clinical hooks and operations on `service`."""
    gas_operations.register(service.operations)
    service.hooks.register(GoalStatusHook(service))


def instrument_texts(settings: Settings) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
    """The licensee's full item texts for built-in instruments, when configured."""
    return None
