"""Bulk Data export (SMART Bulk Data Access 2.0, https://hl7.org/fhir/uv/bulkdata/export.html).

Kick-off at three levels, GET or POST, with `Prefer: respond-async`:
- `[base]/$export`: every type the requester may search;
- `[base]/Patient/$export`: the types of the patient compartment, resources in some patient's
  compartment (the vendored compartment definition decides, as for `$everything`);
- `[base]/Group/[id]/$export`: the same for the Group's members (`member.entity` Patients that are
  not `inactive`).
Parameters: `_outputFormat` (application/fhir+ndjson and its short forms), `_since`, `_type`,
`_typeFilter` (`Type?search`, ORed per type), and at the patient levels `patient` (narrowing to
those patients). Anything else is refused with 400 (the spec's default; `includeAssociatedData`,
`_elements` and `_until` are not supported).

The kick-off answers 202 with `Content-Location`: the job's status URL (fhir/rest_export.py). Jobs
live in MongoDB (store/exports.py) and run in the background, one at a time per server process
(`ExportRunner`), streaming each type from a database cursor into NDJSON chunks: memory stays
constant whatever the size. `transactionTime` is the instant the run started; a resource changed
after it is left to the next export with `_since=transactionTime` (the spec: the response SHOULD
NOT include resources modified after that instant), so successive `_since` exports miss nothing.

The requester's access confines the export exactly like a search (the repository applies it). A
job that outlives its process (a crash, a restart, another replica taking over a lapsed lease) is
run again from the start with the access rebuilt by `access_for_owner` (auth/ provides it from
the requester's recorded token context; without it, only unrestricted jobs resume and the others
fail with a message saying to kick off again): never lost, never silently widened.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl

import structlog
from pymongo.errors import PyMongoError

from fhirgoal.core import fields
from fhirgoal.core.access import UNRESTRICTED, AccessContext
from fhirgoal.core.errors import FhirError
from fhirgoal.core.jsonio import dumps, loads
from fhirgoal.fhir.instants import instant_text
from fhirgoal.fhir.operations import (
    Invocation,
    Level,
    Operation,
    OperationRegistry,
    ParameterValue,
)
from fhirgoal.fhir.outcome import Outcome
from fhirgoal.fhir.search.dates import parse_range
from fhirgoal.fhir.service import FhirService
from fhirgoal.store.exports import COMPLETED, FAILED, ExportStore

log = structlog.get_logger(__name__)

NDJSON = "application/fhir+ndjson"
OUTPUT_FORMATS = {NDJSON, "application/ndjson", "ndjson"}
KICK_OFF_PARAMETERS = {"_outputFormat", "_since", "_type", "_typeFilter", "patient"}
# Search controls that make no sense in a _typeFilter (what is exported is every match).
_NOT_FILTERS = {
    "_count", "_sort", "_include", "_revinclude", "_summary", "_elements", "_total", "_cursor",
    "_contained", "_containedType",
}  # fmt: skip
CHUNK_BYTES = 512 * 1024  # NDJSON text per stored chunk
PATIENTS_PER_QUERY = 500  # Group members per compartment query
# fhirgoal's own definitions (profiles/operations), each `base`d on the Bulk Data IG's
DEFINITIONS = {
    "system": "https://fhirgoal.org/fhir/OperationDefinition/export",
    "type": "https://fhirgoal.org/fhir/OperationDefinition/patient-export",
    "instance": "https://fhirgoal.org/fhir/OperationDefinition/group-export",
}

OwnerAccess = Callable[[dict[str, Any]], Awaitable[AccessContext | None]]


def register(operations: OperationRegistry, runner: ExportRunner) -> None:
    """The three kick-off operations, queuing their jobs on `runner`."""

    async def handler(svc: FhirService, inv: Invocation) -> Outcome:
        return await kick_off(svc, runner, inv)

    levels: list[tuple[Level, str | None]] = [
        ("system", None),
        ("type", "Patient"),
        ("instance", "Group"),
    ]
    for level, rt in levels:
        operations.register(Operation("export", level, rt, handler, definition=DEFINITIONS[level]))


# ---- kick-off ----------------------------------------------------------------------------------
def owner_of(access: AccessContext) -> dict[str, Any]:
    """What is kept of the requester: who may poll and download, and what rebuilds its access."""
    return {
        "subject": access.subject,
        "client_id": access.client_id,
        "unrestricted": access.unrestricted,
        "patient": access.patient,
        "fhir_user": access.fhir_user,
        "scope": access.scope,
    }


def is_owner(job: dict[str, Any], access: AccessContext) -> bool:
    owner = job.get("owner") or {}
    return owner.get("subject") == access.subject and owner.get("client_id") == access.client_id


async def kick_off(svc: FhirService, runner: ExportRunner, inv: Invocation) -> Outcome:
    if not inv.prefers("respond-async"):
        raise FhirError("bad-request", "$export needs the header 'Prefer: respond-async'")
    params = inv.parameters
    params.reject_unknown(
        KICK_OFF_PARAMETERS if inv.resource_type else KICK_OFF_PARAMETERS - {"patient"}
    )
    output_format = params.one("_outputFormat")
    if output_format is not None and output_format.text() not in OUTPUT_FORMATS:
        raise FhirError(
            "bad-request",
            f"_outputFormat {output_format.text()!r} is not supported; use {NDJSON}",
            output_format.expression,
        )
    since = params.one("_since")
    since_text = since.text() if since else None
    if since_text is not None:
        _instant(since_text, since.expression if since else "_since")
    level = "system" if inv.resource_type is None else inv.resource_type
    patients: list[str] | None = None
    if level == "Group":
        assert inv.id is not None
        group = (await svc.read(inv.access, "Group", inv.id)).version
        assert group is not None and group.resource is not None
        patients = _members(group.resource)
    requested = _patients(params.all("patient"))
    if requested is not None:
        patients = requested if patients is None else [p for p in patients if p in requested]
    types = _types(svc, inv, level)
    filters = _type_filters(svc, params.all("_typeFilter"), types)
    for rt, queries in filters.items():  # refuse a bad filter now, not in the background
        for query in queries:
            await svc.engine.compile(inv.access, rt, query, inv.base_url)
    request = {
        "request": _request_url(inv),
        "level": level,
        "group": inv.id if level == "Group" else None,
        "types": types,
        "since": since_text,
        "type_filters": filters,
        "patients": patients,
        "base": inv.base_url,
        "owner": owner_of(inv.access),
    }
    job_id = await runner.submit(request, inv.access)
    status_url = f"{inv.base_url}/_export/{job_id}"
    return Outcome(
        202,
        message=f"export job {job_id} accepted; poll {status_url}",
        headers={"Content-Location": status_url},
    )


def _instant(text: str, expression: str) -> datetime:
    try:
        return parse_range(text)[0]
    except FhirError:
        raise FhirError("bad-request", f"_since {text!r} is not an instant", expression) from None


def _request_url(inv: Invocation) -> str:
    path = "/".join(p for p in (inv.resource_type, inv.id) if p)
    return f"{inv.base_url}/{path + '/' if path else ''}$export"


def _members(group: dict[str, Any]) -> list[str]:
    """The Group's active Patient members ("Patient/id")."""
    members = []
    for member in group.get("member") or []:
        reference = (member.get("entity") or {}).get("reference", "")
        if member.get("inactive") is True or not reference.startswith("Patient/"):
            continue
        members.append(reference)
    return sorted(set(members))


