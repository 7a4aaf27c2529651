"""The charts of a client's measures, from plain values (whoever computed them: the app reads
them from the server's `$progress`, the evidence from clinical/'s figures), so that the app and
the PDF draw the same charts:

- ORS totals with the clinical cutoff that applied on each date (it changes when a client changes
  age band) and the reliable-change band around the intake score, each point marked with its
  progress colour;
- SRS totals with the sessions flagged for the alliance, and the alliance threshold applied;
- the GAS T-score over time with the T = 50 line ("as expected", Kiresuk & Sherman);
- PHQ-9 and GAD-7 totals on their own ranges.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from decimal import Decimal

from fhirgoal.charts.model import Band, Chart, Point, Series, Threshold, long_day, number

COMPARATOR_RANGES = {"PHQ-9": 27.0, "GAD-7": 21.0}


@dataclass(frozen=True)
class OrsValue:
    day: date
    session: int
    total: Decimal
    cutoff: Decimal
    status: str  # green | amber | red | grey
    status_reason: str


@dataclass(frozen=True)
class SrsValue:
    day: date
    session: int
    total: Decimal
    alert: bool
    reasons: Sequence[str]


@dataclass(frozen=True)
class TScoreValue:
    day: date
    tscore: Decimal
    goals: int


@dataclass(frozen=True)
class ScoreValue:
    day: date
    total: Decimal


def _n(value: Decimal | float) -> str:
    return number(float(value))


def ors_chart(values: Sequence[OrsValue], band: tuple[Decimal, Decimal, Decimal] | None) -> Chart:
    """`band`: the intake total and the reliable-change band's low and high ends."""
    points = [
        Point(
            v.day,
            float(v.total),
            f"{long_day(v.day)}: ORS {_n(v.total)}, session {v.session}, "
            f"cutoff {_n(v.cutoff)}; status {v.status}: {v.status_reason}",
            mark=v.status,
        )
        for v in values
    ]
    steps: list[tuple[date, float]] = []
    for v in values:
        if not steps or steps[-1][1] != float(v.cutoff):
            steps.append((v.day, float(v.cutoff)))
    bands = []
    if band is not None:
        intake, low, high = band
        bands.append(
            Band(
                float(low),
                float(high),
                f"Reliable change: intake {_n(intake)} from {_n(low)} to {_n(high)}",
            )
        )
    thresholds = [Threshold(steps, "Cutoff: clinical cutoff for the client's age band")]
    return Chart(
        key="ors",
        title="Outcome Rating Scale (ORS), 0-40",
        y_min=0,
        y_max=40,
        series=[Series("ORS", points, "s-ors")],
        bands=bands,
        thresholds=thresholds if steps else [],
        y_step=10,
    )


def srs_chart(values: Sequence[SrsValue], alliance_below: Decimal | None) -> Chart:
    points = [
        Point(
            v.day,
            float(v.total),
            f"{long_day(v.day)}: SRS {_n(v.total)}, session {v.session}"
            + (f"; alliance alert: {'; '.join(v.reasons)}" if v.alert else ""),
            mark="alert" if v.alert else "",
        )
        for v in values
    ]
    thresholds = []
    if points and alliance_below is not None:
        below = float(alliance_below)
        thresholds.append(
            Threshold(
                [(points[0].day, below)],
                f"Alliance: a total below {number(below)} raises an alliance alert",
            )
        )
    return Chart(
        key="srs",
        title="Session Rating Scale (SRS), 0-40",
        y_min=0,
        y_max=40,
        series=[Series("SRS", points, "s-srs")],
        thresholds=thresholds,
        y_step=10,
    )


def tscore_chart(values: Sequence[TScoreValue]) -> Chart:
    points = [
        Point(
            v.day,
            float(v.tscore),
            f"{long_day(v.day)}: GAS T-score {_n(v.tscore)} over {v.goals} goal"
            + ("s" if v.goals != 1 else ""),
        )
        for v in values
    ]
    expected = [(points[0].day, 50.0)] if points else []
    return Chart(
        key="tscore",
        title="GAS T-score (50 = goals met as expected)",
        y_min=20,
        y_max=80,
        series=[Series("T-score", points, "s-gas")],
        thresholds=[Threshold(expected, "Expected: T = 50")] if expected else [],
        y_step=10,
    )


def comparator_charts(values: Mapping[str, Sequence[ScoreValue]]) -> list[Chart]:
    """One chart per measure ("PHQ-9", "GAD-7"), in the measures' name order."""
    charts = []
    for index, (measure, scores) in enumerate(sorted(values.items())):
        if not scores:
            continue
        top = COMPARATOR_RANGES.get(measure, max(float(s.total) for s in scores))
        points = [
            Point(s.day, float(s.total), f"{long_day(s.day)}: {measure} {_n(s.total)}")
            for s in scores
        ]
        charts.append(
            Chart(
                key=f"cmp{index}",
                title=f"{measure} total, 0-{number(top)}",
                y_min=0,
                y_max=top,
                series=[Series(measure, points, "s-cmp")],
            )
        )
    return charts
