"""A client's clinical records as the clinical rules read them: GAS goals, their ratings, and
session-measure series, fetched through the FhirService (so the caller's access applies).

Shapes: PCO GAS Goal and GAS score Observation (http://hl7.org/fhir/us/pco), the project's session
rating profile (profiles/structuredefinitions/session-rating.json).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

from fhirgoal.clinical.achievement import Rater, Rating
from fhirgoal.clinical.codes import (
    ALLIANCE_TOTALS,
    GAD7_TOTAL,
    GAS_BASELINE_CODES,
    GAS_EXTENSION,
    GAS_FOLLOW_UP,
    GAS_RATING_CODES,
    GAS_VARIANT_EXTENSION,
    GAS_WEIGHT_EXTENSION,
    LOINC,
    MEASURES,
    OUTCOME_TOTALS,
    PHQ9_TOTAL,
    gas_level_of,
)
from fhirgoal.clinical.gas import weight_from
from fhirgoal.clinical.session_measures import SessionScore
from fhirgoal.core.access import UNRESTRICTED, AccessContext
from fhirgoal.core.errors import FhirError
from fhirgoal.core.fields import NEWEST_FIRST
from fhirgoal.fhir.service import FhirService

INACTIVE_GOALS = {"cancelled", "entered-in-error", "rejected"}
MAX_RECORDS = 5000
_RATER_OF_TYPE: dict[str, Rater] = {
    "Practitioner": "practitioner",
    "PractitionerRole": "practitioner",
    "Patient": "patient",
    "RelatedPerson": "caregiver",
}


@dataclass(frozen=True)
class GasGoal:
    id: str
    resource: dict[str, Any]
    weight: Decimal
    importance: int | None
    difficulty: int | None
    variant: str

    @property
    def description(self) -> str:
        return str((self.resource.get("description") or {}).get("text", self.id))


def is_gas_goal(goal: dict[str, Any]) -> bool:
    """Whether the goal is scored by GAS: it describes its attainment levels (PCO extension
    pco-goal-attainment-scaling). A PCO goal with the GAS `target.measure` but no levels is
    stored and searchable like any goal, but has no scale to score against, so the T-score,
    `$progress` and the status rules leave it out."""
    return any(e.get("url") == GAS_EXTENSION for e in goal.get("extension") or [])


def gas_goal(goal: dict[str, Any]) -> GasGoal:
    importance = difficulty = None
    variant = "five-level"
    for ext in goal.get("extension") or []:
        if ext.get("url") == GAS_WEIGHT_EXTENSION:
            parts = {e.get("url"): e.get("valueInteger") for e in ext.get("extension") or []}
            importance, difficulty = parts.get("importance"), parts.get("difficulty")
        elif ext.get("url") == GAS_VARIANT_EXTENSION:
            variant = ext.get("valueCode", variant)
    weight = (
        weight_from(importance, difficulty)
        if importance is not None and difficulty is not None
        else Decimal(1)
    )
    return GasGoal(goal["id"], goal, weight, importance, difficulty, variant)


def rating_of(observation: dict[str, Any]) -> tuple[str, Rating] | None:
    """(goal id, Rating) of a GAS rating Observation, or None if it is not a usable rating."""
    if observation.get("status") == "entered-in-error":
        return None
    codes = [
        c.get("code")
        for c in (observation.get("code") or {}).get("coding") or []
        if c.get("system") == LOINC and c.get("code") in GAS_RATING_CODES
    ]
    focus = [f.get("reference", "") for f in observation.get("focus") or []]
    goal = next((f.split("/", 1)[1] for f in focus if f.startswith("Goal/")), None)
    level = gas_level_of(observation.get("valueCodeableConcept"))
    when = observation.get("effectiveDateTime") or (observation.get("effectivePeriod") or {}).get(
        "start"
    )
    if not codes or goal is None or level is None or not when:
        return None
    code = codes[0]
    if code in GAS_BASELINE_CODES:
        performers: list[dict[str, Any]] = observation.get("performer") or [{}]
        performer = str(performers[0].get("reference", ""))
        rater: Rater = _RATER_OF_TYPE.get(performer.split("/", 1)[0], "practitioner")
        return goal, Rating(when, level, "baseline", rater, observation["id"])
    follow_up: Rater = GAS_FOLLOW_UP[code]  # type: ignore[assignment]
    return goal, Rating(when, level, "follow-up", follow_up, observation["id"])


async def read_patient(svc: FhirService, access: AccessContext, pid: str) -> dict[str, Any]:
    outcome = await svc.read(access, "Patient", pid)
    assert outcome.version is not None and outcome.version.resource is not None
    return outcome.version.resource


async def patient_gas_goals(
    svc: FhirService, access: AccessContext, pid: str, care_plan: str | None = None
) -> list[GasGoal]:
    """The patient's GAS goals (all, or those of one CarePlan), oldest first."""
    if care_plan is not None:
        plan_id = care_plan.removeprefix("CarePlan/")
        plan = (await svc.read(access, "CarePlan", plan_id)).version
        assert plan is not None and plan.resource is not None
        if (plan.resource.get("subject") or {}).get("reference") != f"Patient/{pid}":
            raise FhirError("processing", f"CarePlan/{plan_id} is not a plan of Patient/{pid}")
        wanted = [g.get("reference", "") for g in plan.resource.get("goal") or []]
        ids = [r.split("/", 1)[1] for r in wanted if r.startswith("Goal/")]
        if not ids:
            return []
        versions = await svc.find_resources(
            access, "Goal", [("_id", ",".join(ids)), ("patient", f"Patient/{pid}")]
        )
    else:
        versions = await svc.find_resources(
            access, "Goal", [("patient", f"Patient/{pid}")], MAX_RECORDS
        )
    goals = [v.resource for v in versions if v.resource is not None]
    chosen = [
        gas_goal(g)
        for g in goals
        if is_gas_goal(g) and g.get("lifecycleStatus") not in INACTIVE_GOALS
    ]
    return sorted(chosen, key=lambda g: (g.resource.get("startDate", ""), g.id))


