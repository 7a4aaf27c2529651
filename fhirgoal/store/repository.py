"""Resource storage: one current document per resource, plus its earlier versions.

https://hl7.org/fhir/R4/http.html#versioning . Layout, per resource type T:

  T          the current version of every resource (tombstones for deleted ones), keyed by id,
             with the search index fields (`tok`, `ref`, `comp`, ...) beside the resource
  T_history  every *earlier* version, keyed by "id/version"

Why this shape: a create is a single insert and a read a single primary-key lookup, so the common
paths cost what the driver costs. An update first copies the outgoing version into history (an
idempotent upsert keyed by id/version), then swaps the current document with a compare-and-set on
the version number: of two concurrent writers exactly one matches. If the process dies between the
two steps, history merely holds a copy of the still-current version; listings skip history
entries whose version is not older than the current one, so history always agrees with the
current version.

Every method takes the request's AccessContext and narrows its query with it: authorization lives
here, where no route can skip it.

Inside a unit of work (store/units.py) every call goes with the unit's session: the unit's
writes commit together, and its reads see its own snapshot (never batched with other requests').

A type whose records are written through an append log (store/append_log.py: the AuditEvents of
reads) is caught up before any read of it, so readers never see the log's indexing lag.

Collections and their indexes come into being with the first write of their type (`_prepare`), not
at start-up: the server serves every R4 resource type (~145, each a current and a history
collection with a dozen indexes), and building them all would make every start, and so every
test's fresh database, several times slower for types most deployments never write. Start-up
ensures the indexes of the collections that already exist (an index added by a new release
reaches old data); reads of a type never written find no collection and answer nothing, creating
nothing.
"""

from __future__ import annotations

import asyncio
import heapq
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import aclosing
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from typing import Any, Protocol

from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError, OperationFailure

from fhirgoal.core import fields
from fhirgoal.core.access import UNRESTRICTED, AccessContext
from fhirgoal.core.errors import FhirError, FhirgoalError
from fhirgoal.core.fields import (
    LAST_UPDATED,
    PENDING,
    SEARCH_FIELDS,
    SEARCH_INDEXES,
    SORT_KEYS,
    IndexKey,
)
from fhirgoal.core.jsonio import loads_stored
from fhirgoal.store.batching import BatchedCollectionOps, Companion
from fhirgoal.store.claims import ConditionClaims
from fhirgoal.store.mongo import CODEC_OPTIONS
from fhirgoal.store.pairs import paired
from fhirgoal.store.planner import excludes_tombstones, shape
from fhirgoal.store.read_ahead import read_ahead
from fhirgoal.store.units import UnitDocuments, current_session, unit_documents
from fhirgoal.store.windows import (
    TARGET_DOCUMENTS,
    LastUpdatedWindows,
    MemberBatches,
    window_test,
)
from fhirgoal.store.write_marks import WriteMarks

# Server-wide facts about the stored data, such as the search index format (fhir/reindex.py).
META_COLLECTION = "fhirgoal_meta"
_INDEX_FORMAT_ID = "search-index"
# Inclusion projections: on the embedded database naming the few fields wanted costs markedly
# less per document than excluding the many index fields (measured: 37 ms against 52-77 ms for
# the same 370 Observations; a read by id, 0.43 against 0.57-0.78 ms of database CPU).
_VERSION_ONLY = {"json": 1, "v": 1, "lu": 1, "op": 1, "comp": 1}
_WITH_SORT_KEYS = {**_VERSION_ONLY, "srt": 1}
_WITH_SERVER_FIELDS = {**_VERSION_ONLY, fields.SERVER: 1}
_TEXT_ONLY = {"json": 1}  # and `_id`: what a bulk read lists (Listed)
_ANY_VERSION = {**_VERSION_ONLY, "id": 1}  # current or history documents (history ones carry `id`)
_VERBS = {"u": "update", "d": "delete"}
# A batch size no bounded command's answer reaches: its documents come back in one reply.
_ONE_REPLY = 100_000
# createIndexes answers of two processes building the same new collection's indexes at once: the
# collection was created by the other (NamespaceExists), or the other's build of the very same
# index is under way (IndexBuildAlreadyInProgress). Trying again finds them built.
_CONCURRENT_INDEX_BUILD = {48, 276}
_INDEX_BUILD_ATTEMPTS = 5


class PendingLog(Protocol):
    """Records of one type that may wait in a log before they are stored: store/append_log.py's
    AppendLog, which is built on this repository (named here by its shape, so that the repository
    does not import the module built on it)."""

    resource_type: str

    async def catch_up(self) -> object: ...


class AlreadyExists(FhirgoalError):
    """A create collided with an existing id."""


