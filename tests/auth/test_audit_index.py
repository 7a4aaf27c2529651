"""The audit trail's AuditEvents and Provenances are indexed by the search registry's compiled
paths (fhir/search/paths.py), with no fhirpathpy on the way: events are written on every request."""

from __future__ import annotations

import pytest

from fhirgoal.app import _registry
from fhirgoal.auth.audit import Auditor, classify
from fhirgoal.auth.context import build_context
from fhirgoal.auth.scopes import parse_scopes
from fhirgoal.config import Settings
from fhirgoal.fhir.conformance import load_conformance
from fhirgoal.fhir.instants import now
from fhirgoal.fhir.search.paths import _compile_steps, branches_for_type
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


def test_every_audit_search_expression_is_compiled_natively() -> None:
    registry = _Service().registry
    for rt in ("AuditEvent", "Provenance"):
        for param in registry.for_type(rt).params.values():
            for branch in branches_for_type(param.expression, rt):
                assert _compile_steps(branch, rt) is not None, branch


@pytest.mark.parametrize("case", CASES, ids=[f"{c[0]} {c[1]} {c[3]}" for c in CASES])
def test_audit_records_are_indexed_by_patient_agent_and_target(case: tuple) -> None:  # type: ignore[type-arg]
    method, path, query, status, patient, fhir_user, state, headers = case
    service = _Service()
    auditor = Auditor(service)  # type: ignore[arg-type]
    access = context(patient, fhir_user)
    interaction = classify(method, path, query)
    event = auditor.event(access, interaction, status, {"client": ("10.0.0.7", 1)}, state, headers)  # type: ignore[arg-type]
    index = service.registry.for_type("AuditEvent").index_fields(stamp(event, "e1", 1, now()))
    for member in state.get("patients", ()):
        assert f"patient={member}" in index["ref"] and member in index["comp"]
    if fhir_user:
        assert f"agent={fhir_user}" in index["ref"]
    assert "address|10.0.0.7" in index["str"] and len(index["dtlo"]) == 1
    if interaction.writes and status < 300:
        target = "Observation/n1/_history/1"
        provenance = stamp(auditor.provenance(access, interaction, target), "p1", 1, now())  # type: ignore[arg-type]
        indexed = service.registry.for_type("Provenance").index_fields(provenance)
        assert "target=Observation/n1" in indexed["ref"]
