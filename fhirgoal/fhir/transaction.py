"""batch and transaction Bundles: `POST [base]`, https://hl7.org/fhir/R4/http.html#transaction

- **transaction** (http.html#trules): all or nothing. The entries run as one unit of work
  (store/units.py) through the service's ordinary write path (fhir/service.py), so validation,
  conditional logic, condition claims, the clinical rules' derived writes and the audit records
  commit together or not at all; a failing entry rolls everything back and the answer is that
  entry's OperationOutcome, naming it (`Bundle.entry[i] (fullUrl)`). Entries are processed
  DELETE, then POST, then PUT/PATCH, then GET/HEAD. Before anything is written, every entry's
  identity is resolved (ids assigned to creates; conditional creates, updates, patches and deletes
  searched), two entries acting on one resource fail the transaction (400), and every
  `urn:uuid:`/`urn:oid:` placeholder and conditional reference (`Patient?identifier=...`,
  exactly one match, else 412) is rewritten wherever R4 says links stand (fhir/references.py).
  Placeholders may stand in criteria too (`Observation?subject=urn:uuid:...`); criteria whose
  placeholders depend on each other in a circle are a 400. A conditional reference whose criteria
  equal a conditional create or update of the same Bundle names that entry's resource.
- **batch**: entries are independent, processed in order, each as the single interaction it
  names, each with its own status or OperationOutcome; one failing affects no other. Placeholders
  and conditional references are a transaction's only (R4).

Concurrent transactions on the same resources: the database's write conflicts make the later one
run again on a fresh snapshot (store/units.py), where an If-Match or a conditional create sees
what the first committed: exactly one wins; a transaction that keeps conflicting gets 409.

The rules that run after a write (fhir/hooks.py: a goal's status from its ratings, alerts) run
once the transaction's writes are done, as part of it, each deciding once what the Bundle's
writes together imply (fhir/service.py `settle`).

Each entry is audited as the interaction it is (the service's `entry_audit`, installed by auth/),
inside the transaction's unit. Responses (`batch-response`, `transaction-response`) carry per
entry `response.status`, `location`, `etag`, `lastModified`, and `outcome` for failures; the
resource per `Prefer: return=` (minimal, representation, OperationOutcome) as single writes do.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import orjson

from fhirgoal.core.access import AccessContext
from fhirgoal.core.errors import FhirError, informational_outcome
from fhirgoal.fhir import bundles
from fhirgoal.fhir.bundle_entries import (
    Entry,
    entry_error,
    is_placeholder,
    query_pairs,
    read_entries,
)
from fhirgoal.fhir.hooks import EntryRecord
from fhirgoal.fhir.instants import instant_text
from fhirgoal.fhir.outcome import Outcome
from fhirgoal.fhir.references import LinkKind, LinkRewriter
from fhirgoal.fhir.service import FhirService
from fhirgoal.store.claims import claim_key
from fhirgoal.store.repository import Version

# transaction processing order (http.html#trules): DELETE, POST, PUT/PATCH, GET/HEAD
_ORDER = {"DELETE": 0, "POST": 1, "PUT": 2, "PATCH": 2, "GET": 3, "HEAD": 3}


@dataclass
class EntryResult:
    status: int
    version: Version | None = None
    body: dict[str, Any] | None = None  # the Bundle a search or history entry answered
    message: str = ""
    error: FhirError | None = None


class BundleProcessor:
    def __init__(
        self,
        service: FhirService,
        access: AccessContext,
        base: str,
        prefer_return: str | None = None,
        address: str | None = None,
    ) -> None:
        self.service = service
        self.access = access
        self.base = base
        self.prefer_return = prefer_return
        self.address = address
        self.links = LinkRewriter(service.validator.structure)

    async def process(self, bundle: Any) -> dict[str, Any]:
        """The response Bundle; a FhirError when a transaction fails (nothing is stored)."""
        settings = self.service.settings
        kind, parsed = read_entries(
            bundle,
            settings.max_bundle_entries,
            settings.max_search_params,
            settings.max_json_depth,
            self.base,
        )
        if kind == "batch":
            results = await self._batch(parsed)
        else:
            entries = self._checked(parsed)
            results = await self.service.in_transaction(lambda: self._transaction(entries))
        return self._response(f"{kind}-response", parsed, results)

    # ---- transaction -----------------------------------------------------------------------
    def _checked(self, parsed: list[Entry | FhirError]) -> list[Entry]:
        entries: list[Entry] = []
        for item in parsed:
            if isinstance(item, FhirError):
                raise item
            try:
                _require_type(self.service, item)
            except FhirError as error:
                raise entry_error(item.index, item.full_url, error) from None
            entries.append(item)
        seen: dict[tuple[str, str | None], Entry] = {}
        for entry in entries:  # bundle.html#bundle-unique
            if entry.full_url is None:
                continue
            key = (entry.full_url, _version_id(entry.resource))
            if key in seen:
                raise FhirError(
                    "invalid",
                    f"{entry.label} has the same fullUrl as Bundle.entry[{seen[key].index}]",
                    f"Bundle.entry[{entry.index}].fullUrl",
                )
            seen[key] = entry
        return entries

    async def _transaction(self, entries: list[Entry]) -> list[EntryResult]:
        """One run of the transaction inside its unit of work (run again on a conflict, so all
        of its state is made here)."""
        plan = _Plan(self, entries)
        await plan.resolve()
        results: list[EntryResult | None] = [None] * len(entries)
        settled = False
        for entry in sorted(entries, key=lambda e: (_ORDER[e.method], e.index)):
            if entry.method in ("GET", "HEAD") and not settled:
                # the reads come last and see the writes as the server's rules complete them
                await self.service.settle()
                settled = True
            try:
                results[entry.index] = await self._run(entry, plan)
            except FhirError as error:
                raise entry_error(entry.index, entry.full_url, error) from None
        done = [r for r in results if r is not None]
        await self._audit(entries, done)
        return done

    # ---- batch -----------------------------------------------------------------------------
    async def _batch(self, parsed: list[Entry | FhirError]) -> list[EntryResult]:
        results: list[EntryResult] = []
        for item in parsed:
            if isinstance(item, FhirError):
                results.append(EntryResult(item.status, error=item))
                continue
            try:
                _require_type(self.service, item)
                results.append(await self._run(item, None))
            except FhirError as error:
                results.append(EntryResult(error.status, error=error))
        await self._audit([e for e in parsed if isinstance(e, Entry)],
                          [r for e, r in zip(parsed, results, strict=True) if isinstance(e, Entry)])  # fmt: skip
        return results

    # ---- one entry -------------------------------------------------------------------------
    async def _run(self, entry: Entry, plan: _Plan | None) -> EntryResult:
        """The entry as the single interaction it names; in a transaction with its links
        rewritten and its identity the one the plan resolved."""
        svc, access, rt = self.service, self.access, entry.resource_type
        target = plan.identity.get(entry.index) if plan else None
        target_id = target.split("/", 1)[1] if target else None
        if entry.interaction == "create":
            assert entry.resource is not None
            resource = plan.rewrite(entry, entry.resource) if plan else entry.resource
            criteria = await plan.criteria(entry.if_none_exist) if plan else entry.if_none_exist
            outcome = await svc.create(access, rt, resource, criteria, self.base, new_id=target_id)
            if plan and outcome.version and outcome.version.id != target_id:
                raise FhirError(
                    "invalid",
                    f"the ifNoneExist criteria match {rt}/{outcome.version.id}, which another "
                    "entry of this Bundle writes",
                )
            return _result(outcome)
        if entry.interaction == "update":
            assert entry.resource is not None
            resource = plan.rewrite(entry, entry.resource) if plan else entry.resource
            if plan is not None:
                assert target_id is not None
                if entry.conditional and resource.get("id") in (None, target_id):
                    resource = {**resource, "id": target_id}
                return _result(await svc.update(access, rt, target_id, resource, entry.if_match))
            if entry.conditional:
                outcome = await svc.conditional_update(
                    access, rt, entry.params, resource, entry.if_match, self.base
                )
                return _result(outcome)
            assert entry.id is not None
            return _result(await svc.update(access, rt, entry.id, resource, entry.if_match))
        if entry.interaction == "patch":
            rid = target_id or entry.id or await self._single_match(entry, entry.params)
            return _result(await svc.patch(access, rt, rid, entry.patch, entry.if_match))
        if entry.interaction == "delete":
            if plan is not None and target_id is None:
                return EntryResult(204, message="no resource matched; nothing deleted")
            if entry.conditional and plan is None:
                return _result(await svc.conditional_delete(access, rt, entry.params, self.base))
            deleted = target_id or entry.id
            assert deleted is not None
            return _result(await svc.delete(access, rt, deleted, entry.if_match))
        return await self._read(entry)

    async def _read(self, entry: Entry) -> EntryResult:
        svc, access, rt, base = self.service, self.access, entry.resource_type, self.base
        if entry.interaction == "read":
            assert entry.id is not None
            outcome = await svc.read(
                access, rt, entry.id, entry.if_none_match, entry.if_modified_since
            )
            return _result(outcome)
        if entry.interaction == "vread":
            assert entry.id is not None and entry.version_id is not None
            return _result(await svc.vread(access, rt, entry.id, entry.version_id))
        if entry.interaction == "search":
            compartment = entry.compartment
            page = await svc.search(access, rt, entry.params, base, compartment=compartment)
            url = f"{base}/{compartment}/{rt}" if compartment else f"{base}/{rt}"
            return EntryResult(200, body=bundles.searchset_page(base, url, page))
        if entry.interaction == "search-system":
            page = await svc.search_system(access, entry.params, base)
            return EntryResult(200, body=bundles.system_searchset_page(base, entry.params, page))
        params = dict(entry.params)
        versions, total, links = await svc.history(access, rt or None, entry.id, params)
        url = "/".join(p for p in (base, rt, entry.id, "_history") if p)
        return EntryResult(200, body=bundles.history(base, url, versions, total, links))

    async def _single_match(self, entry: Entry, params: list[tuple[str, str]]) -> str:
        """The one resource a conditional patch's criteria match (404 none, 412 several)."""
        matches = await self.service.find_resources(
            self.access, entry.resource_type, params, 2, base_url=self.base, from_client=True
        )
        if not matches:
            raise FhirError("not-found", f"no {entry.resource_type} matches {entry.url}")
        if len(matches) > 1:
            raise FhirError("precondition-failed", f"{entry.url} matches several resources")
        return matches[0].id

    # ---- audit and response ----------------------------------------------------------------
    async def _audit(self, entries: list[Entry], results: list[EntryResult]) -> None:
        audit = self.service.entry_audit
        if audit is None or not entries:
            return
        records = [
            EntryRecord(e.method, e.path, e.query, r.status, r.version)
            for e, r in zip(entries, results, strict=True)
        ]
        await audit(self.access, self.address, records)

    def _response(
        self, kind: str, parsed: list[Entry | FhirError], results: list[EntryResult]
    ) -> dict[str, Any]:
        entries = []
        for item, result in zip(parsed, results, strict=True):
            method = item.method if isinstance(item, Entry) else "GET"
            entries.append(self._response_entry(method, result))
        bundle: dict[str, Any] = {"resourceType": "Bundle", "type": kind}
        if entries:
            bundle["entry"] = entries
        return bundle

    def _response_entry(self, method: str, result: EntryResult) -> dict[str, Any]:
        status = result.status
        response: dict[str, Any] = {"status": f"{status} {HTTPStatus(status).phrase}"}
        entry: dict[str, Any] = {}
        version = result.version
        if result.error is not None:
            response["outcome"] = result.error.outcome()
            return {"response": response}
        if version is not None:
            entry["fullUrl"] = f"{self.base}/{version.resource_type}/{version.id}"
            if status == 201:
                response["location"] = (
                    f"{self.base}/{version.resource_type}/{version.id}/_history/{version.version}"
                )
            response["etag"] = f'W/"{version.version}"'
            response["lastModified"] = instant_text(version.last_updated)
        if method != "HEAD":  # http.html#read: HEAD is the headers of a GET, without its body
            self._content(entry, response, method, result)
        entry["response"] = response
        return entry

    def _content(
        self, entry: dict[str, Any], response: dict[str, Any], method: str, result: EntryResult
    ) -> None:
        """The entry's resource (or informational outcome) as the request and `Prefer` ask."""
        version, status = result.version, result.status
        wanted = self.prefer_return if method != "GET" else None
        if result.body is not None:
            entry["resource"] = result.body
        elif wanted == "operationoutcome":
            text = result.message or (
                f"{version.resource_type}/{version.id} version {version.version}"
                if version
                else "done"
            )
            response["outcome"] = informational_outcome(text)
        elif (
            version is not None
            and version.text is not None
            and status != 304
            and method != "DELETE"
            and wanted != "minimal"
        ):
            entry["resource"] = orjson.Fragment(version.text)


