"""Bulk Data export jobs and their NDJSON output, kept in MongoDB.

https://hl7.org/fhir/uv/bulkdata/export.html . Two collections:

  fhirgoal_export_jobs    one document per kick-off: its request, requester, status, progress,
                          output file list, errors, and `lease` (which server process runs it and
                          until when: a job whose lease lapsed belongs to a process that died and
                          is taken over, so no job is ever lost to a restart)
  fhirgoal_export_chunks  the output files as ordered chunks of NDJSON text (about 512 KB each,
                          `job`, `run`, `file`, `seq`), written as the export streams, so memory
                          stays constant and any server process can serve any file; `run` is the
                          job's attempt, so a process that lost its lease (and keeps writing for
                          a moment) never mixes its chunks into the run that replaced it

Both carry `expires`; a TTL index removes what has expired (the manifest says when,
FHIRGOAL_EXPORT_RETENTION_SECONDS), and a cancelled job's output is deleted at once.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

from pymongo import ASCENDING, ReturnDocument
from pymongo.asynchronous.database import AsyncDatabase

JOBS = "fhirgoal_export_jobs"
CHUNKS = "fhirgoal_export_chunks"

# Job states: accepted (queued) -> running -> completed | failed; cancelled (then deleted).
ACCEPTED, RUNNING, COMPLETED, FAILED = "accepted", "running", "completed", "failed"


class ExportStore:
    def __init__(self, db: AsyncDatabase[dict[str, Any]]) -> None:
        self.jobs = db[JOBS]
        self.chunks = db[CHUNKS]

    async def ensure_indexes(self) -> None:
        for collection in (self.jobs, self.chunks):
            await collection.create_index("expires", expireAfterSeconds=0, name="expire")
        await self.jobs.create_index([("status", ASCENDING), ("lease", ASCENDING)], name="queue")
        await self.chunks.create_index(
            [("job", ASCENDING), ("run", ASCENDING), ("file", ASCENDING), ("seq", ASCENDING)],
            name="file",
            unique=True,
        )

    # ---- jobs ------------------------------------------------------------------------------
    async def create(self, request: dict[str, Any], expires: datetime) -> str:
        job_id = uuid.uuid4().hex
        now = datetime.now(UTC)
        await self.jobs.insert_one(
            {
                "_id": job_id,
                "status": ACCEPTED,
                "created": now,
                "expires": expires,
                "lease": now,  # claimable at once
                "attempts": 0,
                **request,
            }
        )
        return job_id

    async def get(self, job_id: str) -> dict[str, Any] | None:
        return await self.jobs.find_one({"_id": job_id})

    async def claim(self, worker: str, lease_seconds: float) -> dict[str, Any] | None:
        """Take the oldest job that is queued, or running under a lapsed lease (its process died:
        the export starts again from the beginning, its partial output removed first)."""
        now = datetime.now(UTC)
        job = await self.jobs.find_one_and_update(
            {"status": {"$in": [ACCEPTED, RUNNING]}, "lease": {"$lte": now}},
            {
                "$set": {
                    "status": RUNNING,
                    "worker": worker,
                    "lease": now + timedelta(seconds=lease_seconds),
                    "started": now,
                    "progress": {},
                },
                "$inc": {"attempts": 1},
            },
            sort=[("created", ASCENDING)],
            return_document=ReturnDocument.AFTER,
        )
        if job is not None:
            await self.chunks.delete_many({"job": job["_id"]})
        return job

    async def renew(
        self, job_id: str, worker: str, lease_seconds: float, progress: dict[str, Any]
    ) -> bool:
        """Extend the lease and record progress; False when the job is no longer this worker's
        (cancelled, or taken over after the lease lapsed)."""
        result = await self.jobs.update_one(
            {"_id": job_id, "worker": worker, "status": RUNNING},
            {
                "$set": {
                    "lease": datetime.now(UTC) + timedelta(seconds=lease_seconds),
                    "progress": progress,
                }
            },
        )
        return result.matched_count == 1

    async def finish(
        self,
        job_id: str,
        worker: str,
        status: str,
        changes: dict[str, Any],
    ) -> bool:
        result = await self.jobs.update_one(
            {"_id": job_id, "worker": worker, "status": RUNNING},
            {"$set": {"status": status, "finished": datetime.now(UTC), **changes}},
        )
        return result.matched_count == 1

    async def delete(self, job_id: str) -> bool:
        """Cancel a job or delete a finished one, with its output."""
        result = await self.jobs.delete_one({"_id": job_id})
        await self.chunks.delete_many({"job": job_id})
        return result.deleted_count == 1

    async def discard_run(self, job_id: str, run: int) -> None:
        """Remove what one run wrote (a run that found its job cancelled, or taken over, after
        writing a chunk: nothing of it is ever served)."""
        await self.chunks.delete_many({"job": job_id, "run": run})

    # ---- output ----------------------------------------------------------------------------
    async def write_chunk(
        self, job_id: str, run: int, file: str, seq: int, text: bytes, expires: datetime
    ) -> None:
        await self.chunks.insert_one(
            {"job": job_id, "run": run, "file": file, "seq": seq, "text": text, "expires": expires}
        )

    async def read_file(self, job_id: str, run: int, file: str) -> AsyncIterator[bytes]:
        cursor = self.chunks.find(
            {"job": job_id, "run": run, "file": file},
            {"text": 1},
            sort=[("seq", ASCENDING)],
            batch_size=4,
        )
        async for chunk in cursor:
            yield bytes(chunk["text"])

    async def keep_until(self, job_id: str, expires: datetime) -> None:
        """Move the expiry of a finished job's output (the manifest's `Expires`)."""
        await self.chunks.update_many({"job": job_id}, {"$set": {"expires": expires}})
