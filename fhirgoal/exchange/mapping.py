"""Mappings as data: the rules that turn fhirgoal's FHIR into an EHR's dialect and back (issue 15).

A mapping is a folder (`mappings/<name>/`, README "Mappings"): `mapping.json` lists its rules,
each rule's transform is a JSONata expression in `rules/`, code tables are R4 ConceptMaps in
`conceptmaps/` (mapping_concepts.py), and `examples/` holds the input/expected-output pairs that
`fhirgoal mapping test` runs (mapping_examples.py). Nothing here does I/O once loaded: `inbound`
and `outbound` are pure, deterministic functions of one resource, giving zero, one or several.

**Engine.** Compared (PyPI, December 2026) before choosing:
- *JSONata* (https://docs.jsonata.org, PyPI `jsonata-python` 0.7.x, a port of the reference
  implementation that passes its test suite, released monthly in 2026, among PyPI's 5,000 most
  downloaded): a query-and-construct language over JSON; a rule is one expression that *builds*
  the target resource as a JSON object, with conditionals, `$map`/`$filter`, lookups and
  functions we can add. FHIR JSON in, FHIR JSON out, no text templating.
- *Liquid* (`python-liquid` 2.x, Microsoft FHIR-Converter's approach): templates print JSON text.
  Well kept, but building JSON by printing means commas, quoting and escaping are the rule
  author's problem, and an error surfaces as unparsable output, not as the element at fault.
  FHIR-Converter needs it because its inputs (HL7 v2, C-CDA) are not JSON; ours are.
- *FHIRPath* (fhirpathpy, already a dependency): selects and tests, but cannot construct; rules
  built on it alone would need a construction language of our own, which the issue rules out.
  It is used where it is strong: each rule's `when` and `requires` are FHIRPath over the input.
- *StructureMap / FHIR Mapping Language*: the HL7 standard, but no maintained Python engine exists
  (engines are Java (HAPI, Matchbox), .NET and Dart); running a JVM beside the server for it was
  judged not worth it for mappings this size.

**Rules** (mapping.json, `rules[]`): `id`, `direction` (inbound = EHR -> fhirgoal, outbound =
fhirgoal -> EHR), `resourceType`, optional `when` (FHIRPath: the rule applies when true; the first
applicable rule of the resource's type wins, in file order), optional `requires` (FHIRPath
expressions that must each find something, else MappingError naming the expression), and either
`transform` (a .jsonata file: its value is a resource, a list of them, or nothing) or `skip` (why
the resource is deliberately not mapped). A resource of a type no rule names is not mapped (`[]`)
when `unmappedTypes` is `skip`, or a MappingError when it is `error`; a resource of a type that
has rules but matches none is always a MappingError (a rule set that forgot a case should say so).

Inside a transform: `$translate(codes, conceptMapId, element)` and `$translateBack(...)` (ConceptMap
forward / reverse; a MappingError naming `element` when there is no translation),
`$require(value, element)`, `$fail(element, message)`, `$settings` (mapping.json `settings`) and
`$rule` (the rule id). `$now`, `$millis` and `$random` are refused: mappings are deterministic.
Decimals keep their text through a rule (`72.50` stays `72.50`); null, empty objects and empty
arrays are dropped from the output, so a rule can copy optional elements without guarding them.

Elements an EHR dialect cannot carry are listed in `restoreOnInbound`; `Mapping.restore(incoming,
current)` puts fhirgoal's copy of them back into an inbound resource (the sync layer holds the
copy; the mapping stays pure). `lossy` lists, as prose, what a round trip loses.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

import jsonata
from fhirpathpy import compile as fhirpath_compile
from fhirpathpy.models import models as fhirpath_models

from fhirgoal.clinical.expressions import syntax_error
from fhirgoal.config import BUILTIN_CONFORMANCE_DIR, BUILTIN_MAPPINGS_DIR
from fhirgoal.core import jsonio
from fhirgoal.core.errors import FhirError
from fhirgoal.exchange.mapping_concepts import ConceptMap, ConceptMapInvalid, codings_of

Direction = Literal["inbound", "outbound"]
DIRECTIONS: tuple[Direction, ...] = ("inbound", "outbound")
MANIFEST = "mapping.json"
_MANIFEST_KEYS = frozenset(
    {"name", "title", "description", "fhirVersion", "unmappedTypes", "settings", "rules"}
    | {"restoreOnInbound", "lossy"}
)
_RULE_KEYS = frozenset(
    {"id", "direction", "resourceType", "description", "when", "requires", "transform", "skip"}
)
# Functions whose value changes from one run to the next: a mapping must give the same output for
# the same input (examples, idempotent re-delivery), so rules may not call them.
_NOT_DETERMINISTIC = re.compile(r"\$(now|millis|random)\b")


class MappingError(Exception):
    """A mapping that cannot be loaded, or a rule that cannot apply to a resource.

    `rule`: the rule's id (or the file / mapping part at fault when loading); `element`: where, as
    a FHIRPath or JSON path; `message`: what is wrong, for a person to act on."""

    def __init__(self, rule: str, element: str, message: str) -> None:
        super().__init__(f"{rule}: {element}: {message}")
        self.rule = rule
        self.element = element
        self.message = message


class FhirPathTest:
    """A FHIRPath expression over the input resource (http://hl7.org/fhirpath/N1/), compiled once."""

    def __init__(self, text: str, where: str) -> None:
        if not isinstance(text, str) or not text.strip():
            raise MappingError(where, "FHIRPath", "an expression must be a non-empty string")
        self.text = text
        # fhirpathpy runs the longest prefix it can parse: check the whole text parses first
        problem = syntax_error(text)
        if problem:
            raise MappingError(where, text, f"not valid FHIRPath: {problem}")
        try:
            self._evaluate = fhirpath_compile(text, fhirpath_models["r4"])
        except Exception as exc:  # fhirpathpy raises its parser's own exception types
            raise MappingError(where, text, f"not valid FHIRPath: {exc}") from None

    def values(self, resource: dict[str, Any], rule: str) -> list[Any]:
        try:
            return list(self._evaluate(resource, {"resource": resource}))
        except Exception as exc:  # fhirpathpy raises plain Exceptions for evaluation errors
            raise MappingError(rule, self.text, f"FHIRPath evaluation failed: {exc}") from None

    def holds(self, resource: dict[str, Any], rule: str) -> bool:
        """FHIRPath's boolean evaluation of a collection: empty is false, one false is false."""
        found = self.values(resource, rule)
        return bool(found) and found != [False]


@dataclass(frozen=True)
class Rule:
    id: str
    direction: Direction
    resource_type: str
    description: str
    when: FhirPathTest | None
    requires: tuple[FhirPathTest, ...]
    transform: jsonata.Jsonata | None  # None: the rule deliberately maps to nothing
    skip_reason: str | None
    source: str  # the transform file, relative to the mapping folder


class _DecimalText(float):
    """A decimal on its way through JSONata: a float for the engine's arithmetic and comparisons,
    carrying the decimal's text so that a value copied through comes out with its digits."""

    __slots__ = ("text",)
    text: str

    def __new__(cls, text: str) -> _DecimalText:
        value = float.__new__(cls, text)
        value.text = text
        return value


def _to_engine(value: Any) -> Any:
    if isinstance(value, Decimal):
        return _DecimalText(str(value))
    if isinstance(value, dict):
        return {key: _to_engine(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_to_engine(item) for item in value]
    return value


def _from_engine(value: Any) -> Any:
    """JSONata's value as FHIR JSON: decimals back to Decimal, absent and empty parts dropped."""
    if isinstance(value, _DecimalText):
        return Decimal(value.text)
    if isinstance(value, float):
        # arithmetic in a rule: the shortest text that reads back as the same float
        return int(value) if value.is_integer() and abs(value) < 2**53 else Decimal(repr(value))
    if isinstance(value, dict):
        cleaned = {key: _from_engine(item) for key, item in value.items()}
        kept = {key: item for key, item in cleaned.items() if item is not None}
        return kept or None
    if isinstance(value, list):
        items = [_from_engine(item) for item in value]
        kept_items = [item for item in items if item is not None]
        return kept_items or None
    if isinstance(value, str | bool | int):
        return value
    return None  # JSONata functions or other engine values are not JSON: nothing


def read_json(path: Path, what: str) -> Any:
    """A JSON file of a mapping folder, decimals kept; a MappingError naming the file if not."""
    try:
        return jsonio.loads(path.read_bytes())
    except FileNotFoundError:
        raise MappingError(what, str(path), "file not found") from None
    except FhirError as exc:
        raise MappingError(what, str(path), exc.diagnostics) from None


def _resource_types() -> frozenset[str]:
    listing = read_json(BUILTIN_CONFORMANCE_DIR / "resource-types.json", "conformance")
    return frozenset(listing["stored"]) | frozenset(listing["other"])


def resolve_directory(name_or_path: str | Path) -> Path:
    """A mapping folder given as a path, or as the name of a built-in mapping (`example-ehr`)."""
    path = Path(name_or_path)
    if (path / MANIFEST).is_file():
        return path
    builtin = BUILTIN_MAPPINGS_DIR / str(name_or_path)
    if "/" not in str(name_or_path) and (builtin / MANIFEST).is_file():
        return builtin
    return path


class Mapping:
    """One mapping folder, loaded and checked; `inbound` / `outbound` apply it to a resource."""

    def __init__(
        self,
        name: str,
        directory: Path,
        manifest: dict[str, Any],
        rules: list[Rule],
        concept_maps: dict[str, ConceptMap],
    ) -> None:
        self.name = name
        self.directory = directory
        self.title = str(manifest.get("title") or name)
        self.description = str(manifest.get("description") or "")
        self.unmapped_types: str = manifest.get("unmappedTypes", "skip")
        self.settings: dict[str, Any] = manifest.get("settings") or {}
        self.restore_on_inbound: dict[str, list[str]] = manifest.get("restoreOnInbound") or {}
        self.lossy: list[str] = list(manifest.get("lossy") or [])
        self.rules = tuple(rules)
        self.concept_maps = concept_maps
        self._by_type: dict[tuple[str, str], list[Rule]] = {}
        for rule in rules:
            self._by_type.setdefault((rule.direction, rule.resource_type), []).append(rule)

    # ---- loading ---------------------------------------------------------------------------

    @classmethod
    def load(cls, directory: Path) -> Mapping:
        """Read and check a mapping folder: every rule compiles, every file it names exists, every
        ConceptMap is usable. Any problem is a MappingError naming the file and the element."""
        directory = Path(directory)
        if not directory.is_dir():
            raise MappingError("mapping", str(directory), "no such mapping folder")
        manifest = read_json(directory / MANIFEST, MANIFEST)
        if not isinstance(manifest, dict):
            raise MappingError(MANIFEST, "$", "must be a JSON object")
        unknown = sorted(set(manifest) - _MANIFEST_KEYS)
        if unknown:
            raise MappingError(
                MANIFEST, unknown[0], f"unknown key (known: {sorted(_MANIFEST_KEYS)})"
            )
        name = manifest.get("name")
        if not isinstance(name, str) or not name:
            raise MappingError(MANIFEST, "name", "a mapping needs a name")
        if manifest.get("fhirVersion", "4.0.1") != "4.0.1":
            raise MappingError(MANIFEST, "fhirVersion", "only FHIR R4 (4.0.1) mappings are run")
        if manifest.get("unmappedTypes", "skip") not in ("skip", "error"):
            raise MappingError(MANIFEST, "unmappedTypes", "must be 'skip' or 'error'")
        if not isinstance(manifest.get("settings", {}), dict):
            raise MappingError(MANIFEST, "settings", "must be a JSON object")
        concept_maps = _load_concept_maps(directory)
        raw_rules = manifest.get("rules")
        if not isinstance(raw_rules, list) or not raw_rules:
            raise MappingError(MANIFEST, "rules", "a mapping needs at least one rule")
        known_types = _resource_types()
        rules: list[Rule] = []
        for index, raw in enumerate(raw_rules):
            rules.append(_load_rule(directory, index, raw, known_types))
        _check_rules(rules)
        _check_restore(manifest.get("restoreOnInbound") or {}, known_types)
        return cls(name, directory, manifest, rules, concept_maps)

    # ---- applying --------------------------------------------------------------------------

    def inbound(self, resource: dict[str, Any]) -> list[dict[str, Any]]:
        """EHR -> fhirgoal: the resources `resource` becomes ([] = not mapped)."""
        return self.apply("inbound", resource)

    def outbound(self, resource: dict[str, Any]) -> list[dict[str, Any]]:
        """fhirgoal -> EHR: the resources to send for `resource` ([] = nothing is sent)."""
        return self.apply("outbound", resource)

    def apply(self, direction: Direction, resource: dict[str, Any]) -> list[dict[str, Any]]:
        rule = self.rule_for(direction, resource)
        return [] if rule is None else self._run(rule, resource)

    def rule_for(self, direction: Direction, resource: dict[str, Any]) -> Rule | None:
        """The rule that applies to `resource`; None when its type is not mapped and the mapping
        skips unmapped types. A MappingError when no rule of its type applies."""
        rtype = resource.get("resourceType") if isinstance(resource, dict) else None
        if not isinstance(rtype, str):
            raise MappingError(f"{self.name}/{direction}", "resourceType", "not a FHIR resource")
        candidates = self._by_type.get((direction, rtype))
        if not candidates:
            if self.unmapped_types == "skip":
                return None
            raise MappingError(
                f"{self.name}/{direction}", f"{rtype}", f"no {direction} rule maps a {rtype}"
            )
        for rule in candidates:
            if rule.when is None or rule.when.holds(resource, rule.id):
                return rule
        tried = "; ".join(f"{r.id}: {r.when.text}" for r in candidates if r.when is not None)
        raise MappingError(
            f"{self.name}/{direction}",
            rtype,
            f"no {direction} rule applies to this {rtype} (tried {tried})",
        )

    def _run(self, rule: Rule, resource: dict[str, Any]) -> list[dict[str, Any]]:
        for test in rule.requires:
            if not test.holds(resource, rule.id):
                raise MappingError(rule.id, test.text, "required element is missing")
        if rule.transform is None:
            return []
        try:
            raw = rule.transform.evaluate(_to_engine(resource), self._bindings(rule))
        except MappingError:
            raise
        except jsonata.JException as exc:
            raise MappingError(
                rule.id, f"{rule.source} at character {exc.location}", str(exc)
            ) from None
        except Exception as exc:  # the engine's own failures, RecursionError included
            raise MappingError(rule.id, rule.source, f"{type(exc).__name__}: {exc}") from None
        output = _from_engine(raw)
        resources = [] if output is None else output if isinstance(output, list) else [output]
        for produced in resources:
            if not isinstance(produced, dict) or not isinstance(produced.get("resourceType"), str):
                raise MappingError(
                    rule.id, f"{rule.source} (output)", "the rule's value is not a FHIR resource"
                )
        return resources

    def _bindings(self, rule: Rule) -> dict[str, Any]:
        def fail(element: Any = None, message: Any = None) -> None:
            raise MappingError(rule.id, str(element or "?"), str(message or "cannot be mapped"))

        def require(value: Any = None, element: Any = None) -> Any:
            if value is None or value == [] or value == {} or value == "":
                raise MappingError(rule.id, str(element or "?"), "required element is missing")
            return value

        def translator(reverse: bool) -> Callable[..., dict[str, Any]]:
            def translate(codes: Any = None, map_id: Any = None, element: Any = None) -> Any:
                where = str(element or "coding")
                concept_map = self.concept_maps.get(str(map_id))
                if concept_map is None:
                    raise MappingError(rule.id, where, f"no ConceptMap {map_id!r} in the mapping")
                codings = codings_of(_from_engine(codes))
                if not codings:
                    raise MappingError(rule.id, where, "no code to translate")
                found = (concept_map.translate_back if reverse else concept_map.translate)(codings)
                if found is None:
                    shown = ", ".join(f"{c.get('system')}|{c.get('code')}" for c in codings)
                    raise MappingError(
                        rule.id, where, f"no translation of {shown} in ConceptMap {map_id}"
                    )
                return found

            return translate

        def refused(*_: Any) -> None:
            raise MappingError(rule.id, rule.source, "mappings are deterministic: no $now/$random")

        return {
            "translate": jsonata.Jsonata.JLambda(translator(reverse=False)),
            "translateBack": jsonata.Jsonata.JLambda(translator(reverse=True)),
            "require": jsonata.Jsonata.JLambda(require),
            "fail": jsonata.Jsonata.JLambda(fail),
            "now": jsonata.Jsonata.JLambda(refused),
            "millis": jsonata.Jsonata.JLambda(refused),
            "random": jsonata.Jsonata.JLambda(refused),
            "settings": _to_engine(self.settings),
            "rule": rule.id,
        }

    # ---- round trips -----------------------------------------------------------------------

    def restore(self, incoming: dict[str, Any], current: dict[str, Any] | None) -> dict[str, Any]:
        """An inbound resource with the elements this dialect cannot carry (`restoreOnInbound`)
        taken from fhirgoal's current copy, so that an EHR's edit never erases them. An entry is a
        top-level element name, or `extension:<url>` for the extensions with that url."""
        if current is None:
            return incoming
        result = dict(incoming)
        for entry in self.restore_on_inbound.get(str(incoming.get("resourceType")), []):
            if entry.startswith("extension:"):
                url = entry.removeprefix("extension:")
                theirs = [e for e in result.get("extension") or [] if e.get("url") != url]
                ours = [e for e in current.get("extension") or [] if e.get("url") == url]
                merged = _in_order_of(current.get("extension") or [], ours, theirs)
                if merged:
                    result["extension"] = merged
                else:
                    result.pop("extension", None)
            elif entry in current:
                result[entry] = current[entry]
            else:
                result.pop(entry, None)
        return result

    def rules_of(self, direction: Direction) -> Iterator[Rule]:
        return (rule for rule in self.rules if rule.direction == direction)


def _in_order_of(
    reference: list[dict[str, Any]], ours: list[dict[str, Any]], theirs: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """Restored extensions where fhirgoal's copy had them (before any the EHR added), so that a
    round trip gives back the same list; `theirs` keeps its own order after them."""
    kept = [e for e in reference if any(e is o for o in ours) or e in theirs]
    return kept + [e for e in theirs if e not in kept]


def _load_concept_maps(directory: Path) -> dict[str, ConceptMap]:
    maps: dict[str, ConceptMap] = {}
    folder = directory / "conceptmaps"
    for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
        where = str(path.relative_to(directory))
        resource = read_json(path, where)
        try:
            concept_map = ConceptMap(resource if isinstance(resource, dict) else {})
        except ConceptMapInvalid as exc:
            raise MappingError(where, exc.element, exc.message) from None
        if concept_map.id in maps:
            raise MappingError(where, "ConceptMap.id", f"two ConceptMaps have id {concept_map.id}")
        maps[concept_map.id] = concept_map
    return maps


def _load_rule(directory: Path, index: int, raw: Any, known_types: frozenset[str]) -> Rule:
    where = f"{MANIFEST} rules[{index}]"
    if not isinstance(raw, dict):
        raise MappingError(where, "$", "a rule is a JSON object")
    rule_id = raw.get("id")
    if not isinstance(rule_id, str) or not rule_id:
        raise MappingError(where, "id", "a rule needs an id")
    unknown = sorted(set(raw) - _RULE_KEYS)
    if unknown:
        raise MappingError(rule_id, unknown[0], f"unknown key (known: {sorted(_RULE_KEYS)})")
    direction = raw.get("direction")
    if direction not in DIRECTIONS:
        raise MappingError(rule_id, "direction", "must be 'inbound' or 'outbound'")
    rtype = raw.get("resourceType")
    if rtype not in known_types:
        raise MappingError(rule_id, "resourceType", f"{rtype!r} is not an R4 resource type")
    when = FhirPathTest(raw["when"], rule_id) if "when" in raw else None
    requires = raw.get("requires", [])
    if not isinstance(requires, list):
        raise MappingError(rule_id, "requires", "a list of FHIRPath expressions")
    tests = tuple(FhirPathTest(text, rule_id) for text in requires)
    if ("transform" in raw) == ("skip" in raw):
        raise MappingError(rule_id, "transform", "a rule has either a transform or a skip reason")
    transform = None
    source = str(raw.get("transform") or "")
    if source:
        path = directory / source
        if not path.resolve().is_relative_to(directory.resolve()):
            raise MappingError(rule_id, "transform", "the transform must be inside the folder")
        try:
            text = path.read_text(encoding="utf-8")
        except (FileNotFoundError, IsADirectoryError):
            raise MappingError(rule_id, "transform", f"no file {source}") from None
        banned = _NOT_DETERMINISTIC.search(text)
        if banned:
            raise MappingError(
                rule_id, f"{source} at character {banned.start()}",
                f"{banned.group(0)} is not deterministic: mappings must give the same output "
                "for the same input",
            )  # fmt: skip
        try:
            transform = jsonata.Jsonata(text)
        except jsonata.JException as exc:
            raise MappingError(
                rule_id, f"{source} at character {exc.location}", f"not valid JSONata: {exc}"
            ) from None
    elif not isinstance(raw["skip"], str) or not raw["skip"]:
        raise MappingError(rule_id, "skip", "say why the resource is not mapped")
    return Rule(
        rule_id,
        direction,
        rtype,
        str(raw.get("description") or ""),
        when,
        tests,
        transform,
        raw.get("skip"),
        source,
    )


def _check_rules(rules: list[Rule]) -> None:
    seen: set[str] = set()
    unconditional: dict[tuple[str, str], str] = {}
    for rule in rules:
        if rule.id in seen:
            raise MappingError(rule.id, "id", "two rules have this id")
        seen.add(rule.id)
        key = (rule.direction, rule.resource_type)
        if key in unconditional:
            raise MappingError(
                rule.id, "when",
                f"never applies: rule {unconditional[key]} (no `when`) takes every "
                f"{rule.direction} {rule.resource_type} before it",
            )  # fmt: skip
        if rule.when is None:
            unconditional[key] = rule.id


def _check_restore(restore: Any, known_types: frozenset[str]) -> None:
    if not isinstance(restore, dict):
        raise MappingError(MANIFEST, "restoreOnInbound", "a JSON object of type -> elements")
    for rtype, entries in restore.items():
        if rtype not in known_types:
            raise MappingError(MANIFEST, f"restoreOnInbound.{rtype}", "not an R4 resource type")
        if not isinstance(entries, list) or not all(isinstance(e, str) and e for e in entries):
            raise MappingError(MANIFEST, f"restoreOnInbound.{rtype}", "a list of element names")