def _patients(values: list[ParameterValue]) -> list[str] | None:
    if not values:
        return None
    found = []
    for value in values:
        reference = value.text()
        if not reference.startswith("Patient/") or "/" in reference[len("Patient/") :]:
            raise FhirError(
                "bad-request", "patient must be a reference 'Patient/id'", value.expression
            )
        found.append(reference)
    return sorted(set(found))


def _types(svc: FhirService, inv: Invocation, level: str) -> list[str]:
    stored = svc.conformance.stored_types
    if level == "system":
        candidates = sorted(stored)
    else:
        compartment = svc.conformance.patient_compartment
        candidates = sorted(
            t for t in stored if t == "Patient" or svc.registry.for_type(t).compartment_params
        )
        candidates = [t for t in candidates if t == "Patient" or t in compartment]
    requested = inv.parameters.all("_type")
    if not requested:
        return [t for t in candidates if inv.access.allows(t, "s")]
    wanted = {t.strip() for v in requested for t in v.text().split(",") if t.strip()}
    unknown = sorted(wanted - set(candidates))
    if unknown:
        raise FhirError(
            "bad-request",
            f"_type: {', '.join(unknown)} cannot be exported at this level",
            requested[0].expression,
        )
    denied = sorted(t for t in wanted if not inv.access.allows(t, "s"))
    if denied:
        raise FhirError("forbidden", f"_type: no access to {', '.join(denied)}")
    return sorted(wanted)


