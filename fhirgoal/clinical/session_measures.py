"""ORS / SRS interpretation per session: clinical range, reliable change, progress colour, alerts.

Instruments: Outcome Rating Scale and Session Rating Scale (Miller & Duncan; Miller, Duncan, Brown,
Sparks & Claud 2003, J Brief Therapy 2:91; Duncan et al. 2003, J Brief Therapy 3:3) and the child
versions CORS/CSRS. Four 0-10 items each, totals 0-40.

Defaults (all in `Cutoffs`): ORS clinical cutoff 25 for adults (18+) (Miller et al. 2003;
Bringhurst, Watson, Miller & Duncan 2006, J Brief Therapy 5:23), 28 for adolescents (13-17) and 32
for children under 13 on the CORS (Duncan, Sparks, Miller, Bohanske & Claud 2006, "Giving youth a
voice", J Brief Therapy 5:71); reliable change 5 points (the Jacobson & Truax 1991 index, J Consult
Clin Psychol 59:12, with the ORS reliabilities); SRS alliance concern below 36, or any drop of 1
point or more since the previous session (Duncan 2011, PCOMS administration, scoring and
interpretation manual; Duncan 2012, "The Partners for Change Outcome Management System",
Canadian Psychology 53:93).

Rules chosen where the issue is silent (the thresholds are configurable through `Cutoffs`):

* Age band on each session's date (full years; the birthday counts from the day itself; a 29
  February birthday counts from 1 March in common years). Unknown birth date: adult cutoff, and
  the point says so. A partial birth date (``2010``, ``2010-05``) gives a band only when every
  possible birth day in it gives the same band; otherwise it is treated as unknown.
* Clinical range: a total *below* the cutoff is "clinical" (24.9 clinical, 25.0 not, for adults).
* Reliable change from intake (the first score): >= +5 "reliable-improvement", <= -5
  "reliable-deterioration", else "no-reliable-change"; None at intake.
* Clinically significant change (Jacobson & Truax): reliable improvement *and* intake in the
  clinical range *and* now in the non-clinical range.
* Progress colour of the client as of each session, first rule that matches:
  grey   -- intake only (one score): progress needs two points;
  red    -- reliable deterioration;
  green  -- reliable improvement (with or without crossing the cutoff);
  red    -- session number >= `no_progress_sessions` (default 6), no reliable improvement and still
            in the clinical range. PCOMS compares each client with an Expected Treatment Response
            trajectory fitted on its proprietary normative data (Duncan 2012; Miller, Duncan,
            Sorrell & Brown 2005, J Clin Psychol 61:199). Without that data we use the rule of
            thumb of Duncan & Miller ("When I'm good, I'm very good...", Psychotherapy in
            Australia 2006; Duncan, On Becoming a Better Therapist, 2nd ed., APA 2014): no change
            by the third session calls for a conversation, none by the fifth or sixth for a
            change of course or a referral;
  amber  -- everything else: sessions 2 onwards without reliable change (including a total that
            crossed the cutoff by less than the reliable-change amount: noise is not recovery).
  The issue's sketch made "crossed the cutoff" green by itself; Jacobson & Truax require the
  change to be reliable too, so we do not.
* SRS: alert when the total is below 36, or dropped by >= 1 point since the previous SRS.
* Alerts open as of the latest session: "deterioration" (latest ORS reliably below intake),
  "no-progress" (latest ORS red by the no-progress rule), "alliance" (latest SRS alert). Each has
  a stable `key` (its kind: one open alert of a kind per client) and `since`: the first session of
  the unbroken run of sessions that raised it, so a condition that clears and comes back opens a
  new alert. `reconcile` tells the caller which Flags to open and which to close.

Pure logic: no I/O; Decimal arithmetic throughout.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, fields
from datetime import date, datetime
from decimal import Decimal
from typing import Literal, TypeVar

from fhirgoal.clinical.achievement import When, day_of, day_text, instant_of
from fhirgoal.clinical.gas import ClinicalInputError, InputProblem, check_decimal

AgeBand = Literal["adult", "adolescent", "child"]
ClinicalRange = Literal["clinical", "non-clinical"]
ReliableChange = Literal["reliable-improvement", "reliable-deterioration", "no-reliable-change"]
AlertKind = Literal["deterioration", "no-progress", "alliance"]

MAX_TOTAL = Decimal(40)
ADULT_AGE = 18
ADOLESCENT_AGE = 13


class Colour(enum.StrEnum):
    GREEN = "green"
    AMBER = "amber"
    RED = "red"
    GREY = "grey"


@dataclass(frozen=True, slots=True)
class Cutoffs:
    """Interpretation thresholds; the defaults are the published PCOMS values."""

    ors_adult: Decimal = Decimal(25)
    ors_adolescent: Decimal = Decimal(28)
    ors_child: Decimal = Decimal(32)
    reliable_change: Decimal = Decimal(5)
    srs_alert_below: Decimal = Decimal(36)
    srs_drop: Decimal = Decimal(1)
    no_progress_sessions: int = 6

    def __post_init__(self) -> None:
        problems: list[InputProblem] = []
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "no_progress_sessions":
                if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                    problems.append(
                        InputProblem(f"cutoffs.{f.name}", f"must be an integer >= 2: {value!r}")
                    )
                continue
            number = check_decimal(value, f"cutoffs.{f.name}", problems)
            if number is not None and not 0 < number <= MAX_TOTAL:
                problems.append(
                    InputProblem(f"cutoffs.{f.name}", f"must be above 0 and at most 40: {number}")
                )
            elif number is not None:
                object.__setattr__(self, f.name, number)  # an int from config becomes a Decimal
        if problems:
            raise ClinicalInputError(problems)

    def ors_cutoff(self, band: AgeBand | None) -> Decimal:
        if band == "adolescent":
            return self.ors_adolescent
        if band == "child":
            return self.ors_child
        return self.ors_adult


DEFAULT_CUTOFFS = Cutoffs()


# --- age band -----------------------------------------------------------------------------------


def age_on(birth: date, on: date) -> int:
    """Age in full years on `on`; the birthday itself counts (29 Feb counts from 1 Mar)."""
    return on.year - birth.year - ((on.month, on.day) < (birth.month, birth.day))


def _band(age: int) -> AgeBand:
    if age >= ADULT_AGE:
        return "adult"
    return "adolescent" if age >= ADOLESCENT_AGE else "child"


def age_band(birth_date: date | str | None, on_date: When) -> AgeBand | None:
    """The ORS age band on `on_date`, or None when the birth date is unknown or too imprecise.

    Raises `ClinicalInputError` (field ``birth_date``) for a birth date after `on_date` or one
    that is not a FHIR date.
    """
    if birth_date is None:
        return None
    on = _day(on_date)
    earliest, latest = _birth_range(birth_date)
    if earliest > on:
        raise ClinicalInputError.single(
            "birth_date", f"{birth_date} is after the session date {on.isoformat()}"
        )
    oldest = _band(age_on(earliest, on))
    youngest = _band(age_on(min(latest, on), on))
    return oldest if oldest == youngest else None


def _birth_range(birth_date: date | str) -> tuple[date, date]:
    """The first and last day a FHIR date (``2010``, ``2010-05``, ``2010-05-17``) may mean."""
    if isinstance(birth_date, datetime):
        return birth_date.date(), birth_date.date()
    if isinstance(birth_date, date):
        return birth_date, birth_date
    try:
        parts = [int(p) for p in birth_date.split("-")] if isinstance(birth_date, str) else []
        if len(parts) == 3 and len(birth_date) == 10:
            day = date(parts[0], parts[1], parts[2])
            return day, day
        if len(parts) == 2 and len(birth_date) == 7:
            first = date(parts[0], parts[1], 1)
            following = date(parts[0] + parts[1] // 12, parts[1] % 12 + 1, 1)
            return first, date.fromordinal(following.toordinal() - 1)
        if len(parts) == 1 and len(birth_date) == 4:
            return date(parts[0], 1, 1), date(parts[0], 12, 31)
    except ValueError:
        pass
    raise ClinicalInputError.single("birth_date", f"not a FHIR date: {birth_date!r}")


def _day(when: When) -> date:
    try:
        return day_of(when)
    except (TypeError, ValueError):
        raise ClinicalInputError.single("on_date", f"not a date: {when!r}") from None


# --- series -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionScore:
    """One session's ORS or SRS total (0-40) and the Observation it comes from."""

    when: When
    total: Decimal
    observation: str