@dataclass(frozen=True)
class Version:
    """One stored version of a resource.

    `text` is the resource's JSON exactly as served (None for a deletion). Keeping the text rather
    than a nested BSON document makes storage lossless by construction (decimal digits, key
    order) and lets reads and Bundles embed it without decoding and re-encoding: on the reference
    machine the nested form cost more CPU per read than the whole of the HTTP layer.
    """

    resource_type: str
    id: str
    version: int
    last_updated: datetime
    method: str  # POST | PUT | PATCH | DELETE: how this version came to be
    text: str | None
    parsed: dict[str, Any] | None = field(default=None, repr=False, compare=False)
    # The patients whose compartment held this version ("Patient/id"): kept with history so that
    # patient-scoped access to earlier versions is decided by the version's own compartment.
    comp: tuple[str, ...] = field(default=(), compare=False)
    # The server fields kept with the current version (core/fields.py SERVER) when the read asked
    # for them ({} when it has none); None when it did not ask, so that "none stored" and "not
    # read" cannot be mistaken for each other.
    server: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def deleted(self) -> bool:
        return self.text is None

    @cached_property
    def resource(self) -> dict[str, Any] | None:
        """The resource as a dict (decimals as Decimal), parsed on first use."""
        if self.parsed is not None or self.text is None:
            return self.parsed
        parsed: dict[str, Any] = loads_stored(self.text)
        return parsed


@dataclass(frozen=True)
class Listed:
    """A live resource as a bulk read lists it (`Repository.list_bounded`): its type, id and
    stored text, nothing of its version. The embedded database copies each value it projects,
    and an instant costs it ~10 us a document (a tenth of what it spends on each document of an
    export), so what the reader does not need is not asked for."""

    resource_type: str
    id: str
    text: str

    @cached_property
    def resource(self) -> dict[str, Any]:
        """The resource as a dict (decimals as Decimal), parsed on first use."""
        parsed: dict[str, Any] = loads_stored(self.text)
        return parsed


def _version(resource_type: str, doc: dict[str, Any], server_fields: bool = False) -> Version:
    rid = doc["id"] if "id" in doc else doc["_id"]
    server = dict(doc.get(fields.SERVER) or {}) if server_fields else None
    return Version(
        resource_type,
        rid,
        doc["v"],
        doc["lu"],
        doc["op"],
        doc.get("json"),
        comp=_comp(doc),
        server=server,
    )


def _comp(doc: dict[str, Any]) -> tuple[str, ...]:
    comp = doc.get("comp")
    return tuple(comp) if comp else ()


def history_collection(resource_type: str) -> str:
    return f"{resource_type}_history"


