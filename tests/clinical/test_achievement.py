"""Goal.achievementStatus from GAS ratings, and when the server may write it."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from random import Random
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhirgoal.clinical.achievement import (
    DISPLAY,
    SYSTEM,
    AchievementDecision,
    Rater,
    Rating,
    RatingKind,
    StatusChange,
    day_text,
    decide,
    instant_of,
    may_overwrite,
    status_change,
)
from fhirgoal.clinical.gas import ClinicalInputError

D = Decimal


def rating(
    when: str,
    level: str,
    kind: RatingKind = "follow-up",
    rater: Rater = "practitioner",
    obs: str | None = None,
) -> Rating:
    return Rating(when, D(level), kind, rater, obs or f"obs-{kind}-{rater}-{when}")


def baseline(when: str, level: str = "-1", obs: str = "base") -> Rating:
    return rating(when, level, "baseline", "practitioner", obs)


def decided(ratings: list[Rating], **options: Any) -> AchievementDecision:
    """The decision on `ratings`, asserted to be one."""
    decision = decide(ratings, **options)
    assert decision is not None
    return decision


def code_of(ratings: list[Rating]) -> str:
    return decided(ratings).code


def test_no_ratings_no_decision() -> None:
    assert decide([]) is None


def test_baseline_only_is_in_progress() -> None:
    decision = decided([baseline("2026-06-01")])
    assert (decision.code, decision.display, decision.based_on) == (
        "in-progress",
        "In Progress",
        ("base",),
    )
    assert decision.rater is None
    assert "no follow-up" in decision.reason


def test_follow_up_at_expected_level_is_achieved_with_readable_reason() -> None:
    decision = decide([baseline("2026-06-01"), rating("2026-09-14", "0", obs="f1")])
    assert decision == AchievementDecision(
        "achieved",
        "Achieved",
        ("base", "f1"),
        "practitioner follow-up 0 (expected) on 2026-09-14 after "
        "baseline -1 (less than expected) on 2026-06-01 -> achieved",
        "practitioner",
    )
    assert decision.coding() == {"system": SYSTEM, "code": "achieved", "display": "Achieved"}


@pytest.mark.parametrize("level", ["0", "1", "2"])
def test_level_zero_or_better_is_achieved(level: str) -> None:
    assert code_of([baseline("2026-06-01"), rating("2026-07-01", level)]) == "achieved"


@pytest.mark.parametrize(
    ("previous", "latest", "code"),
    [
        ("-2", "-1", "improving"),
        ("-1", "-0.5", "improving"),  # partial achievement is progress, though T counts it -1
        ("-1", "-2", "worsening"),
        ("-2", "-3", "worsening"),
        ("-0.5", "-1", "worsening"),
        ("-1", "-1", "no-change"),
        ("-1", "-1.0", "no-change"),
    ],
)
def test_below_expected_compares_with_the_baseline(previous: str, latest: str, code: str) -> None:
    assert code_of([baseline("2026-06-01", previous), rating("2026-07-01", latest)]) == code


def test_compares_with_the_previous_follow_up_not_the_baseline() -> None:
    ratings = [
        baseline("2026-06-01", "-2"),
        rating("2026-07-01", "-1", obs="f1"),
        rating("2026-08-01", "-1", obs="f2"),
    ]
    decision = decided(ratings)
    assert decision.code == "no-change"  # -1 after -1, although above the baseline -2
    assert decision.based_on == ("f1", "f2")


def test_achieved_twice_running_is_sustaining() -> None:
    ratings = [baseline("2026-06-01"), rating("2026-07-01", "0"), rating("2026-08-01", "1")]
    assert code_of(ratings) == "sustaining"
    assert code_of([*ratings, rating("2026-09-01", "0")]) == "sustaining"


def test_achieved_after_a_lapse_is_achieved_again_not_sustaining() -> None:
    ratings = [
        baseline("2026-06-01"),
        rating("2026-07-01", "0"),
        rating("2026-08-01", "-1"),
        rating("2026-09-01", "0"),
    ]
    assert code_of(ratings[:3]) == "worsening"  # regression from achieved
    assert code_of(ratings) == "achieved"


def test_baseline_at_expected_level_then_follow_up_is_achieved_not_sustaining() -> None:
    assert code_of([baseline("2026-06-01", "0"), rating("2026-07-01", "0")]) == "achieved"


def test_follow_up_without_baseline() -> None:
    assert code_of([rating("2026-07-01", "1")]) == "achieved"
    decision = decided([rating("2026-07-01", "-1", obs="f1")])
    assert (decision.code, decision.based_on) == ("in-progress", ("f1",))
    assert "no baseline or earlier follow-up" in decision.reason


def test_ratings_are_put_in_time_order_whatever_the_input_order() -> None:
    ratings = [
        rating("2026-08-01", "-1", obs="f2"),
        baseline("2026-06-01", "-2"),
        rating("2026-07-01", "-2", obs="f1"),
    ]
    decision = decided(ratings)
    assert (decision.code, decision.based_on) == ("improving", ("f1", "f2"))


def test_time_zones_are_compared_as_instants() -> None:
    ratings = [
        baseline("2026-06-01"),
        # 09:00 in New York (13:00Z) is later than 12:00Z
        rating("2026-07-01T09:00:00-04:00", "0", obs="later"),
        rating("2026-07-01T12:00:00Z", "-2", obs="earlier"),
    ]
    decision = decided(ratings)
    assert decision.based_on == ("earlier", "later")


def test_same_instant_puts_baseline_first_then_input_order() -> None:
    ratings = [
        rating("2026-07-01", "-1", obs="first"),
        baseline("2026-07-01", "-2"),
        rating("2026-07-01", "0", obs="correction"),
    ]
    decision = decided(ratings)
    # baseline -2, then "first" (-1), then "correction" (0), recorded last, decides
    assert (decision.code, decision.based_on) == ("achieved", ("first", "correction"))
    # the other way round, "first" recorded last decides
    decision = decided([ratings[2], ratings[1], ratings[0]])
    assert decision.code == "worsening"  # -1 after 0 at the same instant


def test_a_new_baseline_starts_a_new_episode() -> None:
    ratings = [
        baseline("2026-01-01", "-1", obs="old-base"),
        rating("2026-02-01", "0"),
        rating("2026-03-01", "1"),
        baseline("2026-04-01", "-2", obs="new-base"),
    ]
    decision = decided(ratings)
    assert (decision.code, decision.based_on) == ("in-progress", ("new-base",))
    decision = decided([*ratings, rating("2026-05-01", "0", obs="f")])
    # compared with the new baseline, so achieved (not sustaining after the old +1)
    assert (decision.code, decision.based_on) == ("achieved", ("new-base", "f"))


@pytest.mark.parametrize(
    ("ratings", "code", "rater", "based_on"),
    [
        pytest.param([baseline("2026-06-01", "-1"), rating("2026-07-01", "-2", obs="p1"),
                      rating("2026-07-02", "1", rater="patient", obs="pt1"),
                      rating("2026-07-03", "1", rater="caregiver", obs="c1")],
                     "worsening", "practitioner", ("base", "p1"),
                     id="practitioner-ratings-lead-when-present"),
        # the patient's -1 is compared with the patient's -1, not with the caregiver's -2
        pytest.param([baseline("2026-06-01", "-2"), rating("2026-07-01", "-1", rater="patient", obs="pt1"),
                      rating("2026-07-15", "-2", rater="caregiver", obs="c1"),
                      rating("2026-08-01", "-1", rater="patient", obs="pt2")],
                     "no-change", "patient", ("pt1", "pt2"),
                     id="raters-are-never-mixed-within-a-comparison"),
    ],
)  # fmt: skip
def test_the_rater_who_leads_is_compared_with_their_own_ratings(
    ratings: list[Rating], code: str, rater: str, based_on: tuple[str, ...]
) -> None:
    decision = decided(ratings)
    assert (decision.code, decision.rater, decision.based_on) == (code, rater, based_on)


def test_caregiver_ratings_are_used_when_nobody_else_rated() -> None:
    ratings = [baseline("2026-06-01", "-2"), rating("2026-07-01", "-1", rater="caregiver", obs="c")]
    decision = decided(ratings)
    assert (decision.code, decision.rater) == ("improving", "caregiver")
    assert decision.reason.startswith("caregiver follow-up -1 (less than expected) on 2026-07-01")


def test_rater_priority_is_configurable() -> None:
    ratings = [
        baseline("2026-06-01", "-1"),
        rating("2026-07-01", "-2", rater="practitioner"),
        rating("2026-07-02", "1", rater="patient"),
    ]
    decision = decided(ratings, rater_priority=("patient", "practitioner"))
    assert (decision.code, decision.rater) == ("achieved", "patient")
    decision = decided(ratings, rater_priority=("caregiver",))
    assert decision.code == "in-progress"
    assert "only by" in decision.reason


def test_dates_datetimes_and_partial_dates_sort_together() -> None:
    ratings = [
        Rating(datetime(2026, 9, 1, 10, tzinfo=UTC), D(0), "follow-up", "patient", "dt"),
        Rating(date(2026, 8, 1), D(-1), "follow-up", "patient", "d"),
        Rating("2026-07", D(-2), "baseline", "practitioner", "month"),
        Rating(datetime(2026, 9, 1, 9), D(-1), "follow-up", "patient", "naive"),  # taken as UTC
    ]
    decision = decided(ratings)
    assert decision.based_on == ("naive", "dt")
    assert decision.code == "achieved"


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        ("2026", datetime(2026, 1, 1, tzinfo=UTC)),
        ("2026-09", datetime(2026, 9, 1, tzinfo=UTC)),
        ("2026-09-14", datetime(2026, 9, 14, tzinfo=UTC)),
        ("2026-09-14T10:00:00Z", datetime(2026, 9, 14, 10, tzinfo=UTC)),
        ("2026-09-14T10:00:00.123+02:00", datetime(2026, 9, 14, 8, 0, 0, 123000, tzinfo=UTC)),
        (date(2026, 9, 14), datetime(2026, 9, 14, tzinfo=UTC)),
        (
            datetime(2026, 9, 14, 1, tzinfo=timezone(timedelta(hours=5))),
            datetime(2026, 9, 13, 20, tzinfo=UTC),
        ),
    ],
)
def test_instant_of_fhir_datetimes(when: str | date, expected: datetime) -> None:
    assert instant_of(when) == expected


def test_day_text_keeps_the_written_day() -> None:
    assert day_text("2026-09-14T23:30:00-05:00") == "2026-09-14"
    assert day_text(date(2026, 9, 14)) == "2026-09-14"
    assert day_text(datetime(2026, 9, 14, 23, tzinfo=UTC)) == "2026-09-14"


BAD_KIND: Any = "interim"
BAD_RATER: Any = "teacher"
BAD_WHEN: Any = 20260701


@pytest.mark.parametrize(
    ("bad", "field"),
    [
        (Rating("2026-07-01", D(3), "follow-up", "patient", "x"), "rating[1].level"),
        (Rating("2026-07-01", D("0.5"), "follow-up", "patient", "x"), "rating[1].level"),
        (Rating("2026-07-01", D("NaN"), "follow-up", "patient", "x"), "rating[1].level"),
        (Rating("2026-07-01", D(0), BAD_KIND, "patient", "x"), "rating[1].kind"),
        (Rating("2026-07-01", D(0), "follow-up", BAD_RATER, "x"), "rating[1].rater"),
        (Rating("2026-07-01", D(0), "follow-up", "patient", ""), "rating[1].observation"),
        (Rating("July 1st", D(0), "follow-up", "patient", "x"), "rating[1].when"),
        (Rating("2026-13-01", D(0), "follow-up", "patient", "x"), "rating[1].when"),
        (Rating(BAD_WHEN, D(0), "follow-up", "patient", "x"), "rating[1].when"),
    ],
)
def test_invalid_ratings_are_400s_naming_the_field(bad: Rating, field: str) -> None:
    with pytest.raises(ClinicalInputError) as caught:
        decide([baseline("2026-06-01"), bad])
    assert caught.value.fields == (field,)
    assert caught.value.status == 400


def test_displays_cover_the_code_system() -> None:
    assert set(DISPLAY) == {
        "in-progress",
        "improving",
        "worsening",
        "no-change",
        "achieved",
        "sustaining",
        "not-achieved",
        "no-progress",
        "not-attainable",
    }


# --- may the server write the status? -----------------------------------------------------------


def concept(code: str, system: str = SYSTEM) -> dict[str, object]:
    return {"coding": [{"system": system, "code": code}]}


ACHIEVED = AchievementDecision("achieved", "Achieved", ("f",), "r", "practitioner")


@pytest.mark.parametrize(
    ("current", "marker", "allowed"),
    [
        (None, False, True),
        ({}, False, True),
        ({"coding": []}, False, True),
        (concept("in-progress"), True, True),
        (concept("in-progress"), False, False),
        ({"text": "doing well"}, False, False),
    ],
)
def test_may_overwrite_only_absent_or_server_statuses(
    current: dict[str, object] | None, marker: bool, allowed: bool
) -> None:
    assert may_overwrite(current, marker) is allowed


@pytest.mark.parametrize(
    ("current", "marker", "decision", "change"),
    [
        (None, False, ACHIEVED, StatusChange.REPLACE),
        (concept("in-progress"), True, ACHIEVED, StatusChange.REPLACE),
        (concept("in-progress"), False, ACHIEVED, StatusChange.KEEP_CLINICIAN),
        (concept("not-attainable"), False, ACHIEVED, StatusChange.KEEP_CLINICIAN),
        (concept("achieved"), True, ACHIEVED, StatusChange.UNCHANGED),
        (concept("achieved"), False, ACHIEVED, StatusChange.UNCHANGED),
        (
            concept("achieved", "http://example.org/other"),
            False,
            ACHIEVED,
            StatusChange.KEEP_CLINICIAN,
        ),
        (concept("achieved", "http://example.org/other"), True, ACHIEVED, StatusChange.REPLACE),
        (None, False, None, StatusChange.UNCHANGED),
        (concept("in-progress"), True, None, StatusChange.UNCHANGED),
    ],
)
def test_status_change_never_overwrites_a_clinician_silently(
    current: dict[str, object] | None,
    marker: bool,
    decision: AchievementDecision | None,
    change: StatusChange,
) -> None:
    assert status_change(current, marker, decision) is change


# --- properties ---------------------------------------------------------------------------------

gas_levels = st.sampled_from([D(x) for x in ("-3", "-2", "-1", "-0.5", "0", "1", "2")])
RATERS: list[Rater] = ["practitioner", "patient", "caregiver"]
KINDS: list[RatingKind] = ["baseline", "follow-up", "follow-up"]  # follow-ups twice as likely
raters = st.sampled_from(RATERS)
kinds = st.sampled_from(KINDS)


@st.composite
def rating_sets(draw: st.DrawFn) -> list[Rating]:
    days = draw(st.lists(st.integers(0, 365), min_size=1, max_size=8, unique=True))
    return [
        Rating(
            date.fromordinal(date(2026, 1, 1).toordinal() + day),
            draw(gas_levels),
            draw(kinds),
            draw(raters),
            f"obs-{day}",
        )
        for day in days
    ]


@settings(max_examples=300, deadline=None)
@given(rating_sets(), st.randoms())
def test_property_distinct_instants_make_input_order_irrelevant(
    ratings: list[Rating], random: Random
) -> None:
    shuffled = list(ratings)
    random.shuffle(shuffled)
    assert decide(shuffled) == decide(ratings)


@settings(max_examples=300, deadline=None)
@given(rating_sets())
def test_property_decision_is_consistent_with_the_ratings_it_cites(ratings: list[Rating]) -> None:
    decision = decided(ratings)
    assert decision.display == DISPLAY[decision.code]
    by_id = {r.observation: r for r in ratings}
    cited = [by_id[i] for i in decision.based_on]
    assert 1 <= len(cited) <= 2
    assert [instant_of(r.when) for r in cited] == sorted(instant_of(r.when) for r in cited)
    latest = cited[-1]
    if decision.code in ("achieved", "sustaining"):
        assert latest.kind == "follow-up" and latest.level >= 0
    if decision.code in ("improving", "worsening", "no-change"):
        previous = cited[0]
        assert latest.kind == "follow-up" and latest.level < 0
        expected = {1: "improving", -1: "worsening", 0: "no-change"}
        assert expected[(latest.level > previous.level) - (latest.level < previous.level)] == (
            decision.code
        )
    if decision.rater is not None:
        assert latest.rater == decision.rater
        assert all(r.kind == "baseline" or r.rater == decision.rater for r in cited)
