"""The sentences of a medical-necessity document: each figure in words, for a human reviewer.

Only words around figures clinical/ computed (figures.py); nothing here scores anything. The
references behind the words: ORS/SRS cutoffs, reliable change and progress colour,
clinical/session_measures.py; GAS T-score (Kiresuk & Sherman 1968; Turner-Stokes 2009),
clinical/gas.py; achievement at level 0 or better (HL7 PCO), clinical/achievement.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from decimal import Decimal
from typing import Any

from fhirgoal.clinical.achievement import day_of, instant_of
from fhirgoal.clinical.session_measures import Cutoffs, OrsPoint, SessionScore, SrsPoint
from fhirgoal.evidence.figures import GoalEvidence, TScorePoint

UNITS = {"min": "minute", "h": "hour", "d": "day", "wk": "week", "mo": "month", "a": "year"}
RELIABLE = {
    "reliable-improvement": "a reliable improvement",
    "reliable-deterioration": "a reliable deterioration",
    "no-reliable-change": "no reliable change",
}


def _day(when: Any) -> str:
    return str(when)[:10]


def _signed(number: Decimal) -> str:
    return f"+{number:f}" if number > 0 else f"{number:f}"


def _plural(count: int, word: str, many: str | None = None) -> str:
    return f"{count} {word if count == 1 else many or word + 's'}"


def diagnoses(count: int) -> str:
    return (f"{_plural(count, 'diagnosis', 'diagnoses')} addressed by the treatment plan "
            "(or, where it names none, the client's active diagnoses).")  # fmt: skip


def plan(careplan: dict[str, Any]) -> list[str]:
    period = careplan.get("period") or {}
    span = " to ".join(str(period[k])[:10] for k in ("start", "end") if period.get(k))
    title = careplan.get("title") or "Treatment plan"
    sentences = [f"{title}: {careplan.get('status', '')}, {careplan.get('intent', '')}"
                 + (f", {span}." if span else ".")]  # fmt: skip
    author = (careplan.get("author") or {}).get("reference")
    if author:
        sentences.append(f"Author: {author}.")
    return sentences


def frequency(timing: Any) -> str:
    """A CarePlan activity's schedule in words: "1 per 1 week for 12 weeks"."""
    repeat = (timing or {}).get("repeat") or {}
    words = []
    if repeat.get("frequency") and repeat.get("period") and repeat.get("periodUnit"):
        unit = UNITS.get(repeat["periodUnit"], repeat["periodUnit"])
        words.append(f"{repeat['frequency']} per {repeat['period']} {unit}")
    bounds = repeat.get("boundsDuration") or {}
    if bounds.get("value") is not None:
        unit = UNITS.get(bounds.get("code", ""), bounds.get("unit", ""))
        words.append(f"for {bounds['value']} {unit}s")
    return " ".join(words)


def goals(evidence: Sequence[GoalEvidence]) -> str:
    latest = [g.latest for g in evidence]
    met = sum(1 for r in latest if r is not None and r.level >= 0)
    unrated = sum(1 for r in latest if r is None)
    text = (f"{_plural(len(evidence), 'goal')} scaled with Goal Attainment Scaling (levels -2 to "
            f"+2, 0 = the expected outcome, each described by the goal itself): {met} at or "
            f"above the expected level at the latest rating, {len(evidence) - met - unrated} "
            "below")  # fmt: skip
    return text + (f", {unrated} not rated yet." if unrated else ".")


def outcomes_intro(cutoffs: Cutoffs) -> str:
    return (
        "Standardized measures as of the end of the period. The first result of a series is what "
        "change is measured from and is shown even when it falls before the period. ORS clinical "
        f"cutoff: adult {cutoffs.ors_adult:f}, adolescent (13-17) {cutoffs.ors_adolescent:f}, "
        f"child {cutoffs.ors_child:f}; reliable change {cutoffs.reliable_change:f} points; SRS "
        f"alliance concern below {cutoffs.srs_alert_below:f} or a drop of "
        f"{cutoffs.srs_drop:f} point since the previous session."
    )


def tscores(points: Sequence[TScorePoint]) -> str:
    if not points:
        return "No baseline or practitioner GAS rating yet: no T-score."
    first, last = points[0], points[-1]
    text = (f"GAS T-score (50 = every goal at its expected level; weights importance x "
            f"difficulty; rho {first.result.rho:f}): {first.result.tscore:f} on "
            f"{first.day.isoformat()}")  # fmt: skip
    if last is first:
        return text + "."
    change = last.result.tscore - first.result.tscore
    return text + f", {last.result.tscore:f} on {last.day.isoformat()} ({_signed(change)})."