@dataclass(frozen=True, slots=True)
class OrsPoint:
    session: int  # 1-based position in time order; 1 is the intake
    when: When
    observation: str
    total: Decimal
    age_band: AgeBand | None
    cutoff: Decimal
    cutoff_basis: str  # "adult (18+) on 2026-09-14" or "birth date unknown: adult cutoff used"
    clinical_range: ClinicalRange
    change_from_intake: Decimal  # 0 at intake
    reliable_change: ReliableChange | None  # None at intake
    clinically_significant: bool  # reliable improvement from the clinical to the non-clinical range
    status: Colour
    status_reason: str
    no_progress: bool  # red by the no-progress rule (drives the "no-progress" alert)


@dataclass(frozen=True, slots=True)
class SrsPoint:
    session: int
    when: When
    observation: str
    total: Decimal
    change_from_previous: Decimal | None
    alert: bool
    reasons: tuple[str, ...]  # "below 36 (35.9)", "drop of 1.5 since previous session"


def _ordered(series: Sequence[SessionScore], name: str) -> list[SessionScore]:
    """Validated and sorted by time; same instant keeps the caller's order (recording order)."""
    problems: list[InputProblem] = []
    keyed: list[tuple[datetime, int, SessionScore]] = []
    for index, score in enumerate(series):
        field_ = f"{name}[{index}]"
        total = check_decimal(score.total, f"{field_}.total", problems)
        if total is not None and not 0 <= total <= MAX_TOTAL:
            problems.append(InputProblem(f"{field_}.total", f"must be from 0 to 40, not {total}"))
        if not isinstance(score.observation, str) or not score.observation:
            problems.append(InputProblem(f"{field_}.observation", "an observation id is required"))
        try:
            keyed.append((instant_of(score.when), index, score))
        except (ValueError, TypeError):
            problems.append(InputProblem(f"{field_}.when", f"not a dateTime: {score.when!r}"))
    if problems:
        raise ClinicalInputError(problems)
    keyed.sort(key=lambda k: k[:2])
    return [k[2] for k in keyed]