class Repository:
    """All reads and writes of FHIR resources, narrowed by the caller's AccessContext."""

    def __init__(
        self, client: AsyncMongoClient[dict[str, Any]], db_name: str, batch_in_flight: int = 1
    ) -> None:
        self.client = client
        self.db: AsyncDatabase[dict[str, Any]] = client.get_database(
            db_name, codec_options=CODEC_OPTIONS
        )
        self.batched = BatchedCollectionOps(batch_in_flight)
        self._collections: dict[str, AsyncCollection[dict[str, Any]]] = {}
        self._logs: dict[str, PendingLog] = {}
        self.claims = ConditionClaims(self.db)
        self.marks = WriteMarks(self.db)  # which minutes saw writes: hints for bounded walks
        # Types whose collections this process has seen indexed, and the builds under way.
        self._prepared: set[str] = set()
        self._preparing: dict[str, asyncio.Task[None]] = {}
        self._pending_types: frozenset[str] = frozenset()

    def write_through_log(self, append_log: PendingLog) -> None:
        """Records of `append_log.resource_type` may wait in that log: catch up before reading."""
        self._logs[append_log.resource_type] = append_log

    async def _settle(self, rt: str) -> None:
        append_log = self._logs.get(rt)
        if append_log is not None:
            await append_log.catch_up()

    def collection(self, name: str) -> AsyncCollection[dict[str, Any]]:
        found = self._collections.get(name)
        if found is None:
            found = self._collections[name] = self.db[name]
        return found

    # ---- schema ---------------------------------------------------------------------------
    async def ensure_indexes(
        self, resource_types: list[str], pending_types: frozenset[str] = frozenset()
    ) -> None:
        """Index the collections of `resource_types` that exist; the others are indexed by the
        first write of their type. `pending_types` (types with after-write rules) also get the
        index of the pending mark (fhir/hooks.py)."""
        self._pending_types = pending_types
        await self.claims.ensure_indexes()
        await self.marks.ensure_indexes()
        for rt in await self.present_types(resource_types):
            await self._prepare(rt)

    async def present_types(self, resource_types: list[str]) -> list[str]:
        """The types among `resource_types` that have a collection (current or history); a type
        written through an append log is caught up first (its first records may wait there)."""
        for rt in resource_types:
            if rt in self._logs:
                await self._settle(rt)
        names = set(await self.db.list_collection_names())
        return [rt for rt in resource_types if rt in names or history_collection(rt) in names]

    async def _prepare(self, rt: str) -> None:
        """Make sure the collections of `rt` exist with their indexes, once per process. Two
        first writers of a type share one build (and wait for it: a write is answered only once
        the indexes that searches of it rely on exist); a build that failed is tried again by the
        next write."""
        if rt in self._prepared:
            return
        task = self._preparing.get(rt)
        if task is None:
            task = self._preparing[rt] = asyncio.ensure_future(self._build_indexes(rt))
            task.add_done_callback(lambda done: self._built(rt, done))
        await asyncio.shield(task)

    def _built(self, rt: str, task: asyncio.Task[None]) -> None:
        self._preparing.pop(rt, None)
        if not task.cancelled() and task.exception() is None:
            self._prepared.add(rt)

    def _wanted_indexes(self, rt: str, pending_types: frozenset[str]) -> dict[str, IndexKey]:
        """The indexes of a type's current collection, by name (core/fields.py SEARCH_INDEXES)."""
        wanted: dict[str, IndexKey] = {"lastUpdated": ((LAST_UPDATED, DESCENDING),)}
        wanted.update(SEARCH_INDEXES)
        if rt in pending_types:
            wanted[PENDING] = ((PENDING, ASCENDING),)
        return wanted

    async def _build_indexes(self, rt: str) -> None:
        wanted = self._wanted_indexes(rt, self._pending_types)
        current = [IndexModel(list(key), name=name) for name, key in wanted.items()]
        history = [
            IndexModel([("id", ASCENDING), ("v", DESCENDING)], name="id_version"),
            IndexModel([("lu", DESCENDING)], name="lastUpdated"),
            IndexModel([("comp", ASCENDING)], name="comp"),
        ]
        await _create_indexes(self.collection(rt), current)
        await _create_indexes(self.collection(history_collection(rt)), history)

    async def drop_unused_indexes(
        self, resource_types: list[str], pending_types: frozenset[str] = frozenset()
    ) -> list[str]:
        """Drop the indexes on search fields that an earlier index format built and this one
        does not (e.g. on `miss`, or the single-field ones the compound SEARCH_INDEXES replace):
        each would still cost every write its keys."""
        dropped = []
        for rt in await self.present_types(resource_types):
            wanted = self._wanted_indexes(rt, pending_types)
            current = self.collection(rt)
            async for index in await current.list_indexes():
                name, leading = index["name"], next(iter(index["key"]))
                if leading in SEARCH_FIELDS and name not in wanted:
                    await current.drop_index(name)
                    dropped.append(f"{rt}.{name}")
        return dropped

    async def index_format(self) -> int | None:
        """The search index format the stored resources were indexed with (None: not recorded)."""
        doc = await self.collection(META_COLLECTION).find_one({"_id": _INDEX_FORMAT_ID})
        return doc.get("format") if doc else None

    async def set_index_format(self, version: int) -> None:
        await self.collection(META_COLLECTION).replace_one(
            {"_id": _INDEX_FORMAT_ID}, {"format": version}, upsert=True
        )

    async def holds_resources(self, resource_types: list[str]) -> bool:
        for rt in await self.present_types(resource_types):
            if await self.collection(rt).find_one({}, {"_id": 1}) is not None:
                return True
        return False

    # ---- single resources ------------------------------------------------------------------
    async def current(
        self,
        access: AccessContext,
        rt: str,
        rid: str,
        interaction: str = "r",
        server_fields: bool = False,
    ) -> Version | None:
        """The current version if the caller may `interaction` it; None when unknown or out of
        reach (the two are indistinguishable on purpose). `server_fields`: with the server fields
        kept with it (`Version.server`)."""
        if rt in self._logs:  # `_settle`, without a coroutine on the hottest path
            await self._logs[rt].catch_up()
        extra = access.constrain(rt, interaction, {})
        projection = _WITH_SERVER_FIELDS if server_fields else _VERSION_ONLY
        session = current_session()
        if session is None:
            doc = await self.batched.find_by_id(self.collection(rt), rid, extra, projection)
            return _version(rt, doc, server_fields) if doc else None
        # a unit of work reads its own snapshot: never batched with other requests, and a
        # document it has read or written is not asked for again (store/units.py; the unit
        # keeps the version fields only)
        known = self._unit_documents(rt) if not extra and not server_fields else None
        if known is not None and (rt, rid) in known:
            doc = known[(rt, rid)]
        else:
            doc = await self.collection(rt).find_one(
                {"_id": rid, **extra}, projection, session=session
            )
            if known is not None:
                known[(rt, rid)] = doc
        return _version(rt, doc, server_fields) if doc else None

    def _unit_documents(self, rt: str) -> UnitDocuments | None:
        """The running unit's documents (None outside a unit, and for a type written through an
        append log, whose writes do not all pass here)."""
        return None if rt in self._logs else unit_documents()

    def _written_in_unit(self, rt: str, rid: str, doc: dict[str, Any] | None) -> None:
        """Keep what the unit now holds as `rt/rid` (None: unknown, ask the database)."""
        known = self._unit_documents(rt)
        if known is None:
            return
        if doc is None:
            known.pop((rt, rid), None)
        else:
            known[(rt, rid)] = {k: doc[k] for k in ("_id", *_VERSION_ONLY) if k in doc}

    async def version(self, access: AccessContext, rt: str, rid: str, vid: int) -> Version | None:
        current = await self.current(access, rt, rid)
        if current is None or vid > current.version:
            return None
        if vid == current.version:
            return current
        query = access.constrain(rt, "r", {"_id": f"{rid}/{vid}"})
        doc = await self.collection(history_collection(rt)).find_one(
            query, session=current_session()
        )
        return _version(rt, doc) if doc else None

    async def insert(
        self,
        access: AccessContext,
        version: Version,
        index: dict[str, Any],
        companions: Sequence[Companion] = (),
    ) -> None:
        """Store a first version; `companions`, documents of other collections to be written
        before it (its outbox items), go in the same batch (store/batching.py)."""
        rt = version.resource_type
        if access.constrain(rt, "c", {}) and not access.permits(
            rt, "c", {"_id": version.id, **index}
        ):
            raise FhirError("forbidden", f"this token may not create that {rt} (out of its scope)")
        doc = _current_doc(version, index)
        await self._prepare(rt)  # outside any transaction: DDL is not part of one
        await self.marks.note(rt, [version.last_updated])
        session = current_session()
        try:
            if session is None:
                await self.batched.insert(self.collection(version.resource_type), doc, companions)
            else:
                for collection, companion in companions:
                    await collection.insert_one(companion, session=session)
                await self.collection(version.resource_type).insert_one(doc, session=session)
                self._written_in_unit(rt, version.id, doc)
        except DuplicateKeyError:
            raise AlreadyExists(version.id) from None

    async def insert_batch(self, versions: list[tuple[Version, dict[str, Any]]]) -> None:
        """Store new first versions in one call, for the server's own records (the audit trail):
        no access check. Ids already stored count as stored, so a failed batch can be resent."""
        by_type: dict[str, list[dict[str, Any]]] = {}
        for version, index in versions:
            by_type.setdefault(version.resource_type, []).append(_current_doc(version, index))
            self._written_in_unit(version.resource_type, version.id, None)
        for rt, docs in by_type.items():
            await self._prepare(rt)
            await self.marks.note(rt, [doc[fields.LAST_UPDATED] for doc in docs])
            try:
                await self.collection(rt).insert_many(
                    docs, ordered=False, session=current_session()
                )
            except BulkWriteError as exc:
                errors = exc.details.get("writeErrors", [])
                if exc.details.get("writeConcernErrors") or not all(_id_taken(e) for e in errors):
                    raise

    async def replace(
        self, access: AccessContext, previous: Version, new: Version, index: dict[str, Any]
    ) -> bool:
        """Make `new` current if `previous` still is; False when another writer got there first."""
        rt = new.resource_type
        session = current_session()
        interaction = "d" if new.deleted else "u"
        query = access.constrain(rt, interaction, {"_id": new.id, "v": previous.version})
        if not access.sees_all(rt, interaction):
            # A constrained caller: the resource must be within reach now (the caller may have
            # read it through another scope) and, for an update, stay within reach afterwards.
            within = access.constrain(rt, interaction, {"_id": new.id})
            found = await self.collection(rt).find_one(within, {"_id": 1}, session=session)
            if found is None:
                raise FhirError(
                    "forbidden", f"this token may not {_VERBS[interaction]} {rt}/{new.id}"
                )
            if not new.deleted and not access.permits(rt, interaction, {"_id": new.id, **index}):
                raise FhirError(
                    "forbidden", f"the new content of {rt}/{new.id} is out of this token's scope"
                )
        await self._prepare(rt)
        await self.marks.note(rt, [new.last_updated])
        await self.collection(history_collection(previous.resource_type)).replace_one(
            {"_id": f"{previous.id}/{previous.version}"},
            _history_doc(previous),
            upsert=True,
            session=session,
        )
        doc = _current_doc(new, index)
        result = await self.collection(new.resource_type).replace_one(query, doc, session=session)
        replaced = result.matched_count == 1
        self._written_in_unit(rt, new.id, doc if replaced else None)
        return replaced

    # ---- search ----------------------------------------------------------------------------
    async def find(
        self,
        access: AccessContext,
        rt: str,
        query: dict[str, Any],
        sort: list[tuple[str, int]],
        limit: int,
        server_fields: bool = False,
    ) -> list[Version]:
        """`server_fields`: each version with the server fields kept with it (`Version.server`)."""
        await self._settle(rt)
        query = _live(access, rt, query)
        projection = _WITH_SERVER_FIELDS if server_fields else _VERSION_ONLY
        cursor = self.collection(rt).find(
            query, projection, sort=sort, limit=limit, session=current_session()
        )
        return [_version(rt, doc, server_fields) async for doc in cursor]

    async def find_sorted(
        self,
        access: AccessContext,
        rt: str,
        query: dict[str, Any],
        sort: list[tuple[str, int]],
        limit: int,
    ) -> list[tuple[Version, dict[str, Any]]]:
        """Like `find`, with each row's sort keys (`srt`) for keyset paging (none when `sort`
        names none of them: a smaller projection costs the embedded database less per row)."""
        await self._settle(rt)
        query = _live(access, rt, query)
        by_sort_keys = any(name.startswith(f"{SORT_KEYS}.") for name, _ in sort)
        cursor = self.collection(rt).find(
            query,
            _WITH_SORT_KEYS if by_sort_keys else _VERSION_ONLY,
            sort=sort,
            limit=limit,
            session=current_session(),
        )
        return [(_version(rt, doc), doc.get("srt") or {}) async for doc in cursor]

    async def find_sorted_versions(
        self, access: AccessContext, rt: str, query: dict[str, Any], limit: int
    ) -> list[Version]:
        """Matches by id, or none when the caller may not search the type at all (includes drop
        what is out of reach silently, https://hl7.org/fhir/R4/search.html#include)."""
        if not access.allows(rt, "s"):
            return []
        return await self.find(access, rt, query, [("_id", ASCENDING)], limit)

    async def ids(
        self, access: AccessContext, rt: str, query: dict[str, Any], limit: int
    ) -> list[str]:
        await self._settle(rt)
        query = _live(access, rt, query)
        cursor = self.collection(rt).find(query, {"_id": 1}, limit=limit, session=current_session())
        return [doc["_id"] async for doc in cursor]

    async def references(
        self, access: AccessContext, rt: str, query: dict[str, Any], param: str, limit: int
    ) -> list[str]:
        """The `param=Type/id` reference entries of the resources matching `query`."""
        await self._settle(rt)
        query = _live(access, rt, query)
        cursor = self.collection(rt).find(query, {"ref": 1}, limit=limit, session=current_session())
        prefix = f"{param}="
        found: list[str] = []
        async for doc in cursor:
            found += [entry for entry in doc.get("ref", []) if entry.startswith(prefix)]
        return found

    async def count(
        self, access: AccessContext, rt: str, query: dict[str, Any], limit: int | None = None
    ) -> int:
        """How many live resources match (at most `limit`, which bounds the database's work)."""
        await self._settle(rt)
        query = _live(access, rt, query)
        options = {"limit": limit} if limit else {}
        return await self.collection(rt).count_documents(
            query, session=current_session(), **options
        )

    # ---- maintenance ----------------------------------------------------------------------------
    async def count_all(self, rt: str) -> int:
        await self._settle(rt)
        return await self.collection(rt).estimated_document_count()

    async def live_versions(self, rt: str) -> AsyncIterator[list[Version]]:
        """Every current, non-deleted resource of a type, in batches (for reindexing); one
        written while the walk runs may be left out (it was indexed by its write)."""
        async for batch in self.scan_bounded(UNRESTRICTED, rt, {}, datetime.now(UTC)):
            yield batch

    async def scan(
        self, access: AccessContext, rt: str, query: dict[str, Any], batch_size: int = 1000
    ) -> AsyncIterator[list[Version]]:
        """Every live resource matching a selective `query` (one an index bounds, such as a
        reference `$in`) within the caller's reach, in batches, from one cursor."""
        await self._settle(rt)
        cursor = self.collection(rt).find(
            _live(access, rt, query), _VERSION_ONLY, batch_size=batch_size
        )
        batch: list[Version] = []
        async for doc in cursor:
            batch.append(_version(rt, doc))
            if len(batch) >= batch_size:
                yield batch
                batch = []
        if batch:
            yield batch

    async def scan_bounded(
        self,
        access: AccessContext,
        rt: str,
        query: dict[str, Any],
        until: datetime,
        after: datetime | None = None,
        target: int = TARGET_DOCUMENTS,
    ) -> AsyncGenerator[list[Version], None]:
        """Every live resource matching `query` within the caller's reach whose last update falls
        in `(after, until]`, in batches, each the answer of one database command whose cost an
        index bounds (store/windows.py), in no particular order (Bulk Data export).

        A `$in` on the patient compartment drives the query in batches of members; otherwise
        windows of the last-updated instant do, the rest of the query checked on what a window
        holds. A resource appears once: a window's range is fixed, and an update moves a resource
        past `until`; a resource in two members' compartments is kept from its first batch. The
        next command is sent before a batch is yielded (store/read_ahead.py), so the database
        works on it while the caller handles the batch."""
        walk = self._bounded(access, rt, query, until, after, target, _VERSION_ONLY)
        async with aclosing(walk):
            async for docs in walk:
                yield [_version(rt, doc) for doc in docs]

    async def list_bounded(
        self,
        access: AccessContext,
        rt: str,
        query: dict[str, Any],
        until: datetime,
        after: datetime | None = None,
        target: int = TARGET_DOCUMENTS,
    ) -> AsyncGenerator[list[Listed], None]:
        """`scan_bounded` listing each resource's id and text only (Bulk Data export's output):
        the database sends nothing of the version."""
        walk = self._bounded(access, rt, query, until, after, target, _TEXT_ONLY)
        async with aclosing(walk):
            async for docs in walk:
                yield [Listed(rt, doc["_id"], doc["json"]) for doc in docs]

    async def _bounded(
        self,
        access: AccessContext,
        rt: str,
        query: dict[str, Any],
        until: datetime,
        after: datetime | None,
        target: int,
        projection: dict[str, int],
    ) -> AsyncGenerator[list[dict[str, Any]], None]:
        """The bounded walk of `scan_bounded`, as the documents' `projection` (with what the walk
        itself needs of them)."""
        await self._settle(rt)
        shaped = _live(access, rt, query)
        members = _compartment_members(shaped)
        if members is not None:
            walk = self._scan_members(rt, shaped, members, until, after, target, projection)
        elif window_test(None, until, shaped.get(fields.LAST_UPDATED)) is None or any(
            key.startswith("$") for key in shaped
        ):
            # A logical operator at the top (or an odd test on lu): no index drives it on the
            # embedded database, each window would scan the collection; one scan does it once.
            walk = self._scan_once(rt, shaped, until, after, projection)
        else:
            walk = self._scan_windows(rt, shaped, until, after, target, projection)
        async with aclosing(walk):  # closed with this walk: nothing left in flight
            async for docs in walk:
                yield docs

    async def _scan_windows(
        self,
        rt: str,
        shaped: dict[str, Any],
        until: datetime,
        after: datetime | None,
        target: int,
        projection: dict[str, int],
    ) -> AsyncGenerator[list[dict[str, Any]], None]:
        rest = {key: test for key, test in shaped.items() if key != fields.LAST_UPDATED}
        # Tombstones are dropped here rather than by the database: a window's few tombstones
        # cost less to skip than a `del` test on each of its documents does the embedded database
        # (measured: ~15 of ~100 us of its CPU per document of an export).
        if rest.get(fields.DELETED) == _NOT_DELETED:
            del rest[fields.DELETED]
            projection = {**projection, fields.DELETED: 1}
        windows = await self._windows(rt, until, after, target)

        async def window(bounds: tuple[datetime | None, datetime]) -> list[dict[str, Any]]:
            # the window first: the embedded database drives the query from the first key
            test = window_test(*bounds, shaped.get(fields.LAST_UPDATED))
            cursor = self.collection(rt).find(
                {fields.LAST_UPDATED: test, **rest}, projection, batch_size=_ONE_REPLY
            )
            return [doc async for doc in cursor]

        # the next window is read while the caller writes this one (store/read_ahead.py)
        batches = read_ahead(aiter(windows), window, lambda batch: windows.found(len(batch)))
        async with aclosing(batches):
            async for docs in batches:
                if live := [doc for doc in docs if not doc.get(fields.DELETED)]:
                    yield live

    async def _windows(
        self, rt: str, until: datetime, after: datetime | None, target: int
    ) -> LastUpdatedWindows:
        async def marks_between(low: datetime, high: datetime) -> list[datetime]:
            return await self.marks.between(rt, low, high)

        oldest = await self.marks.oldest(rt)
        return LastUpdatedWindows(
            until, after, target, marks_between=marks_between, oldest_mark=oldest
        )

    async def _scan_members(
        self,
        rt: str,
        shaped: dict[str, Any],
        members: list[str],
        until: datetime,
        after: datetime | None,
        target: int,
        projection: dict[str, int],
    ) -> AsyncGenerator[list[dict[str, Any]], None]:
        window = window_test(after, until, shaped.get(fields.LAST_UPDATED))
        rest = {
            k: v for k, v in shaped.items() if k not in (fields.COMPARTMENT, fields.LAST_UPDATED)
        }
        if window is None:  # an odd test on lu stayed in `rest`: the range is checked here
            projection = {**projection, fields.LAST_UPDATED: 1}
        seen: set[str] = set()  # a resource may be in the compartments of two batches' members
        member_batches = MemberBatches(members, target)

        async def plans() -> AsyncIterator[list[str]]:
            for batch_members in member_batches:
                yield batch_members

        async def members_of(batch_members: list[str]) -> list[dict[str, Any]]:
            query = {fields.COMPARTMENT: {"$in": batch_members}, **rest}
            if window is not None:
                query[fields.LAST_UPDATED] = window
            cursor = self.collection(rt).find(query, projection, batch_size=_ONE_REPLY)
            found = [doc async for doc in cursor]
            if window is None:
                found = [doc for doc in found if _within(doc[fields.LAST_UPDATED], after, until)]
            return found

        # the next batch of members is read while the caller writes this one
        batches = read_ahead(plans(), members_of, lambda found: member_batches.found(len(found)))
        async with aclosing(batches):
            async for found in batches:
                fresh = [doc for doc in found if doc["_id"] not in seen]
                seen.update(doc["_id"] for doc in fresh)
                if fresh:
                    yield fresh

    async def _scan_once(
        self,
        rt: str,
        shaped: dict[str, Any],
        until: datetime,
        after: datetime | None,
        projection: dict[str, int],
    ) -> AsyncGenerator[list[dict[str, Any]], None]:
        projection = {**projection, fields.LAST_UPDATED: 1}
        cursor = self.collection(rt).find(shaped, projection, batch_size=1000)
        batch: list[dict[str, Any]] = []
        async for doc in cursor:
            if _within(doc[fields.LAST_UPDATED], after, until):
                batch.append(doc)
            if len(batch) >= 1000:
                yield batch
                batch = []
        if batch:
            yield batch

    async def deleted_since(
        self,
        access: AccessContext,
        rt: str,
        until: datetime,
        after: datetime | None,
        before: dict[str, Any],
        target: int = TARGET_DOCUMENTS,
    ) -> AsyncIterator[list[Version]]:
        """The resources of `rt` deleted in `(after, until]`, each as the version the deletion
        removed (its last live version, from history), in batches (Bulk Data export's `deleted`
        list); the tombstones are found by windows of the last-updated instant (store/windows.py).

        A tombstone keeps no search index, so whether a deletion is within the caller's reach,
        and matches `before` (e.g. a compartment test), is decided by the removed version, which
        history keeps with its compartment: a patient scope or caseload sees the deletions of
        what it could see. A condition on any other index field (a granular scope) finds no
        removed version: those deletions are withheld, never widened."""
        await self._settle(rt)
        history = self.collection(history_collection(rt))
        windows = await self._windows(rt, until, after, target)
        async for low, high in windows:
            tombstones = self.collection(rt).find(
                {fields.LAST_UPDATED: window_test(low, high), fields.DELETED: True},
                {"_id": 1, fields.VERSION: 1},
                batch_size=_ONE_REPLY,
            )
            keys = [f"{doc['_id']}/{doc[fields.VERSION] - 1}" async for doc in tombstones]
            windows.found(len(keys))
            if not keys:
                continue
            query = access.constrain(rt, "s", {"_id": {"$in": keys}, **before})
            removed = [_version(rt, doc) async for doc in history.find(query, _ANY_VERSION)]
            if removed:
                yield removed

    async def pending(
        self, rt: str, older_than: datetime | None = None, limit: int = 10_000
    ) -> list[Version]:
        """Current versions whose after-write hooks did not finish (a crash, a database failure);
        `older_than` leaves alone the writes whose hooks may still be running."""
        query: dict[str, Any] = {"pend": True}
        if older_than is not None:
            query["lu"] = {"$lt": older_than}
        cursor = self.collection(rt).find(query, _VERSION_ONLY)
        return [_version(rt, doc) async for doc in cursor.limit(limit)]

    async def clear_pending(self, version: Version) -> None:
        self._written_in_unit(version.resource_type, version.id, None)
        await self.collection(version.resource_type).update_one(
            {"_id": version.id, "v": version.version},
            {"$unset": {"pend": ""}},
            session=current_session(),
        )

    async def set_index(self, version: Version, index: dict[str, Any]) -> bool:
        """Replace the search index of `version` if it is still current (a writer may have won)."""
        self._written_in_unit(version.resource_type, version.id, None)
        result = await self.collection(version.resource_type).update_one(
            {"_id": version.id, "v": version.version}, {"$set": index}
        )
        return result.matched_count == 1

    # ---- history ---------------------------------------------------------------------------
    async def instance_history(
        self,
        access: AccessContext,
        rt: str,
        rid: str,
        since: datetime | None,
        limit: int,
        skip: int,
    ) -> tuple[list[Version], int]:
        current = await self.current(access, rt, rid)
        if current is None:
            return [], 0
        query: dict[str, Any] = {"id": rid, "v": {"$lt": current.version}}
        if since:
            query["lu"] = {"$gte": since}
        query = access.constrain(rt, "r", query)
        older = self.collection(history_collection(rt))
        session = current_session()
        total = await older.count_documents(query, session=session)
        total += int(not since or current.last_updated >= since)
        versions: list[Version] = []
        if not since or current.last_updated >= since:
            versions.append(current)
        cursor = older.find(query, sort=[("v", DESCENDING)], limit=skip + limit, session=session)
        versions += [_version(rt, doc) async for doc in cursor]
        return versions[skip : skip + limit], total

    async def type_history(
        self,
        access: AccessContext,
        resource_types: list[str],
        since: datetime | None,
        until: datetime,
        limit: int,
        skip: int,
    ) -> tuple[list[Version], int]:
        """Versions of every resource of the given types, newest first, merged across collections
        (of those ever written: the others hold nothing)."""
        resource_types = await self.present_types(resource_types)  # caught up, too
        window: dict[str, Any] = {"$lte": until}
        if since:
            window["$gte"] = since
        streams, total = [], 0
        session = current_session()
        for rt in resource_types:
            query = access.constrain(rt, "s", {"lu": window})
            for name in (rt, history_collection(rt)):
                collection = self.collection(name)
                total += await collection.count_documents(query, session=session)
                cursor = collection.find(
                    query,
                    _ANY_VERSION,
                    sort=[("lu", DESCENDING)],
                    limit=skip + limit,
                    session=session,
                )
                streams.append([_version(rt, doc) async for doc in cursor])
        merged = heapq.merge(*streams, key=lambda v: v.last_updated, reverse=True)
        seen: set[tuple[str, str, int]] = set()
        page: list[Version] = []
        for version in merged:
            key = (version.resource_type, version.id, version.version)
            if key in seen:  # a crash between history copy and swap leaves one duplicate
                total -= 1
                continue
            seen.add(key)
            page.append(version)
            if len(page) >= skip + limit:
                break
        return page[skip:], total


