"""Profile rules: the fourth validation layer, from the StructureDefinitions in profiles/.

https://hl7.org/fhir/R4/profiling.html and https://hl7.org/fhir/R4/validation.html#profile .
The server enforces the *differential* of its own constraint profiles, the subset of
ElementDefinition that its profiles use:

- `min` / `max` per occurrence of the parent element,
- `type` on a choice element (`value[x]` restricted to some types),
- `fixed[x]` (equal) and `pattern[x]` (the instance contains the pattern),
- `minValue[x]` / `maxValue[x]` (on a Quantity: its `value`),
- `binding` of strength `required` to a ValueSet held in profiles/ (enumerated `compose`, or
  every concept of a CodeSystem held there),
- `constraint`s (FHIRPath, severity error), evaluated for every occurrence of the element.

Slicing is not interpreted: where a profile needs a rule about one extension or coding, it says
so with a constraint, which any FHIR validator also enforces.

Which profiles apply: every profile a resource claims in `meta.profile` that the server holds
(unknown profiles are ignored, as https://hl7.org/fhir/R4/validation.html#profile allows), plus
every profile whose `profile-applies-to` extension (a FHIRPath expression, evaluated natively for
the usual shapes: selectors.py) is true for the resource. That is how a GAS rating sent by an EHR
that knows nothing of our profiles is still checked against them, without code per profile.

How a broken rule counts depends on why the profile applies. A resource that *claims* the profile
is held to it: its issues are errors and refuse the write. For one that merely *looks like* what
the profile describes, the profile says (extension `profile-unclaimed-severity`): the GAS goal
and rating profiles say `warning`, because an HL7 PCO goal or rating from an EHR conforms to PCO
STU1, not to our stricter expectations; the write goes ahead and the warnings are returned in
the response's OperationOutcome (`Prefer: return=OperationOutcome`, `$validate`). The others
(session ratings, PHQ-9/GAD-7 totals: ranges no source may break) keep `error`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import structlog

from fhirgoal.core.errors import Issue
from fhirgoal.fhir.fhirpath_native import compile_expression
from fhirgoal.fhir.search.paths import CHOICE_TYPE_SUFFIXES
from fhirgoal.fhir.selectors import Selector, compile_selector

log = structlog.get_logger(__name__)

APPLIES_TO = "https://fhirgoal.org/fhir/StructureDefinition/profile-applies-to"
UNCLAIMED_SEVERITY = "https://fhirgoal.org/fhir/StructureDefinition/profile-unclaimed-severity"
_VARIABLES = ("resource", "rootResource")

Evaluate = Callable[..., list[Any]]


def _compile(expression: str, where: str) -> Evaluate:
    try:
        return compile_expression(expression)
    except ValueError as exc:
        # A built-in profile whose rule does not parse is a packaging bug: fail at start-up.
        raise ValueError(f"{where}: FHIRPath {expression!r}: {exc}") from None


@dataclass(frozen=True)
class ElementRule:
    path: str  # as in the profile: "Goal.target.measure", "Observation.value[x]"
    steps: tuple[str, ...]  # the path below the resource
    min: int
    max: int | None  # None: unbounded or not constrained
    types: tuple[str, ...]  # allowed type suffixes of a choice element; () = not constrained
    fixed: Any
    pattern: Any
    value_set: str | None  # required binding
    min_value: Any = None  # minValue[x] / maxValue[x]: numbers, or a Quantity's value
    max_value: Any = None


@dataclass(frozen=True)
class Constraint:
    key: str
    human: str
    path: str
    evaluate: Evaluate


@dataclass(frozen=True)
class Profile:
    url: str
    name: str
    type: str
    applies_to: Selector | None
    elements: tuple[ElementRule, ...]
    constraints: tuple[Constraint, ...]
    unclaimed_severity: str = "error"  # what a broken rule is when applied by applies-to only


def _typed_value(element: dict[str, Any], prefix: str) -> Any:
    for key, value in element.items():
        if key.startswith(prefix) and key[len(prefix) :] in CHOICE_TYPE_SUFFIXES:
            return value
    return None


def parse_profile(definition: dict[str, Any]) -> Profile:
    url, rt = definition["url"], definition["type"]
    applies = next((e for e in definition.get("extension", []) if e.get("url") == APPLIES_TO), None)
    applies_to = compile_selector(applies["valueString"]) if applies else None
    elements, constraints = [], []
    for element in definition.get("differential", {}).get("element", []):
        path: str = element["path"]
        steps = tuple(path.split(".")[1:])
        max_text = element.get("max")
        rule = ElementRule(
            path=path,
            steps=steps,
            min=int(element.get("min", 0)),
            max=None if max_text in (None, "*") else int(max_text),
            types=tuple(_type_suffix(t["code"]) for t in element.get("type", [])),
            fixed=_typed_value(element, "fixed"),
            pattern=_typed_value(element, "pattern"),
            value_set=(element.get("binding") or {}).get("valueSet")
            if (element.get("binding") or {}).get("strength") == "required"
            else None,
            min_value=_bound(_typed_value(element, "minValue")),
            max_value=_bound(_typed_value(element, "maxValue")),
        )
        if steps and (rule.min or rule.max is not None or rule.types or rule.fixed is not None
                      or rule.pattern is not None or rule.value_set
                      or rule.min_value is not None or rule.max_value is not None):  # fmt: skip
            elements.append(rule)
        for constraint in element.get("constraint", []):
            if constraint.get("severity") != "error":
                continue
            relative = ".".join(steps)
            text = constraint["expression"]
            text = f"{relative}.all({text})" if relative else text
            constraints.append(
                Constraint(
                    constraint["key"],
                    constraint.get("human", ""),
                    path,
                    _compile(text, f"{url} {constraint['key']}"),
                )
            )
    severity = next((e.get("valueCode") for e in definition.get("extension", [])
                     if e.get("url") == UNCLAIMED_SEVERITY), "error")  # fmt: skip
    return Profile(url, definition.get("name", url), rt, applies_to, tuple(elements),
                   tuple(constraints), severity)  # fmt: skip


def _bound(value: Any) -> Any:
    return value.get("value") if isinstance(value, dict) else value


def _number(value: Any) -> Any:
    """The number an element holds: itself, or a Quantity's value; None when there is none."""
    if isinstance(value, dict):
        value = value.get("value")
    return value if isinstance(value, int | Decimal) and not isinstance(value, bool) else None


