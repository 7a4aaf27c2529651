"""Built-in Questionnaires, and validating, scoring and extracting QuestionnaireResponses
(fhirgoal.clinical.questionnaires / scoring / extraction / sdc). Pure unit tests: no server."""

from __future__ import annotations

import re
from decimal import Decimal
from functools import cache
from typing import Any

import pytest

from fhirgoal.clinical.expressions import Expression
from fhirgoal.clinical.questionnaires import (
    apply_licensed_text,
    extract_observations,
    narrative,
    observation_ids,
    score_response,
    validate_and_score,
    validate_response,
)
from fhirgoal.clinical.scoring import copy_json
from fhirgoal.clinical.sdc import compile_questionnaire
from fhirgoal.config import BUILTIN_PROFILES_DIR, Settings
from fhirgoal.core import jsonio
from fhirgoal.core.errors import FhirError
from fhirgoal.fhir.catalog import read_catalog
from fhirgoal.fhir.conformance import load_conformance
from fhirgoal.fhir.profiles import ProfileSet
from fhirgoal.fhir.validation import Validator

PROFILES = BUILTIN_PROFILES_DIR
MEASURES = "https://fhirgoal.org/fhir/CodeSystem/fhirgoal-measures"
LOINC = "http://loinc.org"
BASE = "https://fhirgoal.org/fhir/Questionnaire/"
BUILT_INS = ["ors", "srs", "cors", "csrs", "phq-9", "gad-7"]
ORS_SCORES = {
    "ors-individually": "7.5",
    "ors-interpersonally": "8.2",
    "ors-socially": "7.6",
    "ors-overall": "8.1",
}
# PHQ-9 answers scoring 2+1+3+0+2+1+3+1+1 = 14
PHQ9_ANSWERS = [
    "LA6570-1",
    "LA6569-3",
    "LA6571-9",
    "LA6568-5",
    "LA6570-1",
    "LA6569-3",
    "LA6571-9",
    "LA6569-3",
    "LA6569-3",
]


@cache
def questionnaire(qid: str) -> dict[str, Any]:
    resource: dict[str, Any] = jsonio.loads(
        (PROFILES / "questionnaires" / f"{qid}.json").read_bytes()
    )
    return resource


@cache
def validator() -> Validator:
    return Validator(load_conformance(Settings().conformance_dir))


def q(qid: str) -> dict[str, Any]:
    return copy_json(questionnaire(qid))


def response(
    qid: str, items: list[dict[str, Any]], status: str = "completed", **extra: Any
) -> dict[str, Any]:
    return {
        "resourceType": "QuestionnaireResponse",
        "id": f"qr-{qid}",
        "questionnaire": f"{BASE}{qid}|1.0.0",
        "status": status,
        "subject": {"reference": "Patient/p1"},
        "encounter": {"reference": "Encounter/e1"},
        "authored": "2026-11-23T10:15:00Z",
        "author": {"reference": "Practitioner/t1"},
        "source": {"reference": "Patient/p1"},
        "item": items,
        **extra,
    }


def decimal_items(scores: dict[str, str]) -> list[dict[str, Any]]:
    return [{"linkId": k, "answer": [{"valueDecimal": Decimal(v)}]} for k, v in scores.items()]


def ors_response(status: str = "completed", **extra: Any) -> dict[str, Any]:
    return response("ors", decimal_items(ORS_SCORES), status, **extra)


def phq9_response(answers: list[str] = PHQ9_ANSWERS, **extra: Any) -> dict[str, Any]:
    items = [
        {"linkId": f"phq-9-{n}", "answer": [{"valueCoding": {"system": LOINC, "code": code}}]}
        for n, code in enumerate(answers, start=1)
    ]
    return response("phq-9", items, **extra)


def rejection(qid: str, resp: dict[str, Any]) -> FhirError:
    with pytest.raises(FhirError) as caught:
        validate_response(q(qid), resp)
    assert caught.value.status == 422
    return caught.value


def expressions(error: FhirError) -> list[str | None]:
    return [issue.expression for issue in error.issues]


def answer_of(resp: dict[str, Any], link_id: str) -> Any:
    item = next(i for i in resp["item"] if i["linkId"] == link_id)
    return next(v for k, v in item["answer"][0].items() if k.startswith("value"))


def ids(key: str) -> str:
    return f"qr1-{key}"


# --- the built-in resources ----------------------------------------------------------------------


@pytest.mark.parametrize("qid", BUILT_INS)
def test_built_in_questionnaire_passes_r4_validation(qid: str) -> None:
    resource = questionnaire(qid)
    validator().validate(resource)
    assert resource["url"] == BASE + qid
    assert resource["status"] == "active"
    assert resource["version"] and resource["name"] and resource["title"] and resource["copyright"]


