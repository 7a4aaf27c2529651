"""SDC expressions (calculatedExpression, variable) evaluated exactly, with SDC's weight().

Structured Data Capture STU4, http://hl7.org/fhir/uv/sdc/STU4/expressions.html: FHIRPath
(`text/fhirpath`) expressions over a QuestionnaireResponse, with `%resource` (the response),
`%questionnaire`, `%context`, `%qitem` (the Questionnaire item, for item-level expressions) and
the `variable` extension's named values (http://hl7.org/fhir/StructureDefinition/variable) as
environment variables, plus the FHIRPath supplements `weight()` / `ordinal()`
(expressions.html#fhirpath-supplements; where weights come from: clinical/weights.py).

Why expressions are not all handed to fhirpathpy: measured on this machine, fhirpathpy 2.2.4 spends
~700 us on `%resource.item.where(linkId in (...)).answer.value.sum()` for a 4-item response (each
`where()` is ~170 us), its `sum()` fails on answer values (`int + ResourceNode`), and it has no
`weight()` / `ordinal()`. Decimals it does keep (Decimal in, Decimal out). So the scoring shape that
every built-in Questionnaire uses,

    %resource.item.where(linkId in ('a' | 'b' | ...)).answer.value[.weight()|.ordinal()].sum()

(also with `%resource.repeat(item)`), is recognised when the Questionnaire is compiled and summed
natively with Decimal arithmetic (a few microseconds); any other expression, e.g. one a clinician
writes, runs on fhirpathpy with an exact Decimal `sum()` and an SDC `weight()` registered. Both
paths give the same answer (a test checks it). A sum over no answers is no answer (empty), not 0:
an unanswered form must not score 0.

An expression that cannot be evaluated - it does not parse, its language is not FHIRPath, it
fails on this response, or it uses a variable that is undefined or could not itself be computed -
raises `ExpressionFailed` with a message saying which; the caller decides what that means (for a
calculated item: a warning, clinical/scoring.py). A variable that fails is kept as `Unavailable`
with its reason, so only the expressions that actually use it fail, and say why.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from fhirpathpy import compile as fhirpath_compile
from fhirpathpy.engine.nodes import ResourceNode
from fhirpathpy.models import models as fhirpath_models

from fhirgoal.clinical.weights import EXT_ITEM_WEIGHT, coding_weight
from fhirgoal.fhir.fhirpath_syntax import syntax_error

FHIRPATH = "text/fhirpath"
# (linkId of the answered item, the answer's value) -> its weight, or None (clinical/sdc.py)
Weigh = Callable[[str | None, Any], Decimal | None]

_SUM = re.compile(
    r"^\s*%resource\s*\.\s*(item|repeat\(\s*item\s*\))\s*\.\s*where\(\s*linkId\s+in\s*\(\s*"
    r"('[^'\\]*'(?:\s*\|\s*'[^'\\]*')*)\s*\)\s*\)\s*\.\s*answer\s*\.\s*value\s*"
    r"(?:\.\s*(weight|ordinal)\(\s*\)\s*)?\.\s*sum\(\s*\)\s*$"
)
_UNDEFINED = re.compile(r"undefined environment variable: (\S+)")
_MODEL = fhirpath_models["r4"]
# FHIRPath's FHIR-specific constants (https://hl7.org/fhir/R4/fhirpath.html#vars); %ucum is
# fhirpathpy's own.
_CONSTANTS = {"sct": "http://snomed.info/sct", "loinc": "http://loinc.org"}


class ExpressionFailed(Exception):
    """An expression could not be evaluated on this response; str() says why."""


class _NoWeight(Exception):
    """weight() of a coded answer whose weight the server cannot find anywhere."""


def no_weight(link_id: str | None, coding: dict[str, Any]) -> str:
    return (
        f"it needs the weight of the answer {coding.get('system')}|{coding.get('code')} "
        f"to '{link_id}', and none is known (not on the answer, its answerOption, the item's "
        "answerValueSet, nor a CodeSystem the server holds)"
    )


# The coded answers of the response being evaluated that have no weight: id(Coding) -> message.
# weight() of one of them is an error rather than nothing, because a total that silently skips an
# answer whose weight lives elsewhere (a terminology server, a CodeSystem the server lacks) is a
# wrong total; the calculation is reported as not done instead.
_unweighted: ContextVar[dict[int, str]] = ContextVar("unweighted")


@dataclass(frozen=True, slots=True)
class Unavailable:
    """A variable whose expression could not be evaluated, and why."""

    reason: str


@dataclass(slots=True)
class Environment:
    """What every expression on one response sees: the response, its Questionnaire, how answers
    weigh, and the variables in scope (name -> FHIRPath collection, or why it is unavailable)."""

    response: dict[str, Any]
    questionnaire: dict[str, Any]
    weigh: Weigh
    variables: dict[str, list[Any] | Unavailable]

    def with_variables(self, values: dict[str, list[Any] | Unavailable]) -> Environment:
        if not values:
            return self
        return Environment(
            self.response, self.questionnaire, self.weigh, {**self.variables, **values}
        )


def _exact_sum(values: list[Any]) -> Any:
    total = Decimal(0)
    for value in values:
        if isinstance(value, bool) or not isinstance(value, int | Decimal):
            raise TypeError(f"sum() of a non-number: {value!r}")
        total += value
    return total if values else []


def _weights(values: list[Any]) -> list[Decimal]:
    # Answers reach fhirpathpy with their weight already attached (see _annotate); values that
    # are not Codings have no weight and give nothing.
    unweighted = _unweighted.get({})
    out = []
    for value in values:
        if isinstance(value, dict):
            weight = coding_weight(value)
            if weight is not None:
                out.append(weight)
            elif id(value) in unweighted:
                raise _NoWeight(unweighted[id(value)])
    return out


_FHIRPATH_FUNCTIONS = {
    "sum": {"fn": _exact_sum},
    "weight": {"fn": _weights},
    "ordinal": {"fn": _weights},
}


class Expression:
    """A compiled SDC expression: native for the scoring shape, fhirpathpy otherwise.

    `keep_nodes`: return fhirpathpy's typed nodes rather than plain JSON, for a variable, so that
    later expressions can still navigate its value by FHIR type (`%item.answerOption.value`)."""

    __slots__ = ("_compiled", "_link_ids", "_nested", "_weighted", "failure", "native", "text")

    def __init__(self, text: str, language: str = FHIRPATH, *, keep_nodes: bool = False) -> None:
        self.text = text
        self.failure: str | None = None  # why it can never be evaluated
        self._compiled: Callable[..., list[Any]] | None = None
        match = _SUM.match(text) if language == FHIRPATH else None
        self.native = match is not None
        if match:
            self._nested = match.group(1) != "item"
            self._link_ids = frozenset(s.strip()[1:-1] for s in match.group(2).split("|"))
            self._weighted = match.group(3) is not None
        elif language != FHIRPATH:
            self.failure = f"its language {language} is not one this server evaluates (FHIRPath)"
        else:
            options: dict[str, Any] = {"userInvocationTable": _FHIRPATH_FUNCTIONS}
            if keep_nodes:
                options["returnRawData"] = True
            self.failure = syntax_error(text)
            if self.failure is None:
                try:
                    self._compiled = fhirpath_compile(text, _MODEL, options=options)
                except Exception as exc:  # fhirpathpy raises bare Exceptions
                    self.failure = f"it does not parse: {exc}"

    @property
    def uses_weights(self) -> bool:
        return "weight(" in self.text or "ordinal(" in self.text

    def evaluate(
        self, env: Environment, context: dict[str, Any], qitem: dict[str, Any] | None = None
    ) -> list[Any]:
        """The result collection; `context` is %context (the response or one of its items),
        `qitem` the Questionnaire item of an item-level expression."""
        if self.failure is not None:
            raise ExpressionFailed(self.failure)
        if self._compiled is None:
            return self._native_sum(env)
        response = env.response
        unweighted: dict[int, str] = {}
        if self.uses_weights:
            copies: dict[int, dict[str, Any]] = {}
            response = _annotate(response, env.weigh, copies, unweighted)
            context = copies.get(id(context), context)
        variables: dict[str, Any] = {}
        for name, value in env.variables.items():
            if not isinstance(value, Unavailable):
                variables[name] = value
        fhir_env: dict[str, Any] = {
            **_CONSTANTS,
            **variables,
            "resource": response,
            "questionnaire": env.questionnaire,
            # fhirpathpy resolves `answer.value` (a choice type) only on nodes that know their
            # FHIR path; a bare item as %context would yield nothing.
            "context": (
                response
                if context is response
                else ResourceNode.create_node(context, "QuestionnaireResponse.item")
            ),
        }
        if qitem is not None:
            fhir_env["qitem"] = ResourceNode.create_node(qitem, "Questionnaire.item")
        token = _unweighted.set(unweighted)
        try:
            return list(self._compiled(response, fhir_env))
        except _NoWeight as missing:
            raise ExpressionFailed(str(missing)) from None
        except Exception as exc:
            raise ExpressionFailed(_explain(exc, env)) from None
        finally:
            _unweighted.reset(token)

    def _native_sum(self, env: Environment) -> list[Any]:
        values: list[Any] = []
        for item in _response_items(env.response, self._nested):
            link_id = item.get("linkId")
            if link_id not in self._link_ids:
                continue
            for answer in item.get("answer", ()):
                value = _value_of(answer)
                if value is None:
                    continue
                if self._weighted:
                    weight = env.weigh(link_id, value)
                    if weight is not None:
                        values.append(weight)
                    elif isinstance(value, dict) and answer.get("valueCoding") is value:
                        raise ExpressionFailed(no_weight(link_id, value))
                else:
                    values.append(value)
        result = _exact_sum(values)
        return [result] if values else []


@dataclass(frozen=True, slots=True)
class Variable:
    """One `variable` extension: a named expression (its value is a FHIRPath collection)."""

    name: str
    expression: Expression

    def evaluate(
        self, env: Environment, context: dict[str, Any], qitem: dict[str, Any] | None = None
    ) -> list[Any] | Unavailable:
        try:
            return self.expression.evaluate(env, context, qitem)
        except ExpressionFailed as failed:
            return Unavailable(str(failed))


def evaluate_variables(
    variables: list[Variable],
    env: Environment,
    context: dict[str, Any],
    qitem: dict[str, Any] | None = None,
) -> Environment:
    """`env` plus `variables`, evaluated in order, each seeing the ones before it (SDC)."""
    for variable in variables:
        env = env.with_variables({variable.name: variable.evaluate(env, context, qitem)})
    return env


def _explain(exc: Exception, env: Environment) -> str:
    undefined = _UNDEFINED.search(str(exc))
    if undefined:
        name = undefined.group(1)
        value = env.variables.get(name)
        if isinstance(value, Unavailable):
            return f"it uses %{name}, a variable that could not be computed: {value.reason}"
        return f"it uses %{name}, which no variable in its scope defines"
    return f"it failed on this response: {exc}"


def _value_of(answer: dict[str, Any]) -> Any:
    for key, value in answer.items():
        if key.startswith("value"):
            return value
    return None


def _response_items(response: dict[str, Any], nested: bool) -> Iterator[dict[str, Any]]:
    if not nested:
        yield from response.get("item", ())
        return
    stack = list(reversed(response.get("item", ())))
    while stack:
        item = stack.pop()
        yield item
        stack.extend(reversed(item.get("item", ())))


def _annotate(
    response: dict[str, Any],
    weigh: Weigh,
    copies: dict[int, dict[str, Any]],
    unweighted: dict[int, str],
) -> dict[str, Any]:
    """A copy whose coded answers carry their weight, for fhirpathpy's weight(); `copies` maps
    id(original item) to its copy, to find %context in it; `unweighted` gets the Codings that
    have no weight."""

    def items(nodes: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for original in nodes:
            node = copies[id(original)] = dict(original)
            if "item" in node:
                node["item"] = items(node["item"])
            if "answer" in node:
                answers = []
                for answer in node["answer"]:
                    answer = dict(answer)
                    coding = answer.get("valueCoding")
                    weight = weigh(node.get("linkId"), coding) if coding is not None else None
                    if isinstance(coding, dict) and weight is not None:
                        answer["valueCoding"] = {
                            **coding,
                            "extension": [{"url": EXT_ITEM_WEIGHT, "valueDecimal": weight}],
                        }
                    elif isinstance(coding, dict):
                        answer["valueCoding"] = own = dict(coding)
                        unweighted[id(own)] = no_weight(node.get("linkId"), coding)
                    if "item" in answer:
                        answer["item"] = items(answer["item"])
                    answers.append(answer)
                node["answer"] = answers
            out.append(node)
        return out

    copy = {**response, "item": items(response.get("item", []))}
    copies[id(response)] = copy
    return copy
