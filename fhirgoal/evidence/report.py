"""The content of a medical-necessity document, section by section, before it takes a form: the
FHIR document (document.py renders each section as Composition.section narrative + entries) and
the PDF (pdf.py) are drawn from the same sections, so both say the same thing.

Sections and their LOINC codes (the C-CDA section codes behavioural-health records use; those in
R4's example value set https://hl7.org/fhir/R4/valueset-doc-section-codes.html are marked *):

| section                    | LOINC                                         |
|----------------------------|-----------------------------------------------|
| Diagnoses                  | 11450-4 Problem list - Reported (C-CDA Problem Section) |
| Treatment plan             | 18776-5 Plan of care note *                   |
| Goal attainment (GAS)      | 61146-7 Goals (C-CDA Goals Section)            |
| Outcome measures           | 11383-7 Patient problem outcome (C-CDA Health Status Evaluations and Outcomes Section), one sub-section per measure (no code of their own) |
| Sessions attended          | 46240-8 History of Hospitalizations+Outpatient visits Narrative * |
| Open alerts                | 75310-3 Health concerns Document (C-CDA Health Concerns Section) |
| Attestation                | none: the attester is Composition.attester    |

Each section lists the resources its figures come from (`entries`: Composition.section.entry),
so that every number is traceable to a stored resource, or, for the T-score, to an Observation in
the document that is `derivedFrom` the ratings. Rows show raw values beside interpreted ones.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from fhirgoal.clinical.achievement import Rating, day_of
from fhirgoal.clinical.codes import GAS_ANSWERS, GAS_EXTENSION, GAS_VARIANT_LEVELS
from fhirgoal.clinical.gas import level_text
from fhirgoal.clinical.records import COMPARATORS, GasGoal
from fhirgoal.evidence import interpretation
from fhirgoal.evidence.figures import Figures, TScorePoint
from fhirgoal.evidence.records import EvidenceRecords
from fhirgoal.evidence.request import EvidenceRequest

LOINC = "http://loinc.org"


@dataclass(frozen=True)
class Table:
    columns: tuple[str, ...]
    rows: Sequence[tuple[str, ...]]
    caption: str = ""


@dataclass
class Section:
    key: str  # stable name: "diagnoses", "ors" ...; the PDF places charts by it
    title: str
    code: tuple[str, str] | None  # LOINC code and display
    sentences: list[str] = field(default_factory=list)
    tables: list[Table] = field(default_factory=list)
    entries: list[str] = field(default_factory=list)  # "Type/id" or "urn:uuid:..."
    sections: list[Section] = field(default_factory=list)


def tscore_urn(point: TScorePoint) -> str:
    """The document-local id of a T-score point's Observation: from its identifier, which
    names the patient, plan, day and rater (clinical/gas_operations.py), so it is stable."""
    identifier = point.observation["identifier"][0]
    name = f"{identifier['system']}|{identifier['value']}"
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, name)}"


def build_sections(
    ask: EvidenceRequest, records: EvidenceRecords, figures: Figures
) -> list[Section]:
    return [
        _diagnoses(records),
        _plan(records),
        _goals(ask, figures),
        _outcomes(ask, figures),
        _sessions(records),
        _alerts(ask, records),
        _attestation(records),
    ]


# ---- sections ------------------------------------------------------------------------------
def _diagnoses(records: EvidenceRecords) -> Section:
    rows = []
    for condition in records.conditions:
        coding = ((condition.get("code") or {}).get("coding") or [{}])[0]
        rows.append((
            str(coding.get("code", "")),
            _text(condition.get("code")),
            _first_code(condition.get("clinicalStatus")),
            str(condition.get("onsetDateTime", ""))[:10],
            str(condition.get("recordedDate", ""))[:10],
        ))  # fmt: skip
    return Section(
        "diagnoses", "Diagnoses", ("11450-4", "Problem list - Reported"),
        sentences=[interpretation.diagnoses(len(rows))],
        tables=[Table(("Code", "Diagnosis", "Status", "Onset", "Recorded"), rows)],
        entries=[f"Condition/{c['id']}" for c in records.conditions],
    )  # fmt: skip


def _plan(records: EvidenceRecords) -> Section:
    plan = records.plan or {}
    activities = []
    for activity in plan.get("activity") or []:
        detail = activity.get("detail") or {}
        activities.append((
            str(detail.get("description") or _text(detail.get("code"))),
            _first_code(detail.get("code")),
            interpretation.frequency(detail.get("scheduledTiming")),
            str(detail.get("status", "")),
        ))  # fmt: skip
    gas = {g.id for g in records.gas_goals}
    goals = [
        (
            _text(goal.get("description")),
            "GAS" if goal["id"] in gas else "not scaled",
            str(goal.get("lifecycleStatus", "")),
            _first_code(goal.get("achievementStatus")),
            str(goal.get("startDate", "")),
            str(((goal.get("target") or [{}])[0]).get("dueDate", "")),
        )
        for goal in records.plan_goals
    ]
    return Section(
        "plan", "Treatment plan", ("18776-5", "Plan of care note"),
        sentences=interpretation.plan(plan),
        tables=[
            Table(("Service", "Code", "Frequency and duration", "Status"), activities, "Services"),
            Table(("Goal", "Scale", "Lifecycle", "Achievement", "Start", "Due"), goals, "Goals"),
        ],
        entries=[f"CarePlan/{plan['id']}"] + [f"Goal/{g['id']}" for g in records.plan_goals],
    )  # fmt: skip


def _goals(ask: EvidenceRequest, figures: Figures) -> Section:
    summary, ratings, entries = [], [], []
    for evidence in figures.goals:
        goal = evidence.goal
        baseline, latest = evidence.baseline, evidence.latest
        summary.append((
            goal.description,
            f"{goal.weight:f}",
            _rating_cell(goal, baseline),
            _rating_cell(goal, latest),
            _first_code(goal.resource.get("achievementStatus")),
        ))  # fmt: skip
        shown = _with_reference(evidence.between(ask.start, ask.end), baseline)
        for rating in shown:
            ratings.append((
                str(rating.when)[:10], goal.description, level_text(rating.level),
                describe_level(goal, rating.level), rating.kind, rating.rater,
                f"Observation/{rating.observation}",
            ))  # fmt: skip
        entries.append(f"Goal/{goal.id}")
        entries += [f"Observation/{r.observation}" for r in shown]
    ratings.sort(key=lambda row: (row[0], row[1]))
    return Section(
        "goals", "Goal attainment (GAS)", ("61146-7", "Goals"),
        sentences=[interpretation.goals(figures.goals)],
        tables=[
            Table(("Goal", "Weight", "Baseline", "Latest", "Achievement"), summary,
                  "Each goal: baseline and latest rating"),
            Table(("Date", "Goal", "Level", "Meaning", "Kind", "Rater", "Source"), ratings,
                  "Ratings in the period (and each baseline)"),
        ],
        entries=entries,
    )  # fmt: skip


def _outcomes(ask: EvidenceRequest, figures: Figures) -> Section:
    parts = [_tscores(ask, figures), _ors(ask, figures), _srs(ask, figures)]
    for code, series in figures.comparators.items():
        shown = [s for s in series if ask.start <= day_of(s.when) <= ask.end]
        if not shown:
            continue
        name = COMPARATORS.get(code, code)
        parts.append(Section(
            f"comparator-{code}", name, None,
            sentences=[interpretation.comparator(name, shown)],
            tables=[Table(("Date", "Total", "Source"),
                          [(str(s.when)[:10], f"{s.total:f}", f"Observation/{s.observation}")
                           for s in shown])],
            entries=[f"Observation/{s.observation}" for s in shown],
        ))  # fmt: skip
    return Section(
        "outcomes", "Outcome measures", ("11383-7", "Patient problem outcome"),
        sentences=[interpretation.outcomes_intro(figures.cutoffs)], sections=parts,
    )  # fmt: skip


def _tscores(ask: EvidenceRequest, figures: Figures) -> Section:
    shown = _with_reference(
        [p for p in figures.tscores if ask.start <= p.day <= ask.end],
        figures.tscores[0] if figures.tscores else None,
    )
    rows = [
        (
            p.day.isoformat(),
            f"{p.result.tscore:f}",
            str(len(p.rated)),
            ", ".join(f"{level_text(r.rating.level)} ({r.goal.id})" for r in p.rated),
        )
        for p in shown
    ]
    return Section(
        "tscore", "GAS T-score", None,
        sentences=[interpretation.tscores(shown)],
        tables=[Table(("Date", "T-score", "Goals", "Levels used (goal)"), rows)],
        entries=[tscore_urn(p) for p in shown],
    )  # fmt: skip


def _ors(ask: EvidenceRequest, figures: Figures) -> Section:
    points = figures.ors
    shown = _with_reference(
        [p for p in points if ask.start <= day_of(p.when) <= ask.end], points[0] if points else None
    )
    rows = [
        (
            str(p.session), str(p.when)[:10], f"{p.total:f}", f"{p.cutoff:f}", p.clinical_range,
            _signed(p.change_from_intake), p.reliable_change or "intake", str(p.status),
            f"Observation/{p.observation}",
        )
        for p in shown
    ]  # fmt: skip
    return Section(
        "ors", "Outcome Rating Scale (ORS)", None,
        sentences=[interpretation.ors(shown, figures.cutoffs)],
        tables=[Table(("Session", "Date", "Total", "Cutoff", "Range", "Change", "Reliable change",
                       "Status", "Source"), rows)],
        entries=[f"Observation/{p.observation}" for p in shown],
    )  # fmt: skip


def _srs(ask: EvidenceRequest, figures: Figures) -> Section:
    shown = [p for p in figures.srs if ask.start <= day_of(p.when) <= ask.end]
    rows = [
        (
            str(p.session), str(p.when)[:10], f"{p.total:f}",
            _signed(p.change_from_previous) if p.change_from_previous is not None else "",
            "; ".join(p.reasons) if p.alert else "no", f"Observation/{p.observation}",
        )
        for p in shown
    ]  # fmt: skip
    return Section(
        "srs", "Session Rating Scale (SRS)", None,
        sentences=[interpretation.srs(shown, figures.cutoffs)],
        tables=[Table(("Session", "Date", "Total", "Change", "Alliance alert", "Source"), rows)],
        entries=[f"Observation/{p.observation}" for p in shown],
    )  # fmt: skip


def _sessions(records: EvidenceRecords) -> Section:
    rows = []
    minutes: list[Decimal | None] = []
    for encounter in records.encounters:
        length = interpretation.minutes(encounter)
        minutes.append(length)
        who = [str((p.get("individual") or {}).get("reference", ""))
               for p in encounter.get("participant") or []]  # fmt: skip
        rows.append((
            encounter["period"]["start"][:10],
            f"{length:f} min" if length is not None else "",
            _first_code((encounter.get("type") or [{}])[0]),
            ", ".join(w for w in who if w),
            f"Encounter/{encounter['id']}",
        ))  # fmt: skip
    return Section(
        "sessions", "Sessions attended", ("46240-8", "History of Hospitalizations+Outpatient visits Narrative"),
        sentences=[interpretation.sessions(records.encounters, minutes)],
        tables=[Table(("Date", "Duration", "Service", "Clinician", "Source"), rows)],
        entries=[f"Encounter/{e['id']}" for e in records.encounters],
    )  # fmt: skip


def _alerts(ask: EvidenceRequest, records: EvidenceRecords) -> Section:
    rows = [
        (
            _text(flag.get("code")),
            _first_code(flag.get("code")),
            str(flag["period"]["start"])[:10],
            str(flag.get("status", "")),
            f"Flag/{flag['id']}",
        )
        for flag in records.flags
    ]
    return Section(
        "alerts", "Open alerts", ("75310-3", "Health concerns Document"),
        sentences=[interpretation.alerts(len(rows), ask.end)],
        tables=[Table(("Alert", "Kind", "Since", "Status", "Source"), rows)] if rows else [],
        entries=[f"Flag/{f['id']}" for f in records.flags],
    )  # fmt: skip


def _attestation(records: EvidenceRecords) -> Section:
    reference = records.clinician_reference
    return Section(
        "attestation", "Attestation", None,
        sentences=interpretation.attestation(reference, records.clinician),
        entries=[reference] if reference and records.clinician is not None else [],
    )  # fmt: skip


# ---- helpers --------------------------------------------------------------------------------
def describe_level(goal: GasGoal, level: Decimal) -> str:
    """What the goal says the level means (its PCO GAS level text), or the scale's own words."""
    variant = GAS_VARIANT_LEVELS.get(level_text(level))
    if variant is not None:
        return variant[2]
    answer = GAS_ANSWERS.get(int(level)) if level == level.to_integral_value() else None
    for ext in goal.resource.get("extension") or []:
        if ext.get("url") != GAS_EXTENSION or answer is None:
            continue
        parts = {e.get("url"): e for e in ext.get("extension") or []}
        if (parts.get("level") or {}).get("valueCoding", {}).get("code") == answer[0]:
            return str((parts.get("progressText") or {}).get("valueString", answer[1]))
    return answer[1] if answer else ""


def _rating_cell(goal: GasGoal, rating: Rating | None) -> str:
    if rating is None:
        return "not rated"
    return (f"{level_text(rating.level)} {describe_level(goal, rating.level)} "
            f"({str(rating.when)[:10]}, {rating.rater})")  # fmt: skip


def _with_reference(shown: list[Any], reference: Any) -> list[Any]:
    """The items in the period, preceded by the reference point they are read against (the
    intake, the baseline) when that lies before the period."""
    if reference is None or any(item is reference for item in shown):
        return shown
    return [reference, *shown]


def _signed(number: Decimal) -> str:
    return f"+{number:f}" if number > 0 else f"{number:f}"


def _text(concept: Any) -> str:
    if not isinstance(concept, dict):
        return ""
    if concept.get("text"):
        return str(concept["text"])
    codings = concept.get("coding") or [{}]
    return str(codings[0].get("display") or codings[0].get("code") or "")


def _first_code(concept: Any) -> str:
    if not isinstance(concept, dict):
        return ""
    codings = concept.get("coding") or [{}]
    return str(codings[0].get("code") or concept.get("text") or "")
