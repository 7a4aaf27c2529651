"""GAS T-score: T = 50 + 10 Σwx / sqrt((1 - rho) Σw² + rho (Σw)²), values derived by hand."""

from __future__ import annotations

from decimal import Decimal
from random import Random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhirgoal.clinical.gas import (
    ClinicalInputError,
    GoalScore,
    InputProblem,
    Variant,
    compute_tscore,
    level_text,
    weight_from,
)
from fhirgoal.core.errors import FhirError

D = Decimal


def goals(*levels: str) -> list[GoalScore]:
    return [GoalScore(D(level)) for level in levels]


@pytest.mark.parametrize(
    ("levels", "expected"),
    [
        # one goal at -1: 50 + 10(-1)/sqrt(0.7*1 + 0.3*1) = 50 - 10/1 = 40
        (["-1"], "40.00"),
        # two at -1: Σx = -2; denominator² = 0.7*2 + 0.3*2² = 2.6
        # 20/sqrt(2.6) = 20/1.612452 = 12.4035 -> 37.5965
        (["-1", "-1"], "37.60"),
        # three at -1: Σx = -3; denominator² = 0.7*3 + 0.3*9 = 4.8
        # 30/sqrt(4.8) = 30/2.190890 = 13.6931 -> 36.3069
        (["-1", "-1", "-1"], "36.31"),
        # all at 0: Σx = 0 whatever the denominator
        (["0", "0", "0"], "50.00"),
        # one at -2: 50 - 20/1
        (["-2"], "30.00"),
        # one at +2: 50 + 20/1
        (["2"], "70.00"),
        # +1 and -1 cancel
        (["1", "-1"], "50.00"),
        # +2, +1: Σx = 3; denominator² = 2.6; 30/1.612452 = 18.6052 -> 68.6052
        (["2", "1"], "68.61"),
    ],
)
def test_unweighted_tscore_matches_hand_derivation(levels: list[str], expected: str) -> None:
    result = compute_tscore(goals(*levels))
    assert result.tscore == D(expected)
    assert str(result.tscore) == expected  # two places, always


def test_weighted_tscore_matches_hand_derivation() -> None:
    # (+1, w 2), (-1, w 1), (0, w 3): Σwx = 2 - 1 + 0 = 1; Σw² = 4 + 1 + 9 = 14; (Σw)² = 36
    # denominator² = 0.7*14 + 0.3*36 = 9.8 + 10.8 = 20.6; sqrt = 4.538722
    # T = 50 + 10/4.538722 = 50 + 2.2033 = 52.2033 -> 52.20
    result = compute_tscore(
        [
            GoalScore(D(1), D(2), "Goal/a"),
            GoalScore(D(-1), D(1), "Goal/b"),
            GoalScore(D(0), D(3), "Goal/c"),
        ]
    )
    assert result.tscore == D("52.20")
    assert result.raw_sum == D(1)
    assert result.denominator**2 == pytest.approx(D("20.6"))
    assert [g.goal for g in result.inputs_as_used] == ["Goal/a", "Goal/b", "Goal/c"]


def test_turner_stokes_weights_feed_the_formula() -> None:
    # importance 3 x difficulty 2 = 6 at +1; importance 1 x difficulty 1 = 1 at -2
    # Σwx = 6 - 2 = 4; Σw² = 37; (Σw)² = 49
    # denominator² = 0.7*37 + 0.3*49 = 25.9 + 14.7 = 40.6; sqrt = 6.371813
    # T = 50 + 40/6.371813 = 50 + 6.2776 = 56.2776 -> 56.28
    result = compute_tscore(
        [GoalScore(D(1), weight_from(3, 2)), GoalScore(D(-2), weight_from(1, 1))]
    )
    assert result.tscore == D("56.28")


