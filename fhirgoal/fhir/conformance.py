"""The server's conformance data, loaded once from fhirgoal/conformance/ (package data, vendored by
scripts/vendor_conformance.py from the R4 definitions: https://hl7.org/fhir/R4/downloads.html), or
from FHIRGOAL_CONFORMANCE_DIR. A missing directory or file stops start-up with its path named.

Everything the server knows about resource types (which are stored, their structure, their search
parameters, their patient compartment membership) comes from here, so adding a type is data. Every
R4 resource type is stored except those R4 gives no RESTful endpoint (resource-types.json
`other`: Parameters, OperationOutcome), which are still validated where they are carried (a
Bundle entry, a contained resource).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Any


@dataclass(frozen=True, eq=False)  # identity hash: one instance per directory (cached)
class Conformance:
    directory: Path
    stored_types: tuple[str, ...]
    wire_types: tuple[str, ...]
    schema: dict[str, Any]
    structure: dict[str, Any]
    search_parameters: list[dict[str, Any]]
    patient_compartment: dict[str, list[str]]
    capability_template: dict[str, Any]

    @cached_property
    def _stored_set(self) -> frozenset[str]:
        return frozenset(self.stored_types)

    def is_stored(self, resource_type: str) -> bool:
        return resource_type in self._stored_set


def _read(directory: Path, name: str) -> Any:
    path = directory / name
    if not path.is_file():
        raise FileNotFoundError(f"conformance data missing: {path} (FHIRGOAL_CONFORMANCE_DIR)")
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _compartment(*definitions: dict[str, list[str]]) -> dict[str, list[str]]:
    """Per type, the parameters linking it to a patient, from every definition in turn."""
    members: dict[str, list[str]] = {}
    for definition in definitions:
        for rt, params in definition.items():
            if not rt.startswith("_"):
                known = members.setdefault(rt, [])
                known += [p for p in params if p not in known]
    return members


@cache
def load_conformance(directory: Path) -> Conformance:
    if not directory.is_dir():
        raise FileNotFoundError(f"no conformance directory: {directory} (FHIRGOAL_CONFORMANCE_DIR)")
    types = _read(directory, "resource-types.json")
    bundle = _read(directory, "search-parameters.json")
    # the project's own SearchParameters: data, like the R4 ones (no code per parameter)
    custom = _read(directory, "search-parameters-custom.json")
    compartment = _read(directory, "compartment-patient.json")
    # the project's own additions (a Binary through its securityContext), like its parameters
    compartment_custom = _read(directory, "compartment-patient-custom.json")
    return Conformance(
        directory=directory,
        stored_types=tuple(types["stored"]),
        wire_types=tuple(types["other"]),
        schema=_read(directory, "fhir.schema.json"),
        structure=_read(directory, "structure.json"),
        search_parameters=[e["resource"] for b in (bundle, custom) for e in b.get("entry", [])],
        patient_compartment=_compartment(compartment, compartment_custom),
        capability_template=_read(directory, "capability.json"),
    )
