"""Deletions, both ways, between fhirgoal and a connected EHR (issue 15).

**Outbound** (`OutboundDeletions`, run by exchange/ehr_outbound.py for the outbox item of a
deletion: https://hl7.org/fhir/R4/http.html#delete, a DELETE or a transaction's DELETE entry).
fhirgoal deletes only the EHR copies it made (the link's origin is fhirgoal, or, with no link,
what carries fhirgoal's identifier): the EHR's own records (a goal of its care plan) are the
EHR's to delete, and the link remembers that fhirgoal deleted its copy.
- Linked: `DELETE [base]/[type]/[id]` of the EHR's copy; a Goal (both sides edit goals) with
  `If-Match` on the EHR version last in step, so that an EHR edit fhirgoal has not seen is not
  deleted unseen: a 412 leaves it, for a human (`fhirgoal sync unmatched`).
- Not linked (an earlier delivery's answer was lost): a conditional delete on fhirgoal's
  identifier (http.html#3.1.0.7.1, `DELETE [base]/[type]?identifier=...`), for the copies the
  mapping made of the version deleted. Nothing is sent for a patient the connection does not
  follow.
- 200/202/204 and 404/410 (gone already) are done: a repeated delivery deletes nothing twice.
  The link records the deletion; an item for a version before the deletion is void
  (ehr_outbound.py), so no copy is made after it.

**Inbound** (`InboundDeletions`, run by each pull, exchange/ehr_inbound.py). A search does not
show deletions; the type's history does (http.html#history: "deleted resources are included in
the history with request.method DELETE"), so a pull reads `[type]/_history?_since=` from the
type's cursor (less the pull overlap) and, per resource, its newest entry. A deleted EHR
resource that fhirgoal copied (linked) is deleted in fhirgoal, as the EHR's (no echo back),
unless fhirgoal owns content in it: a Goal with a GAS scale, or Observations (ratings) whose
focus is it. Then nothing is deleted, and the conflict Flag (exchange/conflicts.py) tells the
clinician. A deleted Patient is never deleted here (fhirgoal holds the client's goals and
ratings): it waits for a human. The link records each deletion, which side made it, and the
EHR's deletion version.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import structlog

from fhirgoal.clinical.codes import GAS_EXTENSION
from fhirgoal.core.access import UNRESTRICTED
from fhirgoal.core.errors import FhirError
from fhirgoal.exchange.backend_auth import BackendServicesClient
from fhirgoal.exchange.conflicts import raise_deleted_in_ehr, settle_deleted
from fhirgoal.exchange.connections import EhrConnection
from fhirgoal.exchange.dialect import DialectError
from fhirgoal.exchange.ehr_audit import EXPORT, IMPORT, record, sync_event
from fhirgoal.exchange.ehr_http import FHIR_JSON, Refused, failure, instant
from fhirgoal.exchange.ehr_search import PullError, history_pages
from fhirgoal.exchange.ehr_sync import EhrSync, applying
from fhirgoal.exchange.links import Conflict, Link
from fhirgoal.exchange.translate import for_sending, origin_system, parse_reference
from fhirgoal.fhir.instants import instant_text
from fhirgoal.fhir.outbox import Sent
from fhirgoal.store.repository import Version

log = structlog.get_logger(__name__)

DONE = frozenset({200, 202, 204, 404, 410})  # deleted now, or gone already
SHARED_TYPES = frozenset({"Goal"})  # both sides edit them: deleted only as last seen
NEVER_DELETED = frozenset({"Patient"})  # the client's record: a human decides
RATINGS_COUNTED = 100


def _patient_of(resource: dict[str, Any]) -> str | None:
    for key in ("subject", "patient"):
        reference = (resource.get(key) or {}).get("reference")
        if isinstance(reference, str) and reference.startswith("Patient/"):
            return reference
    return None


class OutboundDeletions:
    def __init__(self, sync: EhrSync) -> None:
        self.sync = sync
        self.service = sync.service

    async def deliver(self, connection: EhrConnection, tombstone: Version) -> Sent:
        """Carry fhirgoal's deletion `tombstone` over to the EHR's copy (see the module)."""
        sync, name = self.sync, connection.name
        ref = f"{tombstone.resource_type}/{tombstone.id}"
        link = await sync.links.by_local(name, ref)
        if link is not None and link.deleted == "ehr":
            if link.conflict is not None:
                await settle_deleted(self.service, link.conflict.flag, ref)
            return Sent(void=f"{link.ehr} was deleted in EHR {name} already")
        if link is not None and link.deleted is not None:
            return Sent(void=f"{ref} was deleted already")
        previous = await self.service.stored_version(
            UNRESTRICTED, tombstone.resource_type, tombstone.id, tombstone.version - 1
        )
        deleted = previous.resource if previous is not None else None
        if link is not None and link.origin != "fhirgoal":
            await sync.links.mark_deleted(name, ref, "fhirgoal")
            return Sent(void=f"{link.ehr} is EHR {name}'s own record: it stays there")
        client = sync.client(connection)
        if link is not None:
            ehr_url = f"{connection.base}/{link.ehr}"
            headers = {"Accept": FHIR_JSON}
            if tombstone.resource_type in SHARED_TYPES and link.ehr_vid:
                seen = link.conflict.ehr_vid if link.conflict else link.ehr_vid
                headers["If-Match"] = f'W/"{seen}"'
            response = await client.request("DELETE", ehr_url, headers=headers)
            if response.status_code == 412:
                reason = (
                    f"{ref} was deleted in fhirgoal, but EHR {name} changed {link.ehr} since "
                    "version " + headers["If-Match"] + ": not deleted there"
                )
                await sync.links.hold(name, ref, "deleted", reason)
                return Sent(void=reason)
            if response.status_code not in DONE:
                raise Refused(failure("DELETE", ehr_url, response))
            extras = self._copies(connection, tombstone, deleted)[1:]
        else:
            patient = _patient_of(deleted or {})
            if patient is None or await sync.links.by_local(name, patient) is None:
                return Sent(void=f"{ref} is not about a patient EHR {name} follows")
            extras = self._copies(connection, tombstone, deleted)
            if not extras:
                return Sent(void=f"the mapping never sent {ref} to EHR {name}")
            ehr_url = None
        for rt, token in extras:
            await self._delete_by_identifier(client, connection, rt, token)
        if link is not None:
            await sync.links.mark_deleted(name, ref, "fhirgoal")
        event = sync_event(
            EXPORT,
            name,
            "D",
            f"{ref}/_history/{tombstone.version}",
            ehr_url,
            _patient_of(deleted or {}),
        )
        await record(self.service, [event])
        return Sent()

    def _copies(
        self, connection: EhrConnection, tombstone: Version, deleted: dict[str, Any] | None
    ) -> list[tuple[str, str]]:
        """(EHR type, identifier token) of each copy the mapping makes of the deleted version,
        the first one the primary copy; none when the mapping cannot express it (it was never
        sent, then)."""
        if deleted is None:
            return []
        try:
            mapped = self.sync.dialect(connection).outbound(for_sending(deleted))
        except DialectError:
            return []
        out = []
        for n, copy in enumerate(mapped):
            rid = tombstone.id if n == 0 else f"{tombstone.id}-{n}"
            system = origin_system(self.sync.base, tombstone.resource_type)
            out.append((str(copy["resourceType"]), f"{system}|{rid}"))
        return out

    @staticmethod
    async def _delete_by_identifier(
        client: BackendServicesClient, connection: EhrConnection, rt: str, token: str
    ) -> None:
        url = f"{connection.base}/{rt}"
        response = await client.request(
            "DELETE", url, headers={"Accept": FHIR_JSON}, params=[("identifier", token)]
        )
        if response.status_code == 412:
            # several EHR records carry the identifier fhirgoal gave one copy: for a human
            sent = failure("DELETE", url, response)
            raise Refused(sent._replace(final=True))
        if response.status_code not in DONE:
            raise Refused(failure("DELETE", url, response))


@dataclass
class Deletions:
    deleted: int = 0  # deleted in fhirgoal
    kept: int = 0  # kept: fhirgoal owns content in them (Flag raised)
    held: int = 0  # waiting for a human
    latest: datetime | None = None  # the newest history entry seen (the next window's start)


class InboundDeletions:
    def __init__(self, sync: EhrSync) -> None:
        self.sync = sync
        self.service = sync.service

    async def pull(
        self, connection: EhrConnection, client: BackendServicesClient, rt: str, since: datetime
    ) -> Deletions:
        """Apply the EHR's deletions of `rt` since `since` (less the pull overlap) to what
        fhirgoal copied. PullError when the EHR does not answer the history."""
        overlap = timedelta(seconds=self.sync.settings.sync_pull_overlap_seconds)
        params = [
            ("_since", instant_text(since - overlap)),
            ("_count", str(self.sync.settings.sync_page_size)),
        ]
        newest: dict[str, tuple[datetime | None, dict[str, Any]]] = {}
        counts = Deletions()
        async for page in history_pages(client, connection, rt, params):
            for entry in page:
                eid = _entry_id(entry, connection.base, rt)
                if eid is None:
                    continue
                at = instant((entry.get("response") or {}).get("lastModified"))
                if at is not None and (counts.latest is None or at > counts.latest):
                    counts.latest = at
                seen = newest.get(eid)
                # newest first (http.html#history), but an EHR that pages otherwise is read by time
                if seen is None or (at is not None and seen[0] is not None and at > seen[0]):
                    newest[eid] = (at, entry)
        gone = {
            f"{rt}/{eid}": entry
            for eid, (_, entry) in newest.items()
            if (entry.get("request") or {}).get("method") == "DELETE"
        }
        if not gone:
            return counts
        links = await self.sync.links.many_by_ehr(connection.name, sorted(gone))
        for ehr_ref, link in links.items():
            if link.deleted is not None:
                continue
            etag = str((gone[ehr_ref].get("response") or {}).get("etag") or "")
            outcome = await self._apply(connection, link, etag.removeprefix("W/").strip('"'))
            setattr(counts, outcome, getattr(counts, outcome) + 1)
        return counts

    async def _apply(self, connection: EhrConnection, link: Link, ehr_vid: str) -> str:
        """The EHR deleted `link.ehr`: 'deleted', 'kept' or 'held' (attribute names of
        Deletions)."""
        sync, name = self.sync, connection.name
        rt, _, rid = link.local.partition("/")
        ehr_url = f"{connection.base}/{link.ehr}"
        if rt in NEVER_DELETED:
            await sync.links.mark_deleted(name, link.local, "ehr", ehr_vid)
            await sync.links.hold(
                name, link.local, "deleted",
                f"EHR {name} deleted {link.ehr}; fhirgoal's {link.local} and its records stay "
                "(a human decides)",
            )  # fmt: skip
            return "held"
        async with sync.locks.hold(sync.links.key(name, link.local)):
            current = await self.service.current(UNRESTRICTED, rt, rid)
            if current is None or current.deleted or current.resource is None:
                await sync.links.mark_deleted(name, link.local, "ehr", ehr_vid)
                return "deleted"
            holds = await self._owned(rt, rid, current.resource)
            patient = (_patient_of(current.resource) or "").removeprefix("Patient/")
            if holds:
                fid = await raise_deleted_in_ehr(
                    self.service, name, patient, link.local, current.version, ehr_url, holds
                )
                await sync.links.mark_deleted(name, link.local, "ehr", ehr_vid)
                await sync.links.set_conflict(
                    name, link.local, Conflict(current.version, ehr_vid, fid)
                )
                log.warning("EHR deleted what fhirgoal holds", connection=name, local=link.local)
                return "kept"
            try:
                with applying(name):  # the EHR's deletion: not sent back to it
                    outcome = await self.service.delete(
                        UNRESTRICTED, rt, rid, f'W/"{current.version}"'
                    )
            except FhirError as error:
                if error.status != 412:
                    raise
                # changed in fhirgoal meanwhile: look again at the next pull
                raise PullError(f"{link.local} changed while its deletion was applied") from None
            await sync.links.mark_deleted(name, link.local, "ehr", ehr_vid)
        tombstone = outcome.version
        local = f"{link.local}/_history/{tombstone.version}" if tombstone else link.local
        event = sync_event(
            IMPORT, name, "D", local, ehr_url, f"Patient/{patient}" if patient else None
        )
        await record(self.service, [event])
        return "deleted"

    async def _owned(self, rt: str, rid: str, resource: dict[str, Any]) -> str:
        """What fhirgoal owns in the resource, in words ('' for nothing): a GAS scale, the
        Observations (ratings) that are about it."""
        owned = []
        if any(e.get("url") == GAS_EXTENSION for e in resource.get("extension") or []):
            owned.append("GAS scale")
        about = await self.service.find_resources(
            UNRESTRICTED, "Observation", [("focus", f"{rt}/{rid}")], limit=RATINGS_COUNTED
        )
        if about:
            more = "+" if len(about) == RATINGS_COUNTED else ""
            owned.append(f"{len(about)}{more} rating(s)")
        return " and ".join(owned)


def _entry_id(entry: dict[str, Any], base: str, rt: str) -> str | None:
    """The id of the `rt` a history entry is about (its resource, request URL or fullUrl)."""
    resource = entry.get("resource")
    if isinstance(resource, dict) and isinstance(resource.get("id"), str):
        return str(resource["id"])
    for text in ((entry.get("request") or {}).get("url"), entry.get("fullUrl")):
        if isinstance(text, str):
            parsed = parse_reference(text.split("?")[0], base)
            if parsed is not None and parsed[0] == rt:
                return parsed[1]
    return None


__all__ = ["Deletions", "InboundDeletions", "OutboundDeletions"]
