"""The dialect an EHR speaks: how its resources become fhirgoal's and fhirgoal's become its.

Issue 15: each EHR speaks its own dialect of FHIR (US Core, vendor extensions, goals as free
text, local codes), and the translations are data, in `mappings/` (one folder per dialect, run
by fhirgoal/exchange/mapping.py). The sync code (exchange/ehr_inbound.py, ehr_outbound.py) sees
only this protocol: `inbound` (EHR -> fhirgoal) and `outbound` (fhirgoal -> EHR), each giving
the resources one resource becomes (usually one). A connection without a mapping uses `IDENTITY`:
an EHR that speaks fhirgoal's FHIR.

`load_dialect` is the single place where a connection's mapping directory becomes a dialect.
"""

from __future__ import annotations

import copy
import importlib
from pathlib import Path
from typing import Any, Protocol

from fhirgoal.core.errors import FhirgoalError


class DialectError(FhirgoalError, ValueError):
    """A mapping could not apply to a resource; the message names the rule and the element."""


class Dialect(Protocol):
    def inbound(self, resource: dict[str, Any]) -> list[dict[str, Any]]: ...

    def outbound(self, resource: dict[str, Any]) -> list[dict[str, Any]]: ...


class IdentityDialect:
    """fhirgoal's own FHIR on both sides: each resource as it is."""

    def inbound(self, resource: dict[str, Any]) -> list[dict[str, Any]]:
        return [copy.deepcopy(resource)]

    def outbound(self, resource: dict[str, Any]) -> list[dict[str, Any]]:
        return [copy.deepcopy(resource)]


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


def load_dialect(mapping_dir: str | None) -> Dialect:
    """The dialect of a connection: IDENTITY without a mapping directory, else the mapping
    engine's `Mapping.load(dir)` (imported here, lazily: the engine is optional at this point)."""
    if not mapping_dir:
        return IDENTITY
    try:
        engine = importlib.import_module("fhirgoal.exchange.mapping")
    except ImportError:
        raise DialectError(
            f"the mapping {mapping_dir} cannot be used: this build has no mapping engine "
            "(fhirgoal/exchange/mapping.py)"
        ) from None
    errors: tuple[type[BaseException], ...] = ()
    mapping_error = getattr(engine, "MappingError", None)
    if isinstance(mapping_error, type) and issubclass(mapping_error, BaseException):
        errors = (mapping_error,)
    failures: tuple[type[BaseException], ...] = (OSError, ValueError, *errors)
    try:
        mapping = engine.Mapping.load(Path(mapping_dir))
    except failures as error:
        raise DialectError(f"the mapping {mapping_dir} cannot be loaded: {error}") from None
    return MappedDialect(mapping, errors)
