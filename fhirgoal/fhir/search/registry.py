"""SearchParameter registry built from data: https://hl7.org/fhir/R4/searchparameter.html

The R4 definitions vendored in conformance/search-parameters.json (and, later, the project's own
SearchParameters) are compiled once into per-type tables. The same table drives index extraction at
write time, query compilation at search time and the CapabilityStatement, so the three cannot
disagree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Any

from fhirgoal.core import fields
from fhirgoal.fhir.conformance import Conformance
from fhirgoal.fhir.search import unions
from fhirgoal.fhir.search.index import (
    compartment_members,
    composite_entries,
    date_entries,
    first_sort_key,
    identifier_type_entries,
    number_entries,
    quantity_entries,
    reference_entries,
    reference_identifier_entries,
    string_entries,
    token_entries,
    token_text_entries,
    uri_entries,
)
from fhirgoal.fhir.search.paths import (
    Extractor,
    branches_for_type,
    compile_expression,
    compile_relative,
    reference_type,
    split_top_level,
    strip_parens,
)
from fhirgoal.store.pairs import PAIRED, member_references, pair_keys, ranged_pairs, token_keys

# Parameter types whose values are indexed and searchable today. The others are registered (so
# strict mode can tell "unsupported" from "unknown") but not yet advertised.
INDEXED_TYPES = {"token", "reference", "uri", "string", "date", "number", "quantity", "composite"}
# Composite parameters indexed today (search.html#composite): a token paired with a token or a
# quantity (Observation code-value-concept, code-value-quantity, component-*, combo-*).
COMPOSITE_SHAPES = {("token", "token"), ("token", "quantity")}
# Types whose values have a natural order for _sort (search.html#sort).
SORTABLE_TYPES = {"token", "reference", "uri", "string", "date", "number", "quantity"}
# Handled by dedicated document fields rather than the generic index.
SPECIAL = {"_id", "_lastUpdated"}
# How R4 describes a parameter shared by several types: this line, then `* [Type](page): text`.
_SHARED_DESCRIPTION = "Multiple Resources:"


def documentation_for(description: str, resource_type: str) -> str:
    """A parameter's description as it concerns one type: for a parameter R4 shares between
    types, the text of that type's line."""
    if not description.startswith(_SHARED_DESCRIPTION):
        return description
    prefix = f"* [{resource_type}]("
    for line in description.splitlines():
        if line.startswith(prefix):
            return line.partition("): ")[2] or line
    return description


@dataclass(frozen=True)
class SearchParam:
    code: str
    type: str
    url: str
    expression: str
    extractor: Extractor | None
    targets: tuple[str, ...] = ()
    documentation: str = ""
    # composite parameters: (component type, extractor relative to each composite node)
    components: tuple[tuple[str, Extractor], ...] = ()
    # composite parameters: the token parameter whose indexed keys drive this one's queries
    # (its first component's own SearchParameter, when that provably holds every first value),
    # so the composite's pairs need no indexed keys of their own (SearchRegistry._link_composite)
    driver: str | None = None
    # A narrowing: (reference parameter, type) when this one's values are exactly that
    # parameter's references to that type (`patient` = `subject.where(resolve() is Patient)`).
    # Its reference keys are not stored; a search for it is answered from the other's
    # (_link_narrowings, TypeParams.reference_key).
    references_of: tuple[str, str] | None = None
    # A union: the parameters (of the same type) whose values, together, are exactly this one's
    # (`combo-code` = `code | component-code`). It stores no keys but its sort key; a condition
    # on it is rewritten onto theirs (unions.py, _link_unions).
    union_of: tuple[str, ...] = ()
    # composite parameters: each component's expression, relative to the composite's nodes
    component_expressions: tuple[str, ...] = ()

    @property
    def supported(self) -> bool:
        if self.type == "composite":
            kinds = tuple(kind for kind, _ in self.components)
            return self.extractor is not None and kinds in COMPOSITE_SHAPES
        return self.code in SPECIAL or (self.type in INDEXED_TYPES and self.extractor is not None)


