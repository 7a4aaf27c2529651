"""The overview screen's charts, built from the server's `$progress` summary (summary.py).

Each chart shows what the server computed and nothing more: ORS totals with the clinical cutoff
that applied on each date (it changes when a client changes age band) and the reliable-change
band around the intake score; SRS totals with the sessions the server flagged for the alliance;
the GAS T-score over time with the T = 50 line ("as expected", Kiresuk & Sherman); PHQ-9 and
GAD-7 totals on their own ranges.
"""

from __future__ import annotations

from datetime import date

from fhirgoal.webapp.charts import Band, Chart, Point, Series, Threshold, long_day
from fhirgoal.webapp.summary import Progress

COMPARATOR_RANGES = {"PHQ-9": 27.0, "GAD-7": 21.0}


def day_of(text: str) -> date:
    return date.fromisoformat(text[:10])


def _n(value: object) -> str:
    return f"{float(str(value)):.1f}".rstrip("0").rstrip(".")


def ors_chart(progress: Progress) -> Chart:
    points = [
        Point(
            day_of(p.when),
            float(p.total),
            f"{long_day(day_of(p.when))}: ORS {_n(p.total)}, session {p.session}, "
            f"cutoff {_n(p.cutoff)}; status {p.status}: {p.status_reason}",
            mark=p.status,
        )
        for p in progress.ors
    ]
    steps: list[tuple[date, float]] = []
    for p in progress.ors:
        if not steps or steps[-1][1] != float(p.cutoff):
            steps.append((day_of(p.when), float(p.cutoff)))
    bands = []
    if progress.band is not None:
        intake, low, high = progress.band
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


def srs_chart(progress: Progress) -> Chart:
    points = [
        Point(
            day_of(p.when),
            float(p.total),
            f"{long_day(day_of(p.when))}: SRS {_n(p.total)}, session {p.session}"
            + (f"; alliance alert: {'; '.join(p.reasons)}" if p.alert else ""),
            mark="alert" if p.alert else "",
        )
        for p in progress.srs
    ]
    return Chart(
        key="srs",
        title="Session Rating Scale (SRS), 0-40",
        y_min=0,
        y_max=40,
        series=[Series("SRS", points, "s-srs")],
        y_step=10,
    )


def tscore_chart(progress: Progress) -> Chart:
    points = [
        Point(
            day_of(p.when),
            float(p.tscore),
            f"{long_day(day_of(p.when))}: GAS T-score {_n(p.tscore)} over {p.goals} goal"
            + ("s" if p.goals != 1 else ""),
        )
        for p in progress.tscores
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


def comparator_charts(progress: Progress) -> list[Chart]:
    charts = []
    for index, (measure, scores) in enumerate(sorted(progress.comparators.items())):
        top = COMPARATOR_RANGES.get(measure, max(float(s.total) for s in scores))
        points = [
            Point(
                day_of(s.when),
                float(s.total),
                f"{long_day(day_of(s.when))}: {measure} {_n(s.total)}",
            )
            for s in scores
        ]
        charts.append(
            Chart(
                key=f"cmp{index}",
                title=f"{measure} total, 0-{_n(top)}",
                y_min=0,
                y_max=top,
                series=[Series(measure, points, "s-cmp")],
            )
        )
    return charts