@pytest.mark.parametrize("qid", BUILT_INS)
def test_built_in_narrative_lists_the_current_items(qid: str) -> None:
    assert questionnaire(qid)["text"] == narrative(questionnaire(qid))


def test_measures_code_system_passes_r4_validation_and_holds_every_code_in_use() -> None:
    code_system = jsonio.loads((PROFILES / "terminology" / "fhirgoal-measures.json").read_bytes())
    validator().validate(code_system)
    assert code_system["url"] == MEASURES
    assert code_system["content"] == "complete" and code_system["caseSensitive"] is True
    defined = {c["code"] for c in code_system["concept"]}
    assert all(c.get("display") and c.get("definition") for c in code_system["concept"])
    used = {
        coding["code"]
        for qid in BUILT_INS
        for d in compile_questionnaire(questionnaire(qid)).walk()
        for coding in d.codes
        if coding.get("system") == MEASURES
    }
    demo_codes = {f"ors-{i}" for i in ("individually", "interpersonally", "socially", "overall")}
    demo_codes |= {
        f"srs-{i}" for i in ("relationship", "goals-and-topics", "approach-or-method", "overall")
    }
    gas = {"gas-tscore", "gas-weight", "gas-rho", "gas-goal-level"}
    assert (
        used | demo_codes | gas | {"ors-total", "srs-total", "cors-total", "csrs-total"} <= defined
    )
    assert code_system["count"] == len(code_system["concept"])


def test_orsrs_items_are_decimals_0_to_10_to_one_place_with_labels_only() -> None:
    for qid in ("ors", "srs", "cors", "csrs"):
        cq = compile_questionnaire(questionnaire(qid))
        rated = [d for d in cq.walk() if d.calculated is None]
        assert len(rated) == 4
        for d in rated:
            assert (d.type, d.required, d.min_value, d.max_value, d.max_places) == (
                "decimal",
                True,
                0,
                10,
                1,
            )
            assert len(d.definition["text"].split()) <= 3  # a label, not the instrument's wording
        total = cq.by_link[f"{qid}-total"]
        assert total.read_only and total.calculated is not None and total.calculated.native


def test_phq9_and_gad7_items_carry_loinc_codes_and_ordinal_answers() -> None:
    phq = compile_questionnaire(questionnaire("phq-9"))
    assert [d.codes[0]["code"] for d in phq.walk() if d.type == "choice"] == [
        "44250-9", "44255-8", "44259-0", "44254-1", "44251-7", "44258-2", "44252-5", "44253-3", "44260-8", "69722-7",
    ]  # fmt: skip
    assert phq.by_link["phq-9-1"].option_for({"system": LOINC, "code": "LA6571-9"}).weight == 3  # type: ignore[union-attr]
    difficulty = phq.by_link["phq-9-difficulty"]
    assert not difficulty.required and all(o.weight is None for o in difficulty.options.values())  # type: ignore[union-attr]
    assert phq.by_link["phq-9-total"].codes[0]["code"] == "44261-6"
    gad = compile_questionnaire(questionnaire("gad-7"))
    assert [d.codes[0]["code"] for d in gad.walk() if d.type == "choice"] == [
        "69725-0", "68509-9", "69733-4", "69734-2", "69735-9", "69689-8", "69736-7",
    ]  # fmt: skip
    assert gad.by_link["gad-7-total"].codes[0]["code"] == "70274-6"


# --- scoring -------------------------------------------------------------------------------------


def test_ors_total_is_the_exact_decimal_sum() -> None:
    scored = score_response(q("ors"), ors_response())
    total = answer_of(scored, "ors-total")
    assert isinstance(total, Decimal) and str(total) == "31.4"


def test_one_place_decimals_never_drift_like_floats() -> None:
    scores = dict.fromkeys(ORS_SCORES, "0.1")
    scored = score_response(q("ors"), response("ors", decimal_items(scores)))
    assert (
        str(answer_of(scored, "ors-total")) == "0.4"
    )  # 0.1 + 0.1 + 0.1 + 0.1 as floats is 0.4000000000000001


def test_no_function_modifies_its_inputs() -> None:
    given, questionnaire_given = ors_response(), q("ors")
    before, questionnaire_before = copy_json(given), copy_json(questionnaire_given)
    score_response(questionnaire_given, given)
    validate_and_score(questionnaire_given, given)
    extract_observations(questionnaire_given, given, id_for=ids)
    apply_licensed_text(questionnaire_given, {"ors-overall": "Overall, licensed"})
    assert given == before and questionnaire_given == questionnaire_before


def test_total_is_placed_after_the_items_in_questionnaire_order() -> None:
    scored = score_response(q("ors"), ors_response())
    assert [i["linkId"] for i in scored["item"]] == [*ORS_SCORES, "ors-total"]


