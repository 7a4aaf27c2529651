"""`Patient/{id}/$progress`: a clinician-ready summary of a client's measured progress.

Returns a Parameters resource (https://hl7.org/fhir/R4/parameters.html), the form FHIR gives
operation results, with:

- `goal` (one per GAS goal): the goal, its current achievement status and who set it (`server`
  from the ratings, `starting-value` when set before the first rating and so replaced by the
  ratings, or `clinician` when a user set it after the first rating; the rule itself is the
  `statusRule` parameter), weight and scale variant, and every rating - date, raw level,
  baseline or follow-up, rater - so raw levels and raters are never hidden behind a score;
- `tscore` (series): the GAS T-score after each rating date, from the practitioner's ratings
  (and baselines), with the goals it covered;
- `ors` (series): total, cutoff for the client's age band on that date, clinical range, change
  from intake, reliable change, clinically significant change, and the progress colour
  (green / amber / red / grey) with its reason; `reliableChangeBand`: intake +/- the RCI;
- `srs` (series): total, change since the previous session, alliance alert and why;
- `comparator` (series): PHQ-9 and GAD-7 totals;
- `status`: the latest progress colour and reason; `alert`: the client's open Flags.

Optional input `date` (default today): only data on or before it. The web app and the payer
evidence are built on this summary. Rules: session_measures.py, achievement.py, gas.py.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

from fhirgoal.clinical.achievement import day_of, instant_of
from fhirgoal.clinical.codes import DERIVED_STATUS_EXTENSION, FHIRGOAL
from fhirgoal.clinical.gas import GoalScore, compute_tscore
from fhirgoal.clinical.goal_status import STATUS_RULE, status_set_before_ratings
from fhirgoal.clinical.records import (
    COMPARATORS,
    GasGoal,
    first_rating_recorded,
    patient_gas_goals,
    patient_observations,
    ratings_in,
    read_patient,
    series_in,
)
from fhirgoal.clinical.session_alerts import cutoffs_from, interpret_outcome
from fhirgoal.clinical.session_measures import (
    OrsPoint,
    SessionScore,
    SrsPoint,
    interpret_srs,
)
from fhirgoal.core.errors import FhirError
from fhirgoal.fhir.operations import Invocation, Operation, OperationRegistry
from fhirgoal.fhir.outcome import Outcome
from fhirgoal.fhir.service import FhirService

MAX_FLAGS = 200


def register(operations: OperationRegistry) -> None:
    operations.register(
        Operation("progress", "instance", "Patient", patient_progress,
                  definition=f"{FHIRGOAL}/OperationDefinition/Patient-progress")
    )  # fmt: skip


def _on_or_before(when: Any, on: date) -> bool:
    return day_of(when) <= on


def _ref(reference: str, display: str | None = None) -> dict[str, Any]:
    value: dict[str, Any] = {"reference": reference}
    if display:
        value["display"] = display
    return value


async def patient_progress(svc: FhirService, call: Invocation) -> Outcome:
    params = call.parameters
    params.reject_unknown({"date"})
    given = params.one("date")
    on = date.today()
    if given is not None:
        try:
            on = date.fromisoformat(given.text())
        except ValueError:
            raise FhirError("invalid", "date must be YYYY-MM-DD", given.expression) from None
    assert call.id is not None
    pid = call.id
    patient = await read_patient(svc, call.access, pid)
    cutoffs = cutoffs_from(svc.settings)

    goals = await patient_gas_goals(svc, call.access, pid)
    observations = await patient_observations(svc, call.access, pid)
    ratings = ratings_in(observations, [g.id for g in goals])
    series = series_in(observations)
    outcome = [s for s in series.outcome if _on_or_before(s.when, on)]
    alliance = [s for s in series.alliance if _on_or_before(s.when, on)]
    ors = interpret_outcome(outcome, patient.get("birthDate"), cutoffs)
    srs = interpret_srs(alliance, cutoffs)
    flags = await svc.find_resources(
        call.access, "Flag", [("patient", f"Patient/{pid}"), ("status", "active")], MAX_FLAGS
    )

    out: list[dict[str, Any]] = [
        {"name": "patient", "valueReference": _ref(f"Patient/{pid}")},
        {"name": "date", "valueDate": on.isoformat()},
    ]
    usable = {g.id: [r for r in ratings.get(g.id, []) if _on_or_before(r.when, on)] for g in goals}
    out.append({"name": "statusRule", "valueString": STATUS_RULE})
    for goal in goals:
        out.append(_goal_part(goal, usable[goal.id], await _status_owner(svc, call, goal)))
    out += _tscore_series(goals, usable)
    out += [_ors_part(point) for point in ors]
    if ors:
        intake = ors[0].total
        out.append(
            {
                "name": "reliableChangeBand",
                "part": [
                    {"name": "intake", "valueDecimal": intake},
                    {"name": "low", "valueDecimal": intake - cutoffs.reliable_change},
                    {"name": "high", "valueDecimal": intake + cutoffs.reliable_change},
                ],
            }
        )
        latest = ors[-1]
        out.append({"name": "status", "valueCode": str(latest.status)})
        out.append({"name": "statusReason", "valueString": latest.status_reason})
    else:
        out.append({"name": "status", "valueCode": "grey"})
        out.append({"name": "statusReason", "valueString": "no Outcome Rating Scale yet"})
    out += [_srs_part(point) for point in srs]
    for code, scores in sorted(series.other.items()):
        out += [_comparator_part(code, s) for s in scores if _on_or_before(s.when, on)]
    for flag in flags:
        resource = flag.resource or {}
        coding = (resource.get("code") or {}).get("coding") or [{}]
        out.append(
            {
                "name": "alert",
                "part": [
                    {"name": "flag", "valueReference": _ref(f"Flag/{flag.id}")},
                    {"name": "code", "valueCoding": coding[0]},
                    {"name": "text", "valueString": (resource.get("code") or {}).get("text", "")},
                    {"name": "since", "valueDateTime": (resource.get("period") or {}).get("start")},
                ],
            }
        )
    return Outcome(200, body={"resourceType": "Parameters", "parameter": out})


async def _status_owner(svc: FhirService, call: Invocation, goal: GasGoal) -> str:
    """Who owns the goal's achievementStatus now (STATUS_RULE): `server` (derived from the
    ratings), `starting-value` (set before the first rating: the ratings will replace it) or
    `clinician` (set by a user after the first rating: kept)."""
    status = goal.resource.get("achievementStatus")
    if isinstance(status, dict) and any(
        e.get("url") == DERIVED_STATUS_EXTENSION for e in status.get("extension", [])
    ):
        return "server"
    current = await svc.current(call.access, "Goal", goal.id)
    subject = (goal.resource.get("subject") or {}).get("reference")
    if current is None or await first_rating_recorded(svc, goal.id, subject) is None:
        return "starting-value"
    before = await status_set_before_ratings(svc, current, goal.id, subject)
    return "starting-value" if before else "clinician"


def _goal_part(goal: GasGoal, ratings: list[Any], owner: str) -> dict[str, Any]:
    resource = goal.resource
    status = resource.get("achievementStatus")
    parts: list[dict[str, Any]] = [
        {"name": "goal", "valueReference": _ref(f"Goal/{goal.id}", goal.description)},
        {"name": "lifecycleStatus", "valueCode": resource.get("lifecycleStatus", "active")},
        {"name": "weight", "valueDecimal": goal.weight},
        {"name": "variant", "valueCode": goal.variant},
    ]
    if isinstance(status, dict) and status.get("coding"):
        coding = {
            k: v for k, v in status["coding"][0].items() if k in ("system", "code", "display")
        }
        parts.append({"name": "achievementStatus", "valueCoding": coding})
        parts.append({"name": "statusSetBy", "valueCode": owner})
    for rating in ratings:
        parts.append(
            {
                "name": "rating",
                "part": [
                    {
                        "name": "observation",
                        "valueReference": _ref(f"Observation/{rating.observation}"),
                    },
                    {"name": "date", "valueDateTime": str(rating.when)},
                    {"name": "level", "valueDecimal": rating.level},
                    {"name": "kind", "valueCode": rating.kind},
                    {"name": "rater", "valueCode": rating.rater},
                ],
            }
        )
    return {"name": "goal", "part": parts}


def _tscore_series(goals: list[GasGoal], ratings: dict[str, list[Any]]) -> list[dict[str, Any]]:
    """The T-score after each date with a practitioner rating or baseline."""
    weights = {g.id: g.weight for g in goals}
    events = sorted(
        (
            (instant_of(r.when), str(r.when)[:10], gid, r.level)
            for gid, rs in ratings.items()
            for r in rs
            if r.kind == "baseline" or r.rater == "practitioner"
        ),
        key=lambda e: e[0],
    )
    latest: dict[str, Decimal] = {}
    out: list[dict[str, Any]] = []
    for index, (_, day, gid, level) in enumerate(events):
        latest[gid] = level
        if index + 1 < len(events) and events[index + 1][1] == day:
            continue  # one point per day, after all of that day's ratings
        scores = [GoalScore(lvl, weights[g], g) for g, lvl in sorted(latest.items())]
        if sum((s.weight for s in scores), Decimal(0)) == 0:
            continue
        result = compute_tscore(scores)
        out.append(
            {
                "name": "tscore",
                "part": [
                    {"name": "date", "valueDate": day},
                    {"name": "tscore", "valueDecimal": result.tscore},
                    {"name": "goalCount", "valueInteger": len(scores)},
                ],
            }
        )
    return out


def _ors_part(point: OrsPoint) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [
        {"name": "observation", "valueReference": _ref(f"Observation/{point.observation}")},
        {"name": "session", "valueInteger": point.session},
        {"name": "date", "valueDateTime": str(point.when)},
        {"name": "total", "valueDecimal": point.total},
        {"name": "cutoff", "valueDecimal": point.cutoff},
        {"name": "cutoffBasis", "valueString": point.cutoff_basis},
        {"name": "clinicalRange", "valueCode": point.clinical_range},
        {"name": "changeFromIntake", "valueDecimal": point.change_from_intake},
        {"name": "clinicallySignificant", "valueBoolean": point.clinically_significant},
        {"name": "status", "valueCode": str(point.status)},
        {"name": "statusReason", "valueString": point.status_reason},
    ]
    if point.reliable_change is not None:
        parts.append({"name": "reliableChange", "valueCode": point.reliable_change})
    return {"name": "ors", "part": parts}


def _srs_part(point: SrsPoint) -> dict[str, Any]:
    parts: list[dict[str, Any]] = [
        {"name": "observation", "valueReference": _ref(f"Observation/{point.observation}")},
        {"name": "session", "valueInteger": point.session},
        {"name": "date", "valueDateTime": str(point.when)},
        {"name": "total", "valueDecimal": point.total},
        {"name": "alert", "valueBoolean": point.alert},
    ]
    if point.change_from_previous is not None:
        parts.append({"name": "changeFromPrevious", "valueDecimal": point.change_from_previous})
    parts += [{"name": "reason", "valueString": reason} for reason in point.reasons]
    return {"name": "srs", "part": parts}


def _comparator_part(code: str, score: SessionScore) -> dict[str, Any]:
    return {
        "name": "comparator",
        "part": [
            {"name": "measure", "valueString": COMPARATORS.get(code, code)},
            {"name": "observation", "valueReference": _ref(f"Observation/{score.observation}")},
            {"name": "date", "valueDateTime": str(score.when)},
            {"name": "total", "valueDecimal": score.total},
        ],
    }