def test_partial_achievement_counts_as_minus_one_and_keeps_raw_level() -> None:
    result = compute_tscore(goals("-0.5"))
    assert result.tscore == D("40.00")  # as for one goal at -1
    (used,) = result.inputs_as_used
    assert (used.raw_level, used.level_used) == (D("-0.5"), D(-1))
    assert result.variants == (Variant.PARTIAL_ACHIEVEMENT,)
    assert "counted as -1" in result.notes[0]
    assert compute_tscore(goals("-0.5", "-1")).tscore == compute_tscore(goals("-1", "-1")).tscore


def test_worse_than_baseline_counts_as_minus_three() -> None:
    # one goal at -3: 50 - 30/1 = 20
    assert compute_tscore(goals("-3")).tscore == D("20.00")
    # -3 and -2: Σx = -5; denominator² = 2.6; 50/1.612452 = 31.0087 -> 18.9913
    result = compute_tscore(goals("-3", "-2"))
    assert result.tscore == D("18.99")
    assert result.variants == (Variant.WORSE_THAN_BASELINE,)
    assert [g.level_used for g in result.inputs_as_used] == [D(-3), D(-2)]


def test_worse_than_baseline_needs_a_baseline_of_minus_two_when_the_baseline_is_known() -> None:
    assert compute_tscore([GoalScore(D(-3), baseline=D(-2))]).tscore == D("20.00")
    with pytest.raises(ClinicalInputError) as caught:
        compute_tscore([GoalScore(D(0)), GoalScore(D(-3), baseline=D(-1))])
    assert caught.value.fields == ("goal[1].level",)
    assert "needs a baseline of -2" in caught.value.diagnostics
    # the baseline only matters for -3
    assert compute_tscore([GoalScore(D(-2), baseline=D(-1))]).tscore == D("30.00")


def test_both_variants_are_reported() -> None:
    result = compute_tscore(goals("-3", "-0.5", "1"))
    assert result.variants == (Variant.PARTIAL_ACHIEVEMENT, Variant.WORSE_THAN_BASELINE)
    assert len(result.notes) == 2


def test_standard_scale_reports_the_standard_variant_and_no_notes() -> None:
    result = compute_tscore(goals("-2", "0", "2"))
    assert result.variants == (Variant.STANDARD,)
    assert result.notes == ()


def test_rho_zero_is_the_plain_weighted_z_sum() -> None:
    # two at -1, rho 0: denominator = sqrt(Σw²) = sqrt(2); 20/1.414214 = 14.1421 -> 35.8579
    assert compute_tscore(goals("-1", "-1"), D(0)).tscore == D("35.86")
    # (+1, w 3), (-1, w 4), rho 0: Σwx = -1; sqrt(9 + 16) = 5; T = 50 - 10/5 = 48
    result = compute_tscore([GoalScore(D(1), D(3)), GoalScore(D(-1), D(4))], D(0))
    assert result.tscore == D("48.00")
    assert result.rho == D(0)


def test_other_rho() -> None:
    # two at +1, rho 0.5: denominator² = 0.5*2 + 0.5*4 = 3; 20/1.732051 = 11.5470 -> 61.5470
    assert compute_tscore(goals("1", "1"), D("0.5")).tscore == D("61.55")


def test_rho_does_not_matter_for_a_single_goal() -> None:
    # one goal of weight w: denominator² = (1 - rho) w² + rho w² = w²
    for rho in ("0", "0.3", "0.99"):
        assert compute_tscore([GoalScore(D(-1), D(7))], D(rho)).tscore == D("40.00")


def test_zero_weight_goal_drops_out() -> None:
    assert compute_tscore([GoalScore(D(-1)), GoalScore(D(2), D(0))]).tscore == D("40.00")


def test_equal_levels_written_differently_are_accepted() -> None:
    result = compute_tscore([GoalScore(D("-1.0")), GoalScore(D("-0.50")), GoalScore(D("2.00"))])
    assert [g.level_used for g in result.inputs_as_used] == [D(-1), D(-1), D(2)]