def _signed(number: Decimal) -> str:
    return f"+{number:f}" if number > 0 else f"{number:f}"


_BAND_TEXT = {"adult": "adult (18+)", "adolescent": "adolescent (13-17)", "child": "child (<13)"}


def interpret_ors(
    series: Sequence[SessionScore],
    birth_date: date | str | None,
    cutoffs: Cutoffs = DEFAULT_CUTOFFS,
) -> list[OrsPoint]:
    """Each ORS session interpreted against the intake (the first score); see the module rules."""
    ordered = _ordered(series, "ors")
    if not ordered:
        return []
    intake = ordered[0]
    intake_range = _clinical_range(intake.total, age_band(birth_date, intake.when), cutoffs)
    points: list[OrsPoint] = []
    for number, score in enumerate(ordered, start=1):
        band = age_band(birth_date, score.when)
        if band is None:
            unknown = "unknown" if birth_date is None else f"too imprecise ({birth_date})"
            basis = f"birth date {unknown}: adult cutoff used"
        else:
            basis = f"{_BAND_TEXT[band]} on {day_text(score.when)}"
        in_range = _clinical_range(score.total, band, cutoffs)
        change = score.total - intake.total
        reliable: ReliableChange | None = None
        significant = False
        if number == 1:
            colour, reason, stalled = (
                Colour.GREY,
                "intake only: progress needs a second session",
                False,
            )
        else:
            if change >= cutoffs.reliable_change:
                reliable = "reliable-improvement"
            elif change <= -cutoffs.reliable_change:
                reliable = "reliable-deterioration"
            else:
                reliable = "no-reliable-change"
            significant = (
                reliable == "reliable-improvement"
                and intake_range == "clinical"
                and in_range == "non-clinical"
            )
            colour, reason, stalled = _colour(
                number, change, reliable, significant, in_range, cutoffs
            )
        points.append(
            OrsPoint(
                session=number,
                when=score.when,
                observation=score.observation,
                total=score.total,
                age_band=band,
                cutoff=cutoffs.ors_cutoff(band),
                cutoff_basis=basis,
                clinical_range=in_range,
                change_from_intake=change,
                reliable_change=reliable,
                clinically_significant=significant,
                status=colour,
                status_reason=reason,
                no_progress=stalled,
            )
        )
    return points


def _clinical_range(total: Decimal, band: AgeBand | None, cutoffs: Cutoffs) -> ClinicalRange:
    """Below the cutoff is the clinical range; the cutoff itself is not."""
    return "clinical" if total < cutoffs.ors_cutoff(band) else "non-clinical"


def _colour(
    session: int,
    change: Decimal,
    reliable: ReliableChange,
    significant: bool,
    in_range: ClinicalRange,
    cutoffs: Cutoffs,
) -> tuple[Colour, str, bool]:
    since = f"{_signed(change)} since intake"
    if reliable == "reliable-deterioration":
        return Colour.RED, f"reliable deterioration: {since}", False
    if reliable == "reliable-improvement":
        if significant:
            return Colour.GREEN, f"clinically significant change: {since}, now above cutoff", False
        return Colour.GREEN, f"reliable improvement: {since}", False
    if session >= cutoffs.no_progress_sessions and in_range == "clinical":
        reason = (
            f"no reliable improvement by session {session} ({since})"
            " and still in the clinical range"
        )
        return Colour.RED, reason, True
    if in_range == "non-clinical":
        return Colour.AMBER, f"no reliable change yet ({since}); in the non-clinical range", False
    return Colour.AMBER, f"no reliable change yet ({since})", False


