"""Running Bulk Data export jobs (SMART Bulk Data Access 2.0,
https://hl7.org/fhir/uv/bulkdata/export.html#response---complete-status) and their manifest.

A kick-off (fhir/export.py) queues a job in MongoDB (store/exports.py); `ExportRunner` runs the
queued jobs of its server process, one at a time, and takes over those whose process died. One
run writes, as NDJSON files of at most `file_lines` lines stored in chunks of about 512 KB:

- `output`: each requested type's resources, read in database commands of bounded cost
  (`Repository.list_bounded`: windows of the last-updated index, or batches of a Group's
  members; store/windows.py says why one query over a whole type will not do) and streamed to
  the files (memory stays constant); the stored JSON text is written through as it is, unless
  `_elements` asks for a subset (fhir/subsetting.py, tagged SUBSETTED). Several `_typeFilter`s
  of a type are read one after the other (a resource matching two is written once), not ORed
  into one query that no index could drive. With `includeAssociatedData`, the Provenance
  resources whose `target` is an exported resource: the most recent one of each
  (`LatestProvenanceResources`, by `recorded`) or all of them (`RelevantProvenanceResources`);
  they are then the Provenance output, no Provenance being exported as a type of its own
  ("other Provenance resources will not be returned"). Without it, Provenance at the Patient
  and Group levels is the Provenance whose `target` is a resource in the (members')
  compartments, as Bulk Data 2.0.0 requires of a patient level export (export.html, the note
  after the Query Parameters: "SHALL include all available Provenance resources whose
  Provenance.target is a resource in the Patient compartment"); `_since` and `_typeFilter`
  apply to the Provenance itself.
- `deleted` (a `_since` export): the resources that matched the request and were deleted after
  `_since`, as transaction Bundles of `DELETE` entries, one Bundle per line. Tombstones are kept
  in the store; the version each deletion removed (from history) decides whether it matched: the
  requester's access and the patient compartments through the compartment history keeps, the
  `_typeFilter`s by the removed version's search index, computed again and matched in memory
  (fhir/search/matching.py; a filter the matcher cannot evaluate lists the deletion: telling a
  client to delete what it may not hold is harmless, keeping what the server deleted is not).
  A deleted resource is never in `output` too: `output` holds live resources only.
- `error`: an OperationOutcome (severity warning) for each parameter ignored under
  `Prefer: handling=lenient`.

`transactionTime` is the instant the run started; a resource changed after it is left to the next
export with `_since=transactionTime` (the spec: the response SHOULD NOT include resources
modified after that instant), so successive `_since` exports miss nothing, deletions included.
Every other resource is written exactly once: a window's range of instants is fixed, and an
update during the run moves a resource past transactionTime, out of every window.

A job that outlives its process (a crash, a restart, another replica taking over a lapsed lease)
is run again from the start with the access rebuilt by `access_for_owner` (auth/ provides it
from the requester's recorded token context; without it, only unrestricted jobs resume and the
others fail with a message saying to kick off again): never lost, never silently widened.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import structlog
from pymongo.errors import PyMongoError

from fhirgoal.core import fields
from fhirgoal.core.access import UNRESTRICTED, AccessContext
from fhirgoal.core.errors import FhirError
from fhirgoal.core.jsonio import dumps, loads
from fhirgoal.core.tasks import stop_task
from fhirgoal.fhir.instants import instant_text
from fhirgoal.fhir.search.dates import parse_range
from fhirgoal.fhir.search.index import local_reference
from fhirgoal.fhir.search.matching import UnsupportedFilter, matches
from fhirgoal.fhir.service import FhirService
from fhirgoal.store.exports import COMPLETED, FAILED, ExportStore
from fhirgoal.store.repository import Listed, Version

log = structlog.get_logger(__name__)

NDJSON = "application/fhir+ndjson"
CHUNK_BYTES = 512 * 1024  # NDJSON text per stored chunk
DELETIONS_PER_BUNDLE = 500  # DELETE entries per line of a `deleted` file
RENEW_SECONDS = 1.0  # a running export renews its lease (and progress) at most this often
# includeAssociatedData values (http://hl7.org/fhir/uv/bulkdata/CodeSystem/include-associated-data)
LATEST_PROVENANCE = "LatestProvenanceResources"
RELEVANT_PROVENANCE = "RelevantProvenanceResources"

OwnerAccess = Callable[[dict[str, Any]], Awaitable[AccessContext | None]]


@dataclass
class ExportRunner:
    """Runs queued export jobs in this process, one at a time, and takes over lapsed ones."""

    svc: FhirService
    store: ExportStore
    retention: timedelta
    lease_seconds: float = 60.0
    poll_seconds: float = 2.0
    file_lines: int = 100_000  # a type's output is split into files of at most this many lines
    access_for_owner: OwnerAccess | None = None
    worker: str = field(default_factory=lambda: uuid.uuid4().hex)
    _wake: asyncio.Event = field(default_factory=asyncio.Event)
    _live: dict[str, AccessContext] = field(default_factory=dict)  # kicked off in this process
    _task: asyncio.Task[None] | None = None

    async def submit(self, request: dict[str, Any], access: AccessContext) -> str:
        job_id = await self.store.create(request, datetime.now(UTC) + self.retention)
        self._live[job_id] = access
        self._wake.set()
        return job_id

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        await stop_task(self._task)
        self._task = None

    async def _loop(self) -> None:
        while True:
            try:
                job = await self.store.claim(self.worker, self.lease_seconds)
            except PyMongoError as error:
                log.warning("export queue unavailable", error=repr(error))
                job = None
            if job is None:
                self._wake.clear()
                # asyncio.timeout, not wait_for (see exchange/delivery.py `_sleep`)
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.poll_seconds):
                        await self._wake.wait()
                continue
            await self.run(job)

    async def run(self, job: dict[str, Any]) -> None:
        job_id = job["_id"]
        access = self._live.pop(job_id, None) or await self._rebuilt_access(job)
        if access is None:
            await self.store.finish(
                job_id,
                self.worker,
                FAILED,
                {"error": "the server restarted during the export and could not re-establish "
                 "the requester's access; kick off the export again"},
            )  # fmt: skip
            return
        try:
            outcome = await _Export(self, job, access).run()
            if outcome is None:  # cancelled or taken over: nothing more of ours to write
                await self.store.discard_run(job_id, job["attempts"])
                return
        except FhirError as error:
            await self.store.finish(job_id, self.worker, FAILED, {"error": error.diagnostics})
            return
        except PyMongoError as error:
            # The lease lapses and the job is taken over (by this process or another) later.
            log.warning("export interrupted by the database", job=job_id, error=repr(error))
            return
        except Exception as error:
            log.error("export failed", job=job_id, exc_info=error)
            await self.store.finish(job_id, self.worker, FAILED, {"error": "internal error"})
            return
        expires = datetime.now(UTC) + self.retention
        if await self.store.finish(
            job_id, self.worker, COMPLETED, {"output": outcome, "expires": expires}
        ):
            await self.store.keep_until(job_id, expires)
        else:  # cancelled (or taken over) since the last renewal: its chunks go with it
            await self.store.discard_run(job_id, job["attempts"])

    async def _rebuilt_access(self, job: dict[str, Any]) -> AccessContext | None:
        owner = job.get("owner") or {}
        if self.access_for_owner is not None:
            return await self.access_for_owner(owner)
        return UNRESTRICTED if owner.get("unrestricted") else None


class _Cancelled(Exception):
    """The job was cancelled or taken over while it ran."""


class _Files:
    """One output stream of a run: NDJSON lines into stored chunks of about CHUNK_BYTES, split
    into files `{stem}-{n}.ndjson` of at most `file_lines` lines; `type` is the manifest's.

    A chunk is stored while the next one fills: one write in flight (a journaled write waits for
    the disk, ~20 ms a chunk measured, time the export need not stand still for), awaited before
    the next is sent and by `close`, so a failed write fails the run and memory holds at most two
    chunks."""

    def __init__(self, run: _Export, stem: str, type_: str) -> None:
        self.run = run
        self.stem = stem
        self.type = type_
        self.items: list[dict[str, Any]] = []
        self.buffer: list[bytes] = []
        self.size = 0
        self.seq = 0
        self.lines = 0
        self.number = 1
        self.writing: asyncio.Task[None] | None = None
        run.files.append(self)

    @property
    def name(self) -> str:
        return f"{self.stem}-{self.number}.ndjson"

    async def add(self, line: bytes) -> None:
        self.buffer.append(line)
        self.size += len(line)
        self.lines += 1
        if self.lines >= self.run.runner.file_lines:
            await self._close_file()
        elif self.size >= CHUNK_BYTES:
            await self._flush()

    async def close(self) -> list[dict[str, Any]]:
        """The file items (type, file, count) of what was written (and stored)."""
        await self._close_file()
        await self._written()
        return self.items

    def abandon(self) -> None:
        """Stop the write in flight (the run ends without a manifest)."""
        if self.writing is not None:
            self.writing.cancel()
            self.writing = None

    async def _written(self) -> None:
        if self.writing is not None:
            writing, self.writing = self.writing, None
            await writing

    async def _flush(self) -> None:
        if self.buffer:
            job = self.run.job
            text = b"".join(self.buffer)
            await self._written()
            self.writing = asyncio.create_task(
                self.run.store.write_chunk(
                    job["_id"], self.run.run_number, self.name, self.seq, text, self.run.expires
                )
            )
            self.seq += 1
            self.buffer, self.size = [], 0
            await self.run.renew()

    async def _close_file(self) -> None:
        await self._flush()
        if self.lines:
            self.items.append({"type": self.type, "file": self.name, "count": self.lines})
        self.lines, self.seq = 0, 0
        self.number += 1


class _Export:
    """One run of one job."""

    def __init__(self, runner: ExportRunner, job: dict[str, Any], access: AccessContext) -> None:
        self.runner = runner
        self.svc = runner.svc
        self.store = runner.store
        self.job = job
        self.access = access
        self.run_number: int = job["attempts"]
        self.expires: datetime = job["expires"]
        self.transaction_time = datetime.now(UTC)
        self.exported = 0
        self.current = ""
        self.files: list[_Files] = []  # every output stream of the run
        self.present: set[str] = set()  # the requested types that have a collection
        self.renewed = -math.inf  # loop time of the last renewal
        # at most this long between renewals: the lease outlasts it tenfold, and a cancel is seen
        # within it (a renewal is a journaled write, ~10 ms measured: one per batch was 1/6 of
        # an export's time)
        self.renew_seconds = min(RENEW_SECONDS, runner.lease_seconds / 10)
        associated = job.get("associated")
        self.provenance = (
            _AssociatedProvenance(self, latest_only=associated == LATEST_PROVENANCE)
            if associated
            else None
        )

    async def run(self) -> dict[str, Any] | None:
        job = self.job
        output: list[dict[str, Any]] = []
        deleted: list[dict[str, Any]] = []
        try:
            errors = _Files(self, "error", "OperationOutcome")
            for warning in job.get("warnings") or []:
                outcome = warning if isinstance(warning, dict) else _warning(warning)
                await errors.add(_line_of(outcome))
            # Types never written have no collection: nothing to walk (a walk over an empty type
            # still costs a few dozen empty windows, and a system export names ~145 types). Asked
            # after transactionTime: whatever was written before it has its collection by now.
            self.present = set(await self.svc.repo.present_types(job["types"]))
            for rt in job["types"]:
                self.current = rt
                output += await self._type(rt)
            if self.provenance is not None:
                self.current = "Provenance"
                output += await self.provenance.close()
            if job.get("since"):
                self.current = "deleted"
                deleted = await self._deleted()
            error = await errors.close()
        except _Cancelled:
            return None
        finally:
            for files in self.files:
                files.abandon()
        return {
            "transactionTime": instant_text(self.transaction_time),
            "run": self.run_number,
            "files": output,
            "deleted": deleted,
            "errors": error,
        }

    # ---- what is exported ----------------------------------------------------------------------
    @property
    def since(self) -> datetime | None:
        return parse_range(self.job["since"])[0] if self.job.get("since") else None

    async def _type_filters(self, rt: str) -> list[dict[str, Any]]:
        """The compiled `_typeFilter`s of `rt` (a resource matching any is exported); none when
        it has none."""
        return [
            (await self.svc.engine.compile(self.access, rt, q, self.job["base"])).filter
            for q in (self.job.get("type_filters") or {}).get(rt) or []
        ]

    async def _type_filter(self, rt: str) -> dict[str, Any] | None:
        """The `_typeFilter`s of `rt` ORed, or None when it has none."""
        compiled = await self._type_filters(rt)
        if not compiled:
            return None
        return compiled[0] if len(compiled) == 1 else {"$or": compiled}

    def _compartment(self) -> dict[str, Any]:
        """The compartment test of the level: none at the system level; in some patient's
        compartment at the Patient level; in one of the listed patients' otherwise (the
        repository reads those in batches of members)."""
        if self.job["level"] == "system":
            return {}
        patients = self.job.get("patients")
        if patients is None:
            return {fields.COMPARTMENT: {"$gt": ""}}
        return {fields.COMPARTMENT: {"$in": patients}}

    async def _queries(self, rt: str) -> list[dict[str, Any]]:
        """The queries whose matches are exported for `rt`: one per `_typeFilter` (a filter is
        flat, so an index can drive it; an `$or` of them would make the embedded database scan
        the collection for each window), each within the level's compartment. `_since` and
        transactionTime bound the windows the repository reads (store/windows.py)."""
        compartment = {} if self._provenance_by_target(rt) else self._compartment()
        filters = await self._type_filters(rt)
        if not filters:
            return [compartment]
        return [{"$and": [f, compartment]} if compartment else f for f in filters]

    async def _type(self, rt: str) -> list[dict[str, Any]]:
        if rt not in self.present:
            return []
        files = _Files(self, rt, rt)
        queries = await self._queries(rt)
        # ids already written, when a resource can match two queries (two _typeFilters); one
        # query needs no such memory
        seen: set[str] | None = set() if len(queries) > 1 else None
        for query in queries:
            batches = self.svc.repo.list_bounded(
                self.access, rt, query, self.transaction_time, self.since
            )
            # closed at once when the run stops (the command read ahead is cancelled)
            async with contextlib.aclosing(batches):
                async for batch in batches:
                    await self._write(rt, batch, files, seen)
        return await files.close()

    async def _write(
        self, rt: str, batch: list[Listed], files: _Files, seen: set[str] | None
    ) -> None:
        """One batch of `rt`'s output (and of its associated Provenance)."""
        if self._provenance_by_target(rt):
            batch = await self._targeting_compartments(batch)
        if seen is not None:
            batch = [v for v in batch if v.id not in seen]
            seen.update(v.id for v in batch)
        elements = self._elements(rt)
        for version in batch:
            await files.add(self._line(version, elements))
        self.exported += len(batch)
        if self.provenance is not None and rt != "Provenance":
            await self.provenance.of(batch)
        await self.renew()

    def _provenance_by_target(self, rt: str) -> bool:
        """Provenance at the Patient and Group levels, with no `includeAssociatedData`: "the
        server SHALL include all available Provenance resources whose Provenance.target is a
        resource in the Patient compartment in a patient level export request" (Bulk Data 2.0.0,
        export.html, Query Parameters). A Group's export is one of its members' compartments."""
        by_target = self.job["level"] != "system" and not self.job.get("associated")
        return rt == "Provenance" and by_target

    async def _targeting_compartments(self, provenances: list[Listed]) -> list[Listed]:
        """Those of `provenances` with a `target` in the level's compartments (looked up by id,
        within the requester's reach: a target it may not search counts as outside)."""
        targets: dict[str, set[str]] = {}
        wanted: dict[str, set[str]] = {}
        for provenance in provenances:
            found = targets[provenance.id] = set()
            for reference in (provenance.resource or {}).get("target") or []:
                local = local_reference(str(reference.get("reference") or ""))
                if local is not None:
                    found.add(local)
                    rt, _, rid = local.partition("/")
                    wanted.setdefault(rt, set()).add(rid)
        within: set[str] = set()
        for rt, ids in sorted(wanted.items()):
            if not self.svc.conformance.is_stored(rt) or not self.access.allows(rt, "s"):
                continue
            query = {"_id": {"$in": sorted(ids)}, **self._compartment()}
            found_ids = await self.svc.repo.ids(self.access, rt, query, len(ids))
            within.update(f"{rt}/{rid}" for rid in found_ids)
        return [p for p in provenances if targets[p.id] & within]

    def _elements(self, rt: str) -> list[str] | None:
        """The top-level elements `_elements` keeps of `rt` (None: the whole resource)."""
        requested = self.job.get("elements")
        if requested is None:
            return None
        return sorted({*requested.get("*", []), *requested.get(rt, [])})

    def _line(self, version: Version | Listed, elements: list[str] | None) -> bytes:
        if elements is None:
            return _line(version.text or "")
        resource = version.resource
        assert resource is not None
        subset = self.svc.engine.subsetter.subset(resource, None, elements)
        return _line_of(subset) if subset is not resource else _line(version.text or "")

    # ---- deleted -------------------------------------------------------------------------------
    async def _deleted(self) -> list[dict[str, Any]]:
        files = _Files(self, "deleted", "Bundle")
        for rt in (t for t in self.job["types"] if t in self.present):
            type_filter = await self._type_filter(rt)
            removed_versions = self.svc.repo.deleted_since(
                self.access, rt, self.transaction_time, self.since, self._compartment()
            )
            async for removed in removed_versions:
                if type_filter is not None:
                    removed = [v for v in removed if self._matched(v, type_filter)]
                for start in range(0, len(removed), DELETIONS_PER_BUNDLE):
                    await files.add(
                        _line_of(self._deletions(removed[start : start + DELETIONS_PER_BUNDLE]))
                    )
                await self.renew()
        return await files.close()

    def _matched(self, version: Version, type_filter: dict[str, Any]) -> bool:
        """Did the removed version match the _typeFilter (its search index computed again)?"""
        resource = version.resource
        if resource is None:
            return False
        index = self.svc.registry.for_type(version.resource_type).index_fields(resource)
        doc = {"_id": version.id, fields.VERSION: version.version, **index}
        doc[fields.LAST_UPDATED] = version.last_updated
        try:
            return matches(doc, type_filter)
        except UnsupportedFilter:
            return True  # listed: see the module docstring

    def _deletions(self, removed: list[Version]) -> dict[str, Any]:
        """One line of a `deleted` file: a transaction Bundle of DELETE entries."""
        return {
            "resourceType": "Bundle",
            "id": uuid.uuid4().hex,
            "meta": {"lastUpdated": instant_text(self.transaction_time)},
            "type": "transaction",
            "entry": [
                {"request": {"method": "DELETE", "url": f"{v.resource_type}/{v.id}"}}
                for v in removed
            ],
        }

    async def renew(self) -> None:
        """Extend the lease and record progress, at most every `renew_seconds`; raises
        _Cancelled when the job is no longer this run's."""
        now = asyncio.get_running_loop().time()
        if now - self.renewed < self.renew_seconds:
            return
        self.renewed = now
        progress = {"exported": self.exported, "type": self.current}
        if not await self.store.renew(
            self.job["_id"], self.runner.worker, self.runner.lease_seconds, progress
        ):
            raise _Cancelled


