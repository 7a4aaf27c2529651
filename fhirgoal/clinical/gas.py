"""Goal Attainment Scaling (GAS): the aggregate T-score of a set of goals.

Formula (Kiresuk & Sherman 1968, Community Ment Health J 4:443; as corrected in Turner-Stokes 2009,
"Goal attainment scaling (GAS) in rehabilitation: a practical guide", Clin Rehabil 23:362, erratum):

    T = 50 + 10 * Σ(w_i x_i) / sqrt((1 - rho) Σ w_i² + rho (Σ w_i)²)

x_i is the goal's attainment level, w_i its weight (1 when unweighted; Turner-Stokes weights a goal
by importance x difficulty, each rated 0-3), rho the assumed correlation between goal scores,
customarily 0.3. All goals at 0 give T = 50; the scale is built so that T has mean 50, SD 10.

Scale variants (Turner-Stokes & Williams 2010, "Goal attainment scaling: a direct comparison of
alternative rating methods", Clin Rehabil 24:66) -- the raw level is always reported beside the
level used:

* standard 5-level scale -2..+2;
* "partial achievement" -0.5 for a goal that started at -1 and moved without reaching 0: the paper
  recommends converting it to -1 for analysis, so the T-score counts it as -1;
* six-level scale with -3 "worse than baseline" (their "version 1": every baseline at -2, -3 for
  worsening). The paper (abstract, PubMed 20026573) describes no rescaling, and its version-1
  baseline median T of 21.0 is what the standard formula gives for 3-4 goals at a raw -2, so -3
  enters the formula unchanged (-3 counts as -3). -3 is only meaningful below a baseline of -2
  (with a baseline of -1, "worse than baseline" is -2): when the caller knows the goal's baseline
  (`GoalScore.baseline`) a -3 over any other baseline is rejected; without it, -3 is accepted.

The HL7 Person-Centered Outcomes IG (http://hl7.org/fhir/us/pco) models the per-goal ratings; the
aggregate T-score has no standard code and is computed here.

Invalid input raises `ClinicalInputError` (a `FhirError` of category "invalid", so the server
answers 400 with an OperationOutcome) carrying one issue per problem. Each issue's expression is a
*field identifier* relative to this function's input, e.g. ``goal[1].level``, ``goal[0].weight``,
``rho``, ``goal``; the REST layer maps them onto its Parameters paths with `relocated()`.
Pure logic: no I/O. All arithmetic is `decimal.Decimal` in a private context (34 digits).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Context, Decimal, localcontext

from fhirgoal.core.errors import FhirError, Issue

DEFAULT_RHO = Decimal("0.3")
HUNDREDTHS = Decimal("0.01")

PARTIAL_ACHIEVEMENT = Decimal("-0.5")
WORSE_THAN_BASELINE = Decimal("-3")

# The levels a rating may carry, with the wording of the standard GAS scale.
LEVEL_LABELS: dict[Decimal, str] = {
    Decimal(2): "much better than expected",
    Decimal(1): "better than expected",
    Decimal(0): "expected",
    PARTIAL_ACHIEVEMENT: "partial achievement",
    Decimal(-1): "less than expected",
    Decimal(-2): "much less than expected",
    WORSE_THAN_BASELINE: "worse than baseline",
}
LEVELS: frozenset[Decimal] = frozenset(LEVEL_LABELS)

_CONTEXT = Context(prec=34)


# --- input errors shared by the clinical modules ------------------------------------------------


@dataclass(frozen=True, slots=True)
class InputProblem:
    """One invalid input: a field identifier (``goal[1].level``) and what is wrong with it."""

    field: str
    message: str


class ClinicalInputError(FhirError):
    """Bad input to a clinical calculation: a 400 OperationOutcome with one issue per problem.

    ``issues[i].expression`` is the field identifier; ``problems`` keeps them as data so the REST
    layer can map them onto request paths with `relocated()`.
    """

    def __init__(self, problems: Sequence[InputProblem]) -> None:
        if not problems:
            raise ValueError("ClinicalInputError needs at least one problem")
        self.problems: tuple[InputProblem, ...] = tuple(problems)
        super().__init__(
            "invalid",
            "; ".join(f"{p.field}: {p.message}" for p in self.problems),
            issues=[Issue(f"{p.field}: {p.message}", p.field, code="value") for p in self.problems],
        )

    @classmethod
    def single(cls, field: str, message: str) -> ClinicalInputError:
        return cls([InputProblem(field, message)])

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(p.field for p in self.problems)

    def relocated(self, expression_for: Callable[[str], str | None]) -> FhirError:
        """The same error with each field identifier mapped to a FHIRPath expression.

        The diagnostics keep the field identifier: it is what a client reads in our docs.
        """
        return FhirError(
            "invalid",
            self.diagnostics,
            issues=[
                Issue(f"{p.field}: {p.message}", expression_for(p.field), code="value")
                for p in self.problems
            ],
        )


def check_decimal(value: object, field: str, problems: list[InputProblem]) -> Decimal | None:
    """`value` as a finite Decimal, or None after recording why not (ints accepted, floats not:
    a float has already lost the number the client sent)."""
    if isinstance(value, bool) or not isinstance(value, Decimal | int):
        problems.append(InputProblem(field, f"must be a decimal number, not {value!r}"))
        return None
    number = Decimal(value)
    if not number.is_finite():
        problems.append(InputProblem(field, f"must be a finite number, not {number}"))
        return None
    return number


def level_text(level: Decimal) -> str:
    """``+2``, ``0``, ``-0.5``: the sign convention of GAS scales."""
    text = f"{level.normalize():f}" if level != 0 else "0"
    return f"+{text}" if level > 0 else text


# --- T-score ------------------------------------------------------------------------------------


class Variant(enum.StrEnum):
    """Which GAS scale variants the inputs used (Turner-Stokes & Williams 2010), named as the
    goals name theirs (CodeSystem https://fhirgoal.org/fhir/CodeSystem/gas-scale-variant), so
    `$gas-tscore`, `$progress` and the Goal's gas-scale-variant extension say the same."""

    STANDARD = "five-level"  # -2..+2 only
    PARTIAL_ACHIEVEMENT = "partial"  # -0.5 recorded, counted as -1
    WORSE_THAN_BASELINE = "six-level"  # 6-level scale with -3, counted as -3

    @classmethod
    def read(cls, code: str) -> Variant:
        """A variant from its code, or from the names `$gas-tscore` answered with before the
        names were unified (standard-5-level, partial-achievement, worse-than-baseline)."""
        return cls(_FORMER_VARIANT_NAMES.get(code, code))


_FORMER_VARIANT_NAMES = {
    "standard-5-level": "five-level",
    "partial-achievement": "partial",
    "worse-than-baseline": "six-level",
}


@dataclass(frozen=True, slots=True)
class GoalScore:
    """One goal's attainment level and weight; `goal` is an optional label or reference."""

    level: Decimal
    weight: Decimal = Decimal(1)
    goal: str | None = None
    baseline: Decimal | None = None  # the goal's baseline level, when known (checks -3)


@dataclass(frozen=True, slots=True)
class GoalUsed:
    """A goal as it entered the formula: raw level beside the level used."""

    index: int  # position in the input sequence
    goal: str | None
    raw_level: Decimal
    level_used: Decimal
    weight: Decimal


@dataclass(frozen=True, slots=True)
class TScoreResult:
    tscore: Decimal  # quantized to 0.01, ROUND_HALF_UP
    raw_sum: Decimal  # Σ w_i x_i with the levels used
    denominator: Decimal  # sqrt((1 - rho) Σ w_i² + rho (Σ w_i)²), unrounded
    inputs_as_used: tuple[GoalUsed, ...]
    rho: Decimal
    variants: tuple[Variant, ...]  # non-standard variants present, or just STANDARD
    notes: tuple[str, ...]  # one line per level that was converted or needs a remark


def level_used(level: Decimal) -> Decimal:
    """The level entered into the formula: -0.5 counts as -1, every other level as itself."""
    return Decimal(-1) if level == PARTIAL_ACHIEVEMENT else level


def _checked_rho(rho: object, problems: list[InputProblem]) -> Decimal | None:
    value = check_decimal(rho, "rho", problems)
    if value is not None and not Decimal(0) <= value < Decimal(1):
        problems.append(InputProblem("rho", f"must be at least 0 and below 1, not {value}"))
        return None
    return value


def checked_rho(rho: object) -> Decimal:
    """`rho` as a Decimal in [0, 1), or ClinicalInputError (field ``rho``): for callers that
    must refuse a bad rho before they gather the goals."""
    problems: list[InputProblem] = []
    value = _checked_rho(rho, problems)
    if value is None:
        raise ClinicalInputError(problems)
    return value


def compute_tscore(goals: Sequence[GoalScore], rho: Decimal = DEFAULT_RHO) -> TScoreResult:
    """The GAS T-score of `goals` (see the module docstring); raises `ClinicalInputError`."""
    problems: list[InputProblem] = []
    rho_value = _checked_rho(rho, problems)
    if not goals:
        problems.append(InputProblem("goal", "at least one goal is required"))
    used: list[GoalUsed] = []
    for index, score in enumerate(goals):
        level = check_decimal(score.level, f"goal[{index}].level", problems)
        if level is not None and level not in LEVELS:
            allowed = ", ".join(level_text(x) for x in sorted(LEVELS))
            problems.append(
                InputProblem(f"goal[{index}].level", f"must be one of {allowed}, not {level}")
            )
            level = None
        if level == WORSE_THAN_BASELINE and score.baseline is not None:
            baseline = check_decimal(score.baseline, f"goal[{index}].baseline", problems)
            if baseline is not None and baseline != Decimal(-2):
                problems.append(
                    InputProblem(
                        f"goal[{index}].level",
                        f"-3 (worse than baseline) needs a baseline of -2, not {baseline}",
                    )
                )
                level = None
        weight = check_decimal(score.weight, f"goal[{index}].weight", problems)
        if weight is not None and weight < 0:
            problems.append(
                InputProblem(f"goal[{index}].weight", f"must not be negative: {weight}")
            )
            weight = None
        if level is not None and weight is not None:
            used.append(GoalUsed(index, score.goal, level, level_used(level), weight))
    if not problems and sum((g.weight for g in used), Decimal(0)) == 0:
        problems.append(InputProblem("goal", "at least one goal needs a weight above 0"))
    if problems:
        raise ClinicalInputError(problems)
    assert rho_value is not None
    return _score(used, rho_value)


def _score(used: Sequence[GoalUsed], rho: Decimal) -> TScoreResult:
    with localcontext(_CONTEXT):
        weighted = sum((g.weight * g.level_used for g in used), Decimal(0))
        total_weight = sum((g.weight for g in used), Decimal(0))
        squares = sum((g.weight * g.weight for g in used), Decimal(0))
        denominator = ((1 - rho) * squares + rho * total_weight * total_weight).sqrt()
        tscore = Decimal(50) + Decimal(10) * weighted / denominator
        rounded = tscore.quantize(HUNDREDTHS, rounding=ROUND_HALF_UP)
    return TScoreResult(
        tscore=rounded,
        raw_sum=weighted,
        denominator=denominator,
        inputs_as_used=tuple(used),
        rho=rho,
        variants=_variants(g.raw_level for g in used),
        notes=tuple(note for g in used if (note := _note(g))),
    )


def _variants(levels: Iterable[Decimal]) -> tuple[Variant, ...]:
    """The non-standard variants present, in enum order; only STANDARD when there are none."""
    seen = set(levels)
    found = tuple(
        variant
        for variant, marker in (
            (Variant.PARTIAL_ACHIEVEMENT, PARTIAL_ACHIEVEMENT),
            (Variant.WORSE_THAN_BASELINE, WORSE_THAN_BASELINE),
        )
        if marker in seen
    )
    return found or (Variant.STANDARD,)


def _note(goal: GoalUsed) -> str | None:
    name = goal.goal or f"goal[{goal.index}]"
    if goal.raw_level == PARTIAL_ACHIEVEMENT:
        return (
            f"{name}: -0.5 (partial achievement) counted as -1 "
            "(Turner-Stokes & Williams 2010, Clin Rehabil 24:66)"
        )
    if goal.raw_level == WORSE_THAN_BASELINE:
        return (
            f"{name}: -3 (worse than baseline, 6-level scale) counted as -3 "
            "(Turner-Stokes & Williams 2010, Clin Rehabil 24:66)"
        )
    return None


def weight_from(importance: int, difficulty: int) -> Decimal:
    """Turner-Stokes (2009) goal weight: importance (0-3) x difficulty (0-3), so 0..9.

    A weight of 0 (a goal rated "not at all" important or difficult) drops the goal from the
    T-score; `compute_tscore` rejects a set whose weights are all 0.
    """
    problems: list[InputProblem] = []
    for name, value in (("importance", importance), ("difficulty", difficulty)):
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 3:
            problems.append(InputProblem(name, f"must be an integer from 0 to 3, not {value!r}"))
    if problems:
        raise ClinicalInputError(problems)
    return Decimal(importance * difficulty)
