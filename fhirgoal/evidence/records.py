"""What a medical-necessity document is made of, read through the FhirService with the caller's
access (so a caller gets evidence only from what it may read; the repository decides).

- the Patient (404 when out of reach, as for any read) and the treatment plan: the `carePlan`
  asked for, else the client's latest CarePlan that is active or completed and overlaps the
  period (latest by period.start, then id);
- the plan's goals, the GAS ones among them as clinical/ reads them (records.patient_gas_goals);
- the diagnoses: the Conditions the plan and its goals address, else the client's clinically
  active Conditions;
- the client's Observations up to `end`, in recording order (GAS ratings and session measures
  are read from them by clinical/records.py, exactly as `$progress` does);
- sessions attended: the client's `finished` Encounters in the period;
- alerts open at `end`: Flags that started on or before it and had not ended by it;
- the treating clinician (the plan's author, else the latest session's practitioner), the payer
  and the server's own Device (the signer), each included when the caller may read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Any

from fhirgoal.clinical.achievement import day_of, instant_of
from fhirgoal.clinical.records import GasGoal, patient_gas_goals, read_patient
from fhirgoal.core.access import AccessContext
from fhirgoal.core.errors import FhirError
from fhirgoal.core.fields import NEWEST_FIRST
from fhirgoal.evidence.request import EvidenceRequest
from fhirgoal.fhir.service import FhirService

MAX_RECORDS = 5000  # clinical/records.py reads at most as many
SIGNER = "Device/fhirgoal"  # the server itself (profiles/devices/fhirgoal.json)
PLAN_STATUSES = ("active", "completed")
ACTIVE_CONDITION = {"active", "recurrence", "relapse"}
NOT_A_DIAGNOSIS = {"entered-in-error", "refuted"}
CLINICIAN_TYPES = ("Practitioner/", "PractitionerRole/")


@dataclass
class EvidenceRecords:
    patient: dict[str, Any]
    plan: dict[str, Any] | None
    plan_goals: list[dict[str, Any]]  # every goal the plan names that the caller can read
    gas_goals: list[GasGoal]  # the plan's GAS goals: the scored ones
    conditions: list[dict[str, Any]]
    observations: list[dict[str, Any]]  # up to `end`, recording order
    encounters: list[dict[str, Any]]  # finished, in the period, by start
    flags: list[dict[str, Any]]  # open at `end`
    clinician_reference: str | None
    clinician: dict[str, Any] | None
    payer: dict[str, Any] | None
    signer: dict[str, Any] | None

    @property
    def plan_reference(self) -> str | None:
        return f"CarePlan/{self.plan['id']}" if self.plan else None


async def gather(svc: FhirService, access: AccessContext, ask: EvidenceRequest) -> EvidenceRecords:
    pid = ask.patient
    patient = await read_patient(svc, access, pid)
    payer = await _read(svc, access, ask.payer, required=True) if ask.payer else None
    plan = await _plan(svc, access, ask)
    plan_goals: list[dict[str, Any]] = []
    gas_goals: list[GasGoal] = []
    if plan is not None:
        reference = f"CarePlan/{plan['id']}"
        gas_goals = await patient_gas_goals(svc, access, pid, reference)
        goal_ids = _ids(plan.get("goal"), "Goal/")
        if goal_ids:
            plan_goals = await _resources(
                svc, access, "Goal", [("_id", ",".join(goal_ids)), ("patient", f"Patient/{pid}")]
            )
    newest_first = await _resources(
        svc, access, "Observation", [("subject", f"Patient/{pid}")], NEWEST_FIRST
    )
    observations = [o for o in reversed(newest_first) if _on_or_before(o, ask.end)]
    encounters = await _sessions(svc, access, pid, ask.start, ask.end)
    clinician_reference = _clinician(plan, encounters)
    return EvidenceRecords(
        patient=patient,
        plan=plan,
        plan_goals=plan_goals,
        gas_goals=gas_goals,
        conditions=await _diagnoses(svc, access, pid, plan, plan_goals),
        observations=observations,
        encounters=encounters,
        flags=await _open_flags(svc, access, pid, ask.end),
        clinician_reference=clinician_reference,
        clinician=await _read(svc, access, clinician_reference),
        payer=payer,
        signer=await _read(svc, access, SIGNER),
    )


async def _resources(
    svc: FhirService,
    access: AccessContext,
    rt: str,
    params: list[tuple[str, str]],
    sort: list[tuple[str, int]] | None = None,
) -> list[dict[str, Any]]:
    versions = await svc.find_resources(access, rt, params, MAX_RECORDS, sort)
    return [v.resource for v in versions if v.resource is not None]


async def _read(
    svc: FhirService, access: AccessContext, reference: str | None, required: bool = False
) -> dict[str, Any] | None:
    """The resource `Type/id`; None when unknown or out of the caller's reach, unless it was
    asked for by name (`required`: then the caller hears so, as for any read)."""
    if reference is None:
        return None
    rt, _, rid = reference.partition("/")
    try:
        version = (await svc.read(access, rt, rid)).version
    except FhirError as error:
        if required or error.status not in (403, 404, 410):
            raise
        return None
    return version.resource if version is not None else None


async def _plan(
    svc: FhirService, access: AccessContext, ask: EvidenceRequest
) -> dict[str, Any] | None:
    if ask.care_plan is not None:
        plan = await _read(svc, access, ask.care_plan, required=True)
        assert plan is not None
        if (plan.get("subject") or {}).get("reference") != f"Patient/{ask.patient}":
            raise FhirError("processing", f"{ask.care_plan} is not a plan of Patient/{ask.patient}",
                            "carePlan")  # fmt: skip
        return plan
    plans = await _resources(
        svc,
        access,
        "CarePlan",
        [("subject", f"Patient/{ask.patient}"), ("status", ",".join(PLAN_STATUSES))],
    )
    overlapping = [p for p in plans if _overlaps(p.get("period"), ask.start, ask.end)]
    if not overlapping:
        return None
    return max(overlapping, key=lambda p: ((p.get("period") or {}).get("start", ""), p["id"]))


def _overlaps(period: dict[str, Any] | None, start: date, end: date) -> bool:
    period = period or {}
    begins, ends = period.get("start"), period.get("end")
    return (begins is None or day_of(begins) <= end) and (ends is None or day_of(ends) >= start)


def _ids(references: Any, prefix: str) -> list[str]:
    return [
        r["reference"].removeprefix(prefix)
        for r in references or []
        if isinstance(r, dict) and str(r.get("reference", "")).startswith(prefix)
    ]


async def _diagnoses(
    svc: FhirService,
    access: AccessContext,
    pid: str,
    plan: dict[str, Any] | None,
    goals: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    addressed = _ids((plan or {}).get("addresses"), "Condition/")
    for goal in goals:
        addressed += _ids(goal.get("addresses"), "Condition/")
    wanted = sorted(set(addressed))
    if wanted:
        params = [("_id", ",".join(wanted)), ("patient", f"Patient/{pid}")]
        found = await _resources(svc, access, "Condition", params)
    else:
        found = [
            c
            for c in await _resources(svc, access, "Condition", [("patient", f"Patient/{pid}")])
            if _code(c, "clinicalStatus") in ACTIVE_CONDITION
        ]
    return [c for c in found if _code(c, "verificationStatus") not in NOT_A_DIAGNOSIS]


def _code(resource: dict[str, Any], element: str) -> str | None:
    codings = (resource.get(element) or {}).get("coding") or [{}]
    code = codings[0].get("code")
    return str(code) if code is not None else None


async def _sessions(
    svc: FhirService, access: AccessContext, pid: str, start: date, end: date
) -> list[dict[str, Any]]:
    params = [
        ("patient", f"Patient/{pid}"),
        ("date", f"ge{start.isoformat()}"),
        ("date", f"le{end.isoformat()}"),
        ("status", "finished"),
    ]
    found = await _resources(svc, access, "Encounter", params)
    attended = [e for e in found if (e.get("period") or {}).get("start")]
    in_period = [e for e in attended if start <= day_of(e["period"]["start"]) <= end]
    return sorted(in_period, key=lambda e: (instant_of(e["period"]["start"]), e["id"]))


async def _open_flags(
    svc: FhirService, access: AccessContext, pid: str, end: date
) -> list[dict[str, Any]]:
    flags = await _resources(svc, access, "Flag", [("patient", f"Patient/{pid}")])
    open_at_end = []
    for flag in flags:
        period = flag.get("period") or {}
        if flag.get("status") == "entered-in-error" or not period.get("start"):
            continue
        if day_of(period["start"]) > end:
            continue
        ended = period.get("end")
        if (ended is None and flag.get("status") == "active") or (
            ended is not None and day_of(ended) > end
        ):
            open_at_end.append(flag)
    return sorted(open_at_end, key=lambda f: (f["period"]["start"], f["id"]))


def _clinician(plan: dict[str, Any] | None, encounters: list[dict[str, Any]]) -> str | None:
    """The treating clinician: the plan's author, else the latest session's practitioner."""
    author = str(((plan or {}).get("author") or {}).get("reference", ""))
    if author.startswith(CLINICIAN_TYPES):
        return author
    for encounter in reversed(encounters):
        for participant in encounter.get("participant") or []:
            who = str((participant.get("individual") or {}).get("reference", ""))
            if who.startswith(CLINICIAN_TYPES):
                return who
    return None


def _on_or_before(observation: dict[str, Any], end: date) -> bool:
    """Whether an Observation was made on or before `end` (one without a date never counts: the
    clinical rules skip it too)."""
    effective = observation.get("effectivePeriod") or {}
    when = observation.get("effectiveDateTime") or effective.get("start")
    if not when:
        return False
    try:
        return day_of(when) <= end
    except ValueError:
        return False
