"""Running a FHIR search: chains and `_has` first, then one page in a stable order, then includes.

https://hl7.org/fhir/R4/search.html : #chaining, #has, #sort, #include, #revinclude, paging.
Every database access goes through the repository with the caller's AccessContext, so chained,
reverse-chained and included resources are confined exactly like the matches.

Paging is keyset paging on the sort keys plus the id: a `next` link names the last row it saw,
so resources added or changed meanwhile cause neither duplicates nor gaps in the pages that follow.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from fhirgoal.config import Settings
from fhirgoal.core import fields
from fhirgoal.core.access import AccessContext
from fhirgoal.core.errors import FhirError
from fhirgoal.core.jsonio import dumps
from fhirgoal.fhir.conformance import Conformance
from fhirgoal.fhir.search import conditions
from fhirgoal.fhir.search.index import reference_entries
from fhirgoal.fhir.search.query import (
    CompiledSearch,
    Cursor,
    Deferred,
    IncludeSpec,
    SearchCompiler,
    SearchLimits,
)
from fhirgoal.fhir.search.registry import SearchRegistry
from fhirgoal.fhir.subsetting import Subsetter
from fhirgoal.store.repository import Repository, Version

MAX_CHAIN_MATCHES = 1000  # a chain or _has that selects more is refused, not silently cut
MAX_CHAIN_DEPTH = 4
MAX_INCLUDED = 1000
MAX_ITERATIONS = 3


MAX_VALUE_SET_CODES = 5000
ESTIMATE_LIMIT = 1000  # `_total=estimate` counts this many matches at the most


def value_set_codes(value_set: dict[str, Any]) -> list[tuple[str, str]]:
    """(system, code) of a ValueSet: its expansion, or a compose that lists its concepts.

    https://hl7.org/fhir/R4/valueset.html . Filters and whole-system includes need a terminology
    server, which this is not: such a ValueSet is refused rather than half-applied.
    """
    codes: list[tuple[str, str]] = []
    if "expansion" in value_set:
        pending = list(value_set["expansion"].get("contains", []))
        while pending:
            item = pending.pop()
            pending += item.get("contains", [])
            if "code" in item:
                codes.append((item.get("system", ""), item["code"]))
        return codes[:MAX_VALUE_SET_CODES]
    compose = value_set.get("compose", {})

    def listed(part: dict[str, Any]) -> list[tuple[str, str]]:
        if "concept" not in part or "filter" in part or "valueSet" in part:
            raise FhirError(
                "processing",
                f"ValueSet {value_set.get('url')} needs a terminology server to expand "
                "(filters or whole code systems); give it an expansion",
            )
        return [(part.get("system", ""), c["code"]) for c in part["concept"]]

    included = [c for part in compose.get("include", []) for c in listed(part)]
    excluded = {c for part in compose.get("exclude", []) for c in listed(part)}
    return [c for c in included if c not in excluded][:MAX_VALUE_SET_CODES]


@dataclass
class SearchPage:
    compiled: CompiledSearch
    matches: list[Version]
    included: list[Version] = field(default_factory=list)
    total: int | None = None
    next_cursor: Cursor | None = None
    previous_cursor: Cursor | None = None


def _and(*conditions: dict[str, Any]) -> dict[str, Any]:
    present = [c for c in conditions if c]
    if not present:
        return {}
    return present[0] if len(present) == 1 else {"$and": present}


_NOTHING: dict[str, Any] = {"_id": {"$in": []}}


def _sort_value(keys: dict[str, Any], field_name: str, version: Version) -> Any:
    if field_name == "_id":
        return version.id
    if field_name == fields.LAST_UPDATED:
        return version.last_updated.isoformat()
    return keys.get(field_name.split(".", 1)[1])


def _db_value(name: str, value: Any) -> Any:
    # cursors carry text; _lastUpdated is stored as a BSON date
    return (
        datetime.fromisoformat(value)
        if name == fields.LAST_UPDATED and isinstance(value, str)
        else value
    )


def _after(sort: list[tuple[str, int]], cursor: Cursor, id_op: str = "$gt") -> list[dict[str, Any]]:
    """The rows strictly after the cursor row in the order `sort`, then the id (`id_op`), as
    conditions that each select a run of those rows, in that order: first the rows equal to the
    cursor row on every key with an id beyond it, then those equal on fewer keys and beyond on
    the next. Each is a plain conjunction, which a database drives from the search's own index:
    one `$or` of them made the embedded database scan the collection (measured: 231 ms for the
    second page of a patient's Observations sorted by date, at 5,000 Observations).

    MongoDB sorts a missing value first when ascending and last when descending.
    """
    values = [_db_value(name, v) for (name, _), v in zip(sort, cursor.values, strict=True)]

    def same(k: int) -> list[dict[str, Any]]:
        return [{sort[j][0]: values[j]} for j in range(k)]

    runs = [_and(*same(len(sort)), {"_id": {id_op: cursor.id}})]
    for k in reversed(range(len(sort))):
        name, direction = sort[k]
        value = values[k]
        beyond: list[dict[str, Any]]
        if direction == 1:
            beyond = [{name: {"$ne": None}} if value is None else {name: {"$gt": value}}]
        elif value is None:
            continue  # nothing follows a missing value in descending order
        elif name == fields.LAST_UPDATED:  # never missing
            beyond = [{name: {"$lt": value}}]
        else:
            beyond = [{name: {"$lt": value}}, {name: None}]
        runs += [_and(*same(k), condition) for condition in beyond]
    return runs


# The rows equal to the cursor row that the merged first query of a next page may return before
# the rows after it (`_first_runs_merged`): rows tied on the sort keys, mostly none or a few.
HEAD_SLACK = 20


def _first_runs_merged(sort: list[tuple[str, int]], cursor: Cursor) -> dict[str, Any] | None:
    """The first two runs of `_after` as one plain conjunction, a superset of them: the rows
    equal to the cursor row on all but the last sort key and at or beyond it on the last (its
    run of ties and the run beyond). The rows of it at or before the cursor row are its first
    rows in the sort order, which the caller drops: a next page sorted by date then costs one
    query instead of two. None when the last key's value is missing (no `$gte`/`$lte` of null)."""
    if not sort:
        return None
    values = [_db_value(name, v) for (name, _), v in zip(sort, cursor.values, strict=True)]
    *before, (name, direction) = sort
    value = values[-1]
    if value is None:
        return None
    same = [{sort[j][0]: values[j]} for j in range(len(before))]
    return _and(*same, {name: {"$gte" if direction == 1 else "$lte": value}})


class SearchEngine:
    def __init__(
        self,
        settings: Settings,
        conformance: Conformance,
        registry: SearchRegistry,
        repo: Repository,
    ) -> None:
        self.settings = settings
        self.conformance = conformance
        self.registry = registry
        self.repo = repo
        self.subsetter = Subsetter(conformance.structure)
        self.limits = SearchLimits(
            settings.max_search_params,
            settings.max_search_values,
            settings.max_search_value_length,
            settings.max_sort_keys,
        )

    def compiler(self, rt: str, limits: SearchLimits | None = None) -> SearchCompiler:
        if not self.conformance.is_stored(rt):
            raise FhirError("not-supported", f"unknown or unsupported resource type '{rt}'")
        return SearchCompiler(
            self.registry.for_type(rt),
            self.settings.max_page_size,
            self.settings.default_page_size,
            limits or self.limits,
        )

    # ---- conditions needing other searches -------------------------------------------------
    async def compile(
        self,
        access: AccessContext,
        rt: str,
        params: list[tuple[str, str]],
        base_url: str,
        lenient: bool = False,
        depth: int = 0,
        limits: SearchLimits | None = None,
    ) -> CompiledSearch:
        """`limits`: the settings' (for what a client sent) unless the server's own logic says
        otherwise (SERVER_SEARCH_LIMITS)."""
        if depth > MAX_CHAIN_DEPTH:
            raise FhirError(
                "bad-request", f"chains and _has may nest at most {MAX_CHAIN_DEPTH} deep"
            )
        compiled = self.compiler(rt, limits).compile(params, base_url, lenient)
        for deferred in compiled.deferred:
            if deferred.kind == "chain":
                clause = await self._chain(access, rt, deferred, base_url, depth)
                name = f"{deferred.param}.{deferred.rest}"
            elif deferred.kind == "has":
                clause = await self._has(access, rt, deferred, base_url, depth)
                name = f"_has:{deferred.target_types[0]}:{deferred.param}:{deferred.rest}"
            else:
                table = self.registry.for_type(rt)
                clause = table.spread(
                    table.params[deferred.param], await self._in_value_set(access, deferred)
                )
                name = f"{deferred.param}:{deferred.rest}"
            compiled.filter = _and(compiled.filter, clause)
            compiled.used.append((name, deferred.value))
        return compiled

    async def _in_value_set(self, access: AccessContext, deferred: Deferred) -> dict[str, Any]:
        """`:in` / `:not-in`: the codes of ValueSets held by this server (search.html#token)."""
        codings: list[tuple[str, str]] = []
        for url in deferred.value.split(","):
            found = await self.repo.find(
                access, "ValueSet", {fields.TOKEN: {"$in": [f"url#{url}"]}}, [("_id", 1)], 1
            )
            if not found or found[0].resource is None:
                raise FhirError(
                    "bad-request", f"ValueSet '{url}' is not held by this server", deferred.param
                )
            codings += value_set_codes(found[0].resource)
        if not codings:
            return _NOTHING if deferred.rest == "in" else {}
        if deferred.rest == "in":
            return conditions.codings_match(deferred.param, codings)
        exact = sorted({f"{deferred.param}|{system}|{code}" for system, code in codings})
        return {fields.TOKEN_EXACT: {"$nin": exact}}

    async def _chain(
        self, access: AccessContext, rt: str, chain: Deferred, base_url: str, depth: int
    ) -> dict[str, Any]:
        inner_code = chain.rest.split(".")[0].split(":")[0]
        candidates = [
            t for t in chain.target_types
            if self.conformance.is_stored(t) and (inner_code.startswith("_has") or inner_code in self.registry.for_type(t).params)
        ]  # fmt: skip
        if not candidates:
            raise FhirError(
                "bad-request", f"no target of '{chain.param}' has a search parameter '{inner_code}'"
            )
        table = self.registry.for_type(rt)
        keys: list[str | None] = []
        for target in candidates:
            inner = await self.compile(
                access, target, [(chain.rest, chain.value)], base_url, depth=depth + 1
            )
            ids = await self.repo.ids(access, target, inner.filter, MAX_CHAIN_MATCHES + 1)
            if len(ids) > MAX_CHAIN_MATCHES:
                raise FhirError(
                    "too-large",
                    f"the chain {chain.param}.{chain.rest} matches more than {MAX_CHAIN_MATCHES} {target} resources; narrow it",
                )
            keys += [table.reference_key(chain.param, f"{target}/{rid}") for rid in ids]
        found = [key for key in keys if key is not None]
        return {fields.REFERENCE: {"$in": found}} if found else _NOTHING

    async def _has(
        self, access: AccessContext, rt: str, has: Deferred, base_url: str, depth: int
    ) -> dict[str, Any]:
        source = has.target_types[0]
        if not self.conformance.is_stored(source):
            raise FhirError("bad-request", f"_has: unknown resource type '{source}'")
        param = self.registry.for_type(source).params.get(has.param)
        if (
            param is None
            or param.type != "reference"
            or (param.targets and rt not in param.targets)
        ):
            raise FhirError("bad-request", f"_has: '{has.param}' of {source} cannot refer to {rt}")
        inner = await self.compile(
            access, source, [(has.rest, has.value)], base_url, depth=depth + 1
        )
        # the keys that name `rt` resources, under the parameter that stores them (a narrowing
        # such as `patient` is stored as `subject`: registry.py)
        stored = self.registry.for_type(source).reference_key(has.param, f"{rt}/")
        if stored is None:
            return _NOTHING
        stored_param = stored.partition("=")[0]
        refs = await self.repo.references(
            access, source, inner.filter, stored_param, MAX_CHAIN_MATCHES + 1
        )
        if len(refs) > MAX_CHAIN_MATCHES:
            raise FhirError(
                "too-large", f"_has:{source}:{has.param} matches too many resources; narrow it"
            )
        prefix = stored
        ids = sorted({ref[len(prefix) :] for ref in refs if ref.startswith(prefix)})
        return {"_id": {"$in": ids}}

    # ---- the page ----------------------------------------------------------------------------
    async def search(
        self,
        access: AccessContext,
        rt: str,
        params: list[tuple[str, str]],
        base_url: str,
        lenient: bool = False,
        compartment: str | None = None,
    ) -> SearchPage:
        compiled = await self.compile(access, rt, params, base_url, lenient)
        if compartment is not None:
            compiled.filter = _and(compiled.filter, {fields.COMPARTMENT: compartment})
        page = SearchPage(compiled, [])
        if compiled.count == 0 or compiled.summary_count:
            # a count is what was asked for (`_summary=count`, `_count=0`), unless `_total=none`
            asked = compiled.total != "none" or compiled.summary_count
            page.total = await self.repo.count(access, rt, compiled.filter) if asked else None
            return page
        await self._page(access, rt, page)
        whole = compiled.cursor is None and page.next_cursor is None
        page.total = await self._total(access, rt, compiled, len(page.matches) if whole else None)
        page.included = await self._includes(access, rt, page.matches, compiled)
        if compiled.summary or compiled.elements:
            page.matches = [self._subset(v, compiled) for v in page.matches]
            page.included = [self._subset(v, compiled) for v in page.included]
        return page

    async def _total(
        self, access: AccessContext, rt: str, compiled: CompiledSearch, known: int | None
    ) -> int | None:
        """Bundle.total (search.html#total), by the rule the README states: `known` (a first page
        that holds every match is its own count) unless `_total=none`; else an exact count for
        `_total=accurate`, a count bounded by ESTIMATE_LIMIT for `_total=estimate` (exact below
        it, no total above), and no total when `_total` is not given, so that paging through a
        long result does not pay for counting it on every page (measured: half the database's
        work for a page of 20 of a patient's 50 Observations)."""
        if compiled.total == "none":
            return None
        if known is not None:
            return known
        if compiled.total == "accurate":
            return await self.repo.count(access, rt, compiled.filter)
        if compiled.total == "estimate":
            bounded = await self.repo.count(access, rt, compiled.filter, ESTIMATE_LIMIT + 1)
            return bounded if bounded <= ESTIMATE_LIMIT else None
        return None

    def _subset(self, version: Version, compiled: CompiledSearch) -> Version:
        assert version.resource is not None
        reduced = self.subsetter.subset(version.resource, compiled.summary, compiled.elements)
        if reduced is version.resource:
            return version
        return replace(version, text=dumps(reduced).decode(), parsed=reduced)

    async def _page(self, access: AccessContext, rt: str, page: SearchPage) -> None:
        compiled = page.compiled
        sort = compiled.sort
        cursor = compiled.cursor
        backwards = cursor is not None and cursor.direction == "b"
        order = [(name, -d if backwards else d) for name, d in sort] + [
            ("_id", -1 if backwards else 1)
        ]
        queries = [compiled.filter]
        wanted = compiled.count + 1
        rows: list[tuple[Version, dict[str, Any]]] = []
        if cursor is not None:
            if len(cursor.values) != len(sort):
                raise FhirError("bad-request", "the _cursor does not belong to this _sort")
            # backwards, `order` is already reversed: the rows before the cursor come after it
            id_op = "$lt" if backwards else "$gt"
            runs = _after(order[:-1], cursor, id_op)
            queries = [_and(compiled.filter, run) for run in runs]
            head = _first_runs_merged(order[:-1], cursor)
            if head is not None:
                rows, done = await self._merged_head(
                    access, rt, _and(compiled.filter, head), order, cursor, id_op, wanted
                )
                if done:
                    queries = queries[2:]
        for query in queries:  # the runs in order, until the page (and one more row) is full
            if len(rows) >= wanted:
                break
            rows += await self.repo.find_sorted(access, rt, query, order, wanted - len(rows))
        rows = rows[:wanted]
        more = len(rows) > compiled.count
        rows = rows[: compiled.count]
        if backwards:
            rows.reverse()
        page.matches = [version for version, _ in rows]
        if not rows:
            return
        first, last = rows[0], rows[-1]
        names = [name for name, _ in sort]
        after_last = Cursor("a", [_sort_value(last[1], f, last[0]) for f in names], last[0].id)
        before_first = Cursor("b", [_sort_value(first[1], f, first[0]) for f in names], first[0].id)
        has_next = (more and not backwards) or backwards
        has_previous = (more and backwards) or (cursor is not None and not backwards)
        page.next_cursor = after_last if has_next else None
        page.previous_cursor = before_first if has_previous else None

    async def _merged_head(
        self,
        access: AccessContext,
        rt: str,
        query: dict[str, Any],
        order: list[tuple[str, int]],
        cursor: Cursor,
        id_op: str,
        wanted: int,
    ) -> tuple[list[tuple[Version, dict[str, Any]]], bool]:
        """The first two runs after the cursor in one query (`_first_runs_merged`): the rows it
        returns that are not after the cursor (equal on every sort key, the id not beyond it)
        come first in `order` and are dropped. Done (True) unless more than HEAD_SLACK of them
        filled the fetch; then nothing is kept and the two runs are queried one by one."""
        limit = wanted + HEAD_SLACK
        fetched = await self.repo.find_sorted(access, rt, query, order, limit)
        names = [name for name, _ in order[:-1]]

        def after_cursor(row: tuple[Version, dict[str, Any]]) -> bool:
            version, keys = row
            if [_sort_value(keys, f, version) for f in names] != cursor.values:
                return True
            return version.id > cursor.id if id_op == "$gt" else version.id < cursor.id

        rows = [row for row in fetched if after_cursor(row)]
        if len(fetched) < limit or len(rows) >= wanted:
            return rows, True
        return [], False

    # ---- system level (all types, or those in _type) ------------------------------------------
    async def search_system(
        self,
        access: AccessContext,
        params: list[tuple[str, str]],
        base_url: str,
        lenient: bool = False,
    ) -> SearchPage:
        """Matches across resource types, ordered by type then id (search.html#all).

        Each parameter must be defined for every type searched (the Resource ones always are).
        """
        # without _type: every type the caller may search (a named type must be allowed)
        types = [t for t in self.conformance.stored_types if access.allows(t, "s")]
        if not types:
            access.constrain("Patient", "s", {})  # denied: say so as for any other search
        rest = []
        for name, value in params:
            if name == "_type":
                requested = [t.strip() for t in value.split(",") if t.strip()]
                if not requested:
                    raise FhirError("bad-request", "_type names no resource type", "_type")
                unknown = [t for t in requested if not self.conformance.is_stored(t)]
                if unknown:
                    raise FhirError(
                        "bad-request", f"_type: unknown resource type(s) {', '.join(unknown)}"
                    )
                types = sorted(set(requested))
            elif name in ("_sort", "_include", "_revinclude"):
                raise FhirError(
                    "not-supported", f"{name} is not supported on a search across types"
                )
            else:
                rest.append((name, value))
        per_type = [await self.compile(access, t, rest, base_url, lenient) for t in sorted(types)]
        first = per_type[0] if per_type else self.compiler(types[0]).compile([], base_url)
        page = SearchPage(first, [])
        pairs = list(zip(sorted(types), per_type, strict=True))

        async def counted() -> int:
            present = set(await self.repo.present_types([rt for rt, _ in pairs]))
            return sum(
                [await self.repo.count(access, rt, c.filter) for rt, c in pairs if rt in present]
            )

        if first.count == 0 or first.summary_count:
            asked = first.total != "none" or first.summary_count
            page.total = await counted() if asked else None
            return page
        page.matches, page.next_cursor = await self.across_types(
            access, pairs, first.count, first.cursor
        )
        whole = first.cursor is None and page.next_cursor is None
        if first.total == "none":
            page.total = None
        elif whole:
            page.total = len(page.matches)
        elif first.total in ("accurate", "estimate"):  # no cheaper estimate across types
            page.total = await counted()
        return page

    async def across_types(
        self,
        access: AccessContext,
        searches: list[tuple[str, CompiledSearch]],
        count: int,
        cursor: Cursor | None,
    ) -> tuple[list[Version], Cursor | None]:
        """One page of the matches of several types' searches, in the order of `searches` then
        id, and the cursor of the next page (keyset: the type and id of the last row)."""
        if cursor is not None and (cursor.direction != "a" or len(cursor.values) != 1):
            raise FhirError("bad-request", "the _cursor does not belong to this search")
        order = {rt: i for i, (rt, _) in enumerate(searches)}
        if cursor is not None and cursor.values[0] not in order:
            raise FhirError("bad-request", "the _cursor does not belong to this search")
        start = order[cursor.values[0]] if cursor is not None else 0
        limit = count + 1
        rows: list[Version] = []
        # Only the types ever written are queried: of ~145 types most deployments write few,
        # and each other would cost a round trip to find nothing.
        present = set(await self.repo.present_types([rt for rt, _ in searches[start:]]))
        for rt, compiled in searches[start:]:
            if rt not in present:
                continue
            query = compiled.filter
            if cursor is not None and rt == cursor.values[0]:
                query = _and(query, {"_id": {"$gt": cursor.id}})
            rows += await self.repo.find(access, rt, query, [("_id", 1)], limit - len(rows))
            if len(rows) >= limit:
                break
        matches = rows[:count]
        if len(rows) > count:
            last = matches[-1]
            return matches, Cursor("a", [last.resource_type], last.id)
        return matches, None

    # ---- includes ----------------------------------------------------------------------------
    async def _includes(
        self, access: AccessContext, rt: str, matches: list[Version], compiled: CompiledSearch
    ) -> list[Version]:
        if not (compiled.includes or compiled.revincludes) or not matches:
            return []
        seen = {(v.resource_type, v.id) for v in matches}
        included: list[Version] = []
        frontier = matches
        for iteration in range(MAX_ITERATIONS + 1):
            found: list[Version] = []
            for spec in compiled.includes:
                if spec.iterate or iteration == 0:
                    found += await self._forward(access, spec, frontier)
            for spec in compiled.revincludes:
                if spec.iterate or iteration == 0:
                    found += await self._reverse(access, spec, frontier)
            fresh = []
            for version in found:
                key = (version.resource_type, version.id)
                if key not in seen:
                    seen.add(key)
                    fresh.append(version)
            included += fresh
            if len(included) > MAX_INCLUDED:
                raise FhirError(
                    "too-large",
                    f"the includes add more than {MAX_INCLUDED} resources; page with a smaller _count",
                )
            if not fresh or not any(s.iterate for s in compiled.includes + compiled.revincludes):
                break
            frontier = fresh
        return included

    def _include_param(self, spec: IncludeSpec) -> list[str]:
        if not self.conformance.is_stored(spec.source_type):
            raise FhirError("bad-request", f"_include: unknown resource type '{spec.source_type}'")
        params = self.registry.for_type(spec.source_type).params
        if spec.param == "*":
            return [p.code for p in params.values() if p.type == "reference" and p.supported]
        param = params.get(spec.param)
        if param is None or param.type != "reference":
            raise FhirError(
                "bad-request", f"'{spec.param}' is not a reference parameter of {spec.source_type}"
            )
        return [spec.param]

    async def _forward(
        self, access: AccessContext, spec: IncludeSpec, sources: list[Version]
    ) -> list[Version]:
        codes = self._include_param(spec)
        table = self.registry.for_type(spec.source_type)
        wanted: dict[str, set[str]] = {}
        for version in sources:
            if version.resource_type != spec.source_type or version.resource is None:
                continue
            for code in codes:
                extractor = table.params[code].extractor
                if extractor is None:
                    continue
                for entry in reference_entries(code, extractor(version.resource)):
                    target = entry.split("=", 1)[1]
                    target_type, _, target_id = target.partition("/")
                    if (
                        target_id
                        and "/" not in target_id
                        and (spec.target_type in (None, target_type))
                    ):
                        wanted.setdefault(target_type, set()).add(target_id)
        found: list[Version] = []
        for target_type, ids in wanted.items():
            if self.conformance.is_stored(target_type):
                found += await self.repo.find_sorted_versions(
                    access, target_type, {"_id": {"$in": sorted(ids)}}, MAX_INCLUDED
                )
        return found

    async def _reverse(
        self, access: AccessContext, spec: IncludeSpec, targets: list[Version]
    ) -> list[Version]:
        codes = self._include_param(spec)
        table = self.registry.for_type(spec.source_type)
        stored = {
            table.reference_key(code, f"{v.resource_type}/{v.id}")
            for v in targets
            for code in codes
            if spec.target_type in (None, v.resource_type)
        }
        keys = sorted(key for key in stored if key is not None)
        if not keys:
            return []
        return await self.repo.find_sorted_versions(
            access, spec.source_type, {fields.REFERENCE: {"$in": keys}}, MAX_INCLUDED
        )
