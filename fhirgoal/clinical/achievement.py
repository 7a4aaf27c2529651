"""Goal.achievementStatus from a goal's GAS ratings, and whether the server may set it.

Codes: http://terminology.hl7.org/CodeSystem/goal-achievement (in-progress > improving | worsening
| no-change; achieved > sustaining; not-achieved > no-progress | not-attainable). The HL7
Person-Centered Outcomes IG (PCO STU1, http://hl7.org/fhir/us/pco) counts a goal as achieved when
a follow-up rating is at the expected level (0) or better; its ratings are Observations whose
`focus` is the Goal: one baseline code (LOINC 112296-9, no rater) and one follow-up code per rater
(practitioner 107333-7, patient 107334-5, caregiver 107331-1).

Rules (the parts the issue leaves open are marked *chosen*):

1. No ratings: no decision (None). Ratings but no follow-up: ``in-progress``.
2. *chosen* Only the ratings from the latest baseline on count: a new baseline means the goal was
   re-scaled, and follow-ups against the old scale are not comparable with the new ones.
3. *chosen* Raters are never mixed within a comparison. The status follows one rater: the first
   of ``rater_priority`` (default practitioner, patient, caregiver) with a follow-up since the
   baseline. Baselines are shared by all raters (PCO has one baseline code with no rater).
4. Latest follow-up F of that rater, compared with P = that rater's previous follow-up, else the
   baseline: F >= 0 gives ``achieved``, or ``sustaining`` when P is a follow-up also >= 0 (the goal
   was met twice running). F < 0: F > P ``improving``, F < P ``worsening``, F = P ``no-change``;
   with nothing to compare (no baseline, first follow-up) ``in-progress``.
   *chosen* Levels are compared raw: -0.5 (partial achievement) is above -1, so -1 -> -0.5 is
   improving although the T-score counts both as -1 (gas.py).
5. *chosen* Order: by time instant (FHIR dateTime; partial dates at the start of their period;
   times without offset as UTC). Two ratings on the same instant: the baseline first, then the
   order the caller passed them in (the lead passes recording order, e.g. meta.lastUpdated), so
   a correction recorded later wins.

A clinician's explicit status is never overwritten silently (issue 4): the server marks the
statuses it sets with an extension; `status_change` replaces only an absent or server-marked
status.
Pure logic: no I/O.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Literal, get_args

from fhirgoal.clinical.gas import (
    LEVEL_LABELS,
    LEVELS,
    ClinicalInputError,
    InputProblem,
    check_decimal,
    level_text,
)

SYSTEM = "http://terminology.hl7.org/CodeSystem/goal-achievement"

AchievementCode = Literal[
    "in-progress",
    "improving",
    "worsening",
    "no-change",
    "achieved",
    "sustaining",
    "not-achieved",
    "no-progress",
    "not-attainable",
]
DISPLAY: dict[str, str] = {
    "in-progress": "In Progress",
    "improving": "Improving",
    "worsening": "Worsening",
    "no-change": "No Change",
    "achieved": "Achieved",
    "sustaining": "Sustaining",
    "not-achieved": "Not Achieved",
    "no-progress": "No Progress",
    "not-attainable": "Not Attainable",
}

RatingKind = Literal["baseline", "follow-up"]
Rater = Literal["practitioner", "patient", "caregiver"]
RATER_PRIORITY: tuple[Rater, ...] = ("practitioner", "patient", "caregiver")

When = datetime | date | str


# --- FHIR dateTime ordering (shared with session_measures) ---------------------------------------

_PARTIAL = re.compile(r"^(\d{4})(?:-(\d{2}))?$")


def instant_of(when: When) -> datetime:
    """An aware UTC datetime to order `when` by: a FHIR dateTime text, a date or a datetime.

    Partial dates (``2026``, ``2026-09``) and dates sort at the start of their period; a value
    without an offset is taken as UTC. Raises ValueError when the text is not a dateTime.
    """
    if isinstance(when, datetime):
        moment = when
    elif isinstance(when, date):
        moment = datetime(when.year, when.month, when.day)
    elif isinstance(when, str):
        partial = _PARTIAL.match(when)
        if partial:
            moment = datetime(int(partial[1]), int(partial[2] or 1), 1)
        else:
            moment = datetime.fromisoformat(when)
    else:
        raise ValueError(f"not a date or dateTime: {when!r}")
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def day_of(when: When) -> date:
    """The calendar day of `when` as written (its own offset); a partial date ("2026-08") is the
    first day of its period, as in `instant_of`. Raises ValueError when it is not a dateTime."""
    if isinstance(when, datetime):
        return when.date()
    if isinstance(when, date):
        return when
    if isinstance(when, str) and len(when) >= 10:
        return date.fromisoformat(when[:10])
    return instant_of(when).date()


def day_text(when: When) -> str:
    """The calendar day of `when` as written (its own offset), for human-readable reasons."""
    if isinstance(when, datetime):
        return when.date().isoformat()
    if isinstance(when, date):
        return when.isoformat()
    return when[:10]


# --- decision -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Rating:
    """One GAS rating Observation of a goal."""

    when: When
    level: Decimal
    kind: RatingKind
    rater: Rater
    observation: str  # the Observation's id or reference


@dataclass(frozen=True, slots=True)
class AchievementDecision:
    code: AchievementCode
    display: str
    based_on: tuple[str, ...]  # observation ids: the ratings compared, earlier first
    reason: str  # "practitioner follow-up 0 (expected) on 2026-09-14 after ... -> achieved"
    rater: Rater | None  # whose follow-ups the status follows; None before any follow-up
    system: str = SYSTEM

    def coding(self) -> dict[str, str]:
        return {"system": self.system, "code": self.code, "display": self.display}


def decide(
    ratings: Sequence[Rating], rater_priority: Sequence[Rater] = RATER_PRIORITY
) -> AchievementDecision | None:
    """The achievement status the ratings support (module docstring), or None without ratings."""
    ordered = _validated_order(ratings)
    if not ordered:
        return None
    baselines = [i for i, r in enumerate(ordered) if r.kind == "baseline"]
    episode = ordered[baselines[-1] :] if baselines else ordered
    baseline = episode[0] if baselines else None
    follow_ups = [r for r in episode if r.kind == "follow-up"]
    rater = next((p for p in rater_priority if any(r.rater == p for r in follow_ups)), None)
    if rater is None:
        if follow_ups:  # only raters outside rater_priority
            others = sorted({r.rater for r in follow_ups})
            reason = f"follow-ups only by {', '.join(others)}, not by {', '.join(rater_priority)}"
        else:
            assert baseline is not None
            reason = f"{_describe(baseline)}; no follow-up rating yet"
        shown = (baseline.observation,) if baseline else ()
        return _decision("in-progress", shown, reason, None)
    own = [r for r in follow_ups if r.rater == rater]
    latest = own[-1]
    previous = own[-2] if len(own) > 1 else baseline
    based_on = (previous.observation, latest.observation) if previous else (latest.observation,)
    if previous is None:
        if latest.level >= 0:
            return _decision("achieved", based_on, f"{_describe(latest)} -> achieved", rater)
        reason = f"{_describe(latest)}; no baseline or earlier follow-up to compare with"
        return _decision("in-progress", based_on, reason, rater)
    code: AchievementCode
    if latest.level >= 0:
        code = "sustaining" if previous.kind == "follow-up" and previous.level >= 0 else "achieved"
    elif latest.level > previous.level:
        code = "improving"
    elif latest.level < previous.level:
        code = "worsening"
    else:
        code = "no-change"
    return _decision(
        code, based_on, f"{_describe(latest)} after {_describe(previous)} -> {code}", rater
    )


def _decision(
    code: AchievementCode, based_on: tuple[str, ...], reason: str, rater: Rater | None
) -> AchievementDecision:
    return AchievementDecision(code, DISPLAY[code], based_on, reason, rater)


def _describe(rating: Rating) -> str:
    who = "baseline" if rating.kind == "baseline" else f"{rating.rater} follow-up"
    label = LEVEL_LABELS[rating.level]
    return f"{who} {level_text(rating.level)} ({label}) on {day_text(rating.when)}"


def _validated_order(ratings: Sequence[Rating]) -> list[Rating]:
    problems: list[InputProblem] = []
    keyed: list[tuple[datetime, int, int, Rating]] = []
    for index, rating in enumerate(ratings):
        field = f"rating[{index}]"
        level = check_decimal(rating.level, f"{field}.level", problems)
        if level is not None and level not in LEVELS:
            problems.append(InputProblem(f"{field}.level", f"not a GAS level: {level}"))
        if rating.kind not in get_args(RatingKind):
            problems.append(InputProblem(f"{field}.kind", f"unknown rating kind {rating.kind!r}"))
        if rating.rater not in get_args(Rater):
            problems.append(InputProblem(f"{field}.rater", f"unknown rater {rating.rater!r}"))
        if not isinstance(rating.observation, str) or not rating.observation:
            problems.append(InputProblem(f"{field}.observation", "an observation id is required"))
        try:
            moment = instant_of(rating.when)
        except (ValueError, TypeError):
            problems.append(InputProblem(f"{field}.when", f"not a dateTime: {rating.when!r}"))
            continue
        keyed.append((moment, 0 if rating.kind == "baseline" else 1, index, rating))
    if problems:
        raise ClinicalInputError(problems)
    keyed.sort(key=lambda k: k[:3])
    return [k[3] for k in keyed]


# --- may the server set the status? -------------------------------------------------------------


class StatusChange(enum.StrEnum):
    REPLACE = "replace"  # write the decided status (and mark it as the server's)
    KEEP_CLINICIAN = "keep-clinician"  # a clinician set the current status: leave it
    UNCHANGED = "unchanged"  # nothing to write: same status, or no decision


def may_overwrite(current: Mapping[str, object] | None, server_marker: bool) -> bool:
    """Whether the server may replace Goal.achievementStatus `current` (a CodeableConcept).

    An absent or empty status may be set; a present one only when it carries the server's marker
    extension -- a status without it was set by a clinician.
    """
    return _is_empty(current) or server_marker


def status_change(
    current: Mapping[str, object] | None,
    server_marker: bool,
    decision: AchievementDecision | None,
) -> StatusChange:
    """What to do with Goal.achievementStatus given the current value and the decided one."""
    if decision is None:
        return StatusChange.UNCHANGED
    if not _is_empty(current) and _has_code(current, decision.system, decision.code):
        # Same code: nothing to write, whoever set it (a clinician's status keeps its authorship).
        return StatusChange.UNCHANGED
    return (
        StatusChange.REPLACE
        if may_overwrite(current, server_marker)
        else StatusChange.KEEP_CLINICIAN
    )


def _is_empty(concept: Mapping[str, object] | None) -> bool:
    return not concept or (not concept.get("coding") and not concept.get("text"))


def _has_code(concept: Mapping[str, object] | None, system: str, code: str) -> bool:
    codings = concept.get("coding") if concept else None
    if not isinstance(codings, list):
        return False
    return any(
        isinstance(c, Mapping) and c.get("system") == system and c.get("code") == code
        for c in codings
    )
