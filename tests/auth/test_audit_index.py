"""The audit trail's fast index (auth/audit_index.py) gives exactly the search registry's entries."""

from __future__ import annotations

import pytest

from fhirgoal.app import _registry
from fhirgoal.auth.audit import Auditor, classify
from fhirgoal.auth.audit_index import fast_table
from fhirgoal.auth.context import build_context
from fhirgoal.auth.scopes import parse_scopes
from fhirgoal.config import Settings
from fhirgoal.fhir.conformance import load_conformance
from fhirgoal.fhir.instants import now
from fhirgoal.fhir.service import stamp


class _Service:
    def __init__(self) -> None:
        self.registry = _registry(load_conformance(Settings().conformance_dir))


def context(patient: str | None, fhir_user: str | None) -> object:
    return build_context(
        parse_scopes("patient/*.rs user/*.rs"), subject="s", client_id="app",
        patient=patient, fhir_user=fhir_user, compile_params=None,
    )  # fmt: skip


CASES = [
    ("GET", "/fhir/Observation/o1", b"", 200, "pa", None, {"patients": ("Patient/pa",)}, None),
    ("GET", "/fhir/Observation", b"code=x&_count=5", 200, None, "Practitioner/doc", {}, None),
    ("GET", "/fhir/Patient/pb/Goal", b"", 200, None, "Patient/pb", {}, None),
    ("GET", "/fhir/Goal/g1", b"", 404, "pa", "Practitioner/doc", {}, None),
    ("POST", "/fhir/Observation", b"", 201, "pa", None, {"patients": ("Patient/pa",)},
     {"location": "http://h/fhir/Observation/n1/_history/1"}),
    ("DELETE", "/fhir/Goal/g1", b"", 204, None, None, {}, {"etag": 'W/"3"'}),
]  # fmt: skip


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]} {c[1]} {c[3]}" for c in CASES])
def test_fast_audit_index_equals_the_registry_index(case: tuple) -> None:  # type: ignore[type-arg]
    method, path, query, status, patient, fhir_user, state, headers = case
    service = _Service()
    auditor = Auditor(service)  # type: ignore[arg-type]
    access = context(patient, fhir_user)
    interaction = classify(method, path, query)
    event = auditor.event(access, interaction, status, {"client": ("10.0.0.7", 1)}, state, headers)  # type: ignore[arg-type]
    stored = stamp(event, "e1", 1, now())
    full = service.registry.for_type("AuditEvent")
    sample = stamp(
        auditor.event(context(None, None), classify("GET", "/fhir/Patient/x", b""), 200, {}, {}),
        "s",
        1,
        now(),
    )  # type: ignore[arg-type]
    fast = fast_table(service.registry, "AuditEvent", sample)
    assert fast is not full  # the fast path is in use
    assert fast.index_fields(stored) == full.index_fields(stored)
    if interaction.writes and status < 300:
        target = "Observation/n1/_history/1"
        provenance = stamp(auditor.provenance(access, interaction, target), "p1", 1, now())  # type: ignore[arg-type]
        table = service.registry.for_type("Provenance")
        assert fast_table(service.registry, "Provenance", provenance).index_fields(
            provenance
        ) == table.index_fields(provenance)
