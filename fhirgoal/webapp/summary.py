"""What the overview shows, read from `Patient/{id}/$progress` (fhirgoal's operation, listed in
its CapabilityStatement; see fhirgoal/clinical/progress.py for the Parameters it returns) and,
for the level descriptions, from the GAS Goals themselves (HL7 PCO GAS extension).

Only what the server sent is shown: the app computes no score of its own, so a server without
the operation gets an overview without those parts, and says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

PCO_GAS_EXTENSION = "http://hl7.org/fhir/us/pco/StructureDefinition/pco-goal-attainment-scaling"
LEVEL_NAMES = {
    Decimal(2): "+2 much more than expected",
    Decimal(1): "+1 more than expected",
    Decimal(0): "0 expected outcome",
    Decimal(-1): "-1 less than expected",
    Decimal("-0.5"): "-0.5 partial achievement",
    Decimal(-2): "-2 much less than expected",
    Decimal(-3): "-3 worse than baseline",
}


@dataclass(frozen=True)
class Rating:
    when: str
    level: Decimal
    kind: str
    rater: str
    observation: str


@dataclass
class GoalSummary:
    id: str
    text: str
    lifecycle: str
    weight: Decimal | None
    variant: str | None
    status: str | None = None
    status_display: str | None = None
    status_set_by: str | None = None
    ratings: list[Rating] = field(default_factory=list)
    levels: dict[str, str] = field(default_factory=dict)  # "-2".."+2" -> description

    @property
    def current(self) -> Rating | None:
        return self.ratings[-1] if self.ratings else None


@dataclass(frozen=True)
class TPoint:
    when: str
    tscore: Decimal
    goals: int


@dataclass(frozen=True)
class OrsPoint:
    when: str
    session: int
    total: Decimal
    cutoff: Decimal
    cutoff_basis: str
    status: str
    status_reason: str
    reliable_change: str | None


@dataclass(frozen=True)
class SrsPoint:
    when: str
    session: int
    total: Decimal
    alert: bool
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class ComparatorPoint:
    measure: str
    when: str
    total: Decimal


@dataclass(frozen=True)
class Alert:
    flag: str
    code: str
    text: str
    since: str | None


@dataclass
class Progress:
    goals: list[GoalSummary] = field(default_factory=list)
    tscores: list[TPoint] = field(default_factory=list)
    ors: list[OrsPoint] = field(default_factory=list)
    band: tuple[Decimal, Decimal, Decimal] | None = None  # intake, low, high
    srs: list[SrsPoint] = field(default_factory=list)
    comparators: dict[str, list[ComparatorPoint]] = field(default_factory=dict)
    alerts: list[Alert] = field(default_factory=list)
    status: str = "grey"
    status_reason: str = ""


def _value(part: dict[str, Any]) -> Any:
    for key, value in part.items():
        if key.startswith("value"):
            return value
    return None


def _parts(parameter: dict[str, Any]) -> dict[str, Any]:
    """A parameter's parts by name (the last one of a name; repeated names via _all)."""
    return {p.get("name"): _value(p) for p in parameter.get("part") or []}


def _all(parameter: dict[str, Any], name: str) -> list[dict[str, Any]]:
    return [p for p in parameter.get("part") or [] if p.get("name") == name]


def _dec(value: Any) -> Decimal:
    return Decimal(str(value))


def _ref_id(value: Any) -> str:
    reference = value.get("reference", "") if isinstance(value, dict) else ""
    return str(reference).rpartition("/")[2]