def test_phq9_total_sums_the_answer_weights_and_ignores_the_difficulty_item() -> None:
    resp = phq9_response()
    resp["item"].append(
        {
            "linkId": "phq-9-difficulty",
            "answer": [{"valueCoding": {"system": LOINC, "code": "LA6574-3"}}],
        }
    )
    scored = score_response(q("phq-9"), resp)
    assert answer_of(scored, "phq-9-total") == 14
    assert "valueInteger" in scored["item"][-1]["answer"][0]


def test_gad7_item_2_more_days_than_not_scores_2() -> None:
    answers = ["LA6568-5", "LA18938-3", "LA6568-5", "LA6568-5", "LA6568-5", "LA6568-5", "LA6571-9"]
    items = [
        {"linkId": f"gad-7-{n}", "answer": [{"valueCoding": {"system": LOINC, "code": c}}]}
        for n, c in enumerate(answers, start=1)
    ]
    assert answer_of(validate_and_score(q("gad-7"), response("gad-7", items)), "gad-7-total") == 5


def test_an_unanswered_in_progress_form_has_no_total_rather_than_zero() -> None:
    scored = validate_and_score(q("ors"), response("ors", [], status="in-progress"))
    assert "item" not in scored or all(i["linkId"] != "ors-total" for i in scored["item"])


@pytest.mark.parametrize(
    "expression",
    [
        "%resource.item.where(linkId in ('ors-individually' | 'ors-interpersonally' | 'ors-socially' | 'ors-overall')).answer.value.sum()",
        "%resource.repeat(item).where(linkId in ('ors-individually' | 'ors-overall')).answer.value.sum()",
    ],
)
def test_native_sum_agrees_with_fhirpathpy(expression: str) -> None:
    cq = compile_questionnaire(q("ors"))
    resp = ors_response()
    native, general = Expression(expression), Expression(f"({expression})")
    assert native.native and not general.native
    env = cq.environment(resp)
    assert native.evaluate(env, resp) == general.evaluate(env, resp)


def test_native_weight_sum_agrees_with_fhirpathpy() -> None:
    cq = compile_questionnaire(q("phq-9"))
    resp = phq9_response()
    expression = cq.by_link["phq-9-total"].calculated.text  # type: ignore[union-attr]
    native, general = Expression(expression), Expression(f"({expression})")
    env = cq.environment(resp)
    assert native.evaluate(env, resp) == general.evaluate(env, resp) == [Decimal(14)]


def test_a_clinicians_own_calculated_expression_is_evaluated_as_data() -> None:
    custom = {
        "resourceType": "Questionnaire",
        "url": "https://example.org/Questionnaire/sleep",
        "status": "active",
        "item": [
            {"linkId": "hours", "type": "decimal", "required": True},
            {
                "linkId": "minutes",
                "type": "integer",
                "readOnly": True,
                "extension": [
                    {
                        "url": "http://hl7.org/fhir/uv/sdc/StructureDefinition/sdc-questionnaire-calculatedExpression",
                        "valueExpression": {
                            "language": "text/fhirpath",
                            "expression": "%resource.item.where(linkId = 'hours').answer.value * 60",
                        },
                    }
                ],
            },
        ],
    }
    resp = {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": "https://example.org/Questionnaire/sleep",
        "status": "completed",
        "item": [{"linkId": "hours", "answer": [{"valueDecimal": Decimal("7.5")}]}],
    }
    assert answer_of(validate_and_score(custom, resp), "minutes") == 450


def test_a_calculated_value_an_integer_item_cannot_hold_is_a_422() -> None:
    custom = q("ors")
    custom["url"] = "https://example.org/Questionnaire/ors-as-integer"
    custom["item"][-1]["type"] = "integer"
    custom["item"][-1]["extension"] = custom["item"][-1]["extension"][:1]  # no decimal min/max
    resp = ors_response(questionnaire=custom["url"])
    with pytest.raises(FhirError) as caught:
        score_response(custom, resp)
    assert caught.value.status == 422 and "31.4" in caught.value.issues[0].diagnostics


def test_a_questionnaire_edited_in_place_is_recompiled() -> None:
    first = q("ors")
    first["meta"] = {"versionId": "1"}
    assert compile_questionnaire(first).by_link["ors-overall"].max_value == 10
    second = q("ors")
    second["meta"] = {"versionId": "2"}
    second["item"][3]["extension"][1]["valueDecimal"] = 5
    assert compile_questionnaire(second).by_link["ors-overall"].max_value == 5


def test_a_questionnaire_with_a_duplicate_link_id_is_refused() -> None:
    broken = q("ors")
    broken["url"] = "https://example.org/Questionnaire/dup"
    broken["item"][1]["linkId"] = "ors-individually"
    with pytest.raises(FhirError):
        compile_questionnaire(broken)


# --- validation ----------------------------------------------------------------------------------


