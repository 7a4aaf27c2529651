"""Built-in definitional resources, loaded at start-up and served as ordinary resources.

fhirgoal/profiles/ (package data, or FHIRGOAL_PROFILES_DIR) holds the Questionnaires,
StructureDefinitions, ValueSets and CodeSystems the server ships
(https://hl7.org/fhir/R4/conformance-module.html). Each file is one resource with a fixed `id`.
At start-up every one that is missing, or whose content differs from the file (meta aside), is
written through the FhirService, so it is validated, versioned and searchable by url, name,
title and status like anything a client creates. Clinicians' own Questionnaires are ordinary
creates and never touched here. A missing directory, or one without any resource, stops start-up:
a server without its built-in Questionnaires and profiles must not run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from fhirgoal.core.access import UNRESTRICTED
from fhirgoal.core.jsonio import loads
from fhirgoal.fhir.service import FhirService

Transform = Callable[[dict[str, Any]], dict[str, Any]]


@dataclass(frozen=True)
class CatalogReport:
    created: int
    updated: int
    unchanged: int


@cache
def read_catalog(directory: Path) -> tuple[dict[str, Any], ...]:
    """Every resource under `directory` (recursively), in path order; ValueError names a bad file,
    FileNotFoundError a missing or empty directory."""
    if not directory.is_dir():
        raise FileNotFoundError(f"no profiles directory: {directory} (FHIRGOAL_PROFILES_DIR)")
    paths = sorted(directory.rglob("*.json"))
    if not paths:
        raise FileNotFoundError(f"no resources in {directory} (FHIRGOAL_PROFILES_DIR)")
    resources = []
    for path in paths:
        resource = loads(path.read_bytes())
        if not isinstance(resource, dict) or not resource.get("resourceType"):
            raise ValueError(f"{path}: not a FHIR resource")
        if not resource.get("id"):
            raise ValueError(f"{path}: a built-in resource needs a fixed id")
        resources.append(resource)
    return tuple(resources)


def _content(resource: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in resource.items() if key != "meta"}


async def load_catalog(
    service: FhirService, directory: Path, transform: Transform | None = None
) -> CatalogReport:
    created = updated = unchanged = 0
    for resource in read_catalog(directory):
        wanted = transform(resource) if transform else resource
        rt, rid = wanted["resourceType"], wanted["id"]
        current = await service.current(UNRESTRICTED, rt, rid)
        stored = current.resource if current is not None else None
        if stored is not None and _content(stored) == _content(wanted):
            unchanged += 1
            continue
        outcome = await service.update(UNRESTRICTED, rt, rid, wanted, None)
        if outcome.status == 201:
            created += 1
        else:
            updated += 1
    return CatalogReport(created, updated, unchanged)
