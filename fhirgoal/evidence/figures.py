"""The figures of a medical-necessity document, computed by clinical/ exactly as `$progress`
computes them (clinical/progress.py), as of the period's `end`:

- GAS ratings read by clinical/records.py `ratings_in`; each goal's baseline (its first baseline
  rating) and latest rating (by time, any rater: raw levels and raters are never hidden);
- the GAS T-score after each day with a baseline or practitioner rating, over the plan's GAS
  goals, each goal at its latest such rating: `$progress`'s series rule, scored by
  clinical/gas.py `compute_tscore`. What `$progress` does not return, and a payer needs, is which
  rating fed each point: that is kept here (`rated`), and each point becomes a T-score
  Observation shaped as clinical/gas_operations.py stores one (`derivedFrom` the ratings);
- ORS/CORS and SRS/CSRS interpreted by clinical/session_measures.py through
  clinical/session_alerts.py (cutoff by age band on each session's date, reliable change from
  intake, progress colour, alliance alerts), PHQ-9 and GAD-7 totals as recorded.

Everything is up to `end`: the intake that reliable change is measured from may lie before the
period, and stays in the series. tests/evidence checks these figures against `$progress`.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from fhirgoal.clinical.achievement import Rating, day_of, instant_of
from fhirgoal.clinical.gas import GoalScore, TScoreResult, compute_tscore
from fhirgoal.clinical.gas_operations import RatedGoal, tscore_observation
from fhirgoal.clinical.records import GasGoal, ratings_in, series_in
from fhirgoal.clinical.session_alerts import interpret_outcome
from fhirgoal.clinical.session_measures import (
    Cutoffs,
    OrsPoint,
    SessionScore,
    SrsPoint,
    interpret_srs,
)
from fhirgoal.evidence.records import EvidenceRecords


@dataclass(frozen=True)
class GoalEvidence:
    goal: GasGoal
    ratings: list[Rating]  # on or before `end`, in recording order

    @property
    def baseline(self) -> Rating | None:
        return next((r for r in self.ratings if r.kind == "baseline"), None)

    @property
    def latest(self) -> Rating | None:
        if not self.ratings:
            return None
        return max(enumerate(self.ratings), key=lambda pair: (instant_of(pair[1].when), pair[0]))[1]

    def between(self, start: date, end: date) -> list[Rating]:
        return [r for r in self.ratings if start <= day_of(r.when) <= end]


@dataclass(frozen=True)
class TScorePoint:
    day: date
    result: TScoreResult
    rated: list[RatedGoal]  # the rating behind each goal's level, in the formula's order
    observation: dict[str, Any]  # the T-score Observation of this point (not stored)


@dataclass(frozen=True)
class Figures:
    goals: list[GoalEvidence]
    tscores: list[TScorePoint]
    ors: list[OrsPoint]  # session 1 is the intake
    srs: list[SrsPoint]
    comparators: dict[str, list[SessionScore]]  # by LOINC code (PHQ-9, GAD-7)
    cutoffs: Cutoffs

    def measured_between(self, start: date, end: date) -> bool:
        """Whether any standardized measure was taken in the period (a GAS rating, ORS, SRS,
        PHQ-9 or GAD-7): a plan with no measured progress is what auditors reject."""
        days = [day_of(r.when) for g in self.goals for r in g.ratings]
        days += [day_of(p.when) for p in self.ors] + [day_of(p.when) for p in self.srs]
        days += [day_of(s.when) for series in self.comparators.values() for s in series]
        return any(start <= d <= end for d in days)


def compute_figures(records: EvidenceRecords, cutoffs: Cutoffs) -> Figures:
    goals = records.gas_goals
    ratings = ratings_in(records.observations, [g.id for g in goals])
    evidence = [GoalEvidence(g, ratings.get(g.id, [])) for g in goals]
    series = series_in(records.observations)
    return Figures(
        goals=evidence,
        tscores=tscore_series(records.patient["id"], records.plan_reference, evidence),
        ors=interpret_outcome(series.outcome, records.patient.get("birthDate"), cutoffs),
        srs=interpret_srs(series.alliance, cutoffs),
        comparators=dict(sorted(series.other.items())),
        cutoffs=cutoffs,
    )


def tscore_series(pid: str, plan: str | None, goals: list[GoalEvidence]) -> list[TScorePoint]:
    """The T-score after each day with a baseline or practitioner rating (one point per day,
    after all of that day's ratings), each goal at its latest such rating."""
    by_id = {g.goal.id: g.goal for g in goals}
    events = sorted(
        (
            (instant_of(r.when), day_of(r.when), g.goal.id, r)
            for g in goals
            for r in g.ratings
            if r.kind == "baseline" or r.rater == "practitioner"
        ),
        key=lambda event: event[0],
    )
    latest: dict[str, Rating] = {}
    points: list[TScorePoint] = []
    for index, (_, day, gid, rating) in enumerate(events):
        latest[gid] = rating
        if index + 1 < len(events) and events[index + 1][1] == day:
            continue
        rated = [RatedGoal(by_id[g], r) for g, r in sorted(latest.items())]
        scores = [GoalScore(r.rating.level, r.goal.weight, r.goal.id) for r in rated]
        if sum((s.weight for s in scores), Decimal(0)) == 0:
            continue
        result = compute_tscore(scores)
        observation = tscore_observation(pid, plan, day, "practitioner", result, rated)
        points.append(TScorePoint(day, result, rated, observation))
    return points