def test_a_valid_completed_ors_response_is_accepted() -> None:
    validate_response(q("ors"), ors_response())


def test_a_link_id_not_in_the_questionnaire_is_rejected() -> None:
    resp = ors_response()
    resp["item"].append({"linkId": "ors-mood", "answer": [{"valueDecimal": Decimal(5)}]})
    assert expressions(rejection("ors", resp)) == ["QuestionnaireResponse.item[4].linkId"]


def test_an_answer_of_the_wrong_type_is_rejected() -> None:
    resp = ors_response()
    resp["item"][1]["answer"] = [{"valueString": "8"}]
    assert expressions(rejection("ors", resp)) == [
        "QuestionnaireResponse.item[1].answer[0].valueString"
    ]


@pytest.mark.parametrize("value", ["11", "-1", "10.1"])
def test_a_score_outside_0_to_10_is_rejected(value: str) -> None:
    resp = ors_response()
    resp["item"][2]["answer"] = [{"valueDecimal": Decimal(value)}]
    error = rejection("ors", resp)
    assert expressions(error) == ["QuestionnaireResponse.item[2].answer[0].valueDecimal"]
    assert value in error.issues[0].diagnostics


def test_more_than_one_decimal_place_is_rejected() -> None:
    resp = ors_response()
    resp["item"][0]["answer"] = [{"valueDecimal": Decimal("7.55")}]
    error = rejection("ors", resp)
    assert expressions(error) == ["QuestionnaireResponse.item[0].answer[0].valueDecimal"]
    assert "decimal places" in error.issues[0].diagnostics


def test_whole_numbers_are_accepted_on_a_decimal_item() -> None:
    resp = ors_response()
    resp["item"][0]["answer"] = [{"valueDecimal": 7}]  # JSON 7 parses as int
    assert answer_of(validate_and_score(q("ors"), resp), "ors-total") == Decimal("30.9")


def test_a_coding_that_is_not_an_answer_option_is_rejected() -> None:
    resp = phq9_response()
    resp["item"][4]["answer"] = [{"valueCoding": {"system": LOINC, "code": "LA6574-3"}}]
    error = rejection("phq-9", resp)
    assert expressions(error) == ["QuestionnaireResponse.item[4].answer[0].valueCoding"]
    assert error.issues[0].code == "code-invalid"


def test_a_coding_from_another_system_is_rejected() -> None:
    resp = phq9_response()
    resp["item"][0]["answer"] = [
        {"valueCoding": {"system": "http://snomed.info/sct", "code": "LA6568-5"}}
    ]
    assert expressions(rejection("phq-9", resp)) == [
        "QuestionnaireResponse.item[0].answer[0].valueCoding"
    ]


@pytest.mark.parametrize("status", ["completed", "amended"])
def test_a_missing_required_item_is_rejected_once_the_response_is_final(status: str) -> None:
    resp = ors_response(status=status)
    del resp["item"][3]
    error = rejection("ors", resp)
    assert expressions(error) == ["QuestionnaireResponse.item.where(linkId='ors-overall')"]
    assert error.issues[0].code == "required"


def test_an_in_progress_response_may_be_incomplete() -> None:
    resp = ors_response(status="in-progress")
    del resp["item"][1:]
    validate_response(q("ors"), resp)


def test_the_optional_phq9_difficulty_item_may_be_left_out() -> None:
    validate_response(q("phq-9"), phq9_response())


def test_several_answers_to_a_non_repeating_item_are_rejected() -> None:
    resp = ors_response()
    resp["item"][0]["answer"].append({"valueDecimal": Decimal("3.0")})
    assert expressions(rejection("ors", resp)) == ["QuestionnaireResponse.item[0].answer[1]"]


def test_the_same_item_twice_is_rejected() -> None:
    resp = ors_response()
    resp["item"].append(copy_json(resp["item"][0]))
    assert expressions(rejection("ors", resp)) == ["QuestionnaireResponse.item[4]"]


def test_a_total_that_disagrees_with_the_answers_is_rejected() -> None:
    resp = ors_response()
    resp["item"].append({"linkId": "ors-total", "answer": [{"valueDecimal": Decimal("32.0")}]})
    error = rejection("ors", resp)
    assert expressions(error) == ["QuestionnaireResponse.item[4].answer[0]"]
    assert "31.4" in error.issues[0].diagnostics


def test_a_total_that_agrees_with_the_answers_is_kept() -> None:
    resp = ors_response()
    resp["item"].append({"linkId": "ors-total", "answer": [{"valueDecimal": Decimal("31.4")}]})
    assert answer_of(validate_and_score(q("ors"), resp), "ors-total") == Decimal("31.4")


@pytest.mark.parametrize(
    "canonical",
    [f"{BASE}srs", f"{BASE}ors|2.0.0", "https://example.org/Questionnaire/ors"],
)
def test_a_response_to_another_questionnaire_is_rejected(canonical: str) -> None:
    error = rejection("ors", ors_response(questionnaire=canonical))
    assert expressions(error) == ["QuestionnaireResponse.questionnaire"]


