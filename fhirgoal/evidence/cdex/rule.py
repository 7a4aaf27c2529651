"""The write rule of Da Vinci CDex requests (Task), run before a Task is validated and indexed
(fhir/hooks.py `Preparer`), whoever writes it.

A Task is a CDex request when its `code` is taken from the CDex or PAS code systems
(codes.py); other Tasks are left alone.

- **Created** (by the payer): the request's essentials are checked (request.py), its requester
  must be an Organization this server holds, and its member must be an *attributed member* of
  that payer: an active member of a Group (`actual`) whose `managingEntity` is the payer, by
  reference or by identifier (fhir/groups.py). Otherwise 403, saying the same whether the member
  is unknown, ambiguous or someone else's (a payer learns nothing of who is here). The Patient
  the member resolves to is recorded in the `resolved-patient` extension, which indexes it and
  puts the Task in that patient's compartment (conformance/compartment-patient-custom.json):
  the clinician reaches it as the rest of the record, the payer through its Task scope.
- **Updated** by anyone but the server's fulfilment (fulfil.py, marked by `fulfilling`): only
  cancelling an open request (`status` `cancelled`, with a `statusReason`) is allowed; the rest
  of the request stays as asked, and the status, output and statusReason of an answer are the
  server's (CDex: "the Data Source updates the status of the Task"; HRex Task states).

Who may write which Task at all is the repository's business (the access context): a payer is
registered with `system/Task.cru?requester=Organization/{its id}` (README, "Payers"), so it
creates, reads and cancels its own requests only.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from fhirgoal.core.access import UNRESTRICTED, AccessContext
from fhirgoal.core.errors import FhirError
from fhirgoal.evidence.cdex import codes
from fhirgoal.evidence.cdex.request import payer_exists, read_request, resolve_patient
from fhirgoal.fhir.groups import resolve_members
from fhirgoal.fhir.service import FhirService
from fhirgoal.store.repository import Version

_FULFILMENT: ContextVar[str | None] = ContextVar("cdex_fulfilment", default=None)
# What a writer other than the fulfilment may change in a request: cancelling it.
CANCEL_FIELDS = frozenset({"meta", "text", "status", "statusReason", "lastModified"})
GROUPS_PER_PAYER = 100


@contextmanager
def fulfilling(task_id: str) -> Iterator[None]:
    """Marks the writes made inside as the server's fulfilment of Task `task_id`."""
    token = _FULFILMENT.set(task_id)
    try:
        yield
    finally:
        _FULFILMENT.reset(token)


def is_cdex_request(task: dict[str, Any] | None) -> bool:
    if not isinstance(task, dict):
        return False
    coding = (task.get("code") or {}).get("coding") or []
    systems = {codes.CDEX_TEMP, codes.PAS_TEMP}
    return any(isinstance(c, dict) and c.get("system") in systems for c in coding)


def resolved_patient(task: dict[str, Any]) -> str | None:
    for ext in task.get("extension") or []:
        if isinstance(ext, dict) and ext.get("url") == codes.RESOLVED_PATIENT:
            reference = (ext.get("valueReference") or {}).get("reference")
            return reference if isinstance(reference, str) else None
    return None


def _with_patient(task: dict[str, Any], patient: str | None) -> dict[str, Any]:
    """`task` with the server's resolved-patient extension (and no other claiming to be it)."""
    extensions = [e for e in task.get("extension") or []
                  if not (isinstance(e, dict) and e.get("url") == codes.RESOLVED_PATIENT)]  # fmt: skip
    if patient is not None:
        extensions.append({"url": codes.RESOLVED_PATIENT, "valueReference": {"reference": patient}})
    out = {k: v for k, v in task.items() if k != "extension"}
    if extensions:
        out["extension"] = extensions
    return out


class CdexRequestRule:
    resource_types = frozenset({"Task"})

    def __init__(self, service: FhirService) -> None:
        self.service = service

    async def prepare(
        self, access: AccessContext, resource: dict[str, Any], previous: Version | None
    ) -> dict[str, Any]:
        before = previous.resource if previous is not None else None
        if not is_cdex_request(resource) and not is_cdex_request(before):
            return resource
        if before is None:
            return await self._accept(resource)
        assert previous is not None
        patient = resolved_patient(before)
        if _FULFILMENT.get() == previous.id:
            return _with_patient(resource, patient)
        return _with_patient(self._cancel_only(resource, before), patient)

    async def _accept(self, task: dict[str, Any]) -> dict[str, Any]:
        svc = self.service
        request = read_request(svc, task)
        if not await payer_exists(svc, request.payer):
            raise FhirError(
                "processing",
                f"requester {request.payer} is not an Organization this server holds",
                "Task.requester.reference",
            )
        patient = await resolve_patient(svc, task)
        if patient is None or not await self.attributed(request.payer, patient):
            raise FhirError(
                "forbidden",
                f"Task.for names no member attributed to {request.payer}: a payer asks about "
                "the active members of its Groups (Group.managingEntity) only",
                "Task.for",
            )
        return _with_patient(task, patient)

    async def attributed(self, payer: str, patient: str) -> bool:
        groups = await self.service.find_resources(
            UNRESTRICTED, "Group", [("managing-entity", payer)], limit=GROUPS_PER_PAYER
        )
        for group in groups:
            if group.resource is None or group.resource.get("actual") is False:
                continue
            members = await resolve_members(self.service, UNRESTRICTED, group.resource)
            if patient in members.patients:
                return True
        return False

    @staticmethod
    def _cancel_only(task: dict[str, Any], before: dict[str, Any]) -> dict[str, Any]:
        def request_part(resource: dict[str, Any]) -> dict[str, Any]:
            kept = _with_patient(copy.deepcopy(resource), None)
            return {k: v for k, v in kept.items() if k not in CANCEL_FIELDS}

        status, was = task.get("status"), before.get("status")
        unchanged = request_part(task) == request_part(before)
        if unchanged and status == was and task.get("statusReason") == before.get("statusReason"):
            return task
        if unchanged and status == "cancelled" and was in codes.OPEN:
            return task
        raise FhirError(
            "processing",
            "a CDex request is answered by the data source: the clinician approves it "
            "(Task/{id}/$approve) or refuses it (Task/{id}/$reject); its requester may only "
            "cancel it while it is open (status 'cancelled'), and nothing else of it changes",
            "Task.status",
        )
