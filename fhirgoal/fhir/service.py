"""FHIR interactions over the repository: one place for the write rules.

https://hl7.org/fhir/R4/http.html : create (server-assigned id, If-None-Exist), read, vread,
update (update-as-create, If-Match), conditional update and delete, patch (JSON Patch and
FHIRPath Patch), delete
(history kept, reads answer 410), history. The service stamps meta, validates, extracts the search
index and speaks to the repository; it never formats HTTP (rest.py does).

Every write takes this one path, alone or as an entry of a transaction Bundle (fhir/transaction.py):
`in_transaction` runs work as a unit of work (store/units.py), whose session the repository picks
up, so the same calls then commit together. Within a unit the after-write rules of its writes
run once the unit's work is done (or when it asks, `settle`), before the commit and as part of it:
no pending mark is needed (nothing can be stored without them), a rule that fails fails the unit
instead of being left to the sweep, and a rule that derives one thing from many writes (a goal's
status from the ratings of a transaction) decides it once, not once per write (fhir/hooks.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
import uuid
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from datetime import datetime
from typing import Any, TypeVar

import structlog
from bson.errors import BSONError
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from fhirgoal.config import Settings
from fhirgoal.core import fields
from fhirgoal.core.access import UNRESTRICTED, AccessContext
from fhirgoal.core.errors import FhirError, Issue
from fhirgoal.core.jsonio import dumps
from fhirgoal.fhir.conformance import Conformance
from fhirgoal.fhir.fhirpath_patch import apply_fhirpath_patch, is_fhirpath_patch
from fhirgoal.fhir.hooks import EntryAudit, HookSet, WriteEvent
from fhirgoal.fhir.instants import instant_text, now
from fhirgoal.fhir.operations import OperationRegistry
from fhirgoal.fhir.outbox import Outbox
from fhirgoal.fhir.outcome import Outcome
from fhirgoal.fhir.patching import apply_patch
from fhirgoal.fhir.search.dates import parse_range
from fhirgoal.fhir.search.engine import SearchEngine, SearchPage
from fhirgoal.fhir.search.query import SERVER_SEARCH_LIMITS
from fhirgoal.fhir.search.registry import SearchRegistry
from fhirgoal.fhir.validation import Validator
from fhirgoal.store.append_log import AppendLog
from fhirgoal.store.claims import claim_key
from fhirgoal.store.outbox import OutboxItem, OutboxStore
from fhirgoal.store.repository import AlreadyExists, Repository, Version
from fhirgoal.store.units import RetryUnit, in_unit, run_unit

log = structlog.get_logger(__name__)
T = TypeVar("T")
ID_PATTERN = re.compile(r"^[A-Za-z0-9\-.]{1,64}$")
_ETAG = re.compile(r'^(?:W/)?"?(\d+)"?$')
# Runs of the after-write rules of one write when a concurrent write keeps changing what they
# update; beyond that the pending mark stays and the sweep finishes them.
AFTER_HOOK_ATTEMPTS = 3
# Searches and claims of a conditional create before it gives up with 409 (about 2 s of waiting
# for a concurrent claimant to store its resource).
CLAIM_ATTEMPTS = 12
# Rounds of a unit's after-write rules (each round runs the rules of the writes the round before
# made: a derived goal status is a Goal write the status rule looks at again); convergent rules
# are done in two or three.
SETTLE_ROUNDS = 8

# The writes of the running unit of work whose after-write rules have not run yet (see `settle`).
_UNSETTLED: ContextVar[list[WriteEvent] | None] = ContextVar("fhirgoal_unsettled", default=None)


async def _back_off(attempt: int) -> None:
    """After losing a compare-and-set to a concurrent writer: a random pause that grows with each
    loss, so that a burst of writers to one resource spreads out instead of colliding again."""
    await asyncio.sleep(random.uniform(0, min(0.005 * 2**attempt, 0.25)))


def parse_etag(value: str | None, header: str = "If-Match") -> int | None:
    if value is None:
        return None
    m = _ETAG.match(value.strip())
    if not m:
        raise FhirError(
            "bad-request", f'malformed {header} value {value!r}; expected W/"<version>"'
        )
    return int(m.group(1))


def stamp(resource: dict[str, Any], rid: str, vid: int, moment: datetime) -> dict[str, Any]:
    """The resource as stored: id and meta set by the server, everything else as sent."""
    meta = dict(resource.get("meta") or {})
    meta["versionId"] = str(vid)
    meta["lastUpdated"] = instant_text(moment)
    out: dict[str, Any] = {"resourceType": resource["resourceType"], "id": rid, "meta": meta}
    for key, value in resource.items():
        if key not in out:
            out[key] = value
    return out


class FhirService:
    def __init__(
        self,
        settings: Settings,
        conformance: Conformance,
        registry: SearchRegistry,
        validator: Validator,
        repository: Repository,
    ) -> None:
        self.settings = settings
        self.conformance = conformance
        self.registry = registry
        self.validator = validator
        self.repo = repository
        self.engine = SearchEngine(settings, conformance, registry, repository)
        self.hooks = HookSet()
        # how the entries of batch and transaction Bundles are audited (auth/ sets it)
        self.entry_audit: EntryAudit | None = None
        self.operations = OperationRegistry()
        # The audit trail of reads is stored through an append log and indexed later; every
        # reader of AuditEvent catches it up first, whatever the authorization mode.
        self.audit_log = AppendLog(
            repository,
            "AuditEvent",
            self.first_version,
            interval=settings.audit_flush_seconds,
            max_backlog=settings.audit_index_backlog,
        )
        repository.write_through_log(self.audit_log)
        # outbound work recorded with the writes that cause it (exchange/ adds the sources)
        self.outbox = Outbox(OutboxStore(repository.db, repository.batched))
        # What installed packages add to a type's CapabilityStatement entry (fhir/capability.py):
        # lists are appended to, e.g. {"Subscription": {"extension": [...]}}.
        self.resource_capabilities: dict[str, dict[str, list[Any]]] = {}

    # ---- stored data, for the server's own logic (auth/, clinical/) -------------------------
    # The layers above reach stored data through these, never through `repo`: no hooks, no
    # validation, the caller's access context applied by the repository as always.
    @property
    def database(self) -> AsyncDatabase[dict[str, Any]]:
        """The database the resources live in (auth/ keeps its own collections there)."""
        return self.repo.db

    async def current(
        self, access: AccessContext, rt: str, rid: str, server_fields: bool = False
    ) -> Version | None:
        """The current version (a deletion's tombstone included), or None when unknown or out of
        the caller's reach; `server_fields`: with what the hooks kept with it (`Version.server`)."""
        return await self.repo.current(access, rt, rid, server_fields=server_fields)

    async def stored_version(
        self, access: AccessContext, rt: str, rid: str, vid: int
    ) -> Version | None:
        """Version `vid` of a resource (current or earlier), or None."""
        return await self.repo.version(access, rt, rid, vid)

    async def find_where(
        self,
        access: AccessContext,
        rt: str,
        query: dict[str, Any],
        sort: list[tuple[str, int]],
        limit: int,
        server_fields: bool = False,
    ) -> list[Version]:
        """Live resources matching a compiled filter (`engine.compile(...).filter`, or a test
        on `_id`); `server_fields`: with what the hooks kept with them (`Version.server`)."""
        return await self.repo.find(access, rt, query, sort, limit, server_fields)

    async def ids_where(
        self, access: AccessContext, rt: str, query: dict[str, Any], limit: int
    ) -> list[str]:
        """The ids of the live resources matching a compiled filter."""
        return await self.repo.ids(access, rt, query, limit)

    async def references_where(
        self, access: AccessContext, rt: str, query: dict[str, Any], param: str, limit: int
    ) -> list[str]:
        """The `param=Type/id` reference entries of the live resources matching a filter."""
        return await self.repo.references(access, rt, query, param, limit)

    async def store_first_version(
        self, access: AccessContext, version: Version, index: dict[str, Any]
    ) -> None:
        """Store a version made by `first_version` as it is (the server's own records, such as
        an audit Provenance): no validation, no hooks."""
        await self.repo.insert(access, version, index)

    async def store_first_versions(self, versions: list[tuple[Version, dict[str, Any]]]) -> None:
        """Store several versions made by `first_version` in one call (the audit records of a
        transaction's entries): no access check, no validation, no hooks."""
        await self.repo.insert_batch(versions)

    async def in_transaction(self, work: Callable[[], Awaitable[T]]) -> T:
        """`work()` as one unit of work: everything it writes through this service commits
        together or not at all; run again on a transient conflict (store/units.py)."""
        repo = self.repo

        async def attempt() -> T:
            token = _UNSETTLED.set([])  # each attempt starts afresh (store/units.py)
            try:
                result = await work()
                await self.settle()
                return result
            finally:
                _UNSETTLED.reset(token)

        return await run_unit(repo.client, repo.db, attempt, self.settings.transaction_attempts)

    async def settle(self) -> None:
        """Run the after-write rules of the unit's writes so far (fhir/hooks.py), until the
        writes they make need no more: before a unit commits, and before a transaction's reads
        (which must see what the rules derive). Outside a unit there is nothing to do: each
        write's rules ran with it."""
        unsettled = _UNSETTLED.get()
        if unsettled is None:
            return
        for _ in range(SETTLE_ROUNDS):
            if not unsettled:
                return
            events = unsettled[:]
            unsettled.clear()
            await self.hooks.after_all(events)
        raise FhirError(
            "internal",
            f"the server's rules did not settle in {SETTLE_ROUNDS} rounds of derived writes",
        )

    # ---- helpers -----------------------------------------------------------------------------
    def require_type(self, rt: str) -> None:
        if not self.conformance.is_stored(rt):
            if rt in self.conformance.wire_types:  # Parameters, OperationOutcome
                raise FhirError(
                    "not-found",
                    f"{rt} has no RESTful endpoint in R4: it is carried by operations and Bundles",
                )
            raise FhirError("not-found", f"unknown or unsupported resource type '{rt}'")

    def _check_body(self, rt: str, resource: Any) -> dict[str, Any]:
        if not isinstance(resource, dict):
            raise FhirError("invalid", "the body must be a JSON object (a FHIR resource)")
        body_type = resource.get("resourceType")
        if body_type != rt:
            raise FhirError(
                "invalid",
                f"resourceType '{body_type}' does not match the URL type '{rt}'",
                "resourceType",
            )
        return resource

    def _prepare(
        self, resource: dict[str, Any], rid: str, vid: int, moment: datetime
    ) -> tuple[dict[str, Any], dict[str, Any], list[Issue]]:
        """The resource as stored, its search index, and the validation warnings."""
        stored = stamp(resource, rid, vid, moment)
        warnings = self.validator.validate(stored)
        index = self.registry.for_type(stored["resourceType"]).index_fields(stored)
        return stored, index, warnings

    def first_version(
        self, resource: dict[str, Any], moment: datetime
    ) -> tuple[Version, dict[str, Any]]:
        """A record the server writes about itself (an AuditEvent, a Provenance) as a first
        version with its search index. Not validated: the server built it, and its tests
        validate what it builds."""
        rt = resource["resourceType"]
        rid = resource.get("id") or str(uuid.uuid4())
        stored = stamp(resource, rid, 1, moment)
        index = self.registry.for_type(rt).index_fields(stored)
        return self._version(rt, rid, 1, moment, "POST", stored), index

    @staticmethod
    def _version(
        rt: str, rid: str, vid: int, moment: datetime, method: str, stored: dict[str, Any]
    ) -> Version:
        return Version(rt, rid, vid, moment, method, dumps(stored).decode(), parsed=stored)

    async def find_resources(
        self,
        access: AccessContext,
        rt: str,
        params: list[tuple[str, str]],
        limit: int = 1000,
        sort: list[tuple[str, int]] | None = None,
        base_url: str = "",
        from_client: bool = False,
    ) -> list[Version]:
        """Live resources matching search `params`, for server-side logic (no paging, no Bundle);
        `from_client`: the parameters came from a request (conditional criteria), so the
        client search limits apply."""
        limits = None if from_client else SERVER_SEARCH_LIMITS
        compiled = await self.engine.compile(access, rt, params, base_url, limits=limits)
        return await self.repo.find(access, rt, compiled.filter, sort or [("_id", 1)], limit)

    async def _matches(
        self, access: AccessContext, rt: str, params: list[tuple[str, str]], base_url: str
    ) -> list[Version]:
        if not params:
            raise FhirError("bad-request", "a conditional interaction needs search criteria")
        return await self.find_resources(access, rt, params, 2, base_url=base_url, from_client=True)

    # ---- create ------------------------------------------------------------------------------
    async def create(
        self,
        access: AccessContext,
        rt: str,
        resource: Any,
        if_none_exist: list[tuple[str, str]] | None,
        base_url: str,
        new_id: str | None = None,
    ) -> Outcome:
        """`new_id`: the id to create under, when the caller must know it before (a transaction
        rewrites the references to an entry before the entry is stored); else a new UUID."""
        resource = self._check_body(rt, resource)
        if if_none_exist is None:
            return await self._create_new(access, rt, resource, new_id or str(uuid.uuid4()))
        matches, claimed = await self._claim_absent(access, rt, if_none_exist, base_url, new_id)
        if len(matches) > 1:
            raise FhirError("precondition-failed", "If-None-Exist criteria match several resources")
        if matches:
            return Outcome(200, matches[0], message="a matching resource exists; nothing created")
        assert claimed is not None
        return await self._create_claimed(access, rt, resource, claimed)

    async def _create_new(
        self, access: AccessContext, rt: str, resource: dict[str, Any], rid: str
    ) -> Outcome:
        resource = await self.hooks.prepare(access, resource, None)
        moment = now()
        stored, index, warnings = self._prepare(resource, rid, 1, moment)
        version = self._version(rt, rid, 1, moment, "POST", stored)
        event = WriteEvent(access, rt, rid, stored, None, warnings=warnings)
        await self._insert(access, version, await self._before(event, version, index, insert=True))
        await self._after(event, version)
        return Outcome(201, version, warnings=event.warnings)

    async def _create_claimed(
        self, access: AccessContext, rt: str, resource: dict[str, Any], claimed: tuple[str, str]
    ) -> Outcome:
        key, rid = claimed
        try:
            return await self._create_new(access, rt, resource, rid)
        except BaseException:
            # nothing was created: let a concurrent request with the same criteria go ahead
            with contextlib.suppress(PyMongoError):
                await self.repo.claims.release(key, rid)
            raise

    async def _claim_absent(
        self,
        access: AccessContext,
        rt: str,
        params: list[tuple[str, str]],
        base_url: str,
        new_id: str | None = None,
    ) -> tuple[list[Version], tuple[str, str] | None]:
        """The resources matching `params`; when there are none, a claim on the criteria (its key
        and the id to create, `new_id` if given) that no concurrent request holds
        (store/claims.py). A request that loses the claim searches again, so it finds the
        winner's resource once it is stored. In a unit of work, whose snapshot a search again
        would not change, a claimant's resource that is stored and was not found no longer
        matches, and a claimant still creating makes the unit run again (store/units.py)."""
        unit = in_unit()
        key = claim_key(rt, params)
        stored_before_search: str | None = None  # a claimant's resource seen before a search
        for attempt in range(CLAIM_ATTEMPTS):
            matches = await self._matches(access, rt, params, base_url)
            if matches:
                return matches, None
            rid = new_id or str(uuid.uuid4())
            held = await self.repo.claims.claim(key, rid)
            if held is None:
                return [], (key, rid)
            if held.target and held.target == stored_before_search:
                # Its resource was stored before the search above, which did not find it: it no
                # longer matches (for this caller), so the claim no longer stands for the criteria.
                if await self.repo.claims.take_over(key, held.target, rid):
                    return [], (key, rid)
                continue
            holder = await self.repo.current(UNRESTRICTED, rt, held.target) if held.target else None
            if holder is not None and not holder.deleted and not unit:
                stored_before_search = held.target  # search again: it may match now
                continue
            # deleted (it cannot match again), or never created by a claimant that died
            gone = holder is not None or (bool(held.target) and held.stale)
            if gone and await self.repo.claims.take_over(key, held.target, rid):
                return [], (key, rid)
            if unit:
                raise RetryUnit(f"a concurrent conditional create of {rt} holds the criteria")
            await asyncio.sleep(min(0.005 * 2**attempt, 0.25))  # the claimant is creating
        raise FhirError(
            "conflict",
            f"concurrent conditional writes on the same {rt} criteria; retry the request",
        )

    async def _before(
        self, event: WriteEvent, version: Version, index: dict[str, Any], insert: bool = False
    ) -> tuple[dict[str, Any], list[OutboxItem]]:
        """Run the before-hooks and plan the version's outbox items (fhir/outbox.py: they are
        written before the version, so that its acknowledgement covers them). Returns the index
        to store, marked pending when after-hooks will run outside a unit of work (in one, they
        commit with the write or not at all), and the items still to be written: for a first
        version stored outside a unit (`insert`), they go with it, in the repository's batch
        (`_insert`): one driver call per batch of writes instead of one more per write, which
        was most of what the outbox cost a create (bench/outbox.py); otherwise they are
        written here."""
        await self.hooks.before(event)
        items = self.outbox.plan(version, self._outbox_index(event, version, index))
        event.outbox = bool(items)
        if items and (not insert or in_unit()):
            await self.outbox.store.record(items)
            items = []
        stored = {**index, fields.PENDING: True} if event.hooks and not in_unit() else index
        if event.server_fields and not version.deleted:
            stored = {**stored, fields.SERVER: dict(event.server_fields)}
        return stored, items

    def _outbox_index(
        self, event: WriteEvent, version: Version, index: dict[str, Any]
    ) -> dict[str, Any]:
        """The search index the outbox sources match `version` by. A deletion has none of its
        own: it is matched as the version it deletes (a Subscription is told that a resource it
        followed is gone), whose index is extracted again here, on deletions only."""
        previous = event.previous
        deleted = previous.resource if version.deleted and previous is not None else None
        if deleted is not None and self.outbox.follows(version.resource_type):
            return self.registry.for_type(version.resource_type).index_fields(deleted)
        return index

    async def _after(self, event: WriteEvent, version: Version) -> None:
        if event.outbox:
            self.outbox.written()
        if not event.hooks:
            return
        event.version = version
        if in_unit():
            # part of the unit: a failure (a conflict included) aborts it, and nothing is kept
            unsettled = _UNSETTLED.get()
            if unsettled is None:
                await self.hooks.after(event)
            else:
                unsettled.append(event)  # with the unit's other writes (`settle`)
            return
        for attempt in range(1, AFTER_HOOK_ATTEMPTS + 1):
            try:
                await self.hooks.after(event)
                break
            except FhirError as error:
                # Another request changed a resource a rule keeps in step (two sessions of one
                # client written at once update the same Flag or Goal): rules derive from current
                # state, so running them again converges.
                if error.category == "precondition-failed" and attempt < AFTER_HOOK_ATTEMPTS:
                    continue
                self._after_failed(version, error)
                return
            except Exception as error:
                self._after_failed(version, error)
                return
        await self.repo.clear_pending(version)

    @staticmethod
    def _after_failed(version: Version, error: Exception) -> None:
        # The write itself is stored and stays so; what a rule derives from it is not. That is a
        # server fault, not the client's, and answering 500 would invite a retry that duplicates
        # the write: log it and keep the pending mark (the sweep re-runs it).
        log.error("after-write rule failed", resource=f"{version.resource_type}/{version.id}",
                  version=version.version, error=repr(error))  # fmt: skip

    async def finish_pending(
        self, access: AccessContext, older_than: datetime | None = None
    ) -> int:
        """Re-run the after-hooks of writes a crash interrupted (see hooks.py); how many ran."""
        finished = 0
        for rt in self.hooks.types_with_hooks():
            for version in await self.repo.pending(rt, older_than):
                # The previous version too: hooks keep what it pointed at in step as well (a
                # rating moved to another goal, a deletion).
                previous = None
                if version.version > 1:
                    previous = await self.repo.version(access, rt, version.id, version.version - 1)
                event = WriteEvent(access, rt, version.id, version.resource, previous)
                event.hooks = [h for h in self.hooks.for_type(rt) if h.interested(event)]
                await self._after(event, version)  # logs and keeps the mark if a hook fails
                if not event.hooks:
                    await self.repo.clear_pending(version)
                finished += 1
        return finished

    async def _insert(
        self,
        access: AccessContext,
        version: Version,
        planned: tuple[dict[str, Any], list[OutboxItem]],
    ) -> None:
        """Store a first version with what `_before(..., insert=True)` planned for it."""
        index, items = planned
        try:
            await self.repo.insert(access, version, index, self.outbox.store.companions(items))
        except BSONError as exc:
            raise FhirError("invalid", f"the resource cannot be stored: {exc}") from None

    # ---- read --------------------------------------------------------------------------------
    async def read(
        self,
        access: AccessContext,
        rt: str,
        rid: str,
        if_none_match: str | None = None,
        if_modified_since: datetime | None = None,
    ) -> Outcome:
        """A read; a conditional read (http.html#cread) answers 304 Not Modified without the
        resource when the current version is the one `If-None-Match` names, or is not newer
        than `If-Modified-Since` (whole seconds, as HTTP dates have)."""
        version = await self.repo.current(access, rt, rid)
        if version is None:
            raise FhirError("not-found", f"{rt}/{rid} is not known")
        if version.deleted:
            raise FhirError(
                "gone", f"{rt}/{rid} was deleted", headers={"ETag": f'W/"{version.version}"'}
            )
        if if_none_match is not None:
            if parse_etag(if_none_match, "If-None-Match") == version.version:
                return Outcome(304, version)
        elif (
            if_modified_since is not None
            and version.last_updated.replace(microsecond=0) <= if_modified_since
        ):
            return Outcome(304, version)
        return Outcome(200, version)

    async def vread(self, access: AccessContext, rt: str, rid: str, vid: str) -> Outcome:
        if not vid.isdigit():
            raise FhirError("not-found", f"{rt}/{rid} has no version '{vid}'")
        version = await self.repo.version(access, rt, rid, int(vid))
        if version is None:
            raise FhirError("not-found", f"{rt}/{rid} has no version {vid}")
        if version.deleted:
            raise FhirError("gone", f"version {vid} of {rt}/{rid} is a deletion")
        return Outcome(200, version)

    # ---- update ------------------------------------------------------------------------------
    async def update(
        self,
        access: AccessContext,
        rt: str,
        rid: str,
        resource: Any,
        if_match: str | None,
        method: str = "PUT",
    ) -> Outcome:
        resource = self._check_body(rt, resource)
        if not ID_PATTERN.match(rid):
            raise FhirError(
                "invalid", f"'{rid}' is not a valid FHIR id ([A-Za-z0-9-.], 1-64)", "id"
            )
        body_id = resource.get("id")
        if body_id != rid:
            raise FhirError(
                "invalid",
                "the resource id must be present and equal the id in the URL"
                if body_id is None
                else f"the resource id '{body_id}' does not match the URL id '{rid}'",
                f"{rt}.id",
            )
        expected = parse_etag(if_match)
        for attempt in range(self.settings.write_retries):
            outcome = await self._try_update(access, rt, rid, resource, expected, method)
            if outcome is not None:
                return outcome
            await _back_off(attempt)
        raise FhirError("conflict", f"{rt}/{rid} is being changed concurrently; retry the update")

    async def _try_update(
        self,
        access: AccessContext,
        rt: str,
        rid: str,
        resource: dict[str, Any],
        expected: int | None,
        method: str,
    ) -> Outcome | None:
        current = await self.repo.current(access, rt, rid, "u")
        if current is None:
            if not access.sees_all(rt, "u"):
                # The id may belong to a resource out of this caller's reach: creating under it
                # would fail or succeed depending on that, and so reveal it. Such callers create
                # with POST (server-assigned ids).
                raise FhirError("not-found", f"{rt}/{rid} is not known")
            if expected is not None:
                raise FhirError(
                    "precondition-failed", f"{rt}/{rid} does not exist (If-Match given)"
                )
            resource = await self.hooks.prepare(access, resource, None)
            moment = now()
            stored, index, warnings = self._prepare(resource, rid, 1, moment)
            version = self._version(rt, rid, 1, moment, method, stored)
            event = WriteEvent(access, rt, rid, stored, None, warnings=warnings)
            try:
                planned = await self._before(event, version, index, insert=True)
                await self._insert(access, version, planned)
            except AlreadyExists:
                return None  # created meanwhile: go round again as an update
            await self._after(event, version)
            return Outcome(201, version, warnings=event.warnings)
        if expected is not None and expected != current.version:
            raise FhirError(
                "precondition-failed",
                f"version conflict: If-Match is {expected}, the current version is {current.version}",
            )
        resource = await self.hooks.prepare(access, resource, None if current.deleted else current)
        moment = max(now(), current.last_updated)
        stored, index, warnings = self._prepare(resource, rid, current.version + 1, moment)
        version = self._version(rt, rid, current.version + 1, moment, method, stored)
        event = WriteEvent(access, rt, rid, stored, current, warnings=warnings)
        stored_index, _ = await self._before(event, version, index)
        if await self.repo.replace(access, current, version, stored_index):
            await self._after(event, version)
            return Outcome(200, version, warnings=event.warnings)
        if expected is not None:
            raise FhirError("precondition-failed", f"{rt}/{rid} was changed by another request")
        return None

    async def conditional_update(
        self,
        access: AccessContext,
        rt: str,
        params: list[tuple[str, str]],
        resource: Any,
        if_match: str | None,
        base_url: str,
        new_id: str | None = None,
    ) -> Outcome:
        """`new_id`: the id to create under when nothing matches and the body has none (as
        `create`'s)."""
        resource = self._check_body(rt, resource)
        matches = await self._matches(access, rt, params, base_url)
        if len(matches) > 1:
            raise FhirError("precondition-failed", "the criteria match several resources")
        if matches:
            rid = matches[0].id
            if resource.get("id") not in (None, rid):
                raise FhirError(
                    "invalid", f"the resource id does not match the matched {rt}/{rid}", f"{rt}.id"
                )
            return await self.update(access, rt, rid, {**resource, "id": rid}, if_match)
        if "id" in resource:
            return await self.update(access, rt, resource["id"], resource, if_match)
        matches, claimed = await self._claim_absent(access, rt, params, base_url, new_id)
        if matches:  # created concurrently: update it instead
            return await self.conditional_update(
                access, rt, params, resource, if_match, base_url, new_id
            )
        assert claimed is not None
        return await self._create_claimed(access, rt, resource, claimed)

    # ---- patch -------------------------------------------------------------------------------
    async def patch(
        self, access: AccessContext, rt: str, rid: str, patch: Any, if_match: str | None
    ) -> Outcome:
        """`patch`: a JSON Patch (an array of operations) or a FHIRPath Patch (a Parameters
        resource, fhir/fhirpath_patch.py); http.html#patch."""
        fhirpath = is_fhirpath_patch(patch)
        if not fhirpath and (
            not isinstance(patch, list) or not all(isinstance(op, dict) for op in patch)
        ):
            raise FhirError("bad-request", "a JSON Patch document is an array of operation objects")
        current = await self.repo.current(access, rt, rid, "u")
        if current is None:
            raise FhirError("not-found", f"{rt}/{rid} is not known")
        if current.deleted:
            raise FhirError("gone", f"{rt}/{rid} was deleted")
        assert current.resource is not None
        expected = parse_etag(if_match)
        if expected is not None and expected != current.version:
            raise FhirError(
                "precondition-failed",
                f"version conflict: If-Match is {expected}, the current version is {current.version}",
            )
        settings = self.settings
        if fhirpath:
            patched: Any = apply_fhirpath_patch(
                current.resource,
                patch,
                self.validator.structure,
                settings.max_patch_operations,
                settings.max_json_depth,
            )
        else:
            patched = apply_patch(
                current.resource,
                patch,
                settings.max_patch_operations,
                settings.max_json_depth,
                settings.max_body_bytes,
            )
        if not isinstance(patched, dict) or patched.get("id") != rid:
            raise FhirError("processing", "a patch may not change the resource id", f"{rt}.id")
        return await self.update(access, rt, rid, patched, f'W/"{current.version}"', method="PATCH")

    # ---- delete ------------------------------------------------------------------------------
    async def delete(
        self, access: AccessContext, rt: str, rid: str, if_match: str | None = None
    ) -> Outcome:
        expected = parse_etag(if_match)
        for attempt in range(self.settings.write_retries):
            current = await self.repo.current(access, rt, rid, "d")
            if current is None:
                raise FhirError("not-found", f"{rt}/{rid} is not known")
            if expected is not None and expected != current.version:
                raise FhirError(
                    "precondition-failed",
                    f"version conflict: If-Match is {expected}, the current version is {current.version}",
                )
            if current.deleted:
                return Outcome(204, current, message="already deleted")
            moment = max(now(), current.last_updated)
            tombstone = Version(rt, rid, current.version + 1, moment, "DELETE", None)
            event = WriteEvent(access, rt, rid, None, current)
            stored_index, _ = await self._before(event, tombstone, {})
            if await self.repo.replace(access, current, tombstone, stored_index):
                await self._after(event, tombstone)
                return Outcome(204, tombstone)
            await _back_off(attempt)
        raise FhirError("conflict", f"{rt}/{rid} is being changed concurrently; retry the delete")

    async def conditional_delete(
        self, access: AccessContext, rt: str, params: list[tuple[str, str]], base_url: str
    ) -> Outcome:
        matches = await self._matches(access, rt, params, base_url)
        if len(matches) > 1:
            raise FhirError(
                "precondition-failed", "the criteria match several resources; delete one by id"
            )
        if not matches:
            return Outcome(204, message="no resource matched; nothing deleted")
        return await self.delete(access, rt, matches[0].id)

    # ---- search ------------------------------------------------------------------------------
    async def search(
        self,
        access: AccessContext,
        rt: str,
        params: list[tuple[str, str]],
        base_url: str,
        lenient: bool = False,
        compartment: str | None = None,
    ) -> SearchPage:
        """One page of matches (and includes). `compartment` ("Patient/123") confines the search to
        that patient's compartment (https://hl7.org/fhir/R4/compartmentdefinition.html#search)."""
        return await self.engine.search(access, rt, params, base_url, lenient, compartment)

    async def search_system(
        self,
        access: AccessContext,
        params: list[tuple[str, str]],
        base_url: str,
        lenient: bool = False,
    ) -> SearchPage:
        return await self.engine.search_system(access, params, base_url, lenient)

    # ---- history -----------------------------------------------------------------------------
    async def history(
        self, access: AccessContext, rt: str | None, rid: str | None, params: dict[str, str]
    ) -> tuple[list[Version], int, dict[str, list[tuple[str, str]]]]:
        """One page of history, newest first, with the links to walk it (http.html#history).

        Pages are offsets inside a window fixed by `_until` (the time of the first page), so a
        write that lands while a client pages does not shift the pages it has not seen yet.
        """
        count = self._int_param(params, "_count", self.settings.default_page_size)
        count = min(count, self.settings.max_page_size)
        offset = self._int_param(params, "_offset", 0)
        since = self._instant_param(params, "_since")
        until = self._instant_param(params, "_until") or now()
        if rid is not None and rt is not None:
            versions, total = await self.repo.instance_history(
                access, rt, rid, since, count, offset
            )
            if total == 0:
                raise FhirError("not-found", f"{rt}/{rid} is not known")
            versions = [v for v in versions if v.last_updated <= until]
        else:
            # system history covers the types the caller may search; a named type must be allowed
            types = (
                [rt] if rt else [t for t in self.conformance.stored_types if access.allows(t, "s")]
            )
            versions, total = await self.repo.type_history(
                access, types, since, until, count, offset
            )
        window = [("_until", instant_text(until))]
        if since:
            window.insert(0, ("_since", instant_text(since)))
        page = [*window, ("_count", str(count))]
        links = {"self": [*page, ("_offset", str(offset))]}
        if offset + count < total:
            links["next"] = [*page, ("_offset", str(offset + count))]
        if offset > 0:
            links["previous"] = [*page, ("_offset", str(max(0, offset - count)))]
        return versions, total, links

    @staticmethod
    def _int_param(params: dict[str, str], name: str, default: int) -> int:
        value = params.get(name)
        if value is None:
            return default
        if not value.isdigit():
            raise FhirError("bad-request", f"{name} must be a non-negative integer", name)
        return int(value)

    @staticmethod
    def _instant_param(params: dict[str, str], name: str) -> datetime | None:
        value = params.get(name)
        if value is None:
            return None
        return parse_range(value)[0]
