"""Compile FHIR search parameters into a MongoDB filter: https://hl7.org/fhir/R4/search.html

Values only ever become string operands of equality / `$in` / range conditions on fields this
module names, so no search input can reach MongoDB as an operator or a field name.
Comma-separated values are OR (`$in`); a repeated parameter is AND (`$and`).

Every search is bounded before it reaches the database (SearchLimits, from the settings): the
parameters per request, the values per parameter, the length of each value and the `_sort` keys.
20,000 OR values cost 36 s of database CPU before these limits; R4 sets none (search.html#errors:
a server may refuse what it will not process, with a 4xx and an OperationOutcome).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import Any

import orjson

from fhirgoal.core import fields
from fhirgoal.core.errors import FhirError
from fhirgoal.fhir.search import conditions
from fhirgoal.fhir.search.dates import instant_filter, split_prefix
from fhirgoal.fhir.search.registry import SORTABLE_TYPES, SearchParam, TypeParams

# Result parameters (search.html#return) understood today.
RESULT_PARAMS = {
    "_count",
    "_cursor",
    "_format",
    "_pretty",
    "_summary",
    "_total",
    "_totalMethod",
    "_sort",
    "_elements",
}
TOTAL_METHODS = {"count": "accurate", "estimate": "estimate", "none": "none"}
INCLUDE_PARAMS = {"_include", "_include:iterate", "_revinclude", "_revinclude:iterate"}
# Where each parameter type keeps its per-document sort key (registry.sort_keys).
SORT_FIELD_PREFIX = "srt."

_BUILDERS = {
    "token": conditions.token,
    "uri": conditions.uri,
    "string": conditions.string,
    "date": conditions.date,
    "number": conditions.number,
    "quantity": conditions.quantity,
    "composite": conditions.composite,
}


@dataclass(frozen=True)
class SearchLimits:
    """The settings' `max_search_*` / `max_sort_keys` (config.py), defaults included."""

    params: int = 50
    values: int = 100
    value_length: int = 1024
    sort_keys: int = 5


# The server's own searches (after-write rules, caseloads) are sized by its code, not by a client:
# the limits an operator sets for clients must not break them.
SERVER_SEARCH_LIMITS = SearchLimits(
    params=10_000, values=100_000, value_length=100_000, sort_keys=20
)


@dataclass(frozen=True)
class Deferred:
    """A condition that needs another search first (search.html#chaining, #has).

    chain: `param[:Type].rest=value`, resolved to the ids of `Type` matching `rest=value`.
    has:   `_has:Type:param:rest=value`, resolved to the ids referenced by `param` of the `Type`
           resources matching `rest=value`.
    valueset: `param:in=url` / `param:not-in=url` (rest = the modifier), resolved to the codes of
           a ValueSet the server holds.
    """

    kind: str  # "chain" | "has" | "valueset"
    param: str
    target_types: tuple[str, ...]
    rest: str
    value: str


@dataclass(frozen=True)
class IncludeSpec:
    """`_include` / `_revinclude` = Type:param[:target] (search.html#include)."""

    source_type: str
    param: str
    target_type: str | None
    iterate: bool


@dataclass
class Cursor:
    """Where a page starts: after (or before) the row with these sort values and id."""

    direction: str  # "a" after, "b" before
    values: list[Any]
    id: str


@dataclass
class CompiledSearch:
    filter: dict[str, Any]
    count: int
    cursor: Cursor | None = None
    warnings: list[str] = field(default_factory=list)
    # _total: none | estimate | accurate, or None when not asked (engine.py: the total rule)
    total: str | None = None
    summary_count: bool = False  # _summary=count: the total only
    summary: str | None = None  # _summary=true | text | data (false: the whole resource)
    elements: list[str] | None = None  # _elements
    used: list[tuple[str, str]] = field(default_factory=list)  # the parameters applied, for `self`
    sort: list[tuple[str, int]] = field(default_factory=list)  # (document field, 1 | -1)
    deferred: list[Deferred] = field(default_factory=list)
    includes: list[IncludeSpec] = field(default_factory=list)
    revincludes: list[IncludeSpec] = field(default_factory=list)


def encode_cursor(cursor: Cursor) -> str:
    raw = orjson.dumps([cursor.direction, cursor.values, cursor.id])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(token: str) -> Cursor:
    try:
        direction, values, rid = orjson.loads(
            base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        )
        well_formed = direction in ("a", "b") and isinstance(rid, str) and isinstance(values, list)
        if well_formed and all(v is None or isinstance(v, str) for v in values):
            return Cursor(direction, values, rid)
    except (ValueError, binascii.Error, TypeError):
        pass
    raise FhirError("bad-request", "invalid _cursor: use the links the server returned", "_cursor")