@dataclass
class TypeParams:
    resource_type: str
    params: dict[str, SearchParam] = field(default_factory=dict)
    compartment_params: list[str] = field(default_factory=list)
    in_compartment_as_self: bool = False
    # union code -> its parts' codes (SearchParam.union_of), for unions.spread
    unions: dict[str, tuple[str, ...]] = field(default_factory=dict)

    def reference_key(self, code: str, target: str) -> str | None:
        """The stored key of reference parameter `code` pointing at `target` ("Type/id"), None
        when no resource can hold it (a narrowing to another type: `patient` to a Group)."""
        param = self.params[code]
        if param.references_of is None:
            return f"{code}={target}"
        parent, type_name = param.references_of
        return f"{parent}={target}" if reference_type(target) == type_name else None

    def spread(self, param: SearchParam, condition: dict[str, Any]) -> dict[str, Any]:
        """A condition compiled for `param`, onto the keys that are stored: a union's (or a
        composite's driving union's) keys are its parts' (unions.py)."""
        named = [code for code in (param.code, param.driver) if code in self.unions]
        if not named:
            return condition
        return unions.spread(condition, {code: self.unions[code] for code in named})

    def index_fields(self, resource: dict[str, Any]) -> dict[str, Any]:
        """Normalized index entries for one resource (stored beside it, see index.py). A
        narrowing (`references_of`) has its `miss`, `srt` and `:identifier` entries, and no
        reference keys: the other parameter's hold them. A union (`union_of`) has only its
        sort key, the smallest of its parts'."""
        tok: set[str] = set()
        ref: set[str] = set()
        # the narrowings' references: the compartment is decided by them too
        compartment_refs: set[str] = set()
        text: set[str] = set()
        num: set[str] = set()
        # keys only in the unindexed copies (index.py: exact systems, units, cases)
        tokx: set[str] = set()
        strx: set[str] = set()
        numx: set[str] = set()
        lows: set[str] = set()
        highs: set[str] = set()
        ranges: list[dict[str, str]] = []
        miss: list[str] = []
        sort_keys: dict[str, str] = {}
        # the (tag, key)s of the type's paired parameters (store/pairs.py)
        paired: list[tuple[str, str]] = []
        pairing = PAIRED.get(self.resource_type)
        pair_tokens, pair_dates = (pairing.tokens, pairing.dates) if pairing else ((), ())
        for param in self.params.values():
            extractor = param.extractor
            if extractor is None or param.code in SPECIAL or not param.supported:
                continue  # not indexed (e.g. a composite of three parts)
            if param.union_of:
                continue  # its parts' keys are its keys
            values = extractor(resource)
            if not values:
                miss.append(param.code)
                continue
            sort_key = first_sort_key(param.type, values) if param.type != "composite" else None
            if sort_key is not None:
                sort_keys[param.code] = sort_key
            if param.references_of is not None:
                compartment_refs |= reference_entries(param.code, values)
                coarse, exact = reference_identifier_entries(param.code, values)
                tok |= coarse
                tokx |= exact
                continue
            if param.type == "token":
                coarse, exact = token_entries(param.code, values)
                tok |= coarse
                tokx |= exact
                if param.code in pair_tokens:
                    paired += token_keys(param.code, exact)
                tokx |= identifier_type_entries(param.code, values)
                text |= token_text_entries(param.code, values)
            elif param.type == "uri":
                tok |= uri_entries(param.code, values)
            elif param.type == "reference":
                ref |= reference_entries(param.code, values)
                coarse, exact = reference_identifier_entries(param.code, values)
                tok |= coarse
                tokx |= exact
            elif param.type == "string":
                coarse, exact = string_entries(param.code, values)
                text |= coarse
                strx |= exact
            elif param.type == "number":
                num |= number_entries(param.code, values)
            elif param.type == "quantity":
                coarse, exact = quantity_entries(param.code, values)
                num |= coarse
                numx |= exact
            elif param.type == "composite":
                pairs_tok, pairs_num = composite_entries(param.code, values, param.components)
                if not (pairs_tok.coarse or pairs_num.coarse):  # nodes, but no pair in any
                    miss.append(param.code)
                tokx |= pairs_tok.exact
                numx |= pairs_num.exact
                if param.driver is None:  # else the driver's own keys are indexed
                    tok |= pairs_tok.coarse
                    num |= pairs_num.coarse
            elif param.type == "date":
                lo, hi, pairs = date_entries(param.code, values)
                lows |= lo
                highs |= hi
                ranges += pairs
                if param.code in pair_dates:  # both ends (store/pairs.py)
                    paired += [(fields.DATE_LOW, key) for key in lo]
                    paired += [(fields.DATE_HIGH, key) for key in hi]
        for code, parts in self.unions.items():
            part_keys = [sort_keys[part] for part in parts if part in sort_keys]
            if part_keys and self.params[code].type in SORTABLE_TYPES:
                sort_keys[code] = min(part_keys)
        compartment = compartment_members(ref | compartment_refs, self.compartment_params)
        if self.in_compartment_as_self and "id" in resource:
            compartment = sorted({*compartment, f"Patient/{resource['id']}"})
        members = member_references(pairing, ref) if pairing and paired else []
        return {
            fields.TOKEN: sorted(tok),
            # the reference keys and the paired keys (store/pairs.py)
            fields.REFERENCE: sorted({*ref, *pair_keys(members, paired)}),
            fields.COMPARTMENT: compartment,
            fields.STRING: sorted(text),
            fields.NUMBER: sorted(num),
            fields.DATE_LOW: sorted(lows),
            fields.DATE_HIGH: sorted(highs),
            fields.DATES: ranges,
            fields.MISSING: miss,
            fields.SORT_KEYS: sort_keys,
            # unindexed copies: every key, coarse and exact (index.py)
            # ... and the date pairs, for the exact check of a ranged pair (store/pairs.py)
            fields.REFERENCE_EXACT: sorted({*ref, *ranged_pairs(members, paired)}),
            fields.TOKEN_EXACT: sorted(tok | tokx),
            fields.STRING_EXACT: sorted(text | strx),
            fields.NUMBER_EXACT: sorted(num | numx),
        }


