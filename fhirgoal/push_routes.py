"""`POST /sync/notify/{connection}`: where EHRs send their Subscription notifications.

Issue 15, push in (exchange/ehr_push.py does the work, exchange/ehr_subscribe.py makes the
EHR's Subscriptions that call it). Outside the FHIR base on purpose: a notification is no FHIR
interaction on fhirgoal's resources, and the caller proves itself with the connection's secret
(`Authorization: Bearer`), not a SMART token, so the FHIR API's authorization middleware is not in
its way (auth/middleware.py guards `/fhir` only). The body is read only after the secret is
checked, and at most `FHIRGOAL_SYNC_NOTIFY_MAX_BYTES` of it. Answers are OperationOutcomes through
the one error path (guard.py).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from fhirgoal.core.errors import FhirError
from fhirgoal.core.jsonio import dumps
from fhirgoal.exchange.ehr_push import PushLoop
from fhirgoal.fhir.rest import FHIR_JSON, read_body

router = APIRouter()
NOTIFICATION_TYPES = {"application/fhir+json", "application/json"}


@router.post("/sync/notify/{connection}", summary="EHR Subscription notifications (push in)")
async def notify(connection: str, request: Request) -> Response:
    push: PushLoop | None = getattr(request.app.state, "ehr_push", None)
    if push is None:
        raise FhirError("unavailable", "the server is starting", headers={"Retry-After": "1"})
    address = request.client.host if request.client else None
    known = await push.receiver.authenticate(
        connection, request.headers.get("authorization"), address
    )
    limit = request.app.state.settings.sync_notify_max_bytes
    body = await read_body(request, NOTIFICATION_TYPES, limit)
    outcome = await push.receiver.receive(known, body)
    return Response(dumps(outcome.outcome()), media_type=FHIR_JSON)
