"""ORS/SRS interpretation: cutoffs by age band, reliable change, colours, alliance and alerts."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fhirgoal.clinical.gas import ClinicalInputError
from fhirgoal.clinical.session_measures import (
    DEFAULT_CUTOFFS,
    Alert,
    Colour,
    Cutoffs,
    OrsPoint,
    SessionRef,
    SessionScore,
    age_band,
    age_on,
    interpret_ors,
    interpret_srs,
    open_alerts,
    reconcile,
)

D = Decimal
ADULT = "1980-05-17"


def series(*totals: str, start: int = 1) -> list[SessionScore]:
    """Weekly sessions from 2026-01-05 (session n on day 7(n-1)), observation ids s1, s2, ..."""
    return [
        SessionScore(
            date.fromordinal(date(2026, 1, 5).toordinal() + 7 * i).isoformat(), D(t), f"s{i + 1}"
        )
        for i, t in enumerate(totals, start=start - 1)
    ]


def ors(
    *totals: str, birth: str | None = ADULT, cutoffs: Cutoffs = DEFAULT_CUTOFFS
) -> list[OrsPoint]:
    return interpret_ors(series(*totals), birth, cutoffs)


# --- age bands ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("birth", "on", "band"),
    [
        ("2014-03-10", "2026-03-09", "child"),  # 11, the day before the 12th birthday
        ("2013-03-10", "2026-03-09", "child"),  # 12, the day before turning 13
        ("2013-03-10", "2026-03-10", "adolescent"),  # 13 on the birthday itself
        ("2009-03-10", "2026-03-09", "adolescent"),  # 17, the day before turning 18
        ("2008-03-10", "2026-03-09", "adolescent"),  # 17 still
        ("2008-03-10", "2026-03-10", "adult"),  # 18 on the birthday itself
        ("1950-01-01", "2026-03-10", "adult"),
        ("2026-03-10", "2026-03-10", "child"),  # born that day
        (None, "2026-03-10", None),
    ],
)
def test_age_band_on_the_session_date(birth: str | None, on: str, band: str | None) -> None:
    assert age_band(birth, on) == band


def test_age_band_accepts_dates_and_datetimes() -> None:
    assert age_band(date(2008, 3, 10), datetime(2026, 3, 10, 23, 59)) == "adult"
    assert age_band(date(2008, 3, 10), date(2026, 3, 9)) == "adolescent"
    assert age_band("2008-03-10", "2026-03-10T08:00:00+01:00") == "adult"


def test_leap_day_birthday_counts_from_first_of_march() -> None:
    assert age_on(date(2008, 2, 29), date(2026, 2, 28)) == 17
    assert age_on(date(2008, 2, 29), date(2026, 3, 1)) == 18
    assert age_on(date(2008, 2, 29), date(2028, 2, 29)) == 20


@pytest.mark.parametrize(
    ("birth", "on", "band"),
    [
        ("1990", "2026-03-10", "adult"),  # 35 or 36: adult either way
        ("2013", "2026-06-01", None),  # 12 or 13: ambiguous
        ("2013-03", "2026-06-01", "adolescent"),  # 13 whatever the day in March
        ("2013-06", "2026-06-15", None),  # 12 or 13 depending on the day
        ("2013-12", "2026-12-31", "adolescent"),
    ],
)
def test_partial_birth_dates_give_a_band_only_when_unambiguous(
    birth: str, on: str, band: str | None
) -> None:
    assert age_band(birth, on) == band


@pytest.mark.parametrize("birth", ["2026-03-11", "2027", "10/03/2008", "2008-02-30", "2008-3-1"])
def test_bad_or_future_birth_dates_are_rejected(birth: str) -> None:
    with pytest.raises(ClinicalInputError) as caught:
        age_band(birth, "2026-03-10")
    assert caught.value.fields == ("birth_date",)


# --- ORS clinical range -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("birth", "total", "cutoff", "in_range"),
    [
        (ADULT, "24.9", "25", "clinical"),
        (ADULT, "25.0", "25", "non-clinical"),
        ("2010-01-01", "27.9", "28", "clinical"),  # 16 in January 2026
        ("2010-01-01", "28", "28", "non-clinical"),
        ("2016-01-01", "31.9", "32", "clinical"),  # 10
        ("2016-01-01", "32.0", "32", "non-clinical"),
        (None, "24.9", "25", "clinical"),
        (None, "25", "25", "non-clinical"),
    ],
)
def test_clinical_range_by_age_band(
    birth: str | None, total: str, cutoff: str, in_range: str
) -> None:
    (point,) = ors(total, birth=birth)
    assert point.cutoff == D(cutoff)
    assert point.clinical_range == in_range


def test_unknown_birth_date_uses_the_adult_cutoff_and_says_so() -> None:
    (point,) = ors("20", birth=None)
    assert point.age_band is None
    assert point.cutoff_basis == "birth date unknown: adult cutoff used"
    (point,) = interpret_ors(series("20"), "2013", DEFAULT_CUTOFFS)  # 12 or 13 on 2026-01-05
    assert point.cutoff == D(25)
    assert "too imprecise" in point.cutoff_basis


def test_cutoff_follows_the_age_on_each_session_date() -> None:
    # turns 18 on 2026-01-19, the third weekly session
    points = interpret_ors(series("26", "26", "26"), "2008-01-19", DEFAULT_CUTOFFS)
    assert [p.cutoff for p in points] == [D(28), D(28), D(25)]
    assert [p.clinical_range for p in points] == ["clinical", "clinical", "non-clinical"]
    assert points[2].cutoff_basis == "adult (18+) on 2026-01-19"


def test_int_cutoffs_from_config_become_decimals() -> None:
    cutoffs = Cutoffs(ors_adult=20, srs_alert_below=30)  # type: ignore[arg-type]
    assert isinstance(cutoffs.ors_adult, Decimal)
    (point,) = interpret_srs(series("29.5"), cutoffs)
    assert point.reasons == ("below 30 (29.5)",)


def test_cutoffs_are_configurable() -> None:
    cutoffs = Cutoffs(ors_adult=D(20), reliable_change=D(3))
    points = ors("19.9", "23", birth=ADULT, cutoffs=cutoffs)
    assert [p.clinical_range for p in points] == ["clinical", "non-clinical"]
    assert points[1].reliable_change == "reliable-improvement"  # +3.1 >= 3


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"ors_adult": D(0)}, "cutoffs.ors_adult"),
        ({"srs_alert_below": D(41)}, "cutoffs.srs_alert_below"),
        ({"reliable_change": D("NaN")}, "cutoffs.reliable_change"),
        ({"srs_drop": 1.0}, "cutoffs.srs_drop"),
        ({"no_progress_sessions": 1}, "cutoffs.no_progress_sessions"),
    ],
)
def test_bad_cutoffs_are_rejected(kwargs: dict[str, object], field: str) -> None:
    with pytest.raises(ClinicalInputError) as caught:
        Cutoffs(**kwargs)  # type: ignore[arg-type]
    assert caught.value.fields == (field,)


# --- reliable change ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("second", "change", "reliable"),
    [
        ("25.0", "5.0", "reliable-improvement"),
        ("24.9", "4.9", "no-reliable-change"),
        ("20.0", "0.0", "no-reliable-change"),
        ("15.1", "-4.9", "no-reliable-change"),
        ("15.0", "-5.0", "reliable-deterioration"),
        ("40", "20.0", "reliable-improvement"),
        ("0", "-20.0", "reliable-deterioration"),
    ],
)
def test_reliable_change_from_intake(second: str, change: str, reliable: str) -> None:
    intake, point = ors("20.0", second)
    assert intake.reliable_change is None
    assert intake.change_from_intake == 0
    assert point.change_from_intake == D(change)
    assert point.reliable_change == reliable


def test_change_is_always_measured_from_the_intake() -> None:
    points = ors("10", "14", "18", "16")
    assert [p.change_from_intake for p in points] == [D(0), D(4), D(8), D(6)]
    assert [p.reliable_change for p in points] == [
        None,
        "no-reliable-change",
        "reliable-improvement",
        "reliable-improvement",
    ]


def test_clinically_significant_needs_reliable_change_and_crossing_the_cutoff() -> None:
    assert [p.clinically_significant for p in ors("20", "25")] == [False, True]
    assert [p.clinically_significant for p in ors("24", "28.9")] == [False, False]  # +4.9
    assert [p.clinically_significant for p in ors("14", "24")] == [False, False]  # still clinical
    assert [p.clinically_significant for p in ors("26", "32")] == [False, False]  # never clinical


def test_sessions_are_ordered_by_time_and_numbered() -> None:
    shuffled = [*series("10", "12", "16")][::-1]
    points = interpret_ors(shuffled, ADULT)
    assert [(p.session, p.observation, p.total) for p in points] == [
        (1, "s1", D(10)),
        (2, "s2", D(12)),
        (3, "s3", D(16)),
    ]


@pytest.mark.parametrize(
    ("score", "field"),
    [
        (SessionScore("2026-02-01", D("40.1"), "x"), "ors[1].total"),
        (SessionScore("2026-02-01", D("-0.1"), "x"), "ors[1].total"),
        (SessionScore("2026-02-01", D("NaN"), "x"), "ors[1].total"),
        (SessionScore("2026-02-01", D(20), ""), "ors[1].observation"),
        (SessionScore("yesterday", D(20), "x"), "ors[1].when"),
    ],
)
def test_bad_ors_scores_are_rejected(score: SessionScore, field: str) -> None:
    with pytest.raises(ClinicalInputError) as caught:
        interpret_ors([*series("20"), score], ADULT)
    assert caught.value.fields == (field,)


def test_empty_series() -> None:
    assert interpret_ors([], ADULT) == []
    assert interpret_srs([]) == []
    assert open_alerts([], []) == []


# --- colours ------------------------------------------------------------------------------------


def colours(*totals: str, cutoffs: Cutoffs = DEFAULT_CUTOFFS) -> list[Colour]:
    return [p.status for p in ors(*totals, cutoffs=cutoffs)]


def test_intake_alone_is_grey() -> None:
    (point,) = ors("12")
    assert point.status is Colour.GREY
    assert "intake" in point.status_reason


def test_reliable_improvement_is_green() -> None:
    assert colours("12", "17") == [Colour.GREY, Colour.GREEN]
    assert colours("12", "16.9") == [Colour.GREY, Colour.AMBER]
    assert ors("20", "26")[1].status_reason == (
        "clinically significant change: +6 since intake, now above cutoff"
    )
    assert ors("10", "16")[1].status_reason == "reliable improvement: +6 since intake"


def test_reliable_deterioration_is_red() -> None:
    assert colours("20", "15") == [Colour.GREY, Colour.RED]
    assert colours("20", "15.1") == [Colour.GREY, Colour.AMBER]
    assert ors("20", "15")[1].status_reason == "reliable deterioration: -5 since intake"


def test_crossing_the_cutoff_without_reliable_change_is_amber() -> None:
    point = ors("24", "26")[1]
    assert point.clinical_range == "non-clinical"
    assert point.status is Colour.AMBER
    assert "non-clinical" in point.status_reason


def test_no_reliable_improvement_by_session_six_in_the_clinical_range_is_red() -> None:
    points = ors("15", "16", "17", "16", "18", "19", "19.9")
    assert [p.status for p in points] == [Colour.GREY] + [Colour.AMBER] * 4 + [Colour.RED] * 2
    assert [p.no_progress for p in points] == [False] * 5 + [True] * 2
    assert points[5].status_reason == (
        "no reliable improvement by session 6 (+4 since intake) and still in the clinical range"
    )
    # improvement at session 8 turns it green
    assert ors("15", "16", "17", "16", "18", "19", "19.9", "20")[-1].status is Colour.GREEN


def test_no_progress_outside_the_clinical_range_stays_amber() -> None:
    assert colours("30", "31", "30", "29", "30", "31") == [Colour.GREY] + [Colour.AMBER] * 5


def test_no_progress_session_count_is_configurable() -> None:
    cutoffs = Cutoffs(no_progress_sessions=3)
    assert colours("15", "16", "17", cutoffs=cutoffs) == [Colour.GREY, Colour.AMBER, Colour.RED]


def test_colour_reflects_the_current_session_not_the_best_one() -> None:
    # reliable improvement at session 3, then back to +2: amber, then red at session 6
    assert colours("15", "18", "21", "17", "17", "17") == [
        Colour.GREY,
        Colour.AMBER,
        Colour.GREEN,
        Colour.AMBER,
        Colour.AMBER,
        Colour.RED,
    ]


# --- SRS ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("total", "alert", "reasons"),
    [
        ("35.9", True, ("below 36 (35.9)",)),
        ("36.0", False, ()),
        ("40", False, ()),
        ("0", True, ("below 36 (0)",)),
    ],
)
def test_srs_below_36_alerts(total: str, alert: bool, reasons: tuple[str, ...]) -> None:
    (point,) = interpret_srs(series(total))
    assert (point.alert, point.reasons) == (alert, reasons)
    assert point.change_from_previous is None


@pytest.mark.parametrize(
    ("previous", "current", "alert", "reasons"),
    [
        ("39.0", "38.0", True, ("drop of 1.0 since previous session",)),
        ("39.0", "38.1", False, ()),
        ("39.5", "38.0", True, ("drop of 1.5 since previous session",)),
        ("38.0", "39.5", False, ()),
        ("37.0", "35.0", True, ("below 36 (35.0)", "drop of 2.0 since previous session")),
        ("35.0", "35.5", True, ("below 36 (35.5)",)),
    ],
)
def test_srs_drop_of_one_point_alerts(
    previous: str, current: str, alert: bool, reasons: tuple[str, ...]
) -> None:
    points = interpret_srs(series(previous, current))
    assert (points[1].alert, points[1].reasons) == (alert, reasons)
    assert points[1].change_from_previous == D(current) - D(previous)


def test_srs_cutoffs_are_configurable() -> None:
    cutoffs = Cutoffs(srs_alert_below=D(30), srs_drop=D(2))
    points = interpret_srs(series("35", "33.5", "31.4"), cutoffs)
    assert [p.alert for p in points] == [False, False, True]


def test_bad_srs_scores_name_the_srs_series() -> None:
    with pytest.raises(ClinicalInputError) as caught:
        interpret_srs([SessionScore("2026-01-01", D(41), "x")])
    assert caught.value.fields == ("srs[0].total",)


# --- alerts -------------------------------------------------------------------------------------


def kinds(alerts: list[Alert]) -> list[str]:
    return [a.kind for a in alerts]


def test_alliance_alert_opens_and_clears_across_sessions() -> None:
    srs_totals = ["38", "38.5", "37.0", "35.5", "36.5", "38", "39", "37.9"]
    opened: list[tuple[int, list[str]]] = []
    for n in range(1, len(srs_totals) + 1):
        alerts = open_alerts([], interpret_srs(series(*srs_totals[:n])))
        opened.append((n, kinds(alerts)))
    assert opened == [
        (1, []),
        (2, []),
        (3, ["alliance"]),  # drop of 1.5
        (4, ["alliance"]),  # below 36 and drop of 1.5
        (5, []),  # 36.5: above 36, rising
        (6, []),
        (7, []),
        (8, ["alliance"]),  # drop of 1.1: a new alert
    ]
    (alert,) = open_alerts([], interpret_srs(series(*srs_totals[:4])))
    assert alert.key == "alliance"
    assert alert.since == SessionRef(3, "2026-01-19", "s3")
    assert alert.latest == SessionRef(4, "2026-01-26", "s4")
    # the session before the drop is evidence, then every session of the run
    assert alert.evidence == ("s2", "s3", "s4")
    assert alert.reason == "below 36 (35.5); drop of 1.5 since previous session"
    (again,) = open_alerts([], interpret_srs(series(*srs_totals)))
    assert again.since.session == 8


def test_alliance_alert_from_the_first_session_has_no_earlier_evidence() -> None:
    (alert,) = open_alerts([], interpret_srs(series("30", "31")))
    assert alert.since.session == 1
    assert alert.evidence == ("s1", "s2")


def test_deterioration_alert_runs_from_its_first_session() -> None:
    points = ors("20", "18", "14", "13", "16", "12")
    assert kinds(open_alerts(points[:2], [])) == []
    (alert,) = open_alerts(points[:4], [])
    assert (alert.kind, alert.since.session, alert.latest.session) == ("deterioration", 3, 4)
    assert alert.evidence == ("s1", "s3", "s4")  # intake, then the run
    assert alert.reason == "reliable deterioration: -7 since intake"
    assert kinds(open_alerts(points[:5], [])) == []  # 16: -4, cleared
    (again,) = open_alerts(points, [])
    assert again.since.session == 6


def test_no_progress_alert_opens_at_session_six_and_clears_on_improvement() -> None:
    totals = ["15", "16", "17", "16", "18", "19", "18", "21"]
    points = ors(*totals)
    assert kinds(open_alerts(points[:5], [])) == []
    (alert,) = open_alerts(points[:7], [])
    assert (alert.kind, alert.key, alert.since.session) == ("no-progress", "no-progress", 6)
    assert alert.evidence == ("s1", "s6", "s7")
    assert kinds(open_alerts(points, [])) == []  # +6: reliable improvement


def test_all_alerts_together_in_kind_order() -> None:
    ors_points = ors("20", "18", "17", "16", "15", "14.5")
    srs_points = interpret_srs(series("38", "36"))
    alerts = open_alerts(ors_points, srs_points)
    assert kinds(alerts) == ["deterioration", "alliance"]
    # deterioration wins over no-progress at session 6: red, but no no-progress alert
    assert ors_points[-1].no_progress is False


def test_walk_through_twelve_sessions() -> None:
    # Adult client: intake 14 (clinical), an alliance dip at session 4, a stall, then recovery.
    ors_totals = ["14", "15", "16", "15.5", "16", "17", "18.5", "18.9", "21", "24", "26", "27"]
    srs_totals = ["38", "38.5", "39", "37", "38", "38.5", "39", "39", "39.5", "39.5", "40", "40"]
    expected_colours = [Colour.GREY] + [Colour.AMBER] * 4 + [Colour.RED] * 3 + [Colour.GREEN] * 4
    expected_alerts = [
        [],
        [],
        [],
        ["alliance"],  # SRS 39 -> 37
        [],
        ["no-progress"],  # session 6: +3, clinical
        ["no-progress"],
        ["no-progress"],
        [],  # +7
        [],
        [],
        [],
    ]
    changes = []
    open_keys: set[str] = set()
    for n in range(1, 13):
        ors_points = interpret_ors(series(*ors_totals[:n]), ADULT)
        srs_points = interpret_srs(series(*srs_totals[:n]))
        assert ors_points[-1].status is expected_colours[n - 1], n
        alerts = open_alerts(ors_points, srs_points)
        assert kinds(alerts) == expected_alerts[n - 1], n
        change = reconcile(open_keys, alerts)
        changes.append(([a.key for a in change.open], list(change.close)))
        open_keys = (open_keys | {a.key for a in change.open}) - set(change.close)
    assert changes[3] == (["alliance"], [])
    assert changes[4] == ([], ["alliance"])
    assert changes[5] == (["no-progress"], [])
    assert changes[6] == ([], [])
    assert changes[8] == ([], ["no-progress"])
    final = interpret_ors(series(*ors_totals), ADULT)[-1]
    assert (final.clinical_range, final.clinically_significant) == ("non-clinical", True)


def test_reconcile_opens_keeps_and_closes_by_key() -> None:
    ref = SessionRef(1, "2026-01-05", "s1")
    alliance = Alert("alliance", ref, ref, ("s1",), "below 36 (30)")
    deterioration = Alert("deterioration", ref, ref, ("s1",), "reliable deterioration")
    change = reconcile(["alliance", "no-progress"], [alliance, deterioration])
    assert change.open == (deterioration,)
    assert change.still_open == (alliance,)
    assert change.close == ("no-progress",)


# --- properties ---------------------------------------------------------------------------------

totals = st.integers(0, 400).map(lambda tenths: D(tenths) / 10)


@settings(max_examples=300, deadline=None)
@given(st.lists(totals, min_size=1, max_size=14))
def test_property_colour_rules(values: list[Decimal]) -> None:
    points = interpret_ors(series(*(str(v) for v in values)), ADULT)
    assert points[0].status is Colour.GREY
    for point in points[1:]:
        change = point.total - values[0]
        assert point.change_from_intake == change
        if change <= -5:
            assert point.status is Colour.RED and not point.no_progress
        elif change >= 5:
            assert point.status is Colour.GREEN
        elif point.session >= 6 and point.total < 25:
            assert point.status is Colour.RED and point.no_progress
        else:
            assert point.status is Colour.AMBER


@settings(max_examples=300, deadline=None)
@given(st.lists(totals, min_size=1, max_size=14))
def test_property_an_alliance_alert_is_open_exactly_when_the_latest_srs_alerts(
    values: list[Decimal],
) -> None:
    points = interpret_srs(series(*(str(v) for v in values)))
    latest = values[-1]
    dropped = len(values) > 1 and values[-2] - latest >= 1
    assert points[-1].alert is (latest < 36 or dropped)
    alerts = open_alerts([], points)
    assert kinds(alerts) == (["alliance"] if points[-1].alert else [])
    if alerts:
        run = alerts[0]
        assert all(p.alert for p in points[run.since.session - 1 :])
        assert run.since.session == 1 or not points[run.since.session - 2].alert
