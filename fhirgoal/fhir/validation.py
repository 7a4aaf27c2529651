"""Validation of every write: https://hl7.org/fhir/R4/validation.html

Four layers, cheapest first, each stopping the write with an OperationOutcome whose issues carry
FHIRPath `expression`s:
1. the official R4 JSON schema (jsonschema-rs; value-set enums, regexes, unknown elements),
2. the structural check against the StructureDefinitions (structure.py),
3. the FHIRPath invariants (invariants.py),
4. the rules of the server's own profiles that apply to the resource (profiles.py): errors for a
   profile the resource claims, warnings for one it only matches (the write goes ahead and the
   warnings travel with its Outcome to the response's OperationOutcome).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from functools import cached_property
from typing import Any

import jsonschema_rs

from fhirgoal.core.errors import FhirError, Issue
from fhirgoal.fhir.conformance import Conformance
from fhirgoal.fhir.invariants import InvariantChecker
from fhirgoal.fhir.profiles import ProfileSet
from fhirgoal.fhir.structure import StructureChecker

_UNEXPECTED = re.compile(r"'([^']+)'")
_REQUIRED = re.compile(r'^"([^"]+)" is a required property')
MAX_ISSUES = 20


def fhirpath_of(resource_type: str, instance_path: list[str | int]) -> str:
    expr = resource_type
    for part in instance_path:
        expr += f"[{part}]" if isinstance(part, int) else f".{part}"
    return expr


def _placeholder(resource: dict[str, Any], path: list[str | int]) -> bool:
    """A null in an array of primitives beside the id/extensions of the value it stands for
    (`"given": [null, "b"], "_given": [{...}, null]`, json.html#primitive): valid R4, which the
    JSON schema types as an array of strings. The structural check judges the alignment."""
    if len(path) < 2 or not isinstance(path[-1], int) or not isinstance(path[-2], str):
        return False
    node: Any = resource
    for part in path[:-2]:
        try:
            node = node[part]
        except (KeyError, IndexError, TypeError):
            return False
    parts = node.get(f"_{path[-2]}") if isinstance(node, dict) else None
    return isinstance(parts, list) and path[-1] < len(parts) and parts[path[-1]] is not None


class Validator:
    def __init__(self, conformance: Conformance, profiles: ProfileSet | None = None) -> None:
        self.conformance = conformance
        self.profiles = profiles or ProfileSet([])
        self.structure = StructureChecker(conformance.structure)
        self.invariants = InvariantChecker(conformance.structure)

    @cached_property
    def schema(self) -> Any:
        """One compiled validator for every resource type: each type's definition applies when
        `resourceType` names it. The R4 schema's own root (a `oneOf` of every type) would try
        each definition in turn, and a validator per type compiles the whole schema again (every
        type reaches every other through `contained`: ~15 MB each with ~145 types), so the root
        is rewritten as one `if resourceType = T then T` per type (JSON Schema draft 7, whose
        other keywords mean what they mean in the schema's draft 6)."""
        schema = self.conformance.schema
        dispatch = [
            {
                "if": {"properties": {"resourceType": {"const": name}}},
                "then": {"$ref": f"#/definitions/{name}"},
            }
            for name in schema["discriminator"]["mapping"]
        ]
        return jsonschema_rs.Draft7Validator(
            {"definitions": schema["definitions"], "allOf": dispatch}
        )

    def schema_issues(self, resource: dict[str, Any]) -> list[Issue]:
        rt = resource["resourceType"]
        validator = self.schema
        if validator.is_valid(resource):
            return []
        issues = []
        for error in validator.iter_errors(resource):
            path = list(error.instance_path)
            message = error.message
            if message.startswith("null is not") and _placeholder(resource, path):
                continue
            if "Additional properties" in message or "was unexpected" in message:
                for name in _UNEXPECTED.findall(message.split("(", 1)[-1]):
                    issues.append(
                        Issue(
                            f"unknown element '{name}'", fhirpath_of(rt, [*path, name]), "structure"
                        )
                    )
                continue
            required = _REQUIRED.match(message)
            if required:
                where = fhirpath_of(rt, [*path, required.group(1)])
                issues.append(
                    Issue(f"missing required element '{required.group(1)}'", where, "required")
                )
                continue
            issues.append(Issue(message, fhirpath_of(rt, path), "value"))
            if len(issues) >= MAX_ISSUES:
                break
        return issues

    def issues(self, resource: dict[str, Any], profiles: Iterable[str] = ()) -> list[Issue]:
        """Every problem found, errors and warnings, by the layers that could run: the schema
        and the structural check see different things and are reported together (once per
        location); invariants and profiles assume a well-formed resource, so they run only on
        one. `profiles`: canonical URLs to hold the resource to as if it claimed them."""
        rt = resource.get("resourceType")
        if not isinstance(rt, str) or not self.conformance.is_stored(rt):
            return [Issue(f"unsupported resourceType {rt!r}", "resourceType")]
        issues = self.schema_issues(resource)
        located = {(i.expression, i.code) for i in issues}
        issues += [
            i for i in self.structure.check(resource) if (i.expression, i.code) not in located
        ]
        if not issues:
            issues = self.invariants.check(resource)
        if not issues:
            issues = self.profiles.check(resource, profiles)
        return issues

    def validate(self, resource: dict[str, Any]) -> list[Issue]:
        """Raise FhirError(invalid) with every error found by the first failing layer; return
        the warnings (rules of a profile the resource matches without claiming it)."""
        issues = self.issues(resource)
        errors = [i for i in issues if i.severity == "error"]
        if errors:
            rt = resource.get("resourceType")
            if not isinstance(rt, str) or not self.conformance.is_stored(rt):
                raise FhirError("invalid", errors[0].diagnostics, "resourceType")
            raise FhirError("invalid", issues=errors[:MAX_ISSUES])
        return issues[:MAX_ISSUES]
