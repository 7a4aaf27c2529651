"""SDC weights, variables and calculations the server cannot do, on real SDC content
(tests/clinical/fixtures/sdc/, npm hl7.fhir.uv.sdc@4.0.0-ballot) and, where the fixtures lack a
case, on small Questionnaires written for the test (each says so). Pure unit tests: no server;
the lookups of held ValueSets / CodeSystems through the server are in test_sdc_content.py."""

from __future__ import annotations

import copy
from decimal import Decimal
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from fhirgoal.clinical.questionnaires import assess, extract_observations, score_response
from fhirgoal.clinical.sdc import compile_questionnaire
from fhirgoal.clinical.weights import Terminology, code_system_weights, value_set_weights
from fhirgoal.core import jsonio
from fhirgoal.core.errors import FhirError

FIXTURES = Path(__file__).parent / "fixtures" / "sdc"
PHQ9 = "Questionnaire-questionnaire-sdc-profile-example-PHQ9.json"
PHQ9_RESPONSE = "QuestionnaireResponse-questionnaireresponse-sdc-profile-example-PHQ9.json"
ITEM_WEIGHT = "Questionnaire-questionnaire-sdc-profile-example-item-weight.json"
BMI = "Questionnaire-questionnaire-sdc-profile-example-weight-height-tracking-panel.json"
HUNGER = "Questionnaire-questionnaire-sdc-profile-example-hunger-vital-signs.json"
CSPHQ9 = "CodeSystem-CSPHQ9.json"
SDC = "http://hl7.org/fhir/uv/sdc/StructureDefinition/"
CALCULATED = SDC + "sdc-questionnaire-calculatedExpression"
VARIABLE = "http://hl7.org/fhir/StructureDefinition/variable"
ITEM_WEIGHT_EXT = "http://hl7.org/fhir/StructureDefinition/itemWeight"
EXAMPLE_SYSTEM = "http://example.org/CodeSystem/CSPHQ9"
# The published expression reads %resource.item (the top-level group only); SDC's evident intent,
# the sum of the nine answers' weights, written so that it reaches the questions in the group:
SUM_OF_WEIGHTS = "%resource.repeat(item).where(linkId!='H1/TS').answer.value.weight().sum()"


@cache
def _fixture(name: str) -> dict[str, Any]:
    loaded: dict[str, Any] = jsonio.loads((FIXTURES / name).read_bytes())
    return loaded


def fixture(name: str) -> dict[str, Any]:
    return copy.deepcopy(_fixture(name))


def calculated(expression: str) -> dict[str, Any]:
    return {
        "url": CALCULATED,
        "valueExpression": {"language": "text/fhirpath", "expression": expression},
    }


def variable(name: str, expression: str, language: str = "text/fhirpath") -> dict[str, Any]:
    return {
        "url": VARIABLE,
        "valueExpression": {"name": name, "language": language, "expression": expression},
    }


def answers_of(response: dict[str, Any], link_id: str) -> list[Any] | None:
    """The answer values of the first item with this linkId anywhere in the response."""
    stack = list(response.get("item", []))
    while stack:
        item = stack.pop(0)
        if item.get("linkId") == link_id:
            return [
                next(v for k, v in a.items() if k.startswith("value"))
                for a in item.get("answer", [])
            ]
        stack.extend(item.get("item", []))
    return None


def phq9_fixed() -> dict[str, Any]:
    """The SDC PHQ-9 example with its total's expression reaching the grouped questions."""
    questionnaire = fixture(PHQ9)
    questionnaire["url"] += "-sum-of-weights"
    total = questionnaire["item"][0]["item"][-1]
    total["extension"][0]["valueExpression"]["expression"] = SUM_OF_WEIGHTS
    return questionnaire