def parse_progress(parameters: dict[str, Any]) -> Progress:
    progress = Progress()
    for parameter in parameters.get("parameter") or []:
        name = parameter.get("name")
        if name == "goal":
            progress.goals.append(_goal(parameter))
        elif name == "tscore":
            p = _parts(parameter)
            progress.tscores.append(TPoint(p["date"], _dec(p["tscore"]), int(p["goalCount"])))
        elif name == "ors":
            p = _parts(parameter)
            progress.ors.append(
                OrsPoint(
                    when=p["date"], session=int(p["session"]), total=_dec(p["total"]),
                    cutoff=_dec(p["cutoff"]), cutoff_basis=p.get("cutoffBasis") or "",
                    status=p.get("status") or "grey", status_reason=p.get("statusReason") or "",
                    reliable_change=p.get("reliableChange"),
                )
            )  # fmt: skip
        elif name == "reliableChangeBand":
            p = _parts(parameter)
            progress.band = (_dec(p["intake"]), _dec(p["low"]), _dec(p["high"]))
        elif name == "srs":
            p = _parts(parameter)
            reasons = tuple(str(_value(r)) for r in _all(parameter, "reason"))
            progress.srs.append(
                SrsPoint(p["date"], int(p["session"]), _dec(p["total"]), bool(p["alert"]), reasons)
            )
        elif name == "comparator":
            p = _parts(parameter)
            point = ComparatorPoint(str(p["measure"]), p["date"], _dec(p["total"]))
            progress.comparators.setdefault(point.measure, []).append(point)
        elif name == "alert":
            p = _parts(parameter)
            code = p.get("code") or {}
            progress.alerts.append(
                Alert(
                    _ref_id(p.get("flag")),
                    code.get("code", ""),
                    p.get("text") or "",
                    p.get("since"),
                )
            )
        elif name == "status":
            progress.status = str(_value(parameter))
        elif name == "statusReason":
            progress.status_reason = str(_value(parameter))
    return progress


def _goal(parameter: dict[str, Any]) -> GoalSummary:
    p = _parts(parameter)
    reference = p.get("goal") or {}
    status = p.get("achievementStatus") or {}
    goal = GoalSummary(
        id=_ref_id(reference),
        text=str(reference.get("display") or _ref_id(reference)),
        lifecycle=str(p.get("lifecycleStatus") or "active"),
        weight=_dec(p["weight"]) if p.get("weight") is not None else None,
        variant=p.get("variant"),
        status=status.get("code"),
        status_display=status.get("display") or status.get("code"),
        status_set_by=p.get("statusSetBy"),
    )
    for rating in _all(parameter, "rating"):
        r = _parts(rating)
        goal.ratings.append(
            Rating(
                r["date"],
                _dec(r["level"]),
                str(r["kind"]),
                str(r["rater"]),
                _ref_id(r.get("observation")),
            )
        )
    goal.ratings.sort(key=lambda r: r.when)
    return goal


def goal_levels(goal: dict[str, Any]) -> dict[str, str]:
    """The described levels of a GAS Goal (PCO extension: `level` Coding from LOINC LL6900-6 and
    its `progressText`), keyed by the level as shown ("-2" .. "+2")."""
    levels: dict[str, str] = {}
    for extension in goal.get("extension") or []:
        if extension.get("url") != PCO_GAS_EXTENSION:
            continue
        level: str | None = None
        text: str | None = None
        for part in extension.get("extension") or []:
            if part.get("url") == "level":
                coding = (part.get("valueCodeableConcept") or {}).get("coding") or []
                if part.get("valueCoding"):
                    coding = [part["valueCoding"]]
                level = next((_level_of(c) for c in coding if _level_of(c)), None)
            elif part.get("url") in ("progressText", "description"):
                text = part.get("valueString") or part.get("valueMarkdown")
        if level and text:
            levels[level] = text
    return levels


LOINC_LEVELS = {
    "LA34479-8": "+2", "LA34480-6": "+1", "LA34481-4": "0", "LA34483-0": "-1", "LA34484-8": "-2",
}  # fmt: skip


def _level_of(coding: dict[str, Any]) -> str | None:
    if coding.get("code") in LOINC_LEVELS:
        return LOINC_LEVELS[coding["code"]]
    return None


def level_label(level: Decimal) -> str:
    return LEVEL_NAMES.get(level, f"{level:+}")


def level_key(level: Decimal) -> str:
    """ "+1", "0", "-2": the key goal_levels uses (-0.5 and -3 have no described level)."""
    if level == 0:
        return "0"
    return f"{int(level):+d}" if level == int(level) else str(level)