async def _create_indexes(
    collection: AsyncCollection[dict[str, Any]], indexes: list[IndexModel]
) -> None:
    """One createIndexes command (it also creates the collection); idempotent, so another
    process building the same indexes at the same time is no error."""
    for attempt in range(_INDEX_BUILD_ATTEMPTS):
        try:
            await collection.create_indexes(indexes)
            return
        except OperationFailure as error:
            if error.code not in _CONCURRENT_INDEX_BUILD or attempt + 1 == _INDEX_BUILD_ATTEMPTS:
                raise
            await asyncio.sleep(0.05 * (attempt + 1))


def _id_taken(error: dict[str, Any]) -> bool:
    """A write error saying the document's id is stored already (and no other unique key)."""
    return error.get("code") == 11000 and error.get("keyPattern") == {"_id": 1}


def _compartment_members(shaped: dict[str, Any]) -> list[str] | None:
    """The members when a shaped query is driven by a `$in` (or an equality) on the patient
    compartment: a Group's members, a patient scope's or a caseload's patients."""
    if not shaped or next(iter(shaped)) != fields.COMPARTMENT:
        return None
    test = shaped[fields.COMPARTMENT]
    if isinstance(test, str):
        return [test]
    if isinstance(test, dict) and set(test) == {"$in"}:
        return [member for member in test["$in"] if isinstance(member, str)] or None
    return None