def _type_filters(
    svc: FhirService, values: list[ParameterValue], types: list[str]
) -> dict[str, list[list[tuple[str, str]]]]:
    filters: dict[str, list[list[tuple[str, str]]]] = {}
    for value in values:
        for text in value.text().split(","):
            rt, _, query = text.strip().partition("?")
            if rt not in types:
                raise FhirError(
                    "bad-request",
                    f"_typeFilter {text!r} names a type that is not exported",
                    value.expression,
                )
            pairs = parse_qsl(query, keep_blank_values=True)
            if not pairs or any(name.split(":")[0] in _NOT_FILTERS for name, _ in pairs):
                raise FhirError(
                    "bad-request",
                    f"_typeFilter {text!r} must be search criteria (no result controls)",
                    value.expression,
                )
            filters.setdefault(rt, []).append(pairs)
    return filters


# ---- running jobs ------------------------------------------------------------------------------
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
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task

    async def _loop(self) -> None:
        while True:
            try:
                job = await self.store.claim(self.worker, self.lease_seconds)
            except PyMongoError as error:
                log.warning("export queue unavailable", error=repr(error))
                job = None
            if job is None:
                self._wake.clear()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
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
        if outcome is None:
            return  # cancelled or taken over: nothing more of ours to write
        expires = datetime.now(UTC) + self.retention
        if await self.store.finish(
            job_id, self.worker, COMPLETED, {"output": outcome, "expires": expires}
        ):
            await self.store.keep_until(job_id, expires)

    async def _rebuilt_access(self, job: dict[str, Any]) -> AccessContext | None:
        owner = job.get("owner") or {}
        if self.access_for_owner is not None:
            return await self.access_for_owner(owner)
        return UNRESTRICTED if owner.get("unrestricted") else None


class _Cancelled(Exception):
    """The job was cancelled or taken over while it ran."""


