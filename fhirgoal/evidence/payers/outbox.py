"""Payer submissions through the durable outbox: recorded with the write that decides them,
delivered as Da Vinci CDex `$submit-attachment` with the payer's Backend Services token.

The decision and the item are one write (fhir/outbox.py): the approval of a CDex request with
`sendToPayer` (the Task's `completed` version, evidence/cdex/fulfil.py) or the Communication of
an unsolicited submission (unsolicited.py). Both are written inside `submitting(connection)`,
and the source (`PayerOutbox`) records an item for that connection for the Task or
Communication written there, and for nothing else: the intent is the clinician's, never a
property of data someone could write again.

The delivery handler (`PayerDelivery`) rebuilds the submission from the version the item names
(submission.py), posts it to the connection's endpoint with a token from the payer's
authorization server (exchange/backend_auth.py: `private_key_jwt`, renewed once on a 401), the
item's key as `Idempotency-Key`; the receiver ties repeats together by the tracking id. The
outbox worker (exchange/delivery.py) retries with backoff, honouring Retry-After on 429 and
503, until the horizon. CDex: "a 4xx response [means] there is no point in resubmitting the
unaltered operation" (OperationDefinition comment), so a 4xx other than 401, 403, 408 and 429
(which a renewed token, a fixed registration or time can cure) parks the item as dead at once,
as does a connection removed before delivery. Each attempt leaves an AuditEvent (DICOM 110106
Export, subtype `urn:fhirgoal:payer-submission|<connection>`, in the patient's compartment); an
unsolicited submission's Communication becomes `completed` once the payer took it, `stopped`
(with the reason) once it is dead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar
from typing import Any

import httpx
import structlog

from fhirgoal.auth.keys import encryption_key
from fhirgoal.core.access import UNRESTRICTED
from fhirgoal.core.errors import FhirError
from fhirgoal.core.jsonio import dumps, loads
from fhirgoal.evidence.cdex.rule import resolved_patient
from fhirgoal.evidence.payers.connections import PayerConnection, PayerConnectionStore
from fhirgoal.evidence.payers.submission import Submission, from_communication, from_task
from fhirgoal.exchange.backend_auth import BackendAuthError, BackendServicesClient
from fhirgoal.exchange.delivery import retry_after
from fhirgoal.exchange.ehr_audit import EXPORT, record, sync_event
from fhirgoal.fhir.instants import instant_text, now
from fhirgoal.fhir.outbox import SelfDelivery, Sent, Skip, Target, digest
from fhirgoal.fhir.service import FhirService
from fhirgoal.store.outbox import OutboxItem
from fhirgoal.store.repository import Version

log = structlog.get_logger(__name__)

PAYER_SUBMISSION = "payer-submission"  # the outbox item kind
CHANNEL = "urn:fhirgoal:payer-submission"
# The Communication category of an unsolicited submission (unsolicited.py)
SUBMISSIONS = "https://fhirgoal.org/fhir/CodeSystem/fhirgoal-payer-submission"
FHIR_JSON = "application/fhir+json"
RETRIED_4XX = frozenset({401, 403, 408, 429})
NOT_YET_SECONDS = 0.2
ORPHAN_SECONDS = 120.0

_submitting: ContextVar[str | None] = ContextVar("payer_submitting", default=None)


@contextlib.contextmanager
def submitting(connection: str) -> Iterator[None]:
    """The Task or Communication written inside is submitted to payer `connection`."""
    token = _submitting.set(connection)
    try:
        yield
    finally:
        _submitting.reset(token)


def is_submission(resource: dict[str, Any]) -> bool:
    """A Communication recording an unsolicited submission."""
    return resource.get("resourceType") == "Communication" and any(
        c.get("system") == SUBMISSIONS
        for category in resource.get("category") or []
        for c in category.get("coding") or []
    )


class PayerOutbox:
    """The outbox source of payer submissions (fhir/outbox.py OutboxSource)."""

    def follows(self, rt: str) -> bool:
        return rt in ("Task", "Communication")

    def targets(self, version: Version, index: dict[str, Any]) -> list[Target]:
        name = _submitting.get()
        resource = version.resource
        if name is None or version.deleted or resource is None:
            return []
        chosen = (version.resource_type == "Task" and resource.get("status") == "completed") or (
            is_submission(resource) and resource.get("status") == "in-progress"
        )
        return [Target(PAYER_SUBMISSION, f"{PayerConnection.kind}/{name}")] if chosen else []


class PayerDelivery:
    """The delivery handler of `payer-submission` items (fhir/outbox.py DeliveryHandler)."""

    def __init__(self, service: FhirService) -> None:
        self.service = service
        self.store = PayerConnectionStore(service.database)

    async def refresh(self) -> None:
        """Nothing kept in memory: each delivery reads its connection."""

    async def prepare(self, item: OutboxItem) -> SelfDelivery | Skip:
        name = item.dest.removeprefix(f"{PayerConnection.kind}/")
        # read each time (one query per submission): a removed connection is never used
        connection = await self.store.get(name)
        if connection is None:
            return Skip(
                f"the payer connection {name} was removed before this submission was delivered: "
                f"add it again (fhirgoal payer add) and submit again",
                dead=True,
            )
        rt, _, rid = item.ref.partition("/")
        version = await self.service.stored_version(UNRESTRICTED, rt, rid, item.vid)
        if version is None or digest(version) != item.digest or version.resource is None:
            age = (now() - item.created).total_seconds()
            if version is None and age < ORPHAN_SECONDS:
                return Skip("its version is not stored yet", NOT_YET_SECONDS)
            return Skip("its version was never stored (the write failed)")
        try:
            submission = await self._submission(version.resource, connection)
        except FhirError as error:  # the version never changes: no attempt can do better
            return Skip(f"cannot be submitted: {error}", dead=True)
        body = dumps(submission.parameters())
        patient = self._patient(version.resource)

        async def run() -> Sent:
            sent = await self._post(connection, item, body)
            event = sync_event(
                EXPORT, connection.name, "E", f"{item.ref}/_history/{item.vid}",
                connection.endpoint, patient, sent.error, channel=CHANNEL,
                agent="fhirgoal payer submission", where="payer",
            )  # fmt: skip
            await record(self.service, [event])
            return sent

        return SelfDelivery(run)

    async def _submission(
        self, resource: dict[str, Any], connection: PayerConnection
    ) -> Submission:
        if resource["resourceType"] == "Task":
            patient = None
            reference = resolved_patient(resource)
            if reference is not None:
                found = await self.service.current(
                    UNRESTRICTED, "Patient", reference.removeprefix("Patient/")
                )
                patient = found.resource if found is not None else None
            return from_task(resource, connection, patient)
        contents = []
        for payload in resource.get("payload") or []:
            reference = (payload.get("contentReference") or {}).get("reference", "")
            rt, _, rest = str(reference).partition("/")
            rid, _, vid = rest.partition("/_history/")
            stored = await self.service.stored_version(UNRESTRICTED, rt, rid, int(vid or 0))
            if stored is None or stored.resource is None:
                raise FhirError("not-found", f"{reference} (its payload) is not stored")
            contents.append(stored.resource)
        return from_communication(resource, contents, connection)

    @staticmethod
    def _patient(resource: dict[str, Any]) -> str | None:
        if resource["resourceType"] == "Task":
            return resolved_patient(resource)
        reference = (resource.get("subject") or {}).get("reference")
        return reference if isinstance(reference, str) else None

    async def _post(self, connection: PayerConnection, item: OutboxItem, body: bytes) -> Sent:
        settings = self.service.settings
        key = connection.private_key(_kek(self.service))
        url = connection.endpoint
        # a client per submission (they are rare): nothing to close at shutdown, a token each
        async with httpx.AsyncClient(
            timeout=settings.outbox_timeout_seconds, follow_redirects=False
        ) as http:
            client = BackendServicesClient(
                connection.base, connection.client_id, key, connection.scopes, http,
                token_url=connection.token_url,
            )  # fmt: skip
            headers = {"Content-Type": FHIR_JSON, "Accept": FHIR_JSON, "Idempotency-Key": item.key}
            try:
                response = await client.request("POST", url, headers=headers, content=body)
            except BackendAuthError as error:
                return Sent(error=str(error))
        if 200 <= response.status_code < 300:
            return Sent()
        reason = f"POST {url}: HTTP {response.status_code}" + _diagnostics(response)
        wait = None
        if response.status_code in (429, 503):
            wait = retry_after(response.headers.get("retry-after"), now())
        final = 400 <= response.status_code < 500 and response.status_code not in RETRIED_4XX
        return Sent(error=reason, retry_after=wait, final=final)

    async def settled(self, item: OutboxItem, error: str | None, gave_up: bool) -> None:
        if gave_up:
            log.warning("payer submission dead", key=item.key, error=error)
        if not item.ref.startswith("Communication/") or (error is not None and not gave_up):
            return
        rid = item.ref.removeprefix("Communication/")
        current = await self.service.current(UNRESTRICTED, "Communication", rid)
        if current is None or current.resource is None or current.version != item.vid:
            return
        settled = {**current.resource, "status": "completed" if error is None else "stopped"}
        if error is None:
            settled["sent"] = instant_text(now())
        else:
            settled["statusReason"] = {"text": error[:1000]}
        await self.service.update(
            UNRESTRICTED, "Communication", rid, settled, f'W/"{current.version}"'
        )


def _diagnostics(response: httpx.Response) -> str:
    """The OperationOutcome's words, when the payer gave some."""
    try:
        body = loads(response.content)
    except FhirError:
        return ""
    if not isinstance(body, dict):
        return ""
    details = [
        str(i.get("diagnostics", "")) for i in body.get("issue") or [] if isinstance(i, dict)
    ]
    text = "; ".join(d for d in details if d)
    return f": {text[:500]}" if text else ""


def _kek(service: FhirService) -> bytes:
    settings = service.settings
    return encryption_key(settings.key_encryption_key, settings.data_dir)


def install(service: FhirService) -> PayerDelivery:
    """Plug payer submissions into the service's outbox: the source and the delivery handler."""
    service.outbox.add_source(PayerOutbox())
    handler = PayerDelivery(service)
    service.outbox.handlers[PAYER_SUBMISSION] = handler
    return handler