def test_int_inputs_are_accepted() -> None:
    assert compute_tscore([GoalScore(-1, 1)], 0).tscore == D("40.00")  # type: ignore[arg-type]


def test_input_order_is_irrelevant() -> None:
    scores = [
        GoalScore(D(1), D(2)),
        GoalScore(D(-1), D(1)),
        GoalScore(D(0), D(3)),
        GoalScore(D("-0.5"), D(6)),
    ]
    expected = compute_tscore(scores).tscore
    assert compute_tscore(scores[::-1]).tscore == expected
    assert compute_tscore(scores[1:] + scores[:1]).tscore == expected


# --- invalid input ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("scores", "rho", "field"),
    [
        ([], D("0.3"), "goal"),
        ([GoalScore(D(3))], D("0.3"), "goal[0].level"),
        ([GoalScore(D(0)), GoalScore(D("1.5"))], D("0.3"), "goal[1].level"),
        ([GoalScore(D(0)), GoalScore(D("-0.7"))], D("0.3"), "goal[1].level"),
        ([GoalScore(D(-4))], D("0.3"), "goal[0].level"),
        ([GoalScore(D("NaN"))], D("0.3"), "goal[0].level"),
        ([GoalScore(D("Infinity"))], D("0.3"), "goal[0].level"),
        ([GoalScore(D("sNaN"))], D("0.3"), "goal[0].level"),
        ([GoalScore(-1.0)], D("0.3"), "goal[0].level"),  # type: ignore[arg-type]
        ([GoalScore(True)], D("0.3"), "goal[0].level"),  # type: ignore[arg-type]
        ([GoalScore(D(0)), GoalScore(D(1), D(-1))], D("0.3"), "goal[1].weight"),
        ([GoalScore(D(0), D("Infinity"))], D("0.3"), "goal[0].weight"),
        ([GoalScore(D(0), D("NaN"))], D("0.3"), "goal[0].weight"),
        ([GoalScore(D(0), D(0)), GoalScore(D(1), D(0))], D("0.3"), "goal"),
        ([GoalScore(D(0))], D(1), "rho"),
        ([GoalScore(D(0))], D("-0.1"), "rho"),
        ([GoalScore(D(0))], D("1.5"), "rho"),
        ([GoalScore(D(0))], D("NaN"), "rho"),
        ([GoalScore(D(0))], D("-Infinity"), "rho"),
        ([GoalScore(D(0))], "0.3", "rho"),
    ],
)
def test_invalid_input_is_a_400_naming_the_field(
    scores: list[GoalScore], rho: Decimal, field: str
) -> None:
    with pytest.raises(ClinicalInputError) as caught:
        compute_tscore(scores, rho)
    error = caught.value
    assert isinstance(error, FhirError)
    assert error.status == 400
    assert error.fields == (field,)
    outcome = error.outcome()
    assert outcome["resourceType"] == "OperationOutcome"
    assert outcome["issue"][0]["expression"] == [field]
    assert outcome["issue"][0]["diagnostics"].startswith(f"{field}: ")


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ClinicalInputError) as caught:
        compute_tscore([GoalScore(D(3)), GoalScore(D(0), D(-2))], D(1))
    assert caught.value.fields == ("rho", "goal[0].level", "goal[1].weight")
    assert len(caught.value.outcome()["issue"]) == 3


def test_relocated_maps_fields_onto_request_expressions() -> None:
    with pytest.raises(ClinicalInputError) as caught:
        compute_tscore([GoalScore(D(0)), GoalScore(D(3))])
    paths = {"goal[1].level": "Parameters.parameter[1].part[0]"}
    relocated = caught.value.relocated(paths.get)
    assert relocated.status == 400
    issue = relocated.outcome()["issue"][0]
    assert issue["expression"] == ["Parameters.parameter[1].part[0]"]
    assert "goal[1].level" in issue["diagnostics"]


