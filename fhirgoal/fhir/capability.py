"""The CapabilityStatement, built from the same data that builds the routes and the search index.

https://hl7.org/fhir/R4/capabilitystatement.html . conformance/capability.json holds what is not
derived (software, formats, interaction set, defaults); the resource list comes from
resource-types.json and each type's search parameters from the registry, listing only those that
work, so the statement cannot promise what the server does not do.
"""

from __future__ import annotations

import copy
from typing import Any

from fhirgoal import __version__
from fhirgoal.fhir.conformance import Conformance
from fhirgoal.fhir.instants import instant_text, now
from fhirgoal.fhir.operations import OperationRegistry
from fhirgoal.fhir.profiles import ProfileSet
from fhirgoal.fhir.search.registry import SearchRegistry


def build_capability(
    conformance: Conformance,
    registry: SearchRegistry,
    base: str,
    operations: OperationRegistry | None = None,
    profiles: ProfileSet | None = None,
    additions: dict[str, dict[str, list[Any]]] | None = None,
) -> dict[str, Any]:
    """The statement; `operations`, `profiles` and `additions` (lists to append to a type's
    entry: `extension`, `supportedProfile`) add what the installed packages provide."""
    statement = copy.deepcopy(conformance.capability_template)
    statement["date"] = instant_text(now())
    statement["software"]["version"] = __version__
    statement["implementation"] = {"description": "fhirgoal", "url": base}
    rest = statement["rest"][0]
    interactions = rest.pop("resourceInteractions")
    defaults = rest.pop("resourceDefaults")
    resources = []
    reference_params = {
        rt: [
            p
            for p in registry.for_type(rt).params.values()
            if p.type == "reference" and p.supported
        ]
        for rt in conformance.stored_types
    }
    for rt in conformance.stored_types:
        params = [
            {"name": p.code, "definition": p.url, "type": p.type, "documentation": p.documentation}
            for p in sorted(registry.for_type(rt).params.values(), key=lambda p: p.code)
            if p.supported
        ]
        resources.append(
            {
                "type": rt,
                "profile": f"http://hl7.org/fhir/StructureDefinition/{rt}",
                "interaction": [{"code": code} for code in interactions],
                **defaults,
                "searchInclude": sorted(f"{rt}:{p.code}" for p in reference_params[rt]),
                "searchRevInclude": sorted(
                    f"{source}:{p.code}"
                    for source, source_params in reference_params.items()
                    for p in source_params
                    if not p.targets or rt in p.targets
                ),
                "searchParam": params,
            }
        )
        supported = sorted(p.url for p in (profiles.by_type.get(rt, []) if profiles else []))
        if supported:
            resources[-1]["supportedProfile"] = supported
        declared = _operations(operations, rt)
        if declared:
            resources[-1]["operation"] = declared
        entry = resources[-1]
        for key, values in (additions or {}).get(rt, {}).items():
            present = entry.get(key, [])
            entry[key] = [*present, *(v for v in values if v not in present)]
    rest["resource"] = resources
    system = _operations(operations, None)
    if system:
        rest["operation"] = system
    return statement


def _operations(operations: OperationRegistry | None, rt: str | None) -> list[dict[str, str]]:
    if operations is None:
        return []
    seen: dict[str, dict[str, str]] = {}
    for op in operations.operations.values():
        if op.resource_type == rt and op.definition:
            seen.setdefault(op.definition, {"name": op.name, "definition": op.definition})
    return sorted(seen.values(), key=lambda o: (o["name"], o["definition"]))
