"""`$gas-tscore`: the GAS T-score from given levels, or from a patient's stored goals and ratings.

- `POST [base]/$gas-tscore` with Parameters: repeated `goal` (parts `level` decimal -3..+2 incl.
  -0.5, optional `weight` decimal >= 0, optional `label` string), optional `rho` (default 0.3).
- `[base]/Patient/{id}/$gas-tscore` (GET or POST): optional `carePlan` (reference), `date`
  (default today), `rater` (practitioner | patient | caregiver, default practitioner), `rho`,
  `store` (POST only): the latest rating of each GAS goal on or before `date` (the baseline or that
  rater's follow-ups), weights from the goals' importance x difficulty. With `store=true` the
  T-score Observation (profiles/structuredefinitions/gas-tscore.json) is written, one per patient,
  plan, date and rater (its identifier), so recomputing replaces rather than duplicates.

Both return Parameters: `tscore` (two places), `rho`, one `goal` part per goal with the raw level
beside the level used and the weight (Kiresuk & Sherman 1968; Turner-Stokes 2009; -0.5 counted as
-1 per Turner-Stokes & Williams 2010), `variant`s and `note`s. Limitations the literature names
(ordinal levels, modest inter-rater reliability) are why raw levels and the rater are always shown.
OperationDefinitions: profiles/operations/.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from typing import Any

from fhirgoal.clinical.achievement import Rater, Rating, day_of, instant_of
from fhirgoal.clinical.codes import (
    FHIRGOAL,
    GAS_GOAL_COMPONENT_EXTENSION,
    GAS_TSCORE,
    MEASURES,
    OBSERVATION_CATEGORY,
    UCUM,
)
from fhirgoal.clinical.gas import (
    DEFAULT_RHO,
    ClinicalInputError,
    GoalScore,
    TScoreResult,
    checked_rho,
    compute_tscore,
    level_text,
)
from fhirgoal.clinical.records import GasGoal, patient_gas_goals, ratings_by_goal, read_patient
from fhirgoal.core.access import AccessContext
from fhirgoal.core.errors import FhirError
from fhirgoal.fhir.operations import Invocation, Operation, OperationRegistry
from fhirgoal.fhir.outcome import Outcome
from fhirgoal.fhir.service import FhirService

DEFINITIONS = f"{FHIRGOAL}/OperationDefinition"
# One T-score Observation per patient, plan, date and rater: its identifier is a hash of those.
TSCORE_IDENTIFIER = f"{FHIRGOAL}/gas-tscore"
RATERS: tuple[Rater, ...] = ("practitioner", "patient", "caregiver")


def register(operations: OperationRegistry) -> None:
    operations.register(
        Operation(
            "gas-tscore", "system", None, system_tscore, definition=f"{DEFINITIONS}/gas-tscore"
        )
    )
    operations.register(
        Operation("gas-tscore", "instance", "Patient", patient_tscore, affects_state=False,
                  definition=f"{DEFINITIONS}/Patient-gas-tscore")
    )  # fmt: skip


# ---- [base]/$gas-tscore ---------------------------------------------------------------------
async def system_tscore(svc: FhirService, call: Invocation) -> Outcome:
    params = call.parameters
    params.reject_unknown({"goal", "rho"})
    goals = params.all("goal")
    scores, where = [], {}
    for i, goal in enumerate(goals):
        parts = {p.name: p for p in goal.parts}
        unknown = set(parts) - {"level", "weight", "label"}
        if unknown:
            raise FhirError("invalid", f"unknown part(s) of goal: {', '.join(sorted(unknown))}",
                            goal.expression)  # fmt: skip
        if "level" not in parts:
            raise FhirError("invalid", f"goal[{i}] needs a level", goal.expression)
        where[f"goal[{i}].level"] = parts["level"].expression
        level = parts["level"].value()
        weight: Any = Decimal(1)
        if "weight" in parts:
            where[f"goal[{i}].weight"] = parts["weight"].expression
            weight = parts["weight"].value()
        label = parts["label"].text() if "label" in parts else None
        scores.append(GoalScore(level=level, weight=weight, goal=label))
    rho_param = params.one("rho")
    rho = rho_param.value() if rho_param else DEFAULT_RHO
    where["rho"] = rho_param.expression if rho_param else "Parameters"
    where["goal"] = "Parameters"
    result = _compute(scores, rho, where)
    return Outcome(200, body=_parameters(result))


def _compute(scores: list[GoalScore], rho: Any, where: dict[str, str]) -> TScoreResult:
    try:
        return compute_tscore(scores, rho)
    except ClinicalInputError as error:
        raise error.relocated(lambda field: where.get(field, "Parameters")) from None


def _parameters(
    result: TScoreResult, extra_goal_parts: list[list[dict[str, Any]]] | None = None
) -> dict[str, Any]:
    goals = []
    for n, used in enumerate(result.inputs_as_used):
        parts: list[dict[str, Any]] = []
        if used.goal is not None:
            parts.append({"name": "label", "valueString": used.goal})
        parts += [
            {"name": "level", "valueDecimal": used.raw_level},
            {"name": "levelUsed", "valueDecimal": used.level_used},
            {"name": "weight", "valueDecimal": used.weight},
        ]
        if extra_goal_parts:
            parts += extra_goal_parts[n]
        goals.append({"name": "goal", "part": parts})
    return {
        "resourceType": "Parameters",
        "parameter": [
            {"name": "tscore", "valueDecimal": result.tscore},
            {"name": "rho", "valueDecimal": result.rho},
            *goals,
            *({"name": "variant", "valueCode": str(v)} for v in result.variants),
            *({"name": "note", "valueString": note} for note in result.notes),
        ],
    }


# ---- [base]/Patient/{id}/$gas-tscore -------------------------------------------------------------
@dataclass(frozen=True)
class RatedGoal:
    goal: GasGoal
    rating: Rating


async def patient_tscore(svc: FhirService, call: Invocation) -> Outcome:
    params = call.parameters
    params.reject_unknown({"carePlan", "date", "rater", "rho", "store"})
    assert call.id is not None
    pid = call.id
    care_plan = params.one("carePlan")
    on = _date(params.one("date"))
    rater_param = params.one("rater")
    rater: Any = rater_param.text() if rater_param else "practitioner"
    if rater not in RATERS:
        raise FhirError("invalid", f"rater must be one of {', '.join(RATERS)}",
                        rater_param.expression if rater_param else None)  # fmt: skip
    rho_param = params.one("rho")
    rho = rho_param.decimal() if rho_param else DEFAULT_RHO
    where_rho = {"rho": rho_param.expression if rho_param else "Parameters"}
    try:
        rho = checked_rho(rho)  # a bad input is a 400 whatever the stored data
    except ClinicalInputError as error:
        raise error.relocated(lambda field: where_rho.get(field, "Parameters")) from None
    store_param = params.one("store")
    store = store_param.boolean() if store_param else False
    if store and call.method == "GET":
        raise FhirError("method-not-allowed", "store=true writes an Observation: use POST")

    await read_patient(svc, call.access, pid)
    plan = care_plan.text() if care_plan else None
    if plan is not None and not plan.startswith("CarePlan/"):
        plan = f"CarePlan/{plan}"  # one spelling, so the stored T-score is found again
    rated, unrated = await latest_ratings(svc, call.access, pid, plan, on, rater)
    if not rated:
        raise FhirError("processing", f"Patient/{pid} has no rated GAS goal on or before {on}")
    scores = [GoalScore(r.rating.level, r.goal.weight, f"Goal/{r.goal.id}") for r in rated]
    result = _compute(scores, rho, where_rho)
    extra: list[list[dict[str, Any]]] = [
        [
            {"name": "goal", "valueReference": {"reference": f"Goal/{r.goal.id}",
                                                "display": r.goal.description}},
            {"name": "rating", "valueReference": {"reference": f"Observation/{r.rating.observation}"}},
            {"name": "ratedOn", "valueDateTime": str(r.rating.when)},
            {"name": "ratingKind", "valueCode": r.rating.kind},
            {"name": "rater", "valueCode": r.rating.rater},
        ]
        for r in rated
    ]  # fmt: skip
    body = _parameters(result, extra)
    for goal in unrated:
        body["parameter"].append(
            {"name": "unrated", "valueReference": {"reference": f"Goal/{goal.id}",
                                                   "display": goal.description}}
        )  # fmt: skip
    if store:
        stored = await _store(
            svc, call.access, tscore_observation(pid, plan, on, rater, result, rated)
        )
        body["parameter"].append({"name": "observation", "resource": stored})
    return Outcome(200, body=body)


async def _store(svc: FhirService, access: AccessContext, observation: dict[str, Any]) -> Any:
    """Create the T-score Observation, or replace the one with the same identifier (a conditional
    update: unlike a PUT to a fixed id it is allowed to patient-scoped tokens, which may not
    probe ids - core/access.py)."""
    identifier = observation["identifier"][0]
    criteria = [("identifier", f"{identifier['system']}|{identifier['value']}")]
    outcome = await svc.conditional_update(access, "Observation", criteria, observation, None, "")
    assert outcome.version is not None
    return outcome.version.resource


async def store_patient_tscore(
    svc: FhirService, access: AccessContext, pid: str, care_plan: str | None, on: date
) -> dict[str, Any] | None:
    """Compute and store the practitioner-rated T-score of `pid` on `on` (None if nothing rated)."""
    rated, _ = await latest_ratings(svc, access, pid, care_plan, on, "practitioner")
    if not rated:
        return None
    scores = [GoalScore(r.rating.level, r.goal.weight, f"Goal/{r.goal.id}") for r in rated]
    result = compute_tscore(scores)
    stored: dict[str, Any] = await _store(
        svc, access, tscore_observation(pid, care_plan, on, "practitioner", result, rated)
    )
    return stored


def _date(param: Any) -> date:
    if param is None:
        return date.today()
    text = param.text()
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise FhirError(
            "invalid", f"date must be YYYY-MM-DD, not {text!r}", param.expression
        ) from None


async def latest_ratings(
    svc: FhirService,
    access: AccessContext,
    pid: str,
    care_plan: str | None,
    on: date,
    rater: Rater,
) -> tuple[list[RatedGoal], list[GasGoal]]:
    """Each GAS goal's latest rating on or before `on` (baseline or `rater`'s follow-up)."""
    goals = await patient_gas_goals(svc, access, pid, care_plan)
    ratings = await ratings_by_goal(svc, access, [g.id for g in goals], f"Patient/{pid}")
    rated, unrated = [], []
    for goal in goals:
        usable = [
            r
            for r in ratings.get(goal.id, [])
            if (r.kind == "baseline" or r.rater == rater) and day_of(r.when) <= on
        ]
        if usable:
            latest = max(enumerate(usable), key=lambda pair: (instant_of(pair[1].when), pair[0]))
            rated.append(RatedGoal(goal, latest[1]))
        else:
            unrated.append(goal)
    return rated, unrated


def tscore_observation(
    pid: str,
    care_plan: str | None,
    on: date,
    rater: str,
    result: TScoreResult,
    rated: list[RatedGoal],
) -> dict[str, Any]:
    key = f"{pid}|{care_plan or ''}|{on.isoformat()}|{rater}"
    value = hashlib.sha256(key.encode()).hexdigest()[:32]
    components: list[dict[str, Any]] = [
        {
            "code": {"coding": [{"system": MEASURES, "code": "gas-rho", "display": "GAS rho"}]},
            "valueQuantity": {"value": result.rho, "unit": "1", "system": UCUM, "code": "1"},
        }
    ]
    for used, r in zip(result.inputs_as_used, rated, strict=True):
        components.append(
            {
                "extension": [
                    {
                        "url": GAS_GOAL_COMPONENT_EXTENSION,
                        "extension": [
                            {"url": "goal", "valueReference": {"reference": f"Goal/{r.goal.id}"}},
                            {"url": "rating", "valueReference": {"reference": f"Observation/{r.rating.observation}"}},
                            {"url": "rawLevel", "valueDecimal": used.raw_level},
                            {"url": "weight", "valueDecimal": used.weight},
                            {"url": "rater", "valueCode": r.rating.rater},
                        ],
                    }
                ],
                "code": {"coding": [{"system": MEASURES, "code": "gas-goal-level",
                                     "display": "GAS level used for one goal"}],
                         "text": f"{r.goal.description}: {level_text(used.raw_level)}"},
                "valueQuantity": {"value": used.level_used, "unit": "{level}", "system": UCUM,
                                  "code": "{level}"},
            }
        )  # fmt: skip
    observation: dict[str, Any] = {
        "resourceType": "Observation",
        "identifier": [{"system": TSCORE_IDENTIFIER, "value": value}],
        "status": "final",
        "category": [{"coding": [{"system": OBSERVATION_CATEGORY, "code": "survey"}]}],
        "code": {"coding": [{"system": MEASURES, "code": GAS_TSCORE, "display": "GAS T-score"}],
                 "text": "Goal Attainment Scaling T-score"},
        "subject": {"reference": f"Patient/{pid}"},
        "focus": [{"reference": f"Goal/{r.goal.id}"} for r in rated],
        "effectiveDateTime": on.isoformat(),
        "valueQuantity": {"value": result.tscore, "unit": "{T-score}", "system": UCUM,
                          "code": "{T-score}"},
        "derivedFrom": [{"reference": f"Observation/{r.rating.observation}"} for r in rated],
        "component": components,
    }  # fmt: skip
    if result.notes:
        observation["note"] = [{"text": note} for note in result.notes]
    if care_plan:
        observation["basedOn"] = [
            {"reference": care_plan if "/" in care_plan else f"CarePlan/{care_plan}"}
        ]
    return observation