def _split_or(value: str) -> list[str]:
    """Split on commas not escaped with a backslash (search.html#escaping)."""
    parts, current, escaped = [], [], False
    for ch in value:
        if escaped:
            current.append(ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == ",":
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    parts.append("".join(current))
    if any(p == "" for p in parts):
        raise FhirError("bad-request", f"empty value in '{value}'")
    return parts


class SearchCompiler:
    def __init__(
        self,
        table: TypeParams,
        max_count: int,
        default_count: int,
        limits: SearchLimits = SearchLimits(),
    ) -> None:
        self.table = table
        self.max_count = max_count
        self.default_count = default_count
        self.limits = limits

    def check_limits(self, params: list[tuple[str, str]]) -> None:
        """400 for a search past the limits, before any of it is compiled or run."""
        limits = self.limits
        if len(params) > limits.params:
            raise FhirError("bad-request", f"a search may have at most {limits.params} parameters")
        longest = limits.value_length
        for name, value in params:
            where = name[:64]
            if len(name) > longest:
                raise FhirError(
                    "bad-request", f"a search parameter name may have at most {longest} characters"
                )
            if name == "_cursor":  # the server's own token, as long as the sort values it holds
                continue
            # counted in C before anything splits it (an escaped comma, `\,`, separates nothing)
            if value.count(",") - value.count("\\,") >= limits.values:
                raise FhirError(
                    "bad-request",
                    f"'{where}' has more than {limits.values} comma-separated values",
                    where,
                )
            if len(value) > longest and max(map(len, value.split(","))) > longest:
                raise FhirError(
                    "bad-request",
                    f"a value of '{where}' is longer than {longest} characters",
                    where,
                )

    def compile(
        self, params: list[tuple[str, str]], base_url: str, lenient: bool = False
    ) -> CompiledSearch:
        self.check_limits(params)
        clauses: list[dict[str, Any]] = []
        result = CompiledSearch(filter={}, count=self.default_count)
        for name, value in params:
            try:
                clause = self._parameter(name, value, base_url, result)
            except FhirError as error:
                if lenient and error.category == "not-supported":
                    result.warnings.append(error.issues[0].diagnostics)
                    continue
                raise
            if clause is not None:
                clauses.append(clause)
                result.used.append((name, value))
        if clauses:
            result.filter = clauses[0] if len(clauses) == 1 else {"$and": clauses}
        return result

    def _parameter(
        self, name: str, value: str, base_url: str, result: CompiledSearch
    ) -> dict[str, Any] | None:
        if name in RESULT_PARAMS:
            self._result_parameter(name, value, result)
            return None
        if name in INCLUDE_PARAMS:
            self._include_parameter(name, value, result)
            return None
        if name.startswith("_has:"):
            result.deferred.append(self._has(name, value))
            return None
        if "." in name:  # parameter codes have no dots: this is a chain
            head, _, rest = name.partition(".")
            result.deferred.append(self._chain(head, rest, value))
            return None
        code, _, modifier = name.partition(":")
        param = self.table.params.get(code)
        if param is None:
            raise FhirError(
                "not-supported",
                f"unknown search parameter '{code}' for {self.table.resource_type}",
                name,
            )
        if not param.supported:
            raise FhirError(
                "not-supported",
                f"search parameter '{code}' ({param.type}) is not supported yet",
                name,
            )
        values = _split_or(value)
        if modifier in ("in", "not-in") and param.type == "token":
            result.deferred.append(Deferred("valueset", code, (), modifier, value))
            return None
        if code == "_id":
            if modifier:
                raise FhirError(
                    "not-supported", f"modifier ':{modifier}' is not supported on '_id'", name
                )
            return {"_id": {"$in": values}}
        if code == "_lastUpdated":
            if modifier:
                raise FhirError(
                    "not-supported",
                    f"modifier ':{modifier}' is not supported on '_lastUpdated'",
                    name,
                )
            return conditions.any_of(
                [{fields.LAST_UPDATED: instant_filter(*split_prefix(v))} for v in values]
            )
        return self.condition(param, modifier, values, base_url)

    def condition(
        self, param: SearchParam, modifier: str, values: list[str], base_url: str
    ) -> dict[str, Any]:
        """The condition of one parameter's values. A narrowing (registry.py `references_of`:
        `patient` = `subject` to a Patient) stores no reference keys of its own: it is answered
        from the other parameter's; a union (`combo-code`) from its parts' (unions.py)."""
        if modifier == "missing":
            missing = conditions.missing(param, values)  # `true`: its `miss` entry, kept
            if param.references_of is None or values == ["true"]:
                return self.table.spread(param, missing)
            # a reference of the other parameter drives; `miss` says whether one is to the type
            parent = self.table.params[param.references_of[0]]
            present = conditions.missing(parent, values)
            return {"$and": [present, {fields.MISSING: {"$ne": param.code}}]}
        if param.type == "reference":
            return conditions.reference(
                param,
                modifier,
                values,
                base_url,
                lambda target: self.table.reference_key(param.code, target),
            )
        builder = _BUILDERS[param.type]
        return self.table.spread(param, builder(param, modifier, values))

    def _result_parameter(self, name: str, value: str, result: CompiledSearch) -> None:
        if name == "_count":
            if not value.isdigit():
                raise FhirError("bad-request", "_count must be a non-negative integer", "_count")
            result.count = min(int(value), self.max_count)
        elif name == "_cursor":
            result.cursor = _decode_cursor(value)
        elif name == "_format" and value not in (
            "json",
            "application/json",
            "application/fhir+json",
        ):
            raise FhirError("not-acceptable", f"_format={value} is not supported; use json")
        elif name == "_total":
            if value not in ("none", "estimate", "accurate"):
                raise FhirError(
                    "bad-request", "_total must be none, estimate or accurate", "_total"
                )
            result.total = value
            result.used.append((name, value))
        elif name == "_totalMethod":
            # Aidbox's spelling, which fhirpy's `.count()` sends (`_count=0&_totalMethod=count`)
            if value not in TOTAL_METHODS:
                raise FhirError(
                    "bad-request", "_totalMethod must be count, estimate or none", "_totalMethod"
                )
            result.total = TOTAL_METHODS[value]
            result.used.append(("_total", result.total))
        elif name == "_summary":
            if value not in ("true", "text", "data", "count", "false"):
                raise FhirError(
                    "bad-request", "_summary must be true, text, data, count or false", "_summary"
                )
            result.summary_count = value == "count"
            result.summary = value if value in ("true", "text", "data") else None
            result.used.append((name, value))
        elif name == "_elements":
            result.elements = [e.strip() for e in value.split(",") if e.strip()]
            result.used.append((name, value))

        elif name == "_sort":
            keys = _split_or(value)
            if len(keys) > self.limits.sort_keys:
                raise FhirError(
                    "bad-request", f"_sort may name at most {self.limits.sort_keys} keys", "_sort"
                )
            result.sort = [self._sort_key(key) for key in keys]
            result.used.append((name, value))

    def _sort_key(self, key: str) -> tuple[str, int]:
        direction = -1 if key.startswith("-") else 1
        code = key.lstrip("-")
        if code == "_id":
            return "_id", direction
        if code == "_lastUpdated":
            return fields.LAST_UPDATED, direction
        param = self.table.params.get(code)
        if param is None or not param.supported or param.type not in SORTABLE_TYPES:
            raise FhirError(
                "not-supported", f"cannot sort {self.table.resource_type} by '{code}'", "_sort"
            )
        return SORT_FIELD_PREFIX + code, direction

    def _reference_param(self, code: str, name: str) -> SearchParam:
        param = self.table.params.get(code)
        if param is None or param.type != "reference" or not param.supported:
            raise FhirError(
                "not-supported",
                f"'{code}' is not a reference parameter of {self.table.resource_type}",
                name,
            )
        return param

    def _chain(self, head: str, rest: str, value: str) -> Deferred:
        code, _, type_modifier = head.partition(":")
        param = self._reference_param(code, head)
        if type_modifier and type_modifier not in param.targets:
            raise FhirError("bad-request", f"'{code}' cannot refer to {type_modifier}", head)
        targets = (type_modifier,) if type_modifier else param.targets
        return Deferred("chain", code, tuple(targets), rest, value)

    def _has(self, name: str, value: str) -> Deferred:
        parts = name.split(":", 3)
        if len(parts) != 4 or not all(parts[1:]):
            raise FhirError(
                "bad-request", "use _has:Type:reference-parameter:parameter=value", name
            )
        _, source_type, code, rest = parts
        return Deferred("has", code, (source_type,), rest, value)

    def _include_parameter(self, name: str, value: str, result: CompiledSearch) -> None:
        parts = value.split(":")
        if len(parts) not in (2, 3) or not all(parts):
            raise FhirError("bad-request", f"{name} takes Type:parameter[:targetType]", name)
        spec = IncludeSpec(
            parts[0], parts[1], parts[2] if len(parts) == 3 else None, name.endswith(":iterate")
        )
        (result.revincludes if name.startswith("_revinclude") else result.includes).append(spec)
        result.used.append((name, value))