def ors(points: Sequence[OrsPoint], cutoffs: Cutoffs) -> str:
    if not points:
        return "No Outcome Rating Scale result."
    intake, last = points[0], points[-1]
    text = f"ORS total {intake.total:f} at intake ({_day(intake.when)})"
    if last is intake:
        return text + f", against a clinical cutoff of {intake.cutoff:f} ({intake.cutoff_basis})."
    text += (f" and {last.total:f} on {_day(last.when)}, against a clinical cutoff of "
             f"{last.cutoff:f} ({last.cutoff_basis}): a change of "
             f"{_signed(last.change_from_intake)} points, "
             f"{RELIABLE.get(last.reliable_change or '', 'no reliable change')} (reliable change "
             f"is {cutoffs.reliable_change:f} points)")  # fmt: skip
    if last.clinically_significant:
        text += "; a clinically significant change, from the clinical into the non-clinical range"
    return text + f". Progress status {last.status}: {last.status_reason}."


def srs(points: Sequence[SrsPoint], cutoffs: Cutoffs) -> str:
    if not points:
        return "No Session Rating Scale result in the period."
    lowest = min(p.total for p in points)
    alerts = [p for p in points if p.alert]
    text = f"{_plural(len(points), 'SRS result')} in the period, lowest {lowest:f}; "
    if not alerts:
        return text + f"no alliance alert (none below {cutoffs.srs_alert_below:f}, no drop)."
    listed = "; ".join(f"{_day(p.when)}: {', '.join(p.reasons)}" for p in alerts)
    return text + f"alliance alert at {_plural(len(alerts), 'session')} ({listed})."


def comparator(name: str, scores: Sequence[SessionScore]) -> str:
    first, last = scores[0], scores[-1]
    text = f"{name} total {first.total:f} on {_day(first.when)}"
    if last is not first:
        text += f", {last.total:f} on {_day(last.when)} ({_signed(last.total - first.total)})"
    return text + "."


def minutes(encounter: dict[str, Any]) -> Decimal | None:
    """A session's duration in minutes: Encounter.length, else its period."""
    length = encounter.get("length") or {}
    if length.get("value") is not None and length.get("code", length.get("unit")) == "min":
        return Decimal(str(length["value"]))
    period = encounter.get("period") or {}
    if period.get("start") and period.get("end"):
        seconds = (instant_of(period["end"]) - instant_of(period["start"])).total_seconds()
        return Decimal(int(seconds // 60))
    return None


def sessions(encounters: Sequence[dict[str, Any]], durations: Sequence[Decimal | None]) -> str:
    if not encounters:
        return "No session attended in the period."
    first = day_of(encounters[0]["period"]["start"]).isoformat()
    last = day_of(encounters[-1]["period"]["start"]).isoformat()
    text = f"{_plural(len(encounters), 'session')} attended from {first} to {last}"
    if all(d is not None for d in durations):
        text += f", {sum(d for d in durations if d is not None):f} minutes in all"
    return text + "."


def alerts(count: int, end: date) -> str:
    if not count:
        return f"No alert was open on {end.isoformat()}."
    return (f"{_plural(count, 'alert')} open on {end.isoformat()}, raised by the server's rules "
            "from the measures above (outcome deterioration, no progress, alliance concern).")  # fmt: skip


def attestation(reference: str | None, clinician: dict[str, Any] | None) -> list[str]:
    who = reference or "unknown"
    if clinician is not None:
        who = f"{person_name(clinician)} ({reference}{npi_text(clinician)})"
    return [
        f"Attesting clinician: {who}, the treating clinician responsible for the plan and the "
        "sessions.",
        "Assembled by the fhirgoal server from the records this document lists, and signed with "
        "the server's document key (Bundle.signature): the signature attests that this is the "
        "server's complete and unaltered extract of those records for the period.",
    ]


def person_name(resource: dict[str, Any]) -> str:
    names = resource.get("name") or [{}]
    name = names[0]
    if name.get("text"):
        return str(name["text"])
    parts = [*name.get("prefix", []), *name.get("given", []), name.get("family", "")]
    text = " ".join(p for p in parts if p)
    suffix = ", ".join(name.get("suffix", []))
    return f"{text}, {suffix}" if suffix else text or str(resource.get("id", ""))


def npi_text(resource: dict[str, Any]) -> str:
    for identifier in resource.get("identifier") or []:
        if identifier.get("system") == "http://hl7.org/fhir/sid/us-npi":
            return f", NPI {identifier.get('value')}"
    return ""
