"""`$validate`: https://hl7.org/fhir/R4/resource-operation-validate.html

`[base]/[type]/$validate` and `[base]/[type]/[id]/$validate`, GET or POST. The body is the
resource itself or a Parameters resource with `resource`, `mode` (create | update | delete) and
`profile` (a canonical URL); GET takes `mode` and `profile` from the query and, at the instance
level, validates the stored resource. The answer is one OperationOutcome with every issue the
write path's validation finds (fhir/validation.py: schema, structure, invariants, profiles),
errors and warnings alike, and 200 whenever the validation ran, valid or not (R4: "the
OperationOutcome ... is the result of the validation, not the status of the operation"). Nothing
is stored. A profile the server does not hold is named in a warning; the others are applied as if
the resource claimed them.
"""

from __future__ import annotations

from typing import Any

from fhirgoal.core.errors import FhirError, Issue
from fhirgoal.fhir.operations import Invocation, Operation, OperationRegistry
from fhirgoal.fhir.outcome import Outcome

DEFINITION = "https://fhirgoal.org/fhir/OperationDefinition/Resource-validate"
MODES = ("create", "update", "delete")


def register(operations: OperationRegistry, resource_types: tuple[str, ...]) -> None:
    for rt in resource_types:
        for level in ("type", "instance"):
            operations.register(
                Operation(
                    "validate", level, rt, validate, definition=DEFINITION, resource_body=True
                )
            )


async def validate(svc: Any, call: Invocation) -> Outcome:
    """`svc` is the FhirService (typed loosely: operations.py explains why)."""
    params = call.parameters
    params.reject_unknown({"resource", "mode", "profile"})
    mode = _text(params.one("mode"))
    if mode is not None and mode not in MODES:
        raise FhirError("invalid", f"mode must be one of {', '.join(MODES)}, not {mode!r}", "mode")
    profiles = [_text(p) or "" for p in params.all("profile")]
    given = params.one("resource")
    resource = given.element.get("resource") if given is not None else None
    if given is not None and not isinstance(resource, dict):
        raise FhirError("invalid", "'resource' must carry a resource", given.expression)
    rt = call.resource_type
    assert rt is not None
    if call.id is None and mode in ("update", "delete"):
        raise FhirError("invalid", f"mode={mode} validates an instance: use {rt}/[id]/$validate")
    if call.id is not None and (resource is None or mode == "delete"):
        stored = (await svc.read(call.access, rt, call.id)).version.resource
        resource = resource if resource is not None else stored
    if mode == "delete":
        text = f"{rt}/{call.id} may be deleted (the server keeps no references that forbid it)"
        return Outcome(200, body=_outcome([], text))
    if resource is None:
        raise FhirError("invalid", "nothing to validate: send the resource, or a Parameters "
                        "resource with a 'resource' part")  # fmt: skip
    issues = _identity(resource, rt, call.id, mode)
    unknown = [p for p in profiles if p not in svc.validator.profiles.by_url]
    issues += [
        Issue(
            f"profile {p} is not held by this server: not checked",
            "profile",
            "not-supported",
            "warning",
        )
        for p in unknown
    ]
    if resource.get("resourceType") == rt:
        issues += svc.validator.issues(resource, [p for p in profiles if p not in unknown])
    return Outcome(200, body=_outcome(issues, "no problems found"))


def _text(value: Any) -> str | None:
    return value.text() if value is not None else None


def _identity(resource: dict[str, Any], rt: str, rid: str | None, mode: str | None) -> list[Issue]:
    issues = []
    if resource.get("resourceType") != rt:
        issues.append(Issue(f"resourceType {resource.get('resourceType')!r} is not {rt}",
                            "resourceType", "invalid"))  # fmt: skip
    if mode == "update" and resource.get("id") != rid:
        issues.append(Issue(f"for an update the resource id must be {rid!r}, not "
                            f"{resource.get('id')!r}", f"{rt}.id", "invalid"))  # fmt: skip
    return issues


def _outcome(issues: list[Issue], text: str) -> dict[str, Any]:
    if not issues:
        issues = [Issue(text, None, "informational", "information")]
    return {"resourceType": "OperationOutcome", "issue": [i.to_json("invalid") for i in issues]}