def phq9_response(
    questionnaire: dict[str, Any], total: int | None, lowercase: bool
) -> dict[str, Any]:
    """The SDC example response; `lowercase`: its three `Not-at-all` answers spelled as the
    example ValueSet's expansion spells the code (`not-at-all`); `total`: None leaves it out."""
    response = fixture(PHQ9_RESPONSE)
    response["questionnaire"] = questionnaire["url"]
    group = response["item"][0]["item"]
    if lowercase:
        for item in group:
            for answer in item.get("answer", []):
                coding = answer.get("valueCoding")
                if coding and coding["code"] == "Not-at-all":
                    coding["code"] = "not-at-all"
    if total is None:
        group.pop()
    else:
        group[-1]["answer"][0]["valueQuantity"]["value"] = total
    return response


def refusal(questionnaire: dict[str, Any], response: dict[str, Any]) -> str:
    with pytest.raises(FhirError) as caught:
        assess(questionnaire, response)
    assert caught.value.status == 422
    return " | ".join(i.diagnostics for i in caught.value.issues)


# --- where weights come from ---------------------------------------------------------------------


def test_weights_of_the_example_value_set_come_from_its_expansion_properties() -> None:
    [contained] = _fixture(PHQ9)["contained"]
    assert value_set_weights(contained) == {
        (EXAMPLE_SYSTEM, "not-at-all"): 0,
        (EXAMPLE_SYSTEM, "Several-days"): 1,
        (EXAMPLE_SYSTEM, "More than half the days"): 2,
        (EXAMPLE_SYSTEM, "Nearly every day"): 4,
    }


def test_weights_of_the_example_code_system_come_from_its_item_weight_property() -> None:
    assert code_system_weights(_fixture(CSPHQ9)) == {
        "Not-at-all": 0,
        "Several-days": 1,
        "More than half the days": 2,
        "Nearly every day": 4,
    }


def test_answer_value_set_weights_score_the_phq9_example() -> None:
    """Weights 0+0+0+1+2+1+4+2+1 from the contained ValueSet's expansion: 11, not the 13 the
    example response claims; the message says what the answers give."""
    questionnaire = phq9_fixed()
    scored = assess(questionnaire, phq9_response(questionnaire, None, lowercase=True))
    assert answers_of(scored.response, "H1/TS") == [{"value": Decimal(11)}]
    assert scored.warnings == []
    message = refusal(questionnaire, phq9_response(questionnaire, 13, lowercase=True))
    assert "expected 11 from these answers, but 13 {score} was sent" in message


def test_a_sent_total_that_agrees_is_kept_as_sent_with_its_unit_text() -> None:
    questionnaire = phq9_fixed()
    scored = assess(questionnaire, phq9_response(questionnaire, 11, lowercase=True))
    assert answers_of(scored.response, "H1/TS") == [{"value": 11, "unit": "{score}"}]


def test_an_answer_whose_weight_is_nowhere_leaves_the_total_unchecked_with_a_warning() -> None:
    """The example response codes three answers `Not-at-all`; its ValueSet's expansion has only
    `not-at-all` (codes are case-sensitive) and its compose carries no weights. The server cannot
    know that answer's weight, so it neither refuses the 13 sent nor stores a total of its own."""
    questionnaire = phq9_fixed()
    assessed = assess(questionnaire, phq9_response(questionnaire, 13, lowercase=False))
    assert answers_of(assessed.response, "H1/TS") == [{"value": 13, "unit": "{score}"}]
    [warning] = assessed.warnings
    assert warning.severity == "warning"
    assert f"{EXAMPLE_SYSTEM}|Not-at-all to 'H1/T1/Q1'" in warning.diagnostics
    assert "kept as it is, unchecked" in warning.diagnostics
    assert warning.expression == (
        "QuestionnaireResponse.item.where(linkId='H1/T1').item.where(linkId='H1/TS')"
    )
    # without a total sent, the item is left empty, with the same reason
    assessed = assess(questionnaire, phq9_response(questionnaire, None, lowercase=False))
    assert answers_of(assessed.response, "H1/TS") is None
    assert "left empty" in assessed.warnings[0].diagnostics


