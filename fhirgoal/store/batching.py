"""Natural batching of concurrent single-document operations into one driver call.

PyMongo's async client costs about 0.4-0.5 ms of CPU per call on the reference machine whatever
the call does (see bench/), which dominates a FHIR read. When several requests read (or insert)
documents of the same collection at the same time, they are merged: the first request goes to the
database at once; requests that arrive while it is in flight wait and then go together in one
`find({_id: {$in: [...]}})` or `insert_many(ordered=False)`. A lone request is never delayed, and
under load the database and the driver see one operation per batch instead of one per request.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, Generic, TypeVar

from pymongo.asynchronous.collection import AsyncCollection
from pymongo.errors import BulkWriteError, DuplicateKeyError

Item = TypeVar("Item")
Outcome = TypeVar("Outcome")
Runner = Callable[[list[Item]], Awaitable[list[Outcome | BaseException]]]

MAX_BATCH = 64


class _Lane(Generic[Item, Outcome]):
    """Requests for one key: at most `in_flight` batches at the database at a time."""

    def __init__(self, runner: Runner[Item, Outcome], in_flight: int) -> None:
        self.runner = runner
        self.waiting: list[tuple[Item, asyncio.Future[Outcome]]] = []
        self.busy = 0
        self.in_flight = in_flight

    def kick(self) -> None:
        while self.waiting and self.busy < self.in_flight:
            batch, self.waiting = self.waiting[:MAX_BATCH], self.waiting[MAX_BATCH:]
            self.busy += 1
            asyncio.get_running_loop().create_task(self._run(batch))

    async def _run(self, batch: list[tuple[Item, asyncio.Future[Outcome]]]) -> None:
        try:
            results = await self.runner([item for item, _ in batch])
        except BaseException as exc:  # the whole call failed: every waiter sees the error
            results = [exc] * len(batch)
        finally:
            self.busy -= 1
        for (_, future), result in zip(batch, results, strict=True):
            if future.done():  # the request was cancelled meanwhile
                continue
            if isinstance(result, BaseException):
                future.set_exception(result)
            else:
                future.set_result(result)
        self.kick()


class Batcher(Generic[Item, Outcome]):
    def __init__(self, in_flight: int = 1) -> None:
        self.in_flight = in_flight
        self.lanes: dict[Hashable, _Lane[Item, Outcome]] = {}

    async def submit(self, key: Hashable, item: Item, runner: Runner[Item, Outcome]) -> Outcome:
        lane = self.lanes.get(key)
        if lane is None:
            lane = self.lanes[key] = _Lane(runner, self.in_flight)
        if not lane.waiting and lane.busy < lane.in_flight:
            return await self._alone(lane, item, runner)
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        lane.waiting.append((item, future))
        lane.kick()
        return await future

    @staticmethod
    async def _alone(
        lane: _Lane[Item, Outcome], item: Item, runner: Runner[Item, Outcome]
    ) -> Outcome:
        """A request that finds its lane idle is a batch of one: it runs in the caller's own task,
        without the task and future a queued batch needs (most of the traffic with one client).
        Requests that arrive meanwhile queue up and go together when it is done."""
        lane.busy += 1
        try:
            (result,) = await runner([item])
        finally:
            lane.busy -= 1
            lane.kick()
        if isinstance(result, BaseException):
            raise result
        return result


Doc = dict[str, Any]


Companion = tuple[AsyncCollection[Doc], Doc]


class BatchedCollectionOps:
    """`find_by_id` and `insert` for many concurrent callers, batched per collection and filter."""

    def __init__(self, in_flight: int = 1) -> None:
        self.readers: Batcher[str, Doc | None] = Batcher(in_flight)
        self.writers: Batcher[tuple[Doc, Sequence[Companion]], None] = Batcher(in_flight)

    async def find_by_id(
        self, collection: AsyncCollection[Doc], rid: str, extra: Doc, projection: Doc
    ) -> Doc | None:
        # Requests only share a batch when the rest of their filter (the access constraint) and
        # projection are identical.
        key = (collection.full_name, repr(sorted(extra.items())), repr(sorted(projection.items())))

        async def run(ids: list[str]) -> list[Doc | BaseException | None]:
            if len(ids) == 1:
                return [await _find_one(collection, {"_id": ids[0], **extra}, projection)]
            query = {"_id": {"$in": sorted(set(ids))}, **extra}
            cursor = collection.find(query, projection)
            found = {doc["_id"]: doc async for doc in cursor}
            return [found.get(i) for i in ids]

        return await self.readers.submit(key, rid, run)

    async def insert(
        self, collection: AsyncCollection[Doc], doc: Doc, companions: Sequence[Companion] = ()
    ) -> None:
        """Insert `doc`, after its `companions` (documents of other collections that must be
        written before it, as a write's outbox items: fhir/outbox.py). The companions of a batch
        go first in one call per collection, so they ride in the batch of the documents they
        accompany instead of costing their writers a batch (and a driver call) of their own; one
        already stored is left as it is, and any other failure fails the whole batch."""

        async def run(entries: list[tuple[Doc, Sequence[Companion]]]) -> list[BaseException | None]:
            await _insert_companions([c for _, companions in entries for c in companions])
            docs = [doc for doc, _ in entries]
            if len(docs) == 1:
                await collection.insert_one(docs[0])
                return [None]
            try:
                await collection.insert_many(docs, ordered=False)
            except BulkWriteError as exc:
                return _per_document_errors(exc, len(docs))
            return [None] * len(docs)

        await self.writers.submit(collection.full_name, (doc, companions), run)


async def _insert_companions(companions: list[Companion]) -> None:
    by_collection: dict[str, tuple[AsyncCollection[Doc], list[Doc]]] = {}
    for collection, doc in companions:
        by_collection.setdefault(collection.full_name, (collection, []))[1].append(doc)
    for collection, docs in by_collection.values():
        try:
            await collection.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            errors = exc.details.get("writeErrors", [])
            if exc.details.get("writeConcernErrors") or any(e.get("code") != 11000 for e in errors):
                raise


async def _find_one(collection: AsyncCollection[Doc], query: Doc, projection: Doc) -> Doc | None:
    """The one document matching `query` (an _id), if any.

    A `find` cursor is what makes a read retryable; when the client does not retry reads (the
    embedded database, store/embedded.py) the same `find` goes as one command with a single batch
    instead, sparing the cursor's bookkeeping (measured: 6% of the CPU of a FHIR read)."""
    if collection.database.client.options.retry_reads:
        return await collection.find_one(query, projection)
    command: Doc = {
        "find": collection.name,
        "filter": query,
        "projection": projection,
        "limit": 1,
        "singleBatch": True,
    }
    if collection.read_concern.document:
        command["readConcern"] = collection.read_concern.document
    reply = await collection.database.command(
        command, read_preference=collection.read_preference, codec_options=collection.codec_options
    )
    batch: list[Doc] = reply["cursor"]["firstBatch"]
    return batch[0] if batch else None


def _per_document_errors(exc: BulkWriteError, count: int) -> list[BaseException | None]:
    results: list[BaseException | None] = [None] * count
    for error in exc.details.get("writeErrors", []):
        if error.get("code") == 11000:
            results[error["index"]] = DuplicateKeyError(
                error.get("errmsg", "duplicate key"), 11000, error
            )
        else:
            results[error["index"]] = exc
    if exc.details.get("writeConcernErrors"):  # not durable as asked: nobody may claim success
        return [exc] * count
    return results