def _within(instant: datetime, after: datetime | None, until: datetime) -> bool:
    return instant <= until and (after is None or instant > after)


_NOT_DELETED = {"$ne": True}  # the test on `del` that keeps tombstones out


def _live(access: AccessContext, rt: str, query: dict[str, Any]) -> dict[str, Any]:
    """A search filter as sent: live resources only, narrowed by the caller's access, index-first.
    The `del` test is left out where the index test that drives the query already excludes every
    tombstone (planner.excludes_tombstones)."""
    shaped = shape(paired(rt, access.constrain(rt, "s", query)))
    if excludes_tombstones(shaped):
        return shaped
    return shape({**shaped, fields.DELETED: _NOT_DELETED})


def _current_doc(version: Version, index: dict[str, Any]) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "_id": version.id,
        "v": version.version,
        "lu": version.last_updated,
        "op": version.method,
        "json": version.text,
    }
    if version.deleted:
        doc["del"] = True
        doc.update({name: [] for name in SEARCH_FIELDS})
        if index.get("pend"):
            doc["pend"] = True
    else:
        doc.update(index)
    return doc


def _history_doc(version: Version) -> dict[str, Any]:
    doc: dict[str, Any] = {
        "_id": f"{version.id}/{version.version}",
        "id": version.id,
        "v": version.version,
        "lu": version.last_updated,
        "op": version.method,
        "json": version.text,
        "comp": list(version.comp),
    }
    if version.deleted:
        doc["del"] = True
    return doc
