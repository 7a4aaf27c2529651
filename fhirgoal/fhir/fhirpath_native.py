"""FHIRPath evaluated natively for the common subset, fhirpathpy for the rest.

https://hl7.org/fhirpath/N1/ (and its FHIR use, https://hl7.org/fhir/R4/fhirpath.html). The
profile rules and invariants run on every write of their types, and fhirpathpy interprets them
slowly: measured on this machine, the seven rules of the GAS goal profile took 11.7 ms per Goal
(`gas-2` alone 7.6 ms), most of a transaction's CPU. Most rules are written in a small part of
the language, which is compiled here into Python closures over the resource's JSON:

- navigation by element name (a choice element by its name: `value` finds `valueCoding`), the
  resource type as the first step (`Goal.target`), `$this`, `%resource` / `%rootResource`,
  indexers `[n]`, parentheses;
- literals: strings, integers, decimals, booleans, `{}`;
- `=` `!=` `<` `<=` `>` `>=` `in` `contains` `|` `and` `or` `xor` `implies`;
- where() select() all() exists() empty() count() not() first() last() isDistinct(), and
  startsWith() endsWith() contains() of a string literal.

Everything else (other functions, type operators, arithmetic, date and quantity literals...)
makes the whole expression run on fhirpathpy, decided once when it is compiled. Values whose
FHIRPath meaning needs the type model are also left to fhirpathpy, decided as they are met: a
primitive that carries extensions (`_status`), dates and times (their equality and order depend
on precision), complex values compared as wholes, a boolean against a number, a collection of
several items where one is expected, a criteria that is not a boolean. Then that evaluation runs
on fhirpathpy: the result is always fhirpathpy's or one it would give (checked against it by
tests/fhir/test_fhirpath_native.py over every profile rule and the R4 invariants on the R4
examples).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from antlr4 import CommonTokenStream, InputStream
from fhirpathpy import compile as fhirpath_compile
from fhirpathpy.models import models as fhirpath_models
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser as P

from fhirgoal.fhir.fhirpath_syntax import syntax_error
from fhirgoal.fhir.search.paths import CHOICE_TYPE_SUFFIXES

Collection = list[Any]
Variables = dict[str, Any]
# a compiled (sub)expression: its input collection (the focus) and the variables -> its result
Node = Callable[[Collection, Variables], Collection]
Evaluate = Callable[..., list[Any]]

_MODEL = fhirpath_models["r4"]
_VARIABLES = frozenset({"resource", "rootResource"})
# date, dateTime, instant and time text: compared by FHIRPath with precision rules
_TEMPORAL = re.compile(r"^(\d{4}(-\d\d(-\d\d)?)?(T.*)?|T?\d\d:\d\d(:\d\d(\.\d+)?)?)$")
_TEMPORAL_START = frozenset("0123456789T")
_ESCAPES = {"'": "'", '"': '"', "`": "`", "\\": "\\", "/": "/", "f": "\f", "n": "\n",
            "r": "\r", "t": "\t"}  # fmt: skip


class Unsupported(Exception):
    """The expression uses a part of FHIRPath this module does not evaluate."""


class Fallback(Exception):
    """This evaluation met a value whose meaning needs fhirpathpy."""


def compile_expression(text: str) -> Evaluate:
    """`text` compiled for evaluation as `evaluate(resource, variables)`: natively when it is in
    the subset, with fhirpathpy standing by for the values the subset leaves to it. Raises
    ValueError when the text does not parse (fhirpath_syntax.py) or fhirpathpy refuses it."""
    broken = syntax_error(text)
    if broken is not None:
        raise ValueError(broken)
    try:
        slow: Evaluate = fhirpath_compile(text, _MODEL)
    except Exception as exc:  # fhirpathpy raises bare Exceptions
        raise ValueError(f"it does not compile: {exc}") from None
    native = compile_native(text)
    if native is None:
        return slow

    def evaluate(resource: Any, variables: Variables | None = None) -> list[Any]:
        try:
            return native([resource], variables or {})
        except Fallback:
            return slow(resource, variables)

    evaluate.native = True  # type: ignore[attr-defined]
    return evaluate


def is_native(evaluate: Evaluate) -> bool:
    """Whether `compile_expression` compiled it natively."""
    return getattr(evaluate, "native", False) is True


def compile_native(text: str) -> Node | None:
    """The expression as a native closure, or None when it leaves the subset."""
    parser = P(CommonTokenStream(FHIRPathLexer(InputStream(text))))
    parser.removeErrorListeners()
    try:
        return _expression(parser.expression(), root=True)
    except Unsupported:
        return None


def compile_subexpression(ctx: Any) -> Node:
    """A parsed (sub)expression (a FHIRPathParser context) as a native closure evaluated on the
    focus it is given (fhirpath_patch.py's `where()` criteria); Unsupported outside the subset."""
    return _expression(ctx)


# ---- compiling --------------------------------------------------------------------------------
def _expression(ctx: Any, root: bool = False) -> Node:
    if isinstance(ctx, P.TermExpressionContext):
        return _term(ctx.term(), root)
    if isinstance(ctx, P.InvocationExpressionContext):
        left = _expression(ctx.expression(), root)
        return _invocation(ctx.invocation(), left)
    if isinstance(ctx, P.IndexerExpressionContext):
        return _indexer(_expression(ctx.expression(0), root), _expression(ctx.expression(1)))
    binary = _BINARY.get(type(ctx))
    if binary is None:
        raise Unsupported(type(ctx).__name__)
    operator = ctx.getChild(1).getText()
    make = binary.get(operator)
    if make is None:
        raise Unsupported(operator)
    return make(_expression(ctx.expression(0), root), _expression(ctx.expression(1), root))


def _term(ctx: Any, root: bool) -> Node:
    if isinstance(ctx, P.InvocationTermContext):
        return _invocation(ctx.invocation(), None, root)
    if isinstance(ctx, P.LiteralTermContext):
        return _constant(_literal(ctx.literal()))
    if isinstance(ctx, P.ExternalConstantTermContext):
        name = ctx.externalConstant().getChild(1).getText()
        if name not in _VARIABLES:
            raise Unsupported(f"%{name}")
        return lambda focus, variables: _variable(variables, name)
    if isinstance(ctx, P.ParenthesizedTermContext):
        return _expression(ctx.expression())
    raise Unsupported(type(ctx).__name__)


def _constant(value: Collection) -> Node:
    """A node whose result is `value` whatever the focus: a literal, or operators over literals
    folded when compiled (`code in ('a' | 'b')` builds its set once)."""

    def step(focus: Collection, variables: Variables) -> Collection:
        return value

    step.constant = value  # type: ignore[attr-defined]
    return step


def _constant_of(node: Node) -> Collection | None:
    value: Collection | None = getattr(node, "constant", None)
    return value


def _variable(variables: Variables, name: str) -> Collection:
    if name not in variables:
        raise Fallback(name)  # fhirpathpy's answer: an undefined variable
    return [variables[name]]


def _literal(ctx: Any) -> Collection:
    if isinstance(ctx, P.StringLiteralContext):
        return [_unquote(ctx.getText())]
    if isinstance(ctx, P.NumberLiteralContext):
        text = ctx.getText()
        return [Decimal(text) if "." in text else int(text)]
    if isinstance(ctx, P.BooleanLiteralContext):
        return [ctx.getText() == "true"]
    if isinstance(ctx, P.NullLiteralContext):
        return []
    raise Unsupported(type(ctx).__name__)  # dates, times, quantities


def _unquote(text: str) -> str:
    body, out, i = text[1:-1], [], 0
    while i < len(body):
        char = body[i]
        if char != "\\":
            out.append(char)
            i += 1
            continue
        escaped = body[i + 1 : i + 2]
        if escaped == "u":
            out.append(chr(int(body[i + 2 : i + 6], 16)))
            i += 6
        elif escaped in _ESCAPES:
            out.append(_ESCAPES[escaped])
            i += 2
        else:
            raise Unsupported(f"escape \\{escaped}")
    return "".join(out)


def _identifier(ctx: Any) -> str:
    text: str = ctx.getText()
    if text.startswith("`"):
        return _unquote(text)
    return text


def _invocation(ctx: Any, left: Node | None, root: bool = False) -> Node:
    """An invocation applied to `left`'s result (None: to the focus itself, as the first term
    of an expression)."""
    if isinstance(ctx, P.MemberInvocationContext):
        name = _identifier(ctx.identifier())
        if name[:1].isupper():  # a type name: only as the first step, naming the resource
            if left is None and root:
                return lambda focus, variables: _typed_root(focus, name)
            raise Unsupported(f"the type name {name} inside an expression")
        step = _navigate(name)
    elif isinstance(ctx, P.FunctionInvocationContext):
        step = _function(ctx.functn())
    elif isinstance(ctx, P.ThisInvocationContext):

        def step(focus: Collection, variables: Variables) -> Collection:
            return focus

    else:
        raise Unsupported(type(ctx).__name__)  # $index, $total
    if left is None:
        return step
    inner = left
    return lambda focus, variables: step(inner(focus, variables), variables)


def _typed_root(focus: Collection, name: str) -> Collection:
    """`Goal.x` evaluated on a Goal: the resource type names the resource itself."""
    found = [item for item in focus if isinstance(item, dict) and item.get("resourceType") == name]
    if len(found) != len(focus):
        raise Fallback(name)
    return found


def _navigate(name: str) -> Node:
    shadow = "_" + name

    def step(focus: Collection, variables: Variables) -> Collection:
        out: Collection = []
        for item in focus:
            if not isinstance(item, dict):
                continue  # a primitive: its id and extensions sit beside it, seen below
            if shadow in item:
                raise Fallback(shadow)  # a primitive with extensions: a typed node
            if name in item:
                value = item[name]
            else:
                value = _choice(item, name)
                if value is None:
                    continue
            if isinstance(value, list):
                out.extend(value)
            else:
                out.append(value)
        return out

    return step


def _choice(item: dict[str, Any], name: str) -> Any:
    """The value of choice element `name` (`value` -> `valueCoding`), or None."""
    found = None
    for key, value in item.items():
        if key.startswith(name) and key[len(name) :] in CHOICE_TYPE_SUFFIXES:
            if found is not None or "_" + key in item:
                raise Fallback(key)
            found = value
    return found


def _indexer(left: Node, index: Node) -> Node:
    def step(focus: Collection, variables: Variables) -> Collection:
        position = _single(index(focus, variables))
        if position is None:
            return []
        if isinstance(position, bool) or not isinstance(position, int):
            raise Fallback("index")
        items = left(focus, variables)
        return [items[position]] if 0 <= position < len(items) else []

    return step


# ---- functions --------------------------------------------------------------------------------
def _function(ctx: Any) -> Node:
    name = _identifier(ctx.identifier())
    params = list(ctx.paramList().expression()) if ctx.paramList() is not None else []
    make = _FUNCTIONS.get((name, len(params)))
    if make is None:
        raise Unsupported(f"{name}()")
    return make(*params)


def _criteria(param: Any) -> Node:
    return _expression(param)


def _where(param: Any) -> Node:
    criteria = _criteria(param)
    return lambda focus, v: [x for x in focus if _true(criteria([x], v))]


def _select(param: Any) -> Node:
    projection = _criteria(param)
    return lambda focus, v: [y for x in focus for y in projection([x], v)]


def _all(param: Any) -> Node:
    criteria = _criteria(param)
    return lambda focus, v: [all(_true(criteria([x], v)) for x in focus)]


def _exists_where(param: Any) -> Node:
    criteria = _criteria(param)
    return lambda focus, v: [any(_true(criteria([x], v)) for x in focus)]


def _not(focus: Collection, variables: Variables) -> Collection:
    value = _boolean(focus)
    return [] if value is None else [not value]


def _is_distinct(focus: Collection, variables: Variables) -> Collection:
    keys = [_key(x) for x in focus]
    return [len(set(keys)) == len(keys)]


def _string_test(test: Callable[[str, str], bool]) -> Callable[[Any], Node]:
    def make(param: Any) -> Node:
        argument = _expression(param)
        if not (isinstance(param, P.TermExpressionContext) and
                isinstance(param.term(), P.LiteralTermContext)):  # fmt: skip
            # fhirpathpy evaluates other arguments against the function's input, FHIRPath
            # against the expression's context: leave them to it
            raise Unsupported("a string function of a non-literal")
        literal = argument([], {})
        if len(literal) != 1 or not isinstance(literal[0], str):
            raise Unsupported("a string function of a non-string")
        text = literal[0]

        def step(focus: Collection, variables: Variables) -> Collection:
            value = _single(focus)
            if value is None:
                return []
            if not isinstance(value, str):
                raise Fallback("string function")
            return [test(value, text)]

        return step

    return make


_FUNCTIONS: dict[tuple[str, int], Callable[..., Node]] = {
    ("where", 1): _where,
    ("select", 1): _select,
    ("all", 1): _all,
    ("exists", 1): _exists_where,
    ("exists", 0): lambda: lambda focus, v: [bool(focus)],
    ("empty", 0): lambda: lambda focus, v: [not focus],
    ("count", 0): lambda: lambda focus, v: [len(focus)],
    ("not", 0): lambda: _not,
    ("first", 0): lambda: lambda focus, v: focus[:1],
    ("last", 0): lambda: lambda focus, v: focus[-1:],
    ("isDistinct", 0): lambda: _is_distinct,
    ("startsWith", 1): _string_test(str.startswith),
    ("endsWith", 1): _string_test(str.endswith),
    ("contains", 1): _string_test(lambda value, text: text in value),
}


# ---- values -----------------------------------------------------------------------------------
def _single(collection: Collection) -> Any:
    """The one item of a collection (None when empty); several: fhirpathpy's matter."""
    if not collection:
        return None
    if len(collection) > 1:
        raise Fallback("several items where one is expected")
    return collection[0]


def _boolean(collection: Collection) -> bool | None:
    value = _single(collection)
    if value is not None and not isinstance(value, bool):
        raise Fallback("a non-boolean where a boolean is expected")
    return value


def _true(collection: Collection) -> bool:
    """A criteria's result taken as true (where, all, exists): only `true` is."""
    return _boolean(collection) is True


def _scalar(value: Any) -> Any:
    """A primitive value compared as FHIRPath compares it natively, or Fallback."""
    if isinstance(value, float):
        return Decimal(str(value))
    if isinstance(value, dict | list):
        raise Fallback("a complex value compared")
    if isinstance(value, str) and value[:1] in _TEMPORAL_START and _TEMPORAL.match(value):
        raise Fallback("a date or time compared")
    return value


def _equal(a: Any, b: Any) -> bool:
    a, b = _scalar(a), _scalar(b)
    if isinstance(a, bool) != isinstance(b, bool):
        if isinstance(a, int | Decimal) or isinstance(b, int | Decimal):
            raise Fallback("a boolean against a number")
        return False
    return bool(a == b)


def _key(value: Any) -> Any:
    """A hashable key equal for FHIRPath-equal primitives (isDistinct, union)."""
    value = _scalar(value)
    if isinstance(value, bool):
        return ("boolean", value)
    if isinstance(value, int | Decimal):
        return ("number", Decimal(value).normalize())
    return ("string", value) if isinstance(value, str) else (type(value).__name__, value)


def _equality(negate: bool) -> Callable[[Node, Node], Node]:
    def make(left: Node, right: Node) -> Node:
        def step(focus: Collection, variables: Variables) -> Collection:
            a, b = left(focus, variables), right(focus, variables)
            if not a or not b:
                return []
            if len(a) != 1 or len(b) != 1:
                raise Fallback("several items compared")
            return [_equal(a[0], b[0]) != negate]

        return step

    return make


def _order(test: Callable[[Any, Any], bool]) -> Callable[[Node, Node], Node]:
    def make(left: Node, right: Node) -> Node:
        def step(focus: Collection, variables: Variables) -> Collection:
            a, b = _single(left(focus, variables)), _single(right(focus, variables))
            if a is None or b is None:
                return []
            a, b = _scalar(a), _scalar(b)
            numbers = all(isinstance(x, int | Decimal) and not isinstance(x, bool) for x in (a, b))
            if not numbers and not (isinstance(a, str) and isinstance(b, str)):
                raise Fallback("values ordered that are not both numbers or strings")
            return [test(a, b)]

        return step

    return make


def _membership(reverse: bool) -> Callable[[Node, Node], Node]:
    def make(left: Node, right: Node) -> Node:
        fixed = _constant_of(left if reverse else right)
        if fixed:
            try:
                keys = frozenset(_key(value) for value in fixed)
            except Fallback:
                pass
            else:
                return _member_of(right if reverse else left, keys)

        def step(focus: Collection, variables: Variables) -> Collection:
            item, within = left(focus, variables), right(focus, variables)
            if reverse:
                item, within = within, item
            value = _single(item)
            if value is None or not within:
                if value is None and within:
                    return []
                raise Fallback("membership of or in nothing")
            return [any(_equal(value, other) for other in within)]

        return step

    return make


def _member_of(item: Node, keys: frozenset[Any]) -> Node:
    """`item in (literals)`: the literals' keys made once."""
    kinds = {kind for kind, _ in keys}

    def step(focus: Collection, variables: Variables) -> Collection:
        value = _single(item(focus, variables))
        if value is None:
            return []
        key = _key(value)
        if {key[0], *kinds} >= {"boolean", "number"}:
            raise Fallback("a boolean against a number")  # as _equal
        return [key in keys]

    return step


def _union(left: Node, right: Node) -> Node:
    def step(focus: Collection, variables: Variables) -> Collection:
        out: Collection = []
        seen: set[Any] = set()
        for value in (*left(focus, variables), *right(focus, variables)):
            key = _key(value)
            if key not in seen:
                seen.add(key)
                out.append(value)
        return out

    a, b = _constant_of(left), _constant_of(right)
    if a is not None and b is not None:
        try:
            return _constant(step([], {}))
        except Fallback:
            pass
    return step


def _logic(
    combine: Callable[[bool | None, bool | None], bool | None],
) -> Callable[[Node, Node], Node]:
    def make(left: Node, right: Node) -> Node:
        def step(focus: Collection, variables: Variables) -> Collection:
            result = combine(_boolean(left(focus, variables)), _boolean(right(focus, variables)))
            return [] if result is None else [result]

        return step

    return make


def _and(a: bool | None, b: bool | None) -> bool | None:
    if a is False or b is False:
        return False
    return True if a is True and b is True else None


def _or(a: bool | None, b: bool | None) -> bool | None:
    if a is True or b is True:
        return True
    return False if a is False and b is False else None


def _xor(a: bool | None, b: bool | None) -> bool | None:
    return None if a is None or b is None else a != b


def _implies(a: bool | None, b: bool | None) -> bool | None:
    if a is False or b is True:
        return True
    return False if a is True and b is False else None


_BINARY: dict[type, dict[str, Callable[[Node, Node], Node]]] = {
    P.EqualityExpressionContext: {"=": _equality(False), "!=": _equality(True)},
    P.InequalityExpressionContext: {
        "<": _order(lambda a, b: a < b),
        "<=": _order(lambda a, b: a <= b),
        ">": _order(lambda a, b: a > b),
        ">=": _order(lambda a, b: a >= b),
    },
    P.MembershipExpressionContext: {"in": _membership(False), "contains": _membership(True)},
    P.UnionExpressionContext: {"|": _union},
    P.AndExpressionContext: {"and": _logic(_and)},
    P.OrExpressionContext: {"or": _logic(_or), "xor": _logic(_xor)},
    P.ImpliesExpressionContext: {"implies": _logic(_implies)},
}