class SearchRegistry:
    def __init__(self, conformance: Conformance) -> None:
        self.types: dict[str, TypeParams] = {}
        for resource_type in conformance.stored_types:
            table = TypeParams(resource_type)
            members = conformance.patient_compartment.get(resource_type, [])
            table.in_compartment_as_self = resource_type == "Patient"
            table.compartment_params = [p for p in members if not p.startswith("{")]
            self.types[resource_type] = table
        self.type_by_url = {d.get("url"): d["type"] for d in conformance.search_parameters}
        for definition in conformance.search_parameters:
            self._add(definition)
        for definition in conformance.search_parameters:
            if definition.get("type") == "composite" and definition.get("component"):
                self._link_composite(definition)
        for table in self.types.values():
            _link_narrowings(table)
            _link_unions(table)

    def _add(self, definition: dict[str, Any]) -> None:
        bases = definition.get("base", [])
        for resource_type, table in self.types.items():
            generic = any(b in ("Resource", "DomainResource") for b in bases)
            if resource_type not in bases and not generic:
                continue
            expression = definition.get("expression", "")
            extractor = compile_expression(expression, resource_type) if expression else None
            components = tuple(
                (
                    self.type_by_url.get(c.get("definition"), "?"),
                    compile_relative(c["expression"], resource_type),
                )
                for c in definition.get("component", [])
            )
            table.params[definition["code"]] = SearchParam(
                code=definition["code"],
                type=definition["type"],
                url=definition.get("url", ""),
                expression=expression,
                extractor=extractor,
                targets=tuple(definition.get("target", [])),
                documentation=documentation_for(definition.get("description", ""), resource_type),
                components=components,
                component_expressions=tuple(
                    c["expression"] for c in definition.get("component", [])
                ),
            )

    def _link_composite(self, definition: dict[str, Any]) -> None:
        """Let a composite drive its queries from its first component's token parameter when
        that parameter's expression holds, for this type, every path the first component takes
        (the composite's node paths + the component's relative path): then each first value of a
        pair is indexed as that parameter's coarse key, which a query for the pair implies."""
        first = definition["component"][0]
        for resource_type, table in self.types.items():
            param = table.params.get(definition["code"])
            if param is None or param.url != definition.get("url", "") or not param.supported:
                continue
            driver = next(
                (p for p in table.params.values() if p.url == first.get("definition")), None
            )
            if driver is None or driver.type != "token" or not driver.supported:
                continue
            nodes = branches_for_type(param.expression, resource_type)
            steps = [strip_parens(step) for step in split_top_level(first.get("expression", ""))]
            paths = {f"{node}.{step}" for node in nodes for step in steps}
            if (
                nodes
                and steps
                and paths <= set(branches_for_type(driver.expression, resource_type))
            ):
                table.params[param.code] = replace(param, driver=driver.code)

    def for_type(self, resource_type: str) -> TypeParams:
        return self.types[resource_type]