class _AssociatedProvenance:
    """includeAssociatedData: the Provenance resources whose `target` is an exported resource,
    looked up a cursor batch at a time, each written once."""

    def __init__(self, run: _Export, latest_only: bool) -> None:
        self.run = run
        self.latest_only = latest_only
        self.files = _Files(run, "Provenance", "Provenance")
        self.written: set[str] = set()  # Provenance ids (one may target many exported resources)

    async def of(self, batch: list[Listed]) -> None:
        targets = {f"{v.resource_type}/{v.id}" for v in batch}
        query = {
            fields.REFERENCE: {"$in": [f"target={t}" for t in sorted(targets)]},
            fields.LAST_UPDATED: {"$lte": self.run.transaction_time},
        }
        found: list[Version] = []
        async for provenances in self.run.svc.repo.scan(self.run.access, "Provenance", query):
            found += provenances
        if self.latest_only:
            found = _latest_per_target(found, targets)
        elements = self.run._elements("Provenance")
        for provenance in sorted(found, key=lambda v: v.id):
            if provenance.id not in self.written:
                self.written.add(provenance.id)
                await self.files.add(self.run._line(provenance, elements))

    async def close(self) -> list[dict[str, Any]]:
        return await self.files.close()


def _latest_per_target(provenances: list[Version], targets: set[str]) -> list[Version]:
    """The most recent Provenance (by `recorded`, then lastUpdated) of each target."""
    latest: dict[str, tuple[tuple[datetime, datetime], Version]] = {}
    for provenance in provenances:
        resource = provenance.resource or {}
        key = (_recorded(resource) or provenance.last_updated, provenance.last_updated)
        for reference in resource.get("target") or []:
            target = "/".join(str(reference.get("reference", "")).split("/")[:2])
            if target in targets and (target not in latest or latest[target][0] < key):
                latest[target] = (key, provenance)
    return list({v.id: v for _, v in latest.values()}.values())