def test_a_canonical_without_version_matches() -> None:
    validate_response(q("ors"), ors_response(questionnaire=f"{BASE}ors"))


def test_every_problem_is_reported_at_once() -> None:
    resp = ors_response()
    resp["item"] = [
        {"linkId": "ors-individually", "answer": [{"valueDecimal": Decimal("11")}]},
        {"linkId": "ors-interpersonally", "answer": [{"valueDecimal": Decimal("-1")}]},
        {"linkId": "ors-socially", "answer": [{"valueDecimal": Decimal("7.55")}]},
        {"linkId": "nope", "answer": [{"valueDecimal": Decimal("1")}]},
    ]
    assert expressions(rejection("ors", resp)) == [
        "QuestionnaireResponse.item[0].answer[0].valueDecimal",
        "QuestionnaireResponse.item[1].answer[0].valueDecimal",
        "QuestionnaireResponse.item[2].answer[0].valueDecimal",
        "QuestionnaireResponse.item[3].linkId",
        "QuestionnaireResponse.item.where(linkId='ors-overall')",
    ]


# --- extraction ----------------------------------------------------------------------------------


def test_an_ors_response_yields_one_observation_with_the_total_and_four_components() -> None:
    scored = validate_and_score(q("ors"), ors_response())
    [obs] = extract_observations(q("ors"), scored, id_for=ids)
    validator().validate(obs)
    assert obs["id"] == "qr1-ors-total"
    assert obs["status"] == "final"
    assert obs["category"][0]["coding"][0]["code"] == "survey"
    assert obs["code"]["coding"][0] == {
        "system": MEASURES,
        "code": "ors-total",
        "display": "Outcome Rating Scale total score",
    }
    score = {"unit": "{score}", "system": "http://unitsofmeasure.org", "code": "{score}"}
    assert obs["valueQuantity"] == {"value": Decimal("31.4"), **score}
    assert [
        (c["code"]["coding"][0]["code"], str(c["valueQuantity"]["value"])) for c in obs["component"]
    ] == [
        ("ors-individually", "7.5"),
        ("ors-interpersonally", "8.2"),
        ("ors-socially", "7.6"),
        ("ors-overall", "8.1"),
    ]
    assert obs["subject"] == {"reference": "Patient/p1"}
    assert obs["encounter"] == {"reference": "Encounter/e1"}
    assert obs["effectiveDateTime"] == obs["issued"] == "2026-11-23T10:15:00Z"
    assert obs["performer"] == [{"reference": "Practitioner/t1"}, {"reference": "Patient/p1"}]
    assert obs["derivedFrom"] == [{"reference": "QuestionnaireResponse/qr-ors"}]


def test_extraction_scores_a_response_that_was_stored_without_its_total() -> None:
    [obs] = extract_observations(q("ors"), ors_response(), id_for=ids)
    assert obs["valueQuantity"]["value"] == Decimal("31.4")


def test_extracted_session_measures_satisfy_the_session_rating_profile() -> None:
    with_profiles = Validator(
        load_conformance(Settings().conformance_dir), ProfileSet(read_catalog(PROFILES))
    )
    for qid, links in (
        ("ors", list(ORS_SCORES)),
        (
            "srs",
            ["srs-relationship", "srs-goals-and-topics", "srs-approach-or-method", "srs-overall"],
        ),
        ("cors", ["cors-me", "cors-family", "cors-school", "cors-everything"]),
        ("csrs", ["csrs-listening", "csrs-goals", "csrs-approach", "csrs-overall"]),
    ):
        resp = response(qid, decimal_items(dict.fromkeys(links, "9.5")))
        [obs] = extract_observations(q(qid), validate_and_score(q(qid), resp), id_for=ids)
        with_profiles.validate(obs)
        assert obs["code"]["coding"][0]["code"] == f"{qid}-total"
        assert obs["valueQuantity"]["value"] == Decimal("38.0")


