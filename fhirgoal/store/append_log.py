"""Records the server writes about itself, stored at once and indexed for search later.

The audit trail (auth/audit.py, https://hl7.org/fhir/R4/auditevent.html) writes an AuditEvent for
every read. Stored as an ordinary resource document, each costs the embedded database 1.3-2.5 ms
of CPU for its ~15 search keys in 6 indexes (bench/auth.py), more than the read it records, and an
audited read must cost little more than an unaudited one. So the records of one flush go to the
database together as one *segment* document in `<T>_log`:

    {_id, at: when stored, n: how many records, body: the records as one JSON array (core/jsonio)}

with no search keys: about the cost of one small insert for the whole flush, and durable as soon
as `append` returns. Segments become ordinary documents of `T`, with their search keys and
`meta.lastUpdated` = the segment's `at`, later:

- before anything reads `T`: the repository calls `catch_up` first (store/repository.py), so a
  search, read, history or export of `T` sees every record stored before it began;
- in the background while the server is lightly loaded (at most `light_load` records a second
  announced or appended), `_CHUNK` records per database call, giving way as soon as records
  arrive faster than that again; a segment left midway records how far it got (`done`);
- in the background whatever the load once more than `max_backlog` records wait, which bounds how
  long a catch-up can take and how much indexing work can be owed.

So the cost of indexing is not avoided but moved off the request path, into quiet time; under a
load that never lets up, the backlog bound brings back the cost of indexing as the records come.

Turning a segment into documents is idempotent: a record's id is fixed before it is appended, an
id already stored counts as stored (Repository.insert_batch), and the segment is deleted only
after all its records are stored. A crash midway, or two replicas working on the same segment,
stores nothing twice.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import structlog
from pymongo import ASCENDING

from fhirgoal.core.jsonio import dumps, loads_stored
from fhirgoal.core.tasks import stop_task
from fhirgoal.store.units import current_session, outside_unit

if TYPE_CHECKING:
    from fhirgoal.store.repository import Repository, Version

log = structlog.get_logger(__name__)

# A record as it will be stored: its first version and its search index, with `meta.lastUpdated`
# the given moment (FhirService.first_version).
Prepare = Callable[[dict[str, Any], datetime], "tuple[Version, dict[str, Any]]"]

SEGMENT_MAX = 1000  # records per segment document (about 1 MB of AuditEvents, far below 16 MB)
_CHUNK = 16  # records indexed per database call: a request arriving meanwhile waits ~30 ms at most
_FETCH = 8  # segments fetched per query while indexing
_BURST = 8  # records that may arrive at once before quiet-time indexing gives way


def serialized(record: dict[str, Any] | bytes) -> bytes:
    """A record as the JSON its segment holds (core/jsonio: decimals keep their digits)."""
    return record if isinstance(record, bytes) else dumps(record)


def log_collection(resource_type: str) -> str:
    return f"{resource_type}_log"


async def append_segment(segments: Any, records: Sequence[dict[str, Any] | bytes]) -> None:
    """Store up to SEGMENT_MAX records as one segment of the log collection `segments`: also
    the way for a process that runs no AppendLog (the CLI) to add records the server indexes.
    Inside a unit of work (store/units.py) the segment commits with the unit."""
    body = b"[" + b",".join(serialized(record) for record in records) + b"]"
    await segments.insert_one(
        {"_id": uuid.uuid4().hex, "at": datetime.now(UTC), "n": len(records), "body": body},
        session=current_session(),
    )


class AppendLog:
    def __init__(
        self,
        repo: Repository,
        resource_type: str,
        prepare: Prepare,
        *,
        interval: float = 1.0,
        light_load: float = 50.0,
        max_backlog: int = 10_000,
    ) -> None:
        self.repo = repo
        self.resource_type = resource_type
        self.prepare = prepare
        self.interval = interval
        self.light_load = light_load  # records a second below which the background indexes
        self.max_backlog = max_backlog
        self.segments = repo.collection(log_collection(resource_type))
        self._indexing = asyncio.Lock()
        # records announced or appended by this process since the background last looked
        self._activity = 0
        self._backlog = 0  # this process's estimate of the records waiting, refreshed when needed
        self._task: asyncio.Task[None] | None = None

    async def ensure_indexes(self) -> None:
        await self.segments.create_index([("at", ASCENDING)], name="at")
        self._backlog = await self.backlog()

    # ---- writing --------------------------------------------------------------------------------
    def announce(self, count: int = 1) -> None:
        """Records are on their way (buffered by a writer): load the background should wait out."""
        self._activity += count

    async def append(
        self, records: Sequence[dict[str, Any] | bytes], announced: bool = False
    ) -> None:
        """Store records durably, at most SEGMENT_MAX at a time. Each has its final `id` set and
        comes as a dict or already serialized (`serialized`): a writer that keeps records
        waiting keeps them as bytes, which the garbage collector never has to walk."""
        for start in range(0, len(records), SEGMENT_MAX):
            part = records[start : start + SEGMENT_MAX]
            await append_segment(self.segments, part)
            if not announced:
                self._activity += len(part)
            self._backlog += len(part)

    # ---- indexing -------------------------------------------------------------------------------
    async def backlog(self) -> int:
        """Records stored in segments and not yet indexed (by any replica)."""
        pending = self.segments.find({}, {"n": 1, "done": 1})
        return sum([doc["n"] - doc.get("done", 0) async for doc in pending])

    async def catch_up(self) -> int:
        """Index every segment stored before this call; how many records were indexed."""
        stored_before = {"at": {"$lte": datetime.now(UTC)}}
        # Indexing is the log's own idempotent upkeep: outside any unit of work, whose abort
        # would undo it and whose snapshot would hide what others appended.
        with outside_unit():
            if await self.segments.find_one(stored_before, {"_id": 1}) is None:
                return 0  # the common case, answered without taking the lock
            async with self._indexing:
                return await self._index_segments(stored_before, lambda: False)

    async def _index_segments(self, query: dict[str, Any], stop: Callable[[], bool]) -> int:
        """Index segments oldest first until none match `query` or `stop()` says so."""
        indexed = 0
        while not stop():
            batch = await self.segments.find(
                query, sort=[("at", ASCENDING), ("_id", ASCENDING)], limit=_FETCH
            ).to_list()
            if not batch:
                if not query:
                    self._backlog = 0  # the estimate may count segments others have indexed
                break
            for segment in batch:
                count, finished = await self._index(segment, stop)
                indexed += count
                self._backlog = max(0, self._backlog - count)
                if not finished:
                    return indexed
        return indexed

    async def _index(self, segment: dict[str, Any], stop: Callable[[], bool]) -> tuple[int, bool]:
        """Index a segment's records from where an earlier pass stopped, `_CHUNK` at a time,
        checking `stop()` before each chunk; (records indexed, whether the segment is done)."""
        records = loads_stored(segment["body"])
        at = segment["at"]
        begin = position = segment.get("done", 0)
        while position < len(records):
            if stop():
                if position > begin:
                    await self.segments.update_one(
                        {"_id": segment["_id"]}, {"$set": {"done": position}}
                    )
                return position - begin, False
            chunk = records[position : position + _CHUNK]
            await self.repo.insert_batch([self.prepare(record, at) for record in chunk])
            position += len(chunk)
        await self.segments.delete_one({"_id": segment["_id"]})
        return position - begin, True

    # ---- in the background ----------------------------------------------------------------------
    async def background_pass(self, elapsed: float) -> int:
        """One look at the backlog after `elapsed` seconds: index while the load is light, or
        down to the bound when the backlog has outgrown it."""
        recent, self._activity = self._activity, 0
        if self._backlog <= 0:
            return 0
        if recent <= self.light_load * elapsed:
            began = time.monotonic()

            def load_is_back() -> bool:  # records arriving faster than a light load would
                return self._activity > self.light_load * (time.monotonic() - began) + _BURST

            async with self._indexing:
                return await self._index_segments({}, load_is_back)
        if self._backlog <= self.max_backlog:
            return 0
        self._backlog = await self.backlog()  # exact, other replicas' segments included
        async with self._indexing:
            return await self._index_segments({}, lambda: self._backlog <= self.max_backlog)

    async def _run(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(self.interval)
            started = time.monotonic()
            try:
                indexed = await self.background_pass(started - last)
            except Exception:
                log.exception("indexing the append log failed; retrying", log=self.segments.name)
                indexed = 0
            if indexed:
                log.debug("append log indexed", records=indexed, seconds=time.monotonic() - started)
            last = time.monotonic()

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run())

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None