async def ratings_by_goal(
    svc: FhirService, access: AccessContext, goal_ids: list[str], subject: str | None = None
) -> dict[str, list[Rating]]:
    """Every usable GAS rating of the goals (by `subject` only, when given), in recording order
    (the order decide() expects)."""
    if not goal_ids:
        return {}
    codes = ",".join(f"{LOINC}|{code}" for code in sorted(GAS_RATING_CODES))
    focus = ",".join(f"Goal/{gid}" for gid in goal_ids)
    params = [("focus", focus), ("code", codes)] + ([("subject", subject)] if subject else [])
    versions = await _latest_first(svc, access, params)
    return ratings_in([v.resource for v in versions if v.resource is not None], goal_ids)


async def first_rating_recorded(svc: FhirService, gid: str, subject: str | None) -> datetime | None:
    """When the earliest current GAS rating of Goal `gid` was recorded (meta.lastUpdated)."""
    codes = ",".join(f"{LOINC}|{code}" for code in sorted(GAS_RATING_CODES))
    params = [("focus", f"Goal/{gid}"), ("code", codes)] + (
        [("subject", subject)] if subject else []
    )
    versions = await svc.find_resources(UNRESTRICTED, "Observation", params, MAX_RECORDS)
    times = [v.last_updated for v in versions if v.resource is not None and rating_of(v.resource)]
    return min(times) if times else None


async def _latest_first(
    svc: FhirService, access: AccessContext, params: list[tuple[str, str]]
) -> list[Any]:
    """Up to MAX_RECORDS Observations in recording order; past the cap the oldest are the ones
    left out (a summary must never lose the newest sessions)."""
    versions = await svc.find_resources(access, "Observation", params, MAX_RECORDS, NEWEST_FIRST)
    return versions[::-1]


def ratings_in(observations: list[dict[str, Any]], goal_ids: list[str]) -> dict[str, list[Rating]]:
    """The GAS ratings among `observations` (kept in their order) of the given goals."""
    wanted = set(goal_ids)
    found: dict[str, list[Rating]] = defaultdict(list)
    for observation in observations:
        rated = rating_of(observation)
        if rated is not None and rated[0] in wanted:
            found[rated[0]].append(rated[1])
    return found


async def patient_observations(
    svc: FhirService, access: AccessContext, pid: str
) -> list[dict[str, Any]]:
    """All the client's Observations in recording order: one indexed query serves both the GAS
    ratings and the session-measure series (on the embedded database the cost of a query is in
    the documents it touches, so one pass beats two)."""
    versions = await _latest_first(svc, access, [("subject", f"Patient/{pid}")])
    return [v.resource for v in versions if v.resource is not None]


@dataclass(frozen=True)
class MeasureSeries:
    """A client's session-measure totals, each series in time order."""

    outcome: list[SessionScore]  # ORS and CORS (one series: a child moving on keeps it)
    alliance: list[SessionScore]  # SRS and CSRS
    other: dict[str, list[SessionScore]]  # PHQ-9, GAD-7 totals by code


SESSION_CODES = {code: "outcome" for code in OUTCOME_TOTALS} | {
    code: "alliance" for code in ALLIANCE_TOTALS
}
COMPARATORS = {PHQ9_TOTAL: "PHQ-9", GAD7_TOTAL: "GAD-7"}
_USABLE = {"final", "amended", "corrected"}


def session_score(observation: dict[str, Any]) -> SessionScore | None:
    if observation.get("status") not in _USABLE:
        return None
    value = (observation.get("valueQuantity") or {}).get("value")
    if value is None and "valueInteger" in observation:
        value = observation["valueInteger"]
    when = observation.get("effectiveDateTime") or (observation.get("effectivePeriod") or {}).get(
        "start"
    )
    if value is None or not when:
        return None
    return SessionScore(when, Decimal(str(value)), observation["id"])


def series_key(observation: dict[str, Any]) -> str | None:
    """'outcome' | 'alliance' | a comparator's LOINC code, for a session-measure Observation."""
    for coding in (observation.get("code") or {}).get("coding") or []:
        system, code = coding.get("system"), coding.get("code")
        if system == MEASURES and code in SESSION_CODES:
            return SESSION_CODES[code]
        if system == LOINC and code in COMPARATORS:
            return str(code)
    return None


async def measure_series(svc: FhirService, access: AccessContext, pid: str) -> MeasureSeries:
    codes = [f"{MEASURES}|{c}" for c in sorted(SESSION_CODES)]
    codes += [f"{LOINC}|{c}" for c in sorted(COMPARATORS)]
    versions = await _latest_first(
        svc, access, [("subject", f"Patient/{pid}"), ("code", ",".join(codes))]
    )
    return series_in([v.resource for v in versions if v.resource is not None])


def series_in(observations: list[dict[str, Any]]) -> MeasureSeries:
    """The session-measure series among `observations` (kept in their order)."""
    series: dict[str, list[SessionScore]] = defaultdict(list)
    for resource in observations:
        key = series_key(resource)
        score = session_score(resource) if key is not None else None
        if key is not None and score is not None:
            series[key].append(score)
    other = {k: v for k, v in series.items() if k not in ("outcome", "alliance")}
    return MeasureSeries(series.get("outcome", []), series.get("alliance", []), other)
