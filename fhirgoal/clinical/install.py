"""Plugs the clinical rules into the FHIR service: write hooks and operations.

The FHIR layer knows nothing clinical; this is the one place that says which rules watch which
writes (fhir/hooks.py) and which operations exist (fhir/operations.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fhirgoal.clinical import gas_operations, progress, response_extraction
from fhirgoal.clinical.goal_status import GoalStatusHook
from fhirgoal.clinical.questionnaires import apply_licensed_text
from fhirgoal.clinical.response_extraction import ResponseExtractionHook
from fhirgoal.clinical.session_alerts import SessionAlertHook
from fhirgoal.config import Settings
from fhirgoal.fhir.service import FhirService


def install_clinical(service: FhirService) -> None:
    """Register the clinical hooks and operations on `service`."""
    gas_operations.register(service.operations)
    response_extraction.register(service.operations)
    progress.register(service.operations)
    service.hooks.register(ResponseExtractionHook(service))
    service.hooks.register(GoalStatusHook(service))
    service.hooks.register(SessionAlertHook(service))


def instrument_texts(settings: Settings) -> Callable[[dict[str, Any]], dict[str, Any]] | None:
    """The licensee's full item texts for built-in Questionnaires, when configured.

    `FHIRGOAL_INSTRUMENT_TEXT_DIR` holds `{questionnaire id}.json` files mapping linkId to text
    (ORS/SRS are licensed to organisations: the built-ins carry item labels only).
    """
    directory = settings.instrument_text_dir
    if directory is None:
        return None
    texts: dict[str, dict[str, str]] = {}
    for path in sorted(directory.glob("*.json")):
        content = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(content, dict) or not all(isinstance(v, str) for v in content.values()):
            raise ValueError(f"{path}: expected an object of linkId -> item text")
        texts[path.stem] = content

    def transform(resource: dict[str, Any]) -> dict[str, Any]:
        if resource.get("resourceType") == "Questionnaire" and resource.get("id") in texts:
            return apply_licensed_text(resource, texts[resource["id"]])
        return resource

    return transform
