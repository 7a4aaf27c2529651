"""Open alerts on the overview, resolved by the clinician (issue 14, screen 1).

The server raises its alerts as Flags (one per client and kind, https://hl7.org/fhir/R4/flag.html)
and closes them when their condition clears. A clinician who has dealt with one closes it the
same way: `status` inactive and `period.end` now, the note and who resolved it added to
`code.text`, written with `PUT Flag/{id}` and If-Match on the version the overview showed
(https://hl7.org/fhir/R4/http.html#concurrency): a Flag the server changed meanwhile (a new
session refreshed it) is not overwritten; the overview says so and shows it as it is now.
R4 Flag has no "acknowledged" status, so acknowledging is resolving; if the condition still
holds at the next session the server opens the Flag again, which is what an alert should do.
"""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter, Request, Response

from fhirgoal.webapp.context import error, first, posted_form, relaunch
from fhirgoal.webapp.fhir_api import FhirCallError, NeedsRelaunch

router = APIRouter(prefix="/app", include_in_schema=False)
NOTE_LIMIT = 500


@router.post("/c/{key}/flags/{flag_id}")
async def resolve_flag(request: Request, key: str, flag_id: str) -> Response:
    opened = await posted_form(request, key)
    if isinstance(opened, Response):
        return opened
    screen, posted = opened
    version, note = first(posted, "version"), first(posted, "note")[:NOTE_LIMIT]
    outcome = "resolved"
    try:
        flag = await screen.api.read(f"Flag/{flag_id}")
        flag.pop("meta", None)
        flag.pop("text", None)  # generated from the old content
        now = datetime.now(UTC).isoformat(timespec="seconds")
        who = screen.launch.tokens.fhir_user or "the clinician"
        code = dict(flag.get("code") or {})
        code["text"] = " ".join(
            part
            for part in (str(code.get("text", "")), f"Resolved by {who} on {now[:10]}.", note)
            if part
        )
        resolved = {
            **flag,
            "status": "inactive",
            "period": {**(flag.get("period") or {}), "end": now},
            "code": code,
        }
        await screen.api.write("PUT", f"Flag/{flag_id}", resolved, if_match=version or None)
    except NeedsRelaunch as exc:
        return relaunch(request, screen.launch, str(exc))
    except FhirCallError as exc:
        if exc.status not in (409, 412):
            return error(request, "The FHIR server refused", str(exc), 502)
        outcome = "changed"
    return Response(status_code=303, headers={"Location": screen.url(f"?flag={outcome}")})