def _type_suffix(code: str) -> str:
    return code[0].upper() + code[1:]


def _children(node: Any, step: str) -> list[Any]:
    """The values of `step` under one node, arrays flattened; `value[x]` matches any choice."""
    if not isinstance(node, dict):
        return []
    if step.endswith("[x]"):
        base = step[:-3]
        found = [
            v
            for k, v in node.items()
            if k.startswith(base) and k[len(base) :] in CHOICE_TYPE_SUFFIXES
        ]
    else:
        found = [node[step]] if step in node else []
    out: list[Any] = []
    for value in found:
        out.extend(value if isinstance(value, list) else [value])
    return out


def _choice_types(node: Any, step: str) -> list[str]:
    base = step[:-3]
    return [
        k[len(base) :]
        for k in node
        if k.startswith(base) and k[len(base) :] in CHOICE_TYPE_SUFFIXES
    ]


def _nodes(resource: dict[str, Any], steps: tuple[str, ...]) -> list[Any]:
    nodes: list[Any] = [resource]
    for step in steps:
        nodes = [child for node in nodes for child in _children(node, step)]
    return nodes


def contains(pattern: Any, value: Any) -> bool:
    """FHIR pattern semantics: every element of the pattern appears in the value."""
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(
            contains(p, value.get(k)) for k, p in pattern.items()
        )
    if isinstance(pattern, list):
        items = value if isinstance(value, list) else [value]
        return all(any(contains(p, item) for item in items) for p in pattern)
    return bool(pattern == value)