def test_a_phq9_response_yields_its_total_of_14_with_coded_components() -> None:
    resp = phq9_response()
    resp["item"].append(
        {
            "linkId": "phq-9-difficulty",
            "answer": [{"valueCoding": {"system": LOINC, "code": "LA6573-5"}}],
        }
    )
    [obs] = extract_observations(q("phq-9"), validate_and_score(q("phq-9"), resp), id_for=ids)
    validator().validate(obs)
    assert obs["id"] == "qr1-phq-9-total"
    assert obs["code"]["coding"] == [
        {
            "system": LOINC,
            "code": "44261-6",
            "display": "Patient Health Questionnaire 9 item (PHQ-9) total score [Reported]",
        }
    ]
    assert obs["valueQuantity"]["value"] == 14 and obs["valueQuantity"]["code"] == "{score}"
    assert len(obs["component"]) == 10
    first = obs["component"][0]
    assert first["code"]["coding"][0]["code"] == "44250-9"
    coding = first["valueCodeableConcept"]["coding"][0]
    assert (coding["code"], coding["display"]) == ("LA6570-1", "More than half the days")
    assert coding["extension"] == [
        {"url": "http://hl7.org/fhir/StructureDefinition/ordinalValue", "valueDecimal": 2}
    ]
    difficulty = obs["component"][-1]
    assert difficulty["code"]["coding"][0]["code"] == "69722-7"
    assert "extension" not in difficulty["valueCodeableConcept"]["coding"][0]


def test_a_gad7_response_yields_its_total() -> None:
    items = [
        {"linkId": f"gad-7-{n}", "answer": [{"valueCoding": {"system": LOINC, "code": "LA6571-9"}}]}
        for n in range(1, 8)
    ]
    [obs] = extract_observations(q("gad-7"), response("gad-7", items), id_for=ids)
    validator().validate(obs)
    assert (obs["code"]["coding"][0]["code"], obs["valueQuantity"]["value"]) == ("70274-6", 21)


def test_re_extraction_gives_the_same_ids() -> None:
    keys: list[str] = []

    def record(key: str) -> str:
        keys.append(key)
        return f"qr1-{key}"

    first = extract_observations(q("ors"), ors_response(), id_for=record)
    second = extract_observations(q("ors"), ors_response(), id_for=record)
    assert [o["id"] for o in first] == [o["id"] for o in second] == ["qr1-ors-total"]
    assert keys == ["ors-total", "ors-total"]


def test_an_amended_response_yields_amended_observations() -> None:
    [obs] = extract_observations(q("ors"), ors_response(status="amended"), id_for=ids)
    assert obs["status"] == "amended"


@pytest.mark.parametrize("status", ["entered-in-error", "in-progress", "stopped"])
def test_a_response_that_is_not_final_extracts_nothing(status: str) -> None:
    assert extract_observations(q("ors"), ors_response(status=status), id_for=ids) == []


def test_a_device_author_is_not_a_performer() -> None:
    resp = ors_response(author={"reference": "Device/tablet"})
    [obs] = extract_observations(q("ors"), resp, id_for=ids)
    assert obs["performer"] == [{"reference": "Patient/p1"}]


SDC = "http://hl7.org/fhir/uv/sdc/StructureDefinition/"


def _extract(value: Any) -> dict[str, Any]:
    key = "valueBoolean" if isinstance(value, bool) else "valueCode"
    return {"url": SDC + "sdc-questionnaire-observationExtract", key: value}


def test_item_level_observation_extract_gives_one_observation_per_item() -> None:
    custom = {
        "resourceType": "Questionnaire",
        "url": "https://example.org/Questionnaire/vitals",
        "status": "active",
        "item": [
            {
                "linkId": "weight",
                "type": "decimal",
                "code": [{"system": LOINC, "code": "29463-7", "display": "Body weight"}],
                "extension": [
                    _extract(True),
                    {
                        "url": "http://hl7.org/fhir/StructureDefinition/questionnaire-unit",
                        "valueCoding": {
                            "system": "http://unitsofmeasure.org",
                            "code": "kg",
                            "display": "kg",
                        },
                    },
                ],
            },
            {
                "linkId": "smoker",
                "type": "boolean",
                "code": [{"system": LOINC, "code": "72166-2"}],
                "extension": [_extract(True)],
            },
            {"linkId": "note", "type": "string"},
        ],
    }
    resp = {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": custom["url"],
        "status": "completed",
        "subject": {"reference": "Patient/p1"},
        "authored": "2026-11-23",
        "item": [
            {"linkId": "weight", "answer": [{"valueDecimal": Decimal("72.50")}]},
            {"linkId": "smoker", "answer": [{"valueBoolean": False}]},
            {"linkId": "note", "answer": [{"valueString": "n/a"}]},
        ],
    }
    observations = extract_observations(custom, validate_and_score(custom, resp), id_for=ids)
    for obs in observations:
        validator().validate(obs)
    assert [o["id"] for o in observations] == ["qr1-weight", "qr1-smoker"]
    assert observations[0]["valueQuantity"] == {
        "value": Decimal("72.50"),
        "unit": "kg",
        "system": "http://unitsofmeasure.org",
        "code": "kg",
    }
    assert observations[1]["valueBoolean"] is False
    assert "issued" not in observations[0]  # a date is not an instant
    assert "derivedFrom" not in observations[0]  # an unsaved response has no id to point at