def test_the_published_phq9_example_is_refused_for_a_total_its_expression_cannot_give() -> None:
    """What SDC intends: the sum of the nine answers' weights (the expression's description lists
    score bands up to 27). What it says: `%resource.item.where(linkId!='H1/TS')...`, and in
    FHIRPath `%resource.item` are the response's top-level items, here the one group, which has
    no answers: no value. The server evaluates expressions as written and does not guess, so the
    example response, which sends 13 (also not the intended 11), is refused, saying why."""
    questionnaire = fixture(PHQ9)
    message = refusal(questionnaire, fixture(PHQ9_RESPONSE))
    assert "expected no value from these answers, but 13 {score} was sent" in message
    assert "%resource.item are the response's top-level items only" in message
    without_total = phq9_response(questionnaire, None, lowercase=False)
    [warning] = assess(questionnaire, without_total).warnings
    assert "'H1/TS' has no value" in warning.diagnostics


def test_item_weight_example_without_loinc_weights_is_not_scored_zero() -> None:
    """The SDC item-weight example's ValueSet (LOINC LL358-3) carries no weights: they live in
    LOINC, which this server does not hold. Its `weight().aggregate($this + $total, 0)` must not
    store 0 for an answer worth 1; the total is left empty with a warning."""
    questionnaire = fixture(ITEM_WEIGHT)
    several = {"system": "http://loinc.org", "code": "LA6569-3", "display": "Several days"}
    response = {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": questionnaire["url"],
        "status": "completed",
        "item": [{"linkId": "1.0", "item": [{"linkId": "1.1", "answer": [{"valueCoding": several}]}]}],
    }  # fmt: skip
    assessed = assess(questionnaire, response)
    assert answers_of(assessed.response, "6") is None
    assert "http://loinc.org|LA6569-3" in assessed.warnings[0].diagnostics
    # ... and once the ValueSet carries them (a copy written for the test), it is scored
    weighted = fixture(ITEM_WEIGHT)
    weighted["url"] += "-weighted"
    for n, concept in enumerate(weighted["contained"][0]["compose"]["include"][0]["concept"]):
        concept["extension"] = [{"url": ITEM_WEIGHT_EXT, "valueDecimal": n}]
    response["questionnaire"] = weighted["url"]
    assert answers_of(assess(weighted, response).response, "6") == [1]


def weighted_by_code_system() -> dict[str, Any]:
    """Written for the test: answers from the CSPHQ9 CodeSystem, weights only in the CodeSystem
    (contained here), an answerValueSet that names the system without listing weights."""
    return {
        "resourceType": "Questionnaire",
        "url": "https://example.org/Questionnaire/cs-weights",
        "status": "active",
        "contained": [
            fixture(CSPHQ9) | {"id": "cs"},
            {
                "resourceType": "ValueSet",
                "id": "vs",
                "status": "active",
                "compose": {"include": [{"system": _fixture(CSPHQ9)["url"]}]},
            },
        ],
        "item": [
            {"linkId": "q1", "type": "choice", "answerValueSet": "#vs"},
            {"linkId": "q2", "type": "choice", "answerValueSet": "#vs"},
            {
                "linkId": "total",
                "type": "integer",
                "readOnly": True,
                "extension": [calculated("%resource.item.answer.value.weight().sum()")],
            },
        ],
    }


def cs_response(url: str, *codes: str) -> dict[str, Any]:
    system = _fixture(CSPHQ9)["url"]
    return {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": url,
        "status": "completed",
        "item": [
            {"linkId": f"q{n}", "answer": [{"valueCoding": {"system": system, "code": code}}]}
            for n, code in enumerate(codes, start=1)
        ],
    }


def test_weights_from_a_contained_code_system_property() -> None:
    questionnaire = weighted_by_code_system()
    response = cs_response(questionnaire["url"], "Nearly every day", "Several-days")
    assert answers_of(assess(questionnaire, response).response, "total") == [5]