def _codings(value: Any) -> list[tuple[str | None, str]]:
    if isinstance(value, str):
        return [(None, value)]
    if not isinstance(value, dict):
        return []
    if "coding" in value:
        return [(c.get("system"), c.get("code", "")) for c in value.get("coding", [])]
    if "code" in value:
        return [(value.get("system"), str(value["code"]))]
    return []


class ProfileSet:
    """The profiles, ValueSets and CodeSystems the server holds, ready to check resources."""

    def __init__(self, resources: Iterable[dict[str, Any]]) -> None:
        resources = list(resources)
        self.code_systems = {
            r["url"]: r for r in resources if r.get("resourceType") == "CodeSystem"
        }
        self.value_sets = {r["url"]: r for r in resources if r.get("resourceType") == "ValueSet"}
        self.by_url: dict[str, Profile] = {}
        self.by_type: dict[str, list[Profile]] = {}
        for r in resources:
            if (
                r.get("resourceType") == "StructureDefinition"
                and r.get("derivation") == "constraint"
            ):
                profile = parse_profile(r)
                self.by_url[profile.url] = profile
                self.by_type.setdefault(profile.type, []).append(profile)
        self._members: dict[str, frozenset[tuple[str | None, str]]] = {}
        for profile in self.by_url.values():
            for rule in profile.elements:
                if rule.value_set and rule.value_set not in self.value_sets:
                    raise ValueError(f"{profile.url}: ValueSet {rule.value_set} is not held")

    def members(self, url: str) -> frozenset[tuple[str | None, str]]:
        found = self._members.get(url)
        if found is None:
            found = self._members[url] = frozenset(self._expand(self.value_sets[url]))
        return found

    def _expand(self, value_set: dict[str, Any]) -> set[tuple[str | None, str]]:
        codes: set[tuple[str | None, str]] = set()
        for include in value_set.get("compose", {}).get("include", []):
            system = include.get("system")
            concepts = include.get("concept")
            if concepts is None and system in self.code_systems:
                concepts = _all_concepts(self.code_systems[system].get("concept", []))
            for concept in concepts or []:
                codes.add((system, concept["code"]))
        for entry in value_set.get("expansion", {}).get("contains", []):
            codes.add((entry.get("system"), entry["code"]))
        return codes

    def applicable(self, resource: dict[str, Any]) -> list[Profile]:
        rt = resource["resourceType"]
        claimed = set((resource.get("meta") or {}).get("profile") or [])
        chosen: list[Profile] = [self.by_url[u] for u in sorted(claimed) if u in self.by_url]
        for profile in self.by_type.get(rt, []):
            if profile in chosen or profile.applies_to is None:
                continue
            if profile.applies_to(resource):
                chosen.append(profile)
        return chosen

    def check(self, resource: dict[str, Any], extra: Iterable[str] = ()) -> list[Issue]:
        """Every broken rule of the profiles that apply: errors for the profiles the resource
        claims (and the `extra` ones a caller names, as `$validate?profile=` does); for those
        that apply only by their `profile-applies-to` expression, whatever the profile's
        `profile-unclaimed-severity` says (default error)."""
        claimed = set((resource.get("meta") or {}).get("profile") or []) | set(extra)
        chosen = self.applicable(resource)
        chosen += [self.by_url[u] for u in sorted(extra) if u in self.by_url and
                   self.by_url[u] not in chosen]  # fmt: skip
        issues: list[Issue] = []
        for profile in chosen:
            found = self._profile_issues(profile, resource)
            if profile.url not in claimed and profile.unclaimed_severity == "warning":
                found = [_as_warning(issue, profile) for issue in found]
            issues += found
        return issues

    def _profile_issues(self, profile: Profile, resource: dict[str, Any]) -> list[Issue]:
        issues: list[Issue] = []
        if profile.type != resource["resourceType"]:
            return [Issue(f"profile {profile.url} is for {profile.type}", "Resource.meta.profile")]
        for rule in profile.elements:
            issues += self._check_element(profile, rule, resource)
        for constraint in profile.constraints:
            try:
                result = constraint.evaluate(resource, _variables(resource))
            except Exception as exc:
                issues.append(
                    Issue(
                        f"{profile.name} {constraint.key} could not be evaluated: {exc}",
                        constraint.path,
                        "invariant",
                    )
                )
                continue
            if result == [False]:
                issues.append(
                    Issue(
                        f"{profile.name} {constraint.key}: {constraint.human}",
                        constraint.path,
                        "invariant",
                    )
                )
        return issues

    def _check_element(
        self, profile: Profile, rule: ElementRule, resource: dict[str, Any]
    ) -> list[Issue]:
        issues = []
        name = profile.name
        for parent in _nodes(resource, rule.steps[:-1]):
            values = _children(parent, rule.steps[-1])
            if len(values) < rule.min:
                issues.append(
                    Issue(
                        f"{name}: {rule.path} is required (min {rule.min})", rule.path, "required"
                    )
                )
            if rule.max is not None and len(values) > rule.max:
                issues.append(
                    Issue(f"{name}: {rule.path} allows at most {rule.max}", rule.path, "structure")
                )
            if rule.types and rule.steps[-1].endswith("[x]") and isinstance(parent, dict):
                for suffix in _choice_types(parent, rule.steps[-1]):
                    if suffix not in rule.types:
                        issues.append(
                            Issue(
                                f"{name}: {rule.path} must be one of "
                                f"{', '.join(rule.types)}, not {suffix}",
                                rule.path,
                                "value",
                            )
                        )
            for value in values:
                if rule.fixed is not None and value != rule.fixed:
                    issues.append(
                        Issue(f"{name}: {rule.path} must be {rule.fixed!r}", rule.path, "value")
                    )
                if rule.pattern is not None and not contains(rule.pattern, value):
                    # A pattern binds every occurrence of the element (profiling.html#slicing:
                    # without slicing, each repetition must match it).
                    issues.append(
                        Issue(
                            f"{name}: every {rule.path} must include {_describe(rule.pattern)}; "
                            f"this one is {_describe(value)}",
                            rule.path,
                            "value",
                        )
                    )
                number = _number(value)
                if number is not None and (
                    (rule.min_value is not None and number < rule.min_value)
                    or (rule.max_value is not None and number > rule.max_value)
                ):
                    issues.append(
                        Issue(
                            f"{name}: {rule.path} must be from {rule.min_value} to "
                            f"{rule.max_value}, not {number}",
                            rule.path,
                            "value",
                        )
                    )
                if rule.value_set and not self._in_value_set(rule.value_set, value):
                    issues.append(
                        Issue(
                            f"{name}: {rule.path} must come from {rule.value_set}",
                            rule.path,
                            "code-invalid",
                        )
                    )
        return issues

    def _in_value_set(self, url: str, value: Any) -> bool:
        members = self.members(url)
        codings = _codings(value)
        if not codings:
            return True  # nothing coded to check (a text-only concept is a cardinality matter)
        systems = {s for s, _ in members}
        for system, code in codings:
            if (system, code) in members:
                return True
            if system is None and any((s, code) in members for s in systems):
                return True  # a bare `code` element: its system is implied by the binding
        return False


def _all_concepts(concepts: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for concept in concepts:
        out.append(concept)
        out += _all_concepts(concept.get("concept", []))
    return out


def _variables(resource: dict[str, Any]) -> dict[str, Any]:
    return {name: resource for name in _VARIABLES}


def _as_warning(issue: Issue, profile: Profile) -> Issue:
    return Issue(
        f"{issue.diagnostics} (a warning: the resource matches {profile.url} without claiming it "
        "in meta.profile; claim it to have this enforced)",
        issue.expression,
        issue.code,
        "warning",
    )


def _describe(pattern: Any) -> str:
    codings = _codings(pattern)
    if codings:
        return " / ".join(f"{s}|{c}" if s else c for s, c in codings)
    return repr(pattern)
