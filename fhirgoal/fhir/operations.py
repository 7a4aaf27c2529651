"""Extended operations: https://hl7.org/fhir/R4/operations.html

An operation is invoked at the system (`[base]/$name`), type (`[base]/Type/$name`) or instance
(`[base]/Type/id/$name`) level, with a Parameters resource as the POST body or, for operations
that change nothing, simple parameters in the query string of a GET
(https://hl7.org/fhir/R4/operations.html#request). Packages register their operations here; the
router (rest_operations.py) dispatches on (level, type, name), so routes never multiply with
operations. This module is the model: parameters, invocations and the registry.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import TYPE_CHECKING, Any, Literal

from fhirgoal.core.errors import FhirError

if TYPE_CHECKING:
    from fhirgoal.core.access import AccessContext
    from fhirgoal.fhir.outcome import Outcome

Level = Literal["system", "type", "instance"]


@dataclass(frozen=True)
class ParameterValue:
    """One `Parameters.parameter` (or part), with where it sat for error expressions."""

    name: str
    element: dict[str, Any]
    expression: str

    @property
    def parts(self) -> list[ParameterValue]:
        return [
            ParameterValue(part.get("name", ""), part, f"{self.expression}.part[{i}]")
            for i, part in enumerate(self.element.get("part") or [])
        ]

    def value(self) -> Any:
        for key, value in self.element.items():
            if key.startswith("value"):
                return value
        return None

    def decimal(self) -> Decimal:
        raw = self.value()
        if isinstance(raw, bool) or raw is None:
            raise FhirError("invalid", f"'{self.name}' must be a number", self.expression)
        try:
            number = raw if isinstance(raw, Decimal) else Decimal(str(raw))
        except InvalidOperation:
            raise FhirError("invalid", f"'{self.name}' must be a number", self.expression) from None
        if not number.is_finite():
            raise FhirError("invalid", f"'{self.name}' must be a finite number", self.expression)
        return number

    def text(self) -> str:
        raw = self.value()
        if isinstance(raw, dict) and "reference" in raw:
            raw = raw["reference"]
        if not isinstance(raw, str) or not raw:
            raise FhirError("invalid", f"'{self.name}' must be a non-empty string", self.expression)
        return raw

    def boolean(self) -> bool:
        raw = self.value()
        if isinstance(raw, bool):
            return raw
        if raw in ("true", "false"):
            return raw == "true"
        raise FhirError("invalid", f"'{self.name}' must be true or false", self.expression)


@dataclass(frozen=True)
class Parameters:
    """The input parameters of one invocation."""

    values: list[ParameterValue]

    @classmethod
    def from_resource(cls, body: Any) -> Parameters:
        if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
            raise FhirError("invalid", "the body of an operation must be a Parameters resource")
        raw = body.get("parameter") or []
        if not isinstance(raw, list) or not all(isinstance(p, dict) for p in raw):
            raise FhirError(
                "invalid", "Parameters.parameter must be a list", "Parameters.parameter"
            )
        for i, p in enumerate(raw):
            if not isinstance(p.get("name"), str):
                raise FhirError(
                    "invalid", "every parameter needs a name", f"Parameters.parameter[{i}]"
                )
        return cls(
            [ParameterValue(p["name"], p, f"Parameters.parameter[{i}]") for i, p in enumerate(raw)]
        )

    @classmethod
    def from_query(cls, items: list[tuple[str, str]]) -> Parameters:
        return cls(
            [
                ParameterValue(name, {"name": name, "valueString": value}, name)
                for name, value in items
                if name not in ("_format", "_pretty")
            ]
        )

    def as_json(self) -> list[dict[str, Any]]:
        return [p.element for p in self.values]

    def all(self, name: str) -> list[ParameterValue]:
        return [p for p in self.values if p.name == name]

    def one(self, name: str) -> ParameterValue | None:
        found = self.all(name)
        if len(found) > 1:
            raise FhirError("invalid", f"'{name}' may be given once", found[1].expression)
        return found[0] if found else None

    def reject_unknown(self, known: set[str]) -> None:
        for p in self.values:
            if p.name not in known:
                raise FhirError(
                    "invalid",
                    f"unknown parameter '{p.name}'; expected one of {', '.join(sorted(known))}",
                    p.expression,
                )


@dataclass(frozen=True)
class Invocation:
    access: AccessContext
    name: str
    resource_type: str | None
    id: str | None
    parameters: Parameters
    base_url: str
    method: str
    prefer: str = ""  # the request's Prefer header, as sent (e.g. "respond-async")

    def prefers(self, token: str) -> bool:
        """Whether the Prefer header names `token` (RFC 7240; `respond-async`, ...)."""
        items = (item.strip().partition("=")[0].strip().lower() for item in self.prefer.split(","))
        return token in {i for part in items for i in part.split(";")}

    def preference(self, name: str) -> str | None:
        """The value the Prefer header gives `name` (`handling=lenient` -> "lenient"), if any."""
        for item in self.prefer.split(","):
            for part in item.split(";"):
                key, _, value = part.partition("=")
                if key.strip().lower() == name:
                    return value.strip().strip('"').lower() or None
        return None


# A handler is called with the FhirService (service.py), which holds this registry: it is `Any`
# here so that the model does not import the service that imports it (no import circle).
Handler = Callable[[Any, Invocation], Awaitable["Outcome"]]


@dataclass
class Operation:
    name: str
    level: Level
    resource_type: str | None  # None at the system level
    handler: Handler
    affects_state: bool = False  # GET is refused for operations that change things
    definition: str = ""  # the OperationDefinition's canonical URL (CapabilityStatement)
    # The POST body may be a resource instead of Parameters (`$validate`): it becomes the
    # `resource` parameter.
    resource_body: bool = False


@dataclass
class OperationRegistry:
    operations: dict[tuple[Level, str | None, str], Operation] = field(default_factory=dict)

    def register(self, operation: Operation) -> None:
        self.operations[(operation.level, operation.resource_type, operation.name)] = operation

    def find(self, level: Level, resource_type: str | None, name: str) -> Operation:
        found = self.operations.get((level, resource_type, name))
        if found is None:
            where = {
                "system": "the server",
                "type": resource_type,
                "instance": f"a {resource_type}",
            }
            raise FhirError(
                "not-supported", f"operation ${name} is not supported on {where[level]}"
            )
        return found
