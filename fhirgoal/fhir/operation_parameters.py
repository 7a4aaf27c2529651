"""A Parameters resource checked against an OperationDefinition's parameters (one `use`).

https://hl7.org/fhir/R4/operationdefinition.html and https://hl7.org/fhir/R4/parameters.html:
each parameter (and each part of one) appears between `min` and `max` times; one whose
definition has a `type` carries a value of that type (`value[x]` for a data type, `resource`
for a resource type, any resource for `Resource`), one without a type carries `part`s, checked
the same way one level down; names the definition does not list are refused. Search-type and
profile constraints (`targetProfile`, bindings) are not checked here.

Used on what fhirgoal sends to other servers' operations (a Da Vinci CDex `$submit-attachment`,
evidence/payers/), so that a malformed request is refused before it is queued, not by the
receiver days later.
"""

from __future__ import annotations

from typing import Any

from fhirgoal.core.errors import Issue

# Types a parameter may carry as `resource` without naming a concrete resource type.
ANY_RESOURCE = frozenset({"Resource", "DomainResource"})


def _value_key(part: dict[str, Any]) -> str | None:
    keys = [k for k in part if k.startswith("value")]
    return keys[0] if len(keys) == 1 else None


def _is_resource_type(name: str) -> bool:
    """A data type is a primitive (lower case) or one of R4's complex types; anything else an
    OperationDefinition names as a type is a resource type."""
    return name[:1].isupper() and name not in COMPLEX_TYPES


# R4 complex data types that a parameter may carry as `value[x]`
# (https://hl7.org/fhir/R4/datatypes.html, https://hl7.org/fhir/R4/metadatatypes.html).
COMPLEX_TYPES = frozenset(
    {
        "Address", "Age", "Annotation", "Attachment", "CodeableConcept", "Coding",
        "ContactPoint", "Count", "Distance", "Duration", "HumanName", "Identifier", "Money",
        "Period", "Quantity", "Range", "Ratio", "Reference", "SampledData", "Signature",
        "Timing", "ContactDetail", "Contributor", "DataRequirement", "Expression",
        "ParameterDefinition", "RelatedArtifact", "TriggerDefinition", "UsageContext", "Dosage",
        "Meta",
    }
)  # fmt: skip


def check_parameters(
    parameters: dict[str, Any], definition: dict[str, Any], use: str = "in"
) -> list[Issue]:
    """The problems of `parameters` (a Parameters resource) as the `use` parameters of
    `definition` (an OperationDefinition); empty when it conforms."""
    if parameters.get("resourceType") != "Parameters":
        return [Issue("not a Parameters resource", "Parameters")]
    defined = [p for p in definition.get("parameter") or [] if p.get("use") == use]
    return _check_level(parameters.get("parameter") or [], defined, "Parameters.parameter")


def _check_level(
    given: list[dict[str, Any]], defined: list[dict[str, Any]], where: str
) -> list[Issue]:
    issues: list[Issue] = []
    by_name = {d["name"]: d for d in defined}
    for index, item in enumerate(given):
        if item.get("name") not in by_name:
            issues.append(
                Issue(f"unknown parameter {item.get('name')!r}", f"{where}[{index}]", "structure")
            )
    for definition in defined:
        name = definition["name"]
        found = [(i, item) for i, item in enumerate(given) if item.get("name") == name]
        most = definition.get("max", "*")
        if len(found) < int(definition.get("min", 0)):
            issues.append(
                Issue(f"{name}: at least {definition['min']} required", where, "required")
            )
        if most != "*" and len(found) > int(most):
            issues.append(Issue(f"{name}: at most {most} allowed", where, "structure"))
        for index, item in found:
            issues += _check_one(item, definition, f"{where}[{index}]")
    return issues


def _check_one(item: dict[str, Any], definition: dict[str, Any], where: str) -> list[Issue]:
    name, kind = definition["name"], definition.get("type")
    if kind is None:
        if "resource" in item or _value_key(item) is not None:
            return [Issue(f"{name} carries parts, not a value", where, "structure")]
        return _check_level(item.get("part") or [], definition.get("part") or [], f"{where}.part")
    if "part" in item:
        return [Issue(f"{name} carries a {kind}, not parts", where, "structure")]
    if _is_resource_type(kind):
        resource = item.get("resource")
        if not isinstance(resource, dict) or "resourceType" not in resource:
            return [Issue(f"{name} must carry a resource ({kind})", where, "required")]
        if kind not in ANY_RESOURCE and resource["resourceType"] != kind:
            return [Issue(f"{name} must be a {kind}, not {resource['resourceType']}", where)]
        return []
    expected = f"value{kind[0].upper()}{kind[1:]}"
    if _value_key(item) != expected:
        return [Issue(f"{name} must carry {expected}", where, "value")]
    return []
