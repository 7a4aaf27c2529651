"""Units of work: writes that are stored together or not at all (MongoDB multi-document transactions).

https://www.mongodb.com/docs/manual/core/transactions/ . A FHIR transaction Bundle
(https://hl7.org/fhir/R4/http.html#transaction, fhir/transaction.py) runs as one unit: every write
its entries cause (resources, history, search index, condition claims, the rules' derived writes,
Provenance and audit records) commits at once, or none does.

The unit's session is *ambient*: `run_unit` binds it to the running task (a context variable),
and every database call of the store (store/repository.py, store/claims.py, store/append_log.py)
passes `current_session()`. So the service's single write path (fhir/service.py) serves a
transaction's entries unchanged, and so do the hooks of clinical/ and the audit of auth/, which
write through that same path: none of them has to carry a session through its signatures, and
none can forget to. Outside a unit `current_session()` is None and every call is what it always
was. (PyMongo 4.20 has a private equivalent, `_SESSION`; this one is ours to rely on.)

Reads by id inside a unit are answered from what the unit already read or wrote
(`unit_documents`, kept by store/repository.py) rather than asked again: a unit reads one
snapshot plus its own writes, so the database would answer the same. A transaction's rules read
the goals its entries just created, and each rating checks its goal: one round trip each, saved.

Concurrency: snapshot isolation. Two units that write the same document conflict; the second
writer gets a `WriteConflict` labelled `TransientTransactionError`, its unit is aborted, and
`run_unit` runs the whole unit again on a fresh snapshot after a short random pause, as MongoDB's
own `with_transaction` does (the second of two transactions updating one resource with the same
If-Match then fails on its precondition: exactly one wins). A unit that still conflicts after
`attempts` runs is answered 409. The work is re-run from its start, so it must hold no state that
survives an attempt other than what it can rebuild.

Durability (a 2xx means durable): the commit carries the client's write concern (`j: true`,
store/mongo.py), which MongoDB honours. SecantusDB (0.7) commits a multi-document transaction
without syncing its journal whatever the write concern says: measured, 191 of 251 documents of
committed transactions survived a `kill -9` of the database. Each commit is therefore followed by
one journaled write (`_durable`), whose sync covers every journal record written before it, the
commit's included: 251 of 251 survived. On MongoDB it costs one small write.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Iterator
from contextvars import ContextVar
from datetime import UTC, datetime
from typing import Any, TypeVar

import structlog
from pymongo import AsyncMongoClient
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from fhirgoal.core.errors import FhirError, FhirgoalError

log = structlog.get_logger(__name__)

T = TypeVar("T")

# One document per server session (the driver pools and reuses them, so they stay few), written
# with `j: true` after each commit: see the module docstring.
COMMITS = "fhirgoal_commits"
TRANSIENT = "TransientTransactionError"
UNKNOWN_COMMIT = "UnknownTransactionCommitResult"
COMMIT_ATTEMPTS = 3

_SESSION: ContextVar[AsyncClientSession | None] = ContextVar("fhirgoal_unit", default=None)
# The current documents the running unit has read or written, by (collection, id); None: known
# absent. Only the repository fills and reads it (see the module docstring).
UnitDocuments = dict[tuple[str, str], dict[str, Any] | None]
_DOCUMENTS: ContextVar[UnitDocuments | None] = ContextVar("fhirgoal_unit_docs", default=None)


class RetryUnit(FhirgoalError):
    """The unit must run again on a fresh snapshot: what it waits for (a concurrent conditional
    create's resource) cannot appear in the snapshot it reads."""


def current_session() -> AsyncClientSession | None:
    """The session of the unit of work the running task is in, or None."""
    return _SESSION.get()


def in_unit() -> bool:
    return _SESSION.get() is not None


def unit_documents() -> UnitDocuments | None:
    """The documents the running unit has read or written (module docstring), or None outside
    a unit."""
    return _DOCUMENTS.get()


@contextlib.contextmanager
def outside_unit() -> Iterator[None]:
    """Run a block outside the current unit: for the server's own idempotent upkeep (indexing
    the audit log) that must neither wait for the unit's commit nor be undone by its abort."""
    token = _SESSION.set(None)
    documents = _DOCUMENTS.set(None)
    try:
        yield
    finally:
        _DOCUMENTS.reset(documents)
        _SESSION.reset(token)


def is_transient(error: BaseException) -> bool:
    if isinstance(error, RetryUnit):
        return True
    return isinstance(error, PyMongoError) and error.has_error_label(TRANSIENT)


async def run_unit(
    client: AsyncMongoClient[dict[str, Any]],
    db: AsyncDatabase[dict[str, Any]],
    work: Callable[[], Awaitable[T]],
    attempts: int,
) -> T:
    """`work()` as one transaction, run again on a transient conflict; its result once committed
    and journaled. An error of the work aborts the unit and propagates."""
    for attempt in range(attempts):
        try:
            result, session_key = await _attempt(client, work)
        except Exception as error:
            if not is_transient(error):
                raise
            log.debug(
                "unit of work conflicted; running it again", attempt=attempt, error=str(error)
            )
            await asyncio.sleep(random.uniform(0, min(0.01 * 2**attempt, 0.3)))
            continue
        await _durable(db, session_key)
        return result
    raise FhirError(
        "conflict",
        "the transaction conflicted with concurrent writes to the same resources; retry it",
    )


async def _attempt(
    client: AsyncMongoClient[dict[str, Any]], work: Callable[[], Awaitable[T]]
) -> tuple[T, Any]:
    """One run of the work in a transaction: its result and the key of the session it used."""
    async with client.start_session() as session:
        token = _SESSION.set(session)
        documents = _DOCUMENTS.set({})  # each attempt reads a fresh snapshot
        try:
            await session.start_transaction()
            try:
                result = await work()
            except BaseException:
                if session.in_transaction:
                    with contextlib.suppress(PyMongoError):
                        await session.abort_transaction()
                raise
            await _commit(session)
            return result, session.session_id["id"]
        finally:
            _DOCUMENTS.reset(documents)
            _SESSION.reset(token)


async def _commit(session: AsyncClientSession) -> None:
    for attempt in range(COMMIT_ATTEMPTS):
        try:
            await session.commit_transaction()
            return
        except PyMongoError as error:
            # The commit may have been applied: committing again is idempotent on the server,
            # running the work again would not be.
            if error.has_error_label(UNKNOWN_COMMIT) and attempt + 1 < COMMIT_ATTEMPTS:
                continue
            if error.has_error_label(UNKNOWN_COMMIT):
                raise FhirError(
                    "unavailable",
                    "the database did not confirm the transaction's commit; "
                    "check its resources before retrying",
                ) from None
            raise


async def _durable(db: AsyncDatabase[dict[str, Any]], session_key: Any) -> None:
    """One journaled write after a commit (see the module docstring), keyed by the session the
    unit used: concurrent units never share one, so none waits for another, and the driver's
    pool of sessions bounds the documents."""
    await db[COMMITS].update_one(
        {"_id": session_key}, {"$set": {"at": datetime.now(UTC)}}, upsert=True
    )
