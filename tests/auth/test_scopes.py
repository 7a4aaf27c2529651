"""Scope parsing (SMART App Launch 2.2 scopes-and-launch-context) and the context built from it."""

from __future__ import annotations

import pytest

from fhirgoal.auth.context import build_context
from fhirgoal.auth.scopes import ScopeError, grantable, parse_scope, parse_scopes
from fhirgoal.core.access import matches


@pytest.mark.parametrize(
    ("text", "context", "rt", "letters"),
    [
        ("patient/Observation.read", "patient", "Observation", "rs"),
        ("user/*.write", "user", "*", "cud"),
        ("user/Goal.*", "user", "Goal", "cruds"),
        ("patient/Observation.rs", "patient", "Observation", "rs"),
        ("user/Goal.cruds", "user", "Goal", "cruds"),
        ("system/*.rs", "system", "*", "rs"),
        ("patient/Patient.r", "patient", "Patient", "r"),
        ("system/Observation.cd", "system", "Observation", "cd"),
    ],
)
def test_v1_and_v2_scopes_parse_to_letters(text: str, context: str, rt: str, letters: str) -> None:
    scope = parse_scope(text)
    assert scope is not None
    assert (scope.context, scope.resource_type, scope.letters) == (context, rt, frozenset(letters))


def test_granular_scope_keeps_its_search_parameters() -> None:
    scope = parse_scope("patient/Observation.rs?category=survey&status=final")
    assert scope is not None
    assert scope.params == (("category", "survey"), ("status", "final"))
    assert scope.v2 == "patient/Observation.rs?category=survey&status=final"


@pytest.mark.parametrize(
    "text",
    ["patient/Observation.sr", "patient/Observation.rr", "patient/Observation.x", "user/Goal.",
     "system/observation.rs", "patient/Observation.rs?", "patient/Observation.rs?=x"],
)  # fmt: skip
def test_malformed_resource_scopes_are_refused(text: str) -> None:
    with pytest.raises(ScopeError):
        parse_scope(text)


def test_plain_words_are_kept_apart() -> None:
    scopes = parse_scopes("openid fhirUser launch/patient offline_access patient/*.rs")
    assert scopes.words == {"openid", "fhirUser", "launch/patient", "offline_access"}
    assert [s.text for s in scopes.resources] == ["patient/*.rs"]


def test_grantable_caps_requested_scopes_by_the_allowed_ones() -> None:
    allowed = parse_scopes("system/*.rs system/Goal.cruds openid")
    granted = grantable(
        parse_scopes("system/Observation.read system/Goal.cud system/Patient.c openid fhirUser"),
        allowed,
    )
    assert granted.text == "system/Observation.read system/Goal.cud openid"


def test_wildcard_scopes_do_not_reach_the_audit_trail() -> None:
    context = build_context(
        parse_scopes("system/*.cruds"), subject="x", client_id="x", patient=None,
        fhir_user=None, compile_params=None,
    )  # fmt: skip
    assert context.allows("Observation", "r")
    assert not context.allows("AuditEvent", "r")
    named = build_context(
        parse_scopes("system/AuditEvent.rs"), subject="x", client_id="x", patient=None,
        fhir_user=None, compile_params=None,
    )  # fmt: skip
    assert named.allows("AuditEvent", "s") and not named.allows("AuditEvent", "u")


def test_patient_scopes_without_a_patient_grant_nothing() -> None:
    context = build_context(
        parse_scopes("patient/*.cruds"), subject="x", client_id="x", patient=None,
        fhir_user=None, compile_params=None,
    )  # fmt: skip
    assert not context.allows("Observation", "r")


def test_constrain_is_a_merge_and_ors_several_scopes() -> None:
    context = build_context(
        parse_scopes("patient/Observation.rs patient/Observation.s?category=survey"),
        subject="x", client_id="x", patient="p1", fhir_user=None,
        compile_params=lambda rt, params: {"tok": {"$in": ["category#survey"]}},
    )  # fmt: skip
    assert context.constrain("Observation", "r", {"_id": "o"}) == {"_id": "o", "comp": "Patient/p1"}
    narrowed = context.constrain("Observation", "s", {"comp": "Patient/p2"})
    assert narrowed == {
        "comp": "Patient/p2",
        "$or": [
            {"comp": "Patient/p1"},
            {"comp": "Patient/p1", "tok": {"$in": ["category#survey"]}},
        ],
    }


def test_in_memory_match_of_write_conditions() -> None:
    condition = {"comp": "Patient/p1", "tok": {"$in": ["category#survey"]}}
    assert matches({"comp": ["Patient/p1"], "tok": ["category#survey", "x"]}, condition)
    assert not matches({"comp": ["Patient/p2"], "tok": ["category#survey"]}, condition)
    assert not matches({"comp": ["Patient/p1"], "tok": ["category#vital"]}, condition)
    assert not matches({"str": "x"}, {"str": {"$regex": "x"}})  # unknown operators refuse