def test_a_coded_group_yields_one_observation_with_members_components_and_derived() -> None:
    panel = {"system": LOINC, "code": "panel-1"}
    custom = {
        "resourceType": "Questionnaire",
        "url": "https://example.org/Questionnaire/panel",
        "status": "active",
        "item": [
            {
                "linkId": "grp",
                "type": "group",
                "code": [panel],
                "extension": [_extract(True)],
                "item": [
                    {
                        "linkId": "a",
                        "type": "integer",
                        "code": [{"system": LOINC, "code": "a-1"}],
                        "extension": [_extract("component")],
                    },
                    {
                        "linkId": "b",
                        "type": "integer",
                        "code": [{"system": LOINC, "code": "b-1"}],
                        "extension": [_extract("member")],
                    },
                    {
                        "linkId": "c",
                        "type": "string",
                        "code": [{"system": LOINC, "code": "c-1"}],
                        "extension": [_extract("derived")],
                    },
                ],
            }
        ],
    }
    resp = {
        "resourceType": "QuestionnaireResponse",
        "id": "r9",
        "questionnaire": custom["url"],
        "status": "completed",
        "subject": {"reference": "Patient/p1"},
        "item": [
            {
                "linkId": "grp",
                "item": [
                    {"linkId": "a", "answer": [{"valueInteger": 3}]},
                    {"linkId": "b", "answer": [{"valueInteger": 4}]},
                    {"linkId": "c", "answer": [{"valueString": "note"}]},
                ],
            }
        ],
    }
    group_obs, member, derived = extract_observations(
        custom, validate_and_score(custom, resp), id_for=ids
    )
    for obs in (group_obs, member, derived):
        validator().validate(obs)
    assert group_obs["id"] == "qr1-grp" and group_obs["code"]["coding"] == [panel]
    assert group_obs["component"] == [
        {"code": {"coding": [{"system": LOINC, "code": "a-1"}]}, "valueInteger": 3}
    ]
    assert group_obs["hasMember"] == [{"reference": "Observation/qr1-b"}]
    assert member["valueInteger"] == 4
    assert derived["derivedFrom"] == [
        {"reference": "QuestionnaireResponse/r9"},
        {"reference": "Observation/qr1-grp"},
    ]


# --- licensed text -------------------------------------------------------------------------------


def test_licensed_text_replaces_item_labels_in_a_copy() -> None:
    original = q("ors")
    licensed = apply_licensed_text(original, {"ors-individually": "Licensed wording <one>"})
    assert licensed["item"][0]["text"] == "Licensed wording <one>"
    assert original["item"][0]["text"] == "Individually"
    assert "Licensed wording &lt;one&gt;" in licensed["text"]["div"]
    validator().validate(licensed)


def test_licensed_text_for_an_unknown_link_id_is_refused() -> None:
    with pytest.raises(ValueError, match="ors-mood"):
        apply_licensed_text(q("ors"), {"ors-mood": "text"})


# --- robustness ----------------------------------------------------------------------------------


def test_resources_read_back_from_mongodb_with_decimal128_numbers_score_alike() -> None:
    from bson.decimal128 import Decimal128

    def to_bson(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: to_bson(v) for k, v in value.items()}
        if isinstance(value, list):
            return [to_bson(v) for v in value]
        return Decimal128(value) if isinstance(value, Decimal) else value

    stored_q = to_bson(q("ors"))
    stored_q["meta"] = {"versionId": "bson"}
    stored = to_bson(ors_response())
    assert answer_of(validate_and_score(stored_q, stored), "ors-total") == Decimal("31.4")
    [obs] = extract_observations(stored_q, stored, id_for=ids)
    assert obs["valueQuantity"]["value"] == Decimal("31.4")
    stored["item"][0]["answer"][0]["valueDecimal"] = Decimal128("7.55")
    assert expressions(rejection("ors", stored)) == [
        "QuestionnaireResponse.item[0].answer[0].valueDecimal"
    ]


def test_a_required_item_shown_only_under_enable_when_may_be_omitted() -> None:
    custom = q("ors")
    custom["url"] = "https://example.org/Questionnaire/ors-conditional"
    custom["item"][3]["enableWhen"] = [
        {"question": "ors-socially", "operator": ">", "answerDecimal": Decimal(5)}
    ]
    resp = ors_response(questionnaire=custom["url"])
    del resp["item"][3]
    validate_response(custom, resp)


def test_a_total_sent_for_a_form_with_no_answers_is_rejected() -> None:
    resp = response(
        "ors", [{"linkId": "ors-total", "answer": [{"valueDecimal": Decimal(12)}]}], "in-progress"
    )
    error = rejection("ors", resp)
    assert expressions(error) == ["QuestionnaireResponse.item[0].answer[0]"]
    assert "no value" in error.issues[0].diagnostics


