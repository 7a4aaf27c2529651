"""The charts of the medical-necessity PDF: the clinician app's charts (fhirgoal/charts/, the
same builders and the same SVG drawing), from the document's figures (figures.py) rather than
from `$progress`, over the points the sections' tables show (the period's, preceded by the
intake or first T-score they are read against), as standalone SVG for pdf.py.

Keyed by the section they illustrate (report.py's section keys): `tscore`, `ors`, `srs` and
`comparator-{LOINC code}`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import date
from decimal import Decimal
from typing import TypeVar

from fhirgoal.charts import measures
from fhirgoal.charts.model import Chart
from fhirgoal.charts.svg import svg
from fhirgoal.clinical.achievement import day_of
from fhirgoal.clinical.records import COMPARATORS
from fhirgoal.evidence.figures import Figures
from fhirgoal.evidence.request import EvidenceRequest

T = TypeVar("T")


def chart_svgs(ask: EvidenceRequest, figures: Figures) -> dict[str, list[str]]:
    """Standalone SVG of each section's chart (none for a measure without points)."""
    charts: dict[str, Chart] = {
        "tscore": measures.tscore_chart([
            measures.TScoreValue(p.day, p.result.tscore, len(p.rated))
            for p in _shown(figures.tscores, ask, lambda p: p.day)
        ]),
        "ors": measures.ors_chart(
            [measures.OrsValue(day_of(p.when), p.session, p.total, p.cutoff, str(p.status),
                               p.status_reason)
             for p in _shown(figures.ors, ask, lambda p: day_of(p.when))],
            _band(figures),
        ),
        "srs": measures.srs_chart(
            [measures.SrsValue(day_of(p.when), p.session, p.total, p.alert, p.reasons)
             for p in figures.srs if ask.start <= day_of(p.when) <= ask.end],
            figures.cutoffs.srs_alert_below,
        ),
    }  # fmt: skip
    for code, series in figures.comparators.items():
        name = COMPARATORS.get(code, code)
        values = [
            measures.ScoreValue(day_of(s.when), s.total)
            for s in series
            if ask.start <= day_of(s.when) <= ask.end
        ]
        for chart in measures.comparator_charts({name: values}):
            charts[f"comparator-{code}"] = chart
    return {key: [svg(chart, standalone=True)] for key, chart in charts.items() if not chart.empty}


def _band(figures: Figures) -> tuple[Decimal, Decimal, Decimal] | None:
    """Intake +/- the reliable change index, as `$progress` states it (reliableChangeBand)."""
    if not figures.ors:
        return None
    intake, change = figures.ors[0].total, figures.cutoffs.reliable_change
    return intake, intake - change, intake + change


def _shown(items: Sequence[T], ask: EvidenceRequest, day: Callable[[T], date]) -> list[T]:
    """The items in the period, preceded by the series' first (the intake, the first T-score)
    when that lies before it: the tables' rule (report.py `_with_reference`)."""
    shown = [item for item in items if ask.start <= day(item) <= ask.end]
    if items and (not shown or shown[0] is not items[0]):
        return [items[0], *shown]
    return shown