def interpret_srs(
    series: Sequence[SessionScore], cutoffs: Cutoffs = DEFAULT_CUTOFFS
) -> list[SrsPoint]:
    """Each SRS session with its alliance alert: below the cutoff, or a drop since the last one."""
    ordered = _ordered(series, "srs")
    points: list[SrsPoint] = []
    for number, score in enumerate(ordered, start=1):
        reasons: list[str] = []
        if score.total < cutoffs.srs_alert_below:
            reasons.append(f"below {cutoffs.srs_alert_below:f} ({score.total:f})")
        change = score.total - ordered[number - 2].total if number > 1 else None
        if change is not None and -change >= cutoffs.srs_drop:
            reasons.append(f"drop of {-change:f} since previous session")
        points.append(
            SrsPoint(
                session=number,
                when=score.when,
                observation=score.observation,
                total=score.total,
                change_from_previous=change,
                alert=bool(reasons),
                reasons=tuple(reasons),
            )
        )
    return points


# --- alerts -------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionRef:
    session: int
    when: When
    observation: str


@dataclass(frozen=True, slots=True)
class Alert:
    """A condition open as of the latest session; `key` matches it across sessions."""

    kind: AlertKind
    since: SessionRef  # first session of the unbroken run that raised it
    latest: SessionRef  # the latest session, which still raises it
    evidence: tuple[str, ...]  # observation ids, earlier first
    reason: str  # the latest session's reason
    key: str = field(init=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "key", self.kind)


def open_alerts(ors_points: Sequence[OrsPoint], srs_points: Sequence[SrsPoint]) -> list[Alert]:
    """The alerts open as of the latest ORS and SRS sessions, in kind order."""
    alerts: list[Alert] = []
    if ors_points:
        intake = ors_points[0].observation
        run = _run(ors_points, lambda p: p.reliable_change == "reliable-deterioration")
        if run:
            evidence = (intake, *(p.observation for p in run))
            alerts.append(_alert("deterioration", run, evidence, run[-1].status_reason))
        run = _run(ors_points, lambda p: p.no_progress)
        if run:
            evidence = (intake, *(p.observation for p in run))
            alerts.append(_alert("no-progress", run, evidence, run[-1].status_reason))
    run_srs = _run(srs_points, lambda p: p.alert)
    if run_srs:
        first = run_srs[0].session
        # A drop is measured against the session before the run: that score is evidence too.
        before = (srs_points[first - 2].observation,) if first > 1 else ()
        evidence = (*before, *(p.observation for p in run_srs))
        alerts.append(_alert("alliance", run_srs, evidence, "; ".join(run_srs[-1].reasons)))
    return alerts


_P = TypeVar("_P", OrsPoint, SrsPoint)


def _run(points: Sequence[_P], condition: Callable[[_P], bool]) -> list[_P]:
    """The unbroken run of points at the end of `points` that meet `condition` (may be empty)."""
    run: list[_P] = []
    for point in reversed(points):
        if not condition(point):
            break
        run.append(point)
    return run[::-1]


def _alert(
    kind: AlertKind,
    run: Sequence[OrsPoint | SrsPoint],
    evidence: Iterable[str],
    reason: str,
) -> Alert:
    first, last = run[0], run[-1]
    return Alert(
        kind,
        SessionRef(first.session, first.when, first.observation),
        SessionRef(last.session, last.when, last.observation),
        tuple(dict.fromkeys(evidence)),
        reason,
    )


@dataclass(frozen=True, slots=True)
class AlertChanges:
    """What the caller does with its Flags: open new ones, close the cleared ones."""

    open: tuple[Alert, ...]  # no open Flag with this key yet: create one
    still_open: tuple[Alert, ...]  # a Flag with this key is open and stays open
    close: tuple[str, ...]  # keys of open Flags whose condition cleared: status inactive + end


def reconcile(open_keys: Iterable[str], alerts: Sequence[Alert]) -> AlertChanges:
    """Match the keys of the currently open Flags against `open_alerts`' result."""
    existing = set(open_keys)
    current = {a.key for a in alerts}
    return AlertChanges(
        open=tuple(a for a in alerts if a.key not in existing),
        still_open=tuple(a for a in alerts if a.key in existing),
        close=tuple(sorted(existing - current)),
    )