def test_a_clinical_input_error_needs_a_problem() -> None:
    with pytest.raises(ValueError):
        ClinicalInputError([])
    assert ClinicalInputError([InputProblem("x", "bad")]).fields == ("x",)


# --- weights ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("importance", "difficulty", "weight"),
    [(0, 0, 0), (0, 3, 0), (1, 1, 1), (2, 3, 6), (3, 2, 6), (3, 3, 9)],
)
def test_weight_is_importance_times_difficulty(
    importance: int, difficulty: int, weight: int
) -> None:
    assert weight_from(importance, difficulty) == D(weight)


@pytest.mark.parametrize(
    ("importance", "difficulty", "fields"),
    [
        (4, 1, ("importance",)),
        (-1, 1, ("importance",)),
        (1, 4, ("difficulty",)),
        (1, 1.5, ("difficulty",)),
        (True, 1, ("importance",)),
        (5, -1, ("importance", "difficulty")),
    ],
)
def test_weight_inputs_are_validated(importance: int, difficulty: int, fields: tuple[str]) -> None:
    with pytest.raises(ClinicalInputError) as caught:
        weight_from(importance, difficulty)
    assert caught.value.fields == fields


def test_level_text_uses_the_gas_sign_convention() -> None:
    assert [level_text(D(x)) for x in ("2", "1.0", "0", "-0.50", "-3")] == [
        "+2",
        "+1",
        "0",
        "-0.5",
        "-3",
    ]


# --- properties ---------------------------------------------------------------------------------

levels = st.sampled_from([D(x) for x in ("-3", "-2", "-1", "-0.5", "0", "1", "2")])
weights = st.integers(min_value=1, max_value=9).map(D)
scores = st.lists(st.builds(GoalScore, levels, weights), min_size=1, max_size=8)
rhos = st.sampled_from([D(x) for x in ("0", "0.1", "0.3", "0.5", "0.9")])


@settings(max_examples=200, deadline=None)
@given(scores, rhos, st.randoms())
def test_property_order_never_matters(
    goal_scores: list[GoalScore], rho: Decimal, random: Random
) -> None:
    shuffled = list(goal_scores)
    random.shuffle(shuffled)
    assert compute_tscore(shuffled, rho).tscore == compute_tscore(goal_scores, rho).tscore


@settings(max_examples=200, deadline=None)
@given(scores, rhos, st.integers(min_value=2, max_value=5))
def test_property_scaling_all_weights_changes_nothing(
    goal_scores: list[GoalScore], rho: Decimal, factor: int
) -> None:
    scaled = [GoalScore(g.level, g.weight * factor) for g in goal_scores]
    assert compute_tscore(scaled, rho).tscore == compute_tscore(goal_scores, rho).tscore


@settings(max_examples=200, deadline=None)
@given(scores, rhos)
def test_property_sign_follows_the_weighted_sum(goal_scores: list[GoalScore], rho: Decimal) -> None:
    result = compute_tscore(goal_scores, rho)
    if result.raw_sum > 0:
        assert result.tscore > 50
    elif result.raw_sum < 0:
        assert result.tscore < 50
    else:
        assert result.tscore == D(50)


@settings(max_examples=200, deadline=None)
@given(scores, rhos, st.data())
def test_property_raising_one_level_never_lowers_t(
    goal_scores: list[GoalScore], rho: Decimal, data: st.DataObject
) -> None:
    index = data.draw(st.integers(min_value=0, max_value=len(goal_scores) - 1))
    ladder = [D(x) for x in ("-3", "-2", "-1", "0", "1", "2")]
    current = goal_scores[index]
    higher = [x for x in ladder if x > current.level]
    if not higher:
        return
    raised = list(goal_scores)
    raised[index] = GoalScore(data.draw(st.sampled_from(higher)), current.weight)
    assert compute_tscore(raised, rho).tscore >= compute_tscore(goal_scores, rho).tscore
