"""The overview screen's charts, built from the server's `$progress` summary (summary.py) by the
shared chart builders (fhirgoal/charts/measures.py, which the medical-necessity PDF uses too).

Each chart shows what the server computed and nothing more: the values below are `$progress`'s,
read as they come.
"""

from __future__ import annotations

from collections import defaultdict
from datetime import date

from fhirgoal.charts import measures
from fhirgoal.charts.model import Chart
from fhirgoal.webapp.summary import Progress


def day_of(text: str) -> date:
    return date.fromisoformat(text[:10])


def ors_chart(progress: Progress) -> Chart:
    values = [
        measures.OrsValue(day_of(p.when), p.session, p.total, p.cutoff, p.status, p.status_reason)
        for p in progress.ors
    ]
    return measures.ors_chart(values, progress.band)


def srs_chart(progress: Progress) -> Chart:
    values = [
        measures.SrsValue(day_of(p.when), p.session, p.total, p.alert, p.reasons)
        for p in progress.srs
    ]
    return measures.srs_chart(values, progress.alliance_below)


def tscore_chart(progress: Progress) -> Chart:
    values = [measures.TScoreValue(day_of(p.when), p.tscore, p.goals) for p in progress.tscores]
    return measures.tscore_chart(values)


def comparator_charts(progress: Progress) -> list[Chart]:
    values: dict[str, list[measures.ScoreValue]] = defaultdict(list)
    for measure, scores in progress.comparators.items():
        values[measure] = [measures.ScoreValue(day_of(s.when), s.total) for s in scores]
    return measures.comparator_charts(values)