def test_weights_from_a_value_set_and_code_system_the_server_holds() -> None:
    """The same form with its ValueSet by canonical and no contained CodeSystem: the weights come
    from the `Terminology` the server looked up (in order: ValueSet, then CodeSystem)."""
    questionnaire = weighted_by_code_system()
    questionnaire["url"] += "-held"
    value_set = questionnaire.pop("contained")[1]
    for item in questionnaire["item"][:2]:
        item["answerValueSet"] = "https://example.org/ValueSet/phq9-answers|1"
    response = cs_response(questionnaire["url"], "Nearly every day", "More than half the days")
    cq = compile_questionnaire(questionnaire)
    held = Terminology()
    assert cq.unresolved(response, held) == ({"https://example.org/ValueSet/phq9-answers|1"}, set())
    held.value_sets["https://example.org/ValueSet/phq9-answers|1"] = value_set
    assert cq.unresolved(response, held) == (set(), {_fixture(CSPHQ9)["url"]})
    held.code_systems[_fixture(CSPHQ9)["url"]] = fixture(CSPHQ9)
    assert cq.unresolved(response, held) == (set(), set())
    assert answers_of(assess(questionnaire, response, held).response, "total") == [6]
    assessed = assess(questionnaire, response)  # without them: not computed, and said so
    assert answers_of(assessed.response, "total") is None and assessed.warnings


def test_a_form_scored_from_its_answer_options_needs_no_lookup() -> None:
    questionnaire = phq9_fixed()
    cq = compile_questionnaire(questionnaire)
    response = phq9_response(questionnaire, None, lowercase=True)
    assert cq.unresolved(response, Terminology()) == (set(), set())
    # a form that uses no weight() at all looks nothing up, whatever its answers
    assert compile_questionnaire(fixture(HUNGER)).unresolved(
        hunger_response("LA28397-0", None), Terminology()
    ) == (set(), set())


def test_extracted_coded_answers_carry_their_value_set_weight() -> None:
    questionnaire = phq9_fixed()
    questionnaire["url"] += "-extracted"  # compiled forms are cached by url|version
    questionnaire["item"][0]["extension"] = [
        {"url": SDC + "sdc-questionnaire-observationExtract", "valueBoolean": True}
    ]
    questionnaire["item"][0]["code"] = [{"system": "http://loinc.org", "code": "44249-1"}]
    for item in questionnaire["item"][0]["item"][:9]:
        item["code"] = [{"system": "http://loinc.org", "code": item["linkId"]}]
        item["extension"] = [{"url": SDC + "sdc-questionnaire-observationExtract", "valueCode": "component"}]  # fmt: skip
    response = phq9_response(questionnaire, None, lowercase=True)
    response["id"] = "qr1"
    observations = extract_observations(questionnaire, response, id_for=lambda k: f"qr1-{k}")
    observation, total = observations  # the group's, with components; the total inherits
    assert total["valueQuantity"] == {"value": 11}
    q7 = next(c for c in observation["component"] if c["code"]["coding"][0]["code"] == "H1/T1/Q7")
    coding = q7["valueCodeableConcept"]["coding"][0]
    assert coding["code"] == "Nearly every day" and coding["extension"][0]["valueDecimal"] == 4


# --- variables -----------------------------------------------------------------------------------


def bmi_response(weight: str | None, height: str) -> dict[str, Any]:
    items = [{"linkId": "/8302-2", "answer": [{"valueDecimal": Decimal(height)}]}]
    if weight is not None:
        items.insert(0, {"linkId": "/29463-7", "answer": [{"valueDecimal": Decimal(weight)}]})
    return {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": _fixture(BMI)["url"],
        "status": "completed",
        "item": items,
    }