def _recorded(provenance: dict[str, Any]) -> datetime | None:
    try:
        return parse_range(str(provenance.get("recorded", "")))[0]
    except FhirError:
        return None


def _line(text: str) -> bytes:
    """One NDJSON line: the stored text, which is compact JSON (re-rendered if it is not)."""
    if "\n" in text or "\r" in text:
        text = dumps(loads(text)).decode()
    return text.encode() + b"\n"


def _line_of(resource: dict[str, Any]) -> bytes:
    return dumps(resource) + b"\n"


def _warning(text: str) -> dict[str, Any]:
    return {
        "resourceType": "OperationOutcome",
        "issue": [{"severity": "warning", "code": "not-supported", "diagnostics": text}],
    }


# ---- the manifest ----------------------------------------------------------------------------
def output_files(job: dict[str, Any]) -> set[str]:
    """The names of a completed job's files (output, deleted, error)."""
    output = job.get("output") or {}
    return {
        item["file"] for kind in ("files", "deleted", "errors") for item in output.get(kind) or []
    }


def manifest(job: dict[str, Any]) -> dict[str, Any]:
    """The completion manifest (export.html#response---complete-status)."""
    output = job["output"]
    base = job["base"]

    def items(kind: str) -> list[dict[str, Any]]:
        return [
            {
                "type": f["type"],
                "url": f"{base}/_export/{job['_id']}/{f['file']}",
                "count": f["count"],
            }
            for f in output.get(kind) or []
        ]

    return {
        "transactionTime": output["transactionTime"],
        "request": job["request"],
        "requiresAccessToken": True,
        "output": items("files"),
        "deleted": items("deleted"),
        "error": items("errors"),
    }
