"""The Bulk Data export job endpoints (https://hl7.org/fhir/uv/bulkdata/export.html), under the
status URL a kick-off returns (fhir/export.py):

- `GET [base]/_export/{job}`: 202 with `X-Progress` and `Retry-After` while it runs; 200 with the
  manifest (and `Expires`) once complete; 500 with an OperationOutcome if it failed;
- `DELETE [base]/_export/{job}`: cancel it, or delete a finished one's files (202);
- `GET [base]/_export/{job}/{file}`: an output file as `application/fhir+ndjson`, streamed
  (`requiresAccessToken: true`: the same requester's token is needed, and each download is
  audited like any request).
Only the requester (the same subject and client) sees a job; anyone else gets 404, as for a job
that does not exist.
"""

from __future__ import annotations

from datetime import UTC
from email.utils import format_datetime
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi.responses import StreamingResponse

from fhirgoal.core.errors import FhirError, informational_outcome
from fhirgoal.core.jsonio import dumps
from fhirgoal.fhir.export import is_owner
from fhirgoal.fhir.export_jobs import NDJSON, ExportRunner, manifest, output_files
from fhirgoal.fhir.rest import access, fhir_response
from fhirgoal.store.exports import ACCEPTED, COMPLETED, FAILED, RUNNING

router = APIRouter()
RETRY_AFTER_SECONDS = 2


def _runner(request: Request) -> ExportRunner:
    runner: ExportRunner | None = getattr(request.app.state, "exports", None)
    if runner is None:
        raise FhirError("not-supported", "bulk export is not enabled on this server")
    return runner


async def _job(request: Request, job_id: str) -> dict[str, Any]:
    job = await _runner(request).store.get(job_id)
    if job is None or not is_owner(job, access(request)):
        raise FhirError("not-found", f"no export job {job_id}")
    return job


@router.get("/_export/{job_id}", summary="Bulk Data export status")
async def export_status(job_id: str, request: Request) -> Response:
    job = await _job(request, job_id)
    status = job["status"]
    if status in (ACCEPTED, RUNNING):
        progress = job.get("progress") or {}
        done = progress.get("exported", 0)
        where = f", now {progress['type']}" if progress.get("type") else ""
        text = "queued" if status == ACCEPTED else f"{done} resources exported{where}"
        return Response(
            status_code=202,
            headers={"X-Progress": text, "Retry-After": str(RETRY_AFTER_SECONDS)},
        )
    if status == FAILED:
        raise FhirError("internal", f"the export failed: {job.get('error') or 'unknown error'}")
    assert status == COMPLETED
    return Response(
        dumps(manifest(job)),
        media_type="application/json",
        headers={"Expires": format_datetime(job["expires"].astimezone(UTC), usegmt=True)},
    )


@router.delete("/_export/{job_id}", summary="cancel a Bulk Data export")
async def export_cancel(job_id: str, request: Request) -> Response:
    await _job(request, job_id)
    await _runner(request).store.delete(job_id)
    return fhir_response(202, informational_outcome(f"export job {job_id} deleted"))


@router.get("/_export/{job_id}/{file}", summary="a Bulk Data export output file")
async def export_file(job_id: str, file: str, request: Request) -> Response:
    job = await _job(request, job_id)
    if job["status"] != COMPLETED or file not in output_files(job):
        raise FhirError("not-found", f"export job {job_id} has no file {file}")
    chunks = _runner(request).store.read_file(job_id, job["output"]["run"], file)
    return StreamingResponse(chunks, media_type=NDJSON)