def test_questionnaire_level_variables_compute_the_bmi() -> None:
    """%weight (kg) and %height (inches * 0.0254) are Questionnaire-level variables."""
    scored = assess(fixture(BMI), bmi_response("70", "70"))
    assert answers_of(scored.response, "/39156-5") == [Decimal("22.1")]


def test_a_missing_answer_leaves_the_bmi_empty_with_a_warning() -> None:
    assessed = assess(fixture(BMI), bmi_response(None, "70"))
    assert answers_of(assessed.response, "/39156-5") is None
    [warning] = assessed.warnings
    assert "'/39156-5' has no value" in warning.diagnostics
    assert "an answer it needs may be missing" in warning.diagnostics
    # an in-progress response may well be missing answers: nothing to say
    in_progress = bmi_response(None, "70") | {"status": "in-progress"}
    assert assess(fixture(BMI), in_progress).warnings == []


def hunger_response(worried: str | None, ran_out: str | None) -> dict[str, Any]:
    items = [
        {"linkId": link, "answer": [{"valueCoding": {"system": "http://loinc.org", "code": code}}]}
        for link, code in (("/88122-7", worried), ("/88123-5", ran_out))
        if code is not None
    ]
    return {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": _fixture(HUNGER)["url"],
        "status": "completed",
        "item": items,
    }


@pytest.mark.parametrize(
    ("worried", "ran_out", "risk"),
    [
        ("LA6729-3", "LA28398-8", "LA19952-3"),  # sometimes true -> at risk
        ("LA28398-8", "LA28398-8", "LA19983-8"),  # never true, twice -> no risk
        (None, "LA28397-0", "LA19952-3"),  # often true -> at risk
        (None, None, None),  # neither answered -> {}
    ],
)
def test_hunger_vital_sign_uses_questionnaire_and_item_variables(
    worried: str | None, ran_out: str | None, risk: str | None
) -> None:
    """Five Questionnaire-level variables (one built on two others) and three item-level ones
    (`%thisItem` from `%questionnaire`, then `%thisItem.answerOption...`)."""
    scored = assess(fixture(HUNGER), hunger_response(worried, ran_out))
    found = answers_of(scored.response, "/88124-3")
    assert (found[0]["code"] if found else None) == risk


def scoped_form() -> dict[str, Any]:
    """Written for the test: item-level variables on two repeating groups, read by calculated
    items inside them and (wrongly) outside their scope."""

    def group(link: str, factor: str) -> dict[str, Any]:
        return {
            "linkId": link,
            "type": "group",
            "repeats": True,
            "extension": [
                variable("value", f"%context.item.where(linkId='{link}-x').answer.value"),
                variable("scaled", f"%value * {factor}"),
            ],
            "item": [
                {"linkId": f"{link}-x", "type": "decimal"},
                {
                    "linkId": f"{link}-y",
                    "type": "decimal",
                    "readOnly": True,
                    "extension": [calculated("%scaled + %offset")],
                },
            ],
        }

    a, b = group("a", "2"), group("b", "10")
    b["item"][1]["extension"] = [calculated("%value + %scaled")]
    return {
        "resourceType": "Questionnaire",
        "url": "https://example.org/Questionnaire/scopes",
        "status": "active",
        "extension": [variable("offset", "0.5")],
        "item": [
            a,
            b,
            {
                "linkId": "outside",
                "type": "decimal",
                "readOnly": True,
                "extension": [calculated("%scaled")],
            },
        ],
    }