def test_editing_an_extracted_observation_does_not_leak_into_the_next_extraction() -> None:
    [first] = extract_observations(q("ors"), ors_response(), id_for=ids)
    first["category"][0]["coding"][0]["code"] = "changed"
    first["subject"]["reference"] = "Patient/other"
    [second] = extract_observations(q("ors"), ors_response(), id_for=ids)
    assert second["category"][0]["coding"][0]["code"] == "survey"
    assert second["subject"]["reference"] == "Patient/p1"


def test_string_options_and_wrong_nesting_are_checked_on_a_clinicians_questionnaire() -> None:
    custom = {
        "resourceType": "Questionnaire",
        "url": "https://example.org/Questionnaire/mood",
        "status": "active",
        "item": [
            {
                "linkId": "grp",
                "type": "group",
                "item": [
                    {
                        "linkId": "mood",
                        "type": "choice",
                        "answerOption": [{"valueString": "good"}, {"valueString": "bad"}],
                    }
                ],
            },
            {"linkId": "days", "type": "integer"},
        ],
    }
    resp = {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": custom["url"],
        "status": "completed",
        "item": [
            {"linkId": "grp", "item": [{"linkId": "mood", "answer": [{"valueString": "meh"}]}]},
            {"linkId": "mood", "answer": [{"valueString": "good"}]},
            {"linkId": "days", "answer": [{"valueInteger": Decimal("2.5")}]},
        ],
    }
    with pytest.raises(FhirError) as caught:
        validate_response(custom, resp)
    assert expressions(caught.value) == [
        "QuestionnaireResponse.item[0].item[0].answer[0].valueString",
        "QuestionnaireResponse.item[1].linkId",
        "QuestionnaireResponse.item[2].answer[0].valueInteger",
    ]


def test_observation_ids_are_readable_valid_and_stable() -> None:
    assert observation_ids("qr7")("ors-total") == "qr7-ors-total"
    odd = observation_ids("qr7")("/44261-6#2")
    assert odd == observation_ids("qr7")("/44261-6#2") and odd != observation_ids("qr7")(
        "-44261-6-2"
    )
    long = observation_ids("r" * 60)("phq-9-total")
    for made in (odd, long):
        assert re.fullmatch(r"[A-Za-z0-9\-.]{1,64}", made)


def test_a_calculated_item_in_a_repeating_group_sees_its_own_group_as_context() -> None:
    calc = "http://hl7.org/fhir/uv/sdc/StructureDefinition/sdc-questionnaire-calculatedExpression"
    custom = {
        "resourceType": "Questionnaire",
        "url": "https://example.org/Questionnaire/sessions",
        "status": "active",
        "item": [
            {
                "linkId": "session",
                "type": "group",
                "repeats": True,
                "item": [
                    {"linkId": "a", "type": "decimal"},
                    {"linkId": "b", "type": "decimal"},
                    {
                        "linkId": "sum",
                        "type": "decimal",
                        "readOnly": True,
                        "extension": [
                            {
                                "url": calc,
                                "valueExpression": {
                                    "language": "text/fhirpath",
                                    "expression": "%context.item.where(linkId = 'a' or linkId = 'b').answer.value.sum()",
                                },
                            }
                        ],
                    },
                ],
            }
        ],
    }

    def session(a: str, b: str) -> dict[str, Any]:
        return {
            "linkId": "session",
            "item": [
                {"linkId": "a", "answer": [{"valueDecimal": Decimal(a)}]},
                {"linkId": "b", "answer": [{"valueDecimal": Decimal(b)}]},
            ],
        }

    resp = {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": custom["url"],
        "status": "completed",
        "item": [session("1.5", "2.5"), session("0.1", "0.2")],
    }
    scored = validate_and_score(custom, resp)
    assert [str(answer_of(group, "sum")) for group in scored["item"]] == ["4.0", "0.3"]


def test_weight_over_context_in_a_group_uses_the_group_answers() -> None:
    custom = q("phq-9")
    custom["url"] = "https://example.org/Questionnaire/phq-9-grouped"
    items = custom["item"]
    total = items[-1]
    total["extension"][0]["valueExpression"]["expression"] = (
        "%context.item.where(linkId.startsWith('phq-9-') and linkId != 'phq-9-difficulty')"
        ".answer.value.weight().sum()"
    )
    custom["item"] = [{"linkId": "grp", "type": "group", "item": items}]
    resp = phq9_response(questionnaire=custom["url"])
    resp["item"] = [{"linkId": "grp", "item": resp["item"]}]
    scored = validate_and_score(custom, resp)
    assert answer_of(scored["item"][0], "phq-9-total") == 14


def test_a_relative_reference_to_the_questionnaire_matches_too() -> None:
    validate_response(q("ors"), ors_response(questionnaire="Questionnaire/ors"))
    error = rejection("ors", ors_response(questionnaire="Questionnaire/srs"))
    assert expressions(error) == ["QuestionnaireResponse.questionnaire"]
