"""The dialect an EHR speaks: how its resources become fhirgoal's and fhirgoal's become its.

Issue 15: each EHR speaks its own dialect of FHIR (US Core, vendor extensions, goals as free
text, local codes), and the translations are data, in `mappings/` (one folder per dialect, run
by fhirgoal/exchange/mapping.py). The sync code (exchange/ehr_inbound.py, ehr_outbound.py) sees
only this protocol: `inbound` (EHR -> fhirgoal) and `outbound` (fhirgoal -> EHR), each giving
the resources one resource becomes (usually one), and `restore` (what the dialect cannot carry,
put back into an inbound resource from fhirgoal's current copy, so that a round trip through the
EHR neither erases nor churns it). A connection without a mapping uses `IDENTITY`: an EHR that
speaks fhirgoal's FHIR.

`load_dialect` is the single place where a connection's mapping becomes a dialect.
"""

from __future__ import annotations

import copy
from typing import Any, Protocol

from fhirgoal.core.errors import FhirgoalError
from fhirgoal.exchange.mapping import Mapping, MappingError, resolve_directory


class DialectError(FhirgoalError, ValueError):
    """A mapping could not apply to a resource; the message names the rule and the element."""


class Dialect(Protocol):
    def inbound(self, resource: dict[str, Any]) -> list[dict[str, Any]]: ...

    def outbound(self, resource: dict[str, Any]) -> list[dict[str, Any]]: ...

    def restore(self, incoming: dict[str, Any], current: dict[str, Any] | None) -> dict[str, Any]:
        """`incoming` (mapped, references made fhirgoal's) with the elements the dialect cannot
        carry taken from fhirgoal's `current` version (None: fhirgoal holds none)."""
        ...


class IdentityDialect:
    """fhirgoal's own FHIR on both sides: each resource as it is."""

    def inbound(self, resource: dict[str, Any]) -> list[dict[str, Any]]:
        return [copy.deepcopy(resource)]

    def outbound(self, resource: dict[str, Any]) -> list[dict[str, Any]]:
        return [copy.deepcopy(resource)]

    def restore(self, incoming: dict[str, Any], current: dict[str, Any] | None) -> dict[str, Any]:
        return incoming  # nothing is lost on the way


IDENTITY = IdentityDialect()


class MappedDialect:
    """A mapping folder run by the mapping engine; its errors become DialectError."""

    def __init__(self, mapping: Any, errors: tuple[type[BaseException], ...]) -> None:
        self.mapping = mapping
        self.errors = errors

    def _run(self, direction: str, resource: dict[str, Any]) -> list[dict[str, Any]]:
        try:
            produced = getattr(self.mapping, direction)(resource)
        except self.errors as error:
            raise DialectError(f"{direction} mapping: {error}") from None
        return [dict(r) for r in produced]

    def inbound(self, resource: dict[str, Any]) -> list[dict[str, Any]]:
        return self._run("inbound", resource)

    def outbound(self, resource: dict[str, Any]) -> list[dict[str, Any]]:
        return self._run("outbound", resource)

    def restore(self, incoming: dict[str, Any], current: dict[str, Any] | None) -> dict[str, Any]:
        restored: dict[str, Any] = self.mapping.restore(incoming, current)
        return restored


def load_dialect(mapping: str | None) -> Dialect:
    """The dialect of a connection: IDENTITY without a mapping, else the mapping folder (a path,
    or the name of a built-in mapping such as `example-ehr`) loaded by the mapping engine."""
    if not mapping:
        return IDENTITY
    directory = resolve_directory(mapping)
    try:
        loaded = Mapping.load(directory)
    except (OSError, ValueError, MappingError) as error:
        raise DialectError(f"the mapping {mapping} cannot be loaded: {error}") from None
    return MappedDialect(loaded, (MappingError,))