def test_item_variables_are_scoped_to_their_item_and_each_repeat() -> None:
    def instance(link: str, x: str) -> dict[str, Any]:
        return {"linkId": link, "item": [{"linkId": f"{link}-x", "answer": [{"valueDecimal": Decimal(x)}]}]}  # fmt: skip

    response = {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": "https://example.org/Questionnaire/scopes",
        "status": "in-progress",
        "item": [instance("a", "1"), instance("a", "3"), instance("b", "2")],
    }
    assessed = assess(scoped_form(), response)
    a1, a3, b2 = assessed.response["item"][:3]
    assert answers_of(a1, "a-y") == [Decimal("2.5")]  # 1 * 2 + 0.5: its own repeat's %value
    assert answers_of(a3, "a-y") == [Decimal("6.5")]
    assert answers_of(b2, "b-y") == [Decimal("22")]  # 2 + 2 * 10
    [outside] = assessed.warnings
    assert "'outside' could not be calculated" in outside.diagnostics
    assert "%scaled, which no variable in its scope defines" in outside.diagnostics


def test_a_failed_variable_leaves_what_depends_on_it_unchecked_and_says_why() -> None:
    """Written for the test: a variable in a language the server does not evaluate, one built on
    it, and a total the client sent that uses the second; a variable nobody uses says nothing."""
    form = {
        "resourceType": "Questionnaire",
        "url": "https://example.org/Questionnaire/failing-variables",
        "status": "active",
        "extension": [
            variable("prior", "Observation?code=http://loinc.org|44261-6", "application/x-fhir-query"),
            variable("change", "%resource.item.where(linkId='score').answer.value - %prior.count()"),
            variable("unused", "Observation?code=x", "application/x-fhir-query"),
        ],
        "item": [
            {"linkId": "score", "type": "integer"},
            {"linkId": "change", "type": "integer", "readOnly": True, "extension": [calculated("%change")]},
        ],
    }  # fmt: skip
    response = {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": form["url"],
        "status": "completed",
        "item": [
            {"linkId": "score", "answer": [{"valueInteger": 12}]},
            {"linkId": "change", "answer": [{"valueInteger": 3}]},
        ],
    }
    assessed = assess(form, response)
    assert answers_of(assessed.response, "change") == [3]
    [warning] = assessed.warnings
    assert "it uses %change, a variable that could not be computed" in warning.diagnostics
    assert "%prior, a variable that could not be computed" in warning.diagnostics
    assert "application/x-fhir-query is not one this server evaluates" in warning.diagnostics


def test_a_value_the_item_cannot_hold_is_a_warning_on_write_and_an_error_when_scoring() -> None:
    """Written for the test: an integer item whose expression gives a decimal."""
    form = {
        "resourceType": "Questionnaire",
        "url": "https://example.org/Questionnaire/half",
        "status": "active",
        "item": [
            {"linkId": "n", "type": "integer"},
            {"linkId": "half", "type": "integer", "extension": [calculated("%resource.item.where(linkId='n').answer.value / 2")]},
        ],
    }  # fmt: skip
    response = {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": form["url"],
        "status": "completed",
        "item": [{"linkId": "n", "answer": [{"valueInteger": 5}]}],
    }
    [warning] = assess(form, response).warnings
    assert "it gave 2.5, which a integer item cannot hold" in warning.diagnostics
    with pytest.raises(FhirError) as caught:
        score_response(form, response)
    assert caught.value.status == 422 and "2.5" in caught.value.issues[0].diagnostics


def test_an_expression_that_does_not_parse_is_a_warning_not_an_unusable_form() -> None:
    form = {
        "resourceType": "Questionnaire",
        "url": "https://example.org/Questionnaire/typo",
        "status": "active",
        "item": [
            {"linkId": "n", "type": "integer"},
            {"linkId": "total", "type": "integer", "extension": [calculated("%resource.item.answer.value.sum(")]},
        ],
    }  # fmt: skip
    response = {
        "resourceType": "QuestionnaireResponse",
        "questionnaire": form["url"],
        "status": "completed",
        "item": [{"linkId": "n", "answer": [{"valueInteger": 5}]}],
    }
    assessed = assess(form, response)
    assert answers_of(assessed.response, "total") is None  # not 5: fhirpathpy alone would say 5
    [warning] = assessed.warnings
    assert (
        "'total' could not be calculated: it does not parse (at character 33" in warning.diagnostics
    )