_NARROWED = re.compile(r"^(.+)\.where\(resolve\(\) is ([A-Z][A-Za-z]+)\)$")


def _link_narrowings(table: TypeParams) -> None:
    """Mark, from the SearchParameter expressions alone, the reference parameters whose keys
    would repeat another's: each branch of the expression for this type is the other
    parameter's single branch narrowed by `.where(resolve() is T)` (`patient` =
    `subject.where(resolve() is Patient)`, on ~20 types). Their reference keys are then not
    stored: each indexed key costs every write database CPU, and makes documents larger.

    Unions (Observation `combo-code` = `code | component-code`) are _link_unions'.
    """
    for code, param in table.params.items():
        if param.type != "reference" or not param.supported:
            continue
        own = branches_for_type(param.expression, table.resource_type)
        matched = _NARROWED.match(own[0]) if len(own) == 1 else None
        if matched is None:
            continue
        path, type_name = matched.groups()
        for other_code, other in sorted(table.params.items()):
            if (
                other_code != code
                and other.type == "reference"
                and other.supported
                and type_name in other.targets
                and branches_for_type(other.expression, table.resource_type) == [path]
            ):
                table.params[code] = replace(param, references_of=(other_code, type_name))
                break


# Parameter types a union may have: those whose every condition unions.spread rewrites.
UNION_TYPES = {"token", "quantity", "composite"}


def _link_unions(table: TypeParams) -> None:
    """Mark, from the SearchParameter expressions alone, the parameters whose values are the
    union of other parameters' of the same type (unions.py): each branch of the expression for
    this type is a branch of one of theirs, and theirs hold no other (`combo-code` =
    `Observation.code | Observation.component.code` = `code` | `component-code`). A composite's
    parts have the same components (types and relative expressions) over its nodes, and every
    one of them drives from a token parameter (a pair's coarse key is stored under the driver
    then, never under the composite's code, so the union's driver stands in for them). Parts are
    never unions themselves: a union stores no keys to rewrite onto."""
    rt = table.resource_type

    def branches(param: SearchParam) -> frozenset[str]:
        return frozenset(branches_for_type(param.expression, rt))

    def alike(union: SearchParam, part: SearchParam) -> bool:
        if union.type != "composite":
            return True
        return (
            [kind for kind, _ in part.components] == [kind for kind, _ in union.components]
            and part.component_expressions == union.component_expressions
            and union.driver is not None
            and part.driver is not None
        )

    candidates = [
        p
        for p in table.params.values()
        if p.type in UNION_TYPES and p.supported and p.code not in SPECIAL and p.extractor
    ]
    for union in sorted(candidates, key=lambda p: (len(branches(p)), p.code)):
        own = branches(union)
        if len(own) < 2:
            continue
        parts = [
            p
            for p in candidates
            if p.code != union.code
            and p.type == union.type
            and p.code not in table.unions
            and branches(p)
            and branches(p) < own
            and alike(union, p)
        ]
        if parts and frozenset().union(*map(branches, parts)) == own:
            codes = tuple(sorted(p.code for p in parts))
            table.params[union.code] = replace(union, union_of=codes)
            table.unions[union.code] = codes