class _Export:
    """One run of one job: every type into NDJSON chunks."""

    def __init__(self, runner: ExportRunner, job: dict[str, Any], access: AccessContext) -> None:
        self.runner = runner
        self.store = runner.store
        self.job = job
        self.access = access
        self.run_number: int = job["attempts"]
        self.expires: datetime = job["expires"]
        self.transaction_time = datetime.now(UTC)
        self.exported = 0
        self.current = ""

    async def run(self) -> dict[str, Any] | None:
        job = self.job
        output: list[dict[str, Any]] = []
        try:
            for rt in job["types"]:
                self.current = rt
                output += await self._type(rt)
        except _Cancelled:
            return None
        return {
            "transactionTime": instant_text(self.transaction_time),
            "run": self.run_number,
            "files": output,
        }

    def _window(self) -> dict[str, Any]:
        window: dict[str, Any] = {"$lte": self.transaction_time}
        if self.job.get("since"):
            window["$gt"] = parse_range(self.job["since"])[0]
        return {fields.LAST_UPDATED: window}

    async def _filters(self, rt: str) -> list[dict[str, Any]]:
        """The queries whose matches are exported for `rt`: the _typeFilters ORed, confined to
        the window and, at the patient levels, to the patients' compartments."""
        svc = self.runner.svc
        criteria: dict[str, Any] = self._window()
        type_filters = (self.job.get("type_filters") or {}).get(rt)
        if type_filters:
            compiled = [
                (await svc.engine.compile(self.access, rt, q, self.job["base"])).filter
                for q in type_filters
            ]
            criteria = {
                "$and": [criteria, compiled[0] if len(compiled) == 1 else {"$or": compiled}]
            }
        patients = self.job.get("patients")
        if self.job["level"] == "system":
            return [criteria]
        if patients is None:  # Patient level, everyone: in some patient's compartment
            return [{"$and": [criteria, {fields.COMPARTMENT: {"$gt": ""}}]}]
        return [
            {
                "$and": [
                    criteria,
                    {fields.COMPARTMENT: {"$in": patients[i : i + PATIENTS_PER_QUERY]}},
                ]
            }
            for i in range(0, len(patients), PATIENTS_PER_QUERY)
        ]

    async def _type(self, rt: str) -> list[dict[str, Any]]:
        files: list[dict[str, Any]] = []
        buffer: list[bytes] = []
        size = 0
        seq = 0
        lines_in_file = 0
        file_number = 1
        queries = await self._filters(rt)
        # ids already written, when a resource can match two queries (in the compartments of
        # Group members of two batches); one query needs no such memory
        seen: set[str] | None = set() if len(queries) > 1 else None

        def name() -> str:
            return f"{rt}-{file_number}.ndjson"

        async def flush() -> None:
            nonlocal buffer, size, seq
            if buffer:
                await self.store.write_chunk(
                    self.job["_id"], self.run_number, name(), seq, b"".join(buffer), self.expires
                )
                seq += 1
                buffer, size = [], 0
                await self._renew()

        async def close_file() -> None:
            nonlocal lines_in_file, file_number, seq
            await flush()
            if lines_in_file:
                files.append({"type": rt, "file": name(), "count": lines_in_file})
            lines_in_file, seq = 0, 0
            file_number += 1

        for query in queries:
            async for batch in self.runner.svc.repo.scan(self.access, rt, query):
                for version in batch:
                    if seen is not None:  # a member of two Group batches' compartments
                        if version.id in seen:
                            continue
                        seen.add(version.id)
                    line = _line(version.text or "")
                    buffer.append(line)
                    size += len(line)
                    lines_in_file += 1
                    self.exported += 1
                    if lines_in_file >= self.runner.file_lines:
                        await close_file()
                    elif size >= CHUNK_BYTES:
                        await flush()
        await close_file()
        return files

    async def _renew(self) -> None:
        progress = {"exported": self.exported, "type": self.current}
        if not await self.store.renew(
            self.job["_id"], self.runner.worker, self.runner.lease_seconds, progress
        ):
            raise _Cancelled


def _line(text: str) -> bytes:
    """One NDJSON line: the stored text, which is compact JSON (re-rendered if it is not)."""
    if "\n" in text or "\r" in text:
        text = dumps(loads(text)).decode()
    return text.encode() + b"\n"


# ---- status and manifest -------------------------------------------------------------------
def manifest(job: dict[str, Any]) -> dict[str, Any]:
    """The completion manifest (export.html#response---complete-status)."""
    output = job["output"]
    base = job["base"]
    return {
        "transactionTime": output["transactionTime"],
        "request": job["request"],
        "requiresAccessToken": True,
        "output": [
            {
                "type": f["type"],
                "url": f"{base}/_export/{job['_id']}/{f['file']}",
                "count": f["count"],
            }
            for f in output["files"]
        ],
        "deleted": [],
        "error": [],
    }