class _Plan:
    """A transaction's identities and links, resolved in its unit of work before any write."""

    def __init__(self, processor: BundleProcessor, entries: list[Entry]) -> None:
        self.processor = processor
        self.entries = entries
        self.by_full_url = {e.full_url: e for e in entries if e.full_url}
        self.identity: dict[int, str | None] = {}  # entry index -> "Type/id" it acts on
        self.links: dict[str, str] = {}  # fullUrl -> "Type/id"
        self._visiting: list[int] = []
        # conditional writes of the Bundle by their criteria: a conditional reference with the
        # same criteria names the entry's resource
        self._by_criteria: dict[str, Entry] = {}
        self._conditional_refs: dict[str, str] = {}

    async def resolve(self) -> None:
        for entry in self.entries:
            criteria = entry.if_none_exist or (entry.params if entry.conditional else None)
            if criteria is not None and entry.interaction in ("create", "update"):
                self._by_criteria[claim_key(entry.resource_type, criteria)] = entry
        for entry in self.entries:
            if entry.writes:
                await self.identity_of(entry)
        acting: dict[str, Entry] = {}
        for entry in self.entries:
            target = self.identity.get(entry.index)
            if target is None:
                continue
            if target in acting:  # http.html#trules: identities may not overlap
                raise FhirError(
                    "invalid",
                    f"{entry.label} and {acting[target].label} both act on {target}; a "
                    "transaction may change a resource once",
                )
            acting[target] = entry
            if entry.full_url and (is_placeholder(entry.full_url) or entry.method == "POST"):
                self.links[entry.full_url] = target
        for entry in self.entries:
            if entry.resource is not None:
                await self._resolve_conditional_references(entry)

    async def identity_of(self, entry: Entry) -> str | None:
        """The "Type/id" a write entry acts on (None: a conditional delete matching nothing)."""
        if entry.index in self.identity:
            return self.identity[entry.index]
        if entry.index in self._visiting:
            chain = " -> ".join(f"Bundle.entry[{i}]" for i in [*self._visiting, entry.index])
            raise FhirError("invalid", f"placeholders in criteria depend on each other: {chain}")
        self._visiting.append(entry.index)
        try:
            found = await self._identity(entry)
        except FhirError as error:
            raise entry_error(entry.index, entry.full_url, error) from None
        finally:
            self._visiting.pop()
        self.identity[entry.index] = found
        return found

    async def _identity(self, entry: Entry) -> str | None:
        rt = entry.resource_type
        new = f"{rt}/{uuid.uuid4()}"
        if entry.interaction == "create":
            if entry.if_none_exist is None:
                return new
            matches = await self._search(rt, await self.criteria(entry.if_none_exist))
            if len(matches) > 1:
                raise FhirError("precondition-failed", "ifNoneExist matches several resources")
            return f"{rt}/{matches[0]}" if matches else new
        if not entry.conditional:
            return f"{rt}/{entry.id}"
        matches = await self._search(rt, await self.criteria(entry.params))
        if len(matches) > 1:
            raise FhirError("precondition-failed", f"{entry.url} matches several resources")
        if matches:
            return f"{rt}/{matches[0]}"
        if entry.interaction == "update":
            body_id = (entry.resource or {}).get("id")
            return f"{rt}/{body_id}" if isinstance(body_id, str) else new
        if entry.interaction == "patch":
            raise FhirError("not-found", f"no {rt} matches {entry.url}")
        return None  # a conditional delete that matches nothing deletes nothing

    async def criteria(self, params: list[tuple[str, str]] | None) -> list[tuple[str, str]] | None:
        """Search criteria with the Bundle's placeholders replaced by the resources they name."""
        if params is None:
            return None
        out = []
        for name, value in params:
            target = self.by_full_url.get(value)
            if target is not None and target.writes:
                identity = await self.identity_of(target)
                if identity is None:
                    raise FhirError(
                        "invalid", f"{value} names {target.label}, which writes no resource"
                    )
                value = identity
            elif is_placeholder(value):
                raise FhirError("invalid", f"{value} names no entry of the Bundle")
            out.append((name, value))
        return out

    async def _search(self, rt: str, params: list[tuple[str, str]] | None) -> list[str]:
        processor = self.processor
        found = await processor.service.find_resources(
            processor.access, rt, params or [], 2, base_url=processor.base, from_client=True
        )
        return [v.id for v in found]

    async def _resolve_conditional_references(self, entry: Entry) -> None:
        assert entry.resource is not None
        wanted: list[str] = []

        def collect(value: str, kind: LinkKind) -> str | None:
            if kind is LinkKind.REFERENCE and _is_conditional(value):
                wanted.append(value)
            return None

        self.processor.links.rewrite(entry.resource, collect)
        for reference in wanted:
            if reference in self._conditional_refs:
                continue
            try:
                self._conditional_refs[reference] = await self._conditional(reference)
            except FhirError as error:
                raise entry_error(entry.index, entry.full_url, error) from None

    async def _conditional(self, reference: str) -> str:
        """A conditional reference's one match (http.html#trules: none or several fail)."""
        settings = self.processor.service.settings
        rt, _, query = reference.partition("?")
        self.processor.service.require_type(rt)
        params = query_pairs(query, settings.max_search_params)
        if not params:
            raise FhirError("invalid", f"the conditional reference {reference} has no criteria")
        criteria = await self.criteria(params)
        same = self._by_criteria.get(claim_key(rt, criteria or []))
        if same is not None:
            identity = await self.identity_of(same)
            assert identity is not None
            return identity
        matches = await self._search(rt, criteria)
        if len(matches) != 1:
            several = "several resources" if matches else "no resource"
            raise FhirError(
                "precondition-failed",
                f"the conditional reference {reference} matches {several}; it must match one",
            )
        return f"{rt}/{matches[0]}"

    def rewrite(self, entry: Entry, resource: dict[str, Any]) -> dict[str, Any]:
        def replace(value: str, kind: LinkKind) -> str | None:
            target = self.links.get(value)
            if target is not None:
                return target
            if kind is not LinkKind.REFERENCE:
                return None
            if _is_conditional(value):
                return self._conditional_refs[value]
            if is_placeholder(value):
                raise FhirError(
                    "invalid", f"the reference {value} names no entry of the Bundle (no fullUrl)"
                )
            return None

        return self.processor.links.rewrite(resource, replace)


def _require_type(service: FhirService, entry: Entry) -> None:
    """The entry's resource type is one the server serves (system-level entries have none)."""
    if entry.resource_type:
        service.require_type(entry.resource_type)


def _is_conditional(reference: str) -> bool:
    """`Type?criteria` (http.html#trules), not an absolute URL or a fragment."""
    head, sep, _ = reference.partition("?")
    return bool(sep) and "/" not in head and ":" not in head and head[:1].isupper()


def _version_id(resource: dict[str, Any] | None) -> str | None:
    meta = (resource or {}).get("meta")
    version = meta.get("versionId") if isinstance(meta, dict) else None
    return version if isinstance(version, str) else None


def _result(outcome: Outcome) -> EntryResult:
    return EntryResult(outcome.status, outcome.version, outcome.body, outcome.message)
