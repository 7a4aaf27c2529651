"""The audit trail's AuditEvents and Provenances are indexed by the search registry's compiled
paths (fhir/search/paths.py), with no fhirpathpy on the way: events are written on every request."""

from __future__ import annotations

import pytest

from fhirgoal.auth.audit_events import (
    EventWriter,
    classify,
    provenance,
    stored_before_response,
    written,
)
from fhirgoal.auth.context import build_context
from fhirgoal.auth.scopes import parse_scopes
from fhirgoal.bootstrap import search_registry
from fhirgoal.config import Settings
from fhirgoal.core.jsonio import loads
from fhirgoal.fhir.conformance import load_conformance
from fhirgoal.fhir.instants import now
from fhirgoal.fhir.search.paths import _compile_steps, branches_for_type
from fhirgoal.fhir.service import stamp


class _Service:
    def __init__(self) -> None:
        self.registry = search_registry(load_conformance(Settings().conformance_dir))


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
def test_audit_records_are_indexed_by_patient_agent_and_target(case: tuple) -> None:
    method, path, query, status, patient, fhir_user, state, headers = case
    service = _Service()
    access = context(patient, fhir_user)
    interaction = classify(method, path, query)
    what = written(headers, interaction) if headers and status < 300 else None
    recorded = "2026-11-23T10:00:00.000Z"
    patients = state.get("patients")
    event = loads(
        EventWriter().event(access, "10.0.0.7", interaction, status, recorded, patients, what)  # type: ignore[arg-type]
    )
    index = service.registry.for_type("AuditEvent").index_fields(stamp(event, "e1", 1, now()))
    for member in state.get("patients", ()):
        assert f"patient={member}" in index["ref"] and member in index["comp"]
    if fhir_user:
        assert f"agent={fhir_user}" in index["ref"]
    assert "address|10.0.0.7" in index["str"] and len(index["dtlo"]) == 1
    if interaction.writes and status < 300:
        target = "Observation/n1/_history/1"
        record = stamp(provenance(access, interaction, target, recorded), "p1", 1, now())  # type: ignore[arg-type]
        indexed = service.registry.for_type("Provenance").index_fields(record)
        assert "target=Observation/n1" in indexed["ref"]


HOSTILE = ['a"b', "a\\b", "ä\u2028x", "<script>", "x\u0000y", "\ud7ff", "%22"]


@pytest.mark.parametrize("text", HOSTILE)
def test_an_event_is_well_formed_json_whatever_the_request_path_holds(text: str) -> None:
    """Events are joined from pre-serialized parts (auth/audit_events.py): whatever a client puts
    in a path, query or token, the result is one JSON object with no repeated member, and each
    part comes back as it was."""
    writer = EventWriter()
    access = build_context(
        parse_scopes("user/*.rs"), subject="s", client_id=f"app{text}", patient=None,
        fhir_user=None, compile_params=None,
    )  # fmt: skip
    interaction = classify("GET", f"/fhir/Observation/{text}", f"code={text}".encode())
    address, seen, recorded = f"10.0.0.{text}", (f"Patient/{text}",), "2026-11-23T10:00:00.000Z"
    for status in (200, 404, 500):
        event = loads(writer.event(access, address, interaction, status, recorded, seen))
        assert event["resourceType"] == "AuditEvent" and event["action"] == "R"
        assert event["subtype"][0]["code"] == "read" and event["outcomeDesc"] == f"HTTP {status}"
        assert event["outcome"] == {200: "0", 404: "4", 500: "8"}[status]
        [requestor] = event["agent"]
        assert requestor["who"]["identifier"]["value"] == f"app{text}"
        assert requestor["network"]["address"] == f"10.0.0.{text}"
        references = [e["what"]["reference"] for e in event["entity"] if "what" in e]
        assert references == [f"Observation/{text}", f"Patient/{text}"]
    first, second = (
        loads(writer.event(access, address, interaction, 200, recorded, seen)) for _ in "12"
    )
    assert first["id"] != second["id"]


INTERACTIONS = [
    ("GET", "/fhir/Observation/o1", ("R", "read", "Observation", "o1")),
    ("GET", "/fhir/Observation/o1/_history/2", ("R", "vread", "Observation", "o1")),
    ("GET", "/fhir/Patient/p1/Goal", ("E", "search-type", "Goal", None)),
    ("POST", "/fhir/Observation/_search", ("E", "search-type", "Observation", None)),
    ("GET", "/fhir/Patient/p1/$progress", ("E", "operation", "Patient", "p1")),
    ("GET", "/fhir/Observation/$lastn", ("E", "operation", "Observation", None)),
    ("POST", "/fhir/$export", ("E", "operation", None, None)),
    ("POST", "/fhir/Observation", ("C", "create", "Observation", None)),
    ("PUT", "/fhir/Goal/g1", ("U", "update", "Goal", "g1")),
    ("PATCH", "/fhir/Goal/g1", ("U", "patch", "Goal", "g1")),
    ("DELETE", "/fhir/Goal/g1", ("D", "delete", "Goal", "g1")),
]


@pytest.mark.parametrize(("method", "path", "expected"), INTERACTIONS)
def test_requests_are_named_by_their_restful_interaction(
    method: str, path: str, expected: tuple[str, str, str | None, str | None]
) -> None:
    """https://hl7.org/fhir/R4/http.html: an operation's `$name` is never read as an id."""
    interaction = classify(method, path, b"")
    assert (interaction.action, interaction.subtype, interaction.resource_type,
            interaction.resource_id) == expected  # fmt: skip
    # reads and searches are buffered; anything that may change data is stored before it answers
    assert stored_before_response(method, path) == (
        method not in ("GET",) and "_search" not in path
    )
