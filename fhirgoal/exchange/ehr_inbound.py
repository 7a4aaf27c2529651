"""Inbound EHR sync: incremental pulls of the patients fhirgoal follows, written as fhirgoal's.

Issue 15. A pull of one connection:

1. **Identity** (exchange/ehr_identity.py): fhirgoal's Patients not yet linked are matched to
   the EHR's by identifiers only; the linked ones are followed, the others wait for a human
   with the reason (`fhirgoal sync unmatched`).
2. **Changes**, type by type in the order Patient, Encounter, Condition, Goal, CarePlan (what a
   resource references is then usually linked already): for the followed patients,
   `<type>?patient=...&_lastUpdated=gt<last>` (https://hl7.org/fhir/R4/search.html#lastUpdated),
   `<last>` the latest `meta.lastUpdated` the previous pull saw minus `sync_pull_overlap_seconds`
   (a version stamped just before the previous pull and committed just after it is not missed;
   what the overlap fetches again changes nothing); a patient followed since the last pull is
   fetched whole (exchange/ehr_search.py follows the pages).
3. **Each resource**: unchanged since the link's EHR version, nothing. Else through the dialect
   (exchange/dialect.py), references translated (exchange/translate.py), written through the
   FhirService as the copy of the EHR's resource (its identifier: system = the EHR's base + "/" +
   type, value = its id): an update of the linked resource with `If-Match`, or the first time a
   conditional update on that identifier (https://hl7.org/fhir/R4/http.html#cond-update), so a
   pull repeated changes nothing. Content equal to what fhirgoal holds writes nothing.
   Ownership (issue 15 defaults): the EHR's version of what it owns replaces fhirgoal's, except
   the elements fhirgoal owns (exchange/ownership.py: a Goal's GAS scale and weights, fhirgoal's
   extensions and meta.profile/tag/security, a Patient's other identifiers, care team and
   Patient.link), and what the dialect cannot carry, which the dialect restores from fhirgoal's copy
   (`Dialect.restore`, the mapping's `restoreOnInbound`): a round trip of fhirgoal's own goal
   through an EHR that keeps goals as free text neither erases its GAS scale nor rewrites it.
   A Goal edited in fhirgoal since the versions were last in step, and in the EHR too, is a
   conflict (exchange/conflicts.py): nothing is overwritten.
   A matched Patient says `seealso` the EHR's record (Patient.link); the EHR merging it into
   another moves fhirgoal's link (exchange/ehr_patient_links.py).
4. **Deletions**: the type's history since its cursor shows what the EHR deleted; what fhirgoal
   copied is deleted here too, unless fhirgoal owns content in it (exchange/ehr_deletions.py).
5. A resource the dialect cannot map, that refers to a patient fhirgoal does not follow, or that
   fhirgoal refuses (validation) is queued for a human with the reason; the pull goes on.

Each write is an AuditEvent (exchange/ehr_audit.py, DICOM 110107 Import).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Protocol

import structlog

from fhirgoal.core.access import UNRESTRICTED
from fhirgoal.core.errors import FhirError
from fhirgoal.exchange.backend_auth import BackendServicesClient
from fhirgoal.exchange.conflicts import raise_conflict
from fhirgoal.exchange.connections import PULL_TYPES, EhrConnection
from fhirgoal.exchange.dialect import Dialect, DialectError
from fhirgoal.exchange.ehr_audit import IMPORT, record, sync_event
from fhirgoal.exchange.ehr_bulk import BulkJob
from fhirgoal.exchange.ehr_deletions import InboundDeletions
from fhirgoal.exchange.ehr_identity import PatientMatcher
from fhirgoal.exchange.ehr_patient_links import (
    PatientMoves,
    replacements,
    with_ehr_link,
    without_links,
)
from fhirgoal.exchange.ehr_search import PullError, chunks, search_pages
from fhirgoal.exchange.ehr_sync import EhrSync, applying
from fhirgoal.exchange.links import Conflict, Link
from fhirgoal.exchange.ownership import keep_owned
from fhirgoal.exchange.translate import (
    content,
    for_sending,
    origin_system,
    parse_reference,
    patient_of,
    references,
    rewrite_references,
    version_url,
    with_origin,
)
from fhirgoal.fhir.instants import instant_text, now
from fhirgoal.fhir.search.dates import parse_range
from fhirgoal.fhir.service import FhirService
from fhirgoal.store.repository import Version

log = structlog.get_logger(__name__)

SHARED_TYPES = frozenset({"Goal"})  # edited on both sides: conflicts are possible
HISTORY_CURSOR = ":history"  # the cursor of a type's deletions: the newest history entry seen


class PullProgress(Protocol):
    """How a long pull reports (the CLI draws rich progress bars)."""

    def stage(self, description: str, total: int | None) -> None: ...

    def advance(self, count: int) -> None: ...


class _Quiet:
    def stage(self, description: str, total: int | None) -> None:
        pass

    def advance(self, count: int) -> None:
        pass


@dataclass
class PullReport:
    connection: str
    linked: int = 0  # patients linked by this pull
    fetched: int = 0
    written: int = 0
    unchanged: int = 0
    held: int = 0
    conflicts: int = 0
    deleted: int = 0  # deleted in fhirgoal because the EHR deleted them (ehr_deletions.py)
    kept: int = 0  # deleted in the EHR, kept in fhirgoal for its content (a Flag says so)
    moved: int = 0  # patient links moved to the EHR record that replaced the one followed
    errors: list[str] = field(default_factory=list)
    exported: int = 0  # resources read from the EHR's Bulk export files


class _Held(Exception):
    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(reason)
        self.kind = kind
        self.reason = reason


def _instant(text: Any) -> datetime | None:
    if not isinstance(text, str) or not text:
        return None
    try:
        return parse_range(text)[0]
    except FhirError:
        return None


class Puller:
    def __init__(self, sync: EhrSync) -> None:
        self.sync = sync
        self.service: FhirService = sync.service
        self._waiting: set[str] = set()  # records of the pages being applied that wait for a human
        self.deletions = InboundDeletions(sync)
        self.moves = PatientMoves(sync)

    async def pull(
        self, connection: EhrConnection, progress: PullProgress | None = None
    ) -> PullReport:
        """One pull of `connection` (identity, then changes); its counts. The cursors move on
        only when every search of the pull succeeded."""
        progress = progress or _Quiet()
        report = PullReport(connection.name)
        client = self.sync.client(connection)
        started = now()
        try:
            dialect = self.sync.dialect(connection)
            progress.stage(f"{connection.name}: matching patients", None)
            report.linked = await PatientMatcher(self.sync).match(connection, client)
            cursors = await self._pull_changes(connection, client, dialect, report, progress)
        except Exception as error:
            await self.sync.store.pulled(connection.name, {}, repr(error)[:500], started)
            raise
        await self.sync.store.pulled(connection.name, cursors, None, started)
        return report

    # ---- changes -----------------------------------------------------------------------------
    async def _pull_changes(
        self,
        connection: EhrConnection,
        client: BackendServicesClient,
        dialect: Dialect,
        report: PullReport,
        progress: PullProgress,
    ) -> dict[str, str]:
        name, links, settings = connection.name, self.sync.links, self.sync.settings
        patients = await links.patients(name)
        known = sorted(p.ehr_id for p in patients if p.pulled)
        fresh = sorted(p.ehr_id for p in patients if not p.pulled)
        cursors = await self.sync.store.cursors(name)
        overlap = timedelta(seconds=settings.sync_pull_overlap_seconds)
        types = [t for t in PULL_TYPES if t in connection.pull]
        moved: dict[str, str] = {}
        exports: dict[int, BulkJob] = {}  # by group: the groups pulled through a Bulk export
        try:
            for group, ids in enumerate((known, fresh)):
                if connection.bulk_export is None or len(ids) < settings.sync_bulk_min_patients:
                    continue
                since = _earliest([_instant(cursors.get(t)) for t in types]) if group == 0 else None
                progress.stage(f"{name}: the EHR's export of {len(ids)} patients", None)
                exports[group] = job = await BulkJob.start(
                    client, connection, ids, types, since - overlap if since else None
                )
                await job.finished(settings.sync_bulk_wait_seconds)
                await job.count_errors()
            for rt in types:
                last = _instant(cursors.get(rt))
                latest = last
                progress.stage(f"{name}: {rt}", None)
                for group, (ids, since) in enumerate([(known, last), (fresh, None)]):
                    exported = exports.get(group)
                    pages = (
                        exported.pages(rt, settings.sync_page_size)
                        if exported is not None
                        else self._searched(client, connection, rt, ids, since, overlap)
                    )
                    async for page in pages:
                        report.fetched += len(page)
                        await self._apply_page(connection, dialect, rt, page, report)
                        progress.advance(len(page))
                        for resource in page:
                            at = _instant((resource.get("meta") or {}).get("lastUpdated"))
                            if at is not None and (latest is None or at > latest):
                                latest = at
                if latest is not None:
                    moved[rt] = instant_text(latest)
                window = _instant(cursors.get(rt + HISTORY_CURSOR)) or last
                if window is not None and known:
                    progress.stage(f"{name}: {rt} deleted", None)
                    try:
                        found = await self.deletions.pull(connection, client, rt, window)
                    except PullError as error:  # the changes stand; deletions are seen next time
                        report.errors.append(str(error))
                    else:
                        report.deleted += found.deleted
                        report.kept += found.kept
                        report.held += found.held
                        if found.latest is not None:
                            moved[rt + HISTORY_CURSOR] = instant_text(found.latest)
        finally:
            for job in exports.values():
                report.exported += job.read
                await job.close()
        for ehr_id in fresh:
            link = next(p for p in patients if p.ehr_id == ehr_id)
            await links.mark_pulled(name, link.local)
        return moved

    def _searched(
        self,
        client: BackendServicesClient,
        connection: EhrConnection,
        rt: str,
        ehr_ids: list[str],
        since: datetime | None,
        overlap: timedelta,
    ) -> AsyncIterator[list[dict[str, Any]]]:
        """The pages of `rt` of these patients changed since `since` (all of them: None), by
        searches of at most IDENTIFIERS_PER_SEARCH patients each."""

        async def pages() -> AsyncIterator[list[dict[str, Any]]]:
            for chunk in chunks(ehr_ids):
                key = "_id" if rt == "Patient" else "patient"
                values = chunk if rt == "Patient" else [f"Patient/{i}" for i in chunk]
                params = [
                    (key, ",".join(values)),
                    ("_count", str(self.sync.settings.sync_page_size)),
                ]
                params.append(("_sort", "_lastUpdated"))
                if since is not None:
                    params.append(("_lastUpdated", f"gt{instant_text(since - overlap)}"))
                async for page in search_pages(client, connection, rt, params):
                    yield page

        return pages()

    async def apply(
        self, connection: EhrConnection, rt: str, resources: list[dict[str, Any]]
    ) -> PullReport:
        """Apply `resources` of type `rt` read from the EHR outside a pull (a push notification,
        exchange/ehr_push.py) by the same rules as a pull's page; the counts."""
        report = PullReport(connection.name)
        report.fetched = len(resources)
        await self._apply_page(connection, self.sync.dialect(connection), rt, resources, report)
        return report

    async def _apply_page(
        self,
        connection: EhrConnection,
        dialect: Dialect,
        rt: str,
        page: list[dict[str, Any]],
        report: PullReport,
    ) -> None:
        name = connection.name
        refs = [f"{rt}/{r['id']}" for r in page if isinstance(r.get("id"), str)]
        links = await self.sync.links.many_by_ehr(name, refs)
        self._waiting |= await self.sync.links.held_among(name, refs)
        events: list[dict[str, Any]] = []

        async def apply_all(group: list[dict[str, Any]]) -> None:
            for resource in group:
                ehr_ref = f"{rt}/{resource.get('id')}"
                try:
                    outcome = await self._apply(connection, dialect, resource, links.get(ehr_ref))
                except _Held as held:
                    await self.sync.links.hold(name, ehr_ref, held.kind, held.reason)
                    report.held += 1
                    continue
                if outcome == "written":
                    report.written += 1
                    events.append(self._event(connection, resource))
                elif outcome == "conflict":
                    report.conflicts += 1
                elif outcome == "moved":
                    report.moved += 1
                elif outcome == "held":
                    report.held += 1
                else:
                    report.unchanged += 1

        # One patient's resources in the order the EHR gave them, several patients at once: the
        # writes of concurrent patients share the database's journal syncs (store/batching.py).
        groups: dict[str, list[dict[str, Any]]] = {}
        for resource in page:
            groups.setdefault(patient_of(resource), []).append(resource)
        slots = asyncio.Semaphore(self.sync.settings.sync_pull_concurrency)

        async def in_slot(group: list[dict[str, Any]]) -> None:
            async with slots:
                await apply_all(group)

        await asyncio.gather(*(in_slot(group) for group in groups.values()))
        await record(self.service, events)

    def _event(self, connection: EhrConnection, resource: dict[str, Any]) -> dict[str, Any]:
        meta = resource.get("meta") or {}
        ehr_url = version_url(
            connection.base, resource["resourceType"], resource["id"], meta.get("versionId", "")
        )
        return sync_event(IMPORT, connection.name, "U", None, ehr_url, None)

    async def _apply(
        self,
        connection: EhrConnection,
        dialect: Dialect,
        resource: dict[str, Any],
        link: Link | None,
        again: bool = True,
    ) -> str:
        """'written', 'unchanged', 'conflict', 'moved' (a Patient's link followed the EHR's
        merge) or 'held'; _Held when it cannot be placed."""
        sync, name = self.sync, connection.name
        rt, eid = resource["resourceType"], str(resource["id"])
        ehr_ref = f"{rt}/{eid}"
        meta = resource.get("meta") or {}
        ehr_vid = str(meta.get("versionId", ""))
        ehr_at = _instant(meta.get("lastUpdated"))
        if rt == "Patient" and (moved_to := replacements(resource, connection.base)):
            # the EHR merged this record into another: no longer its content, the link moves
            return await self.moves.follow(connection, link, moved_to) if link else "unchanged"
        if link is not None and (
            (ehr_vid and ehr_vid == link.ehr_vid)
            or (ehr_at is not None and link.ehr_at is not None and ehr_at <= link.ehr_at)
        ):
            return "unchanged"
        if link is not None and link.deleted == "fhirgoal":
            raise _Held(
                "deleted", f"{ehr_ref} changed in the EHR, but {link.local} was deleted in fhirgoal"
            )
        target = link.local if link is not None else self._ours(resource)
        try:
            produced = dialect.inbound(resource)
        except DialectError as error:
            raise _Held("mapping", str(error)) from None
        if not produced:
            return "unchanged"
        # the EHR's Patient.link relate its own records: fhirgoal keeps its own (seealso, below)
        produced = [without_links(p) if p.get("resourceType") == "Patient" else p for p in produced]
        copies = await self._localize(connection, produced, ehr_ref)
        copies = [
            with_origin(c, connection.base, rt, eid if n == 0 else f"{eid}-{n}", ehr_vid, sync.base)
            for n, c in enumerate(copies)
        ]
        primary = copies[0]
        local_rt = primary["resourceType"]
        if target is None:
            target = await self._by_identifier(local_rt, primary["identifier"][-1])
        if target is not None and not target.startswith(f"{local_rt}/"):
            raise _Held("mapping", f"{ehr_ref} maps to a {local_rt}, but is linked to {target}")
        async with sync.locks.hold(sync.links.key(name, target or ehr_ref)):
            current = None
            if target is not None:
                current = await self.service.current(UNRESTRICTED, local_rt, target.split("/")[1])
            held = current.resource if current is not None and not current.deleted else None
            merged = dialect.restore(keep_owned(local_rt, held, primary), held)
            if local_rt == "Patient":
                merged = with_ehr_link(merged, held, connection.base, eid)
            if current is not None and held is not None and content(held) == content(merged):
                await sync.links.save(
                    name, target or "", ehr_ref, current.version, ehr_vid, ehr_at, "ehr"
                )
                return "unchanged"
            in_step = link.local_vid if link is not None else 0
            if current is not None and local_rt in SHARED_TYPES and current.version > in_step:
                return await self._conflict(
                    connection, link, target or "", current, resource, ehr_ref, ehr_vid, ehr_at
                )
            try:
                with applying(name):
                    if current is not None and target is not None:
                        rid = target.split("/")[1]
                        outcome = await self.service.update(
                            UNRESTRICTED, local_rt, rid, {**merged, "id": rid},
                            f'W/"{current.version}"',
                        )  # fmt: skip
                    else:
                        identifier = primary["identifier"][-1]
                        criteria = [("identifier", f"{identifier['system']}|{identifier['value']}")]
                        outcome = await self.service.conditional_update(
                            UNRESTRICTED, local_rt, criteria, merged, None, sync.base
                        )
            except FhirError as error:
                if error.status != 412 or not again:
                    raise _Held(
                        "invalid", f"fhirgoal refused {ehr_ref}: {_diagnostics(error)}"
                    ) from None
                outcome = None  # changed meanwhile (a local edit, a derived version): read again
            if outcome is not None:
                assert outcome.version is not None
                written = outcome.version
                local = f"{local_rt}/{written.id}"
                await sync.links.save(name, local, ehr_ref, written.version, ehr_vid, ehr_at, "ehr")
        if outcome is None:
            # once more, outside the lock: asyncio's locks are not re-entrant, and taking this
            # one again from inside it waited forever
            return await self._apply(connection, dialect, resource, link, again=False)
        if ehr_ref in self._waiting:  # placed now: no longer waits for a human
            await sync.links.release_all(name, ehr_ref)
        for extra in copies[1:]:
            identifier = extra["identifier"][-1]
            criteria = [("identifier", f"{identifier['system']}|{identifier['value']}")]
            try:
                with applying(name):
                    await self.service.conditional_update(
                        UNRESTRICTED, extra["resourceType"], criteria, extra, None, sync.base
                    )
            except FhirError as error:
                raise _Held(
                    "invalid", f"fhirgoal refused part of {ehr_ref}: {_diagnostics(error)}"
                ) from None
        return "written"

    def _ours(self, resource: dict[str, Any]) -> str | None:
        """The fhirgoal resource an EHR copy that fhirgoal made names by its identifier."""
        own = f"{self.sync.base}/"
        for identifier in resource.get("identifier") or []:
            system = str((identifier or {}).get("system", ""))
            value = (identifier or {}).get("value")
            if system.startswith(own) and isinstance(value, str) and "/" not in system[len(own) :]:
                return f"{system[len(own) :]}/{value}"
        return None

    async def _by_identifier(self, rt: str, identifier: dict[str, str]) -> str | None:
        criteria = [("identifier", f"{identifier['system']}|{identifier['value']}")]
        found = await self.service.find_resources(UNRESTRICTED, rt, criteria, limit=2)
        if len(found) > 1:
            raise _Held("identity", f"2 fhirgoal {rt}s carry identifier {criteria[0][1]}")
        return f"{rt}/{found[0].id}" if found else None

    async def _localize(
        self, connection: EhrConnection, produced: list[dict[str, Any]], ehr_ref: str
    ) -> list[dict[str, Any]]:
        """The mapped resources with the EHR's references made fhirgoal's: linked targets by
        their fhirgoal id, a Patient that is not followed holds the record, anything else a
        logical reference by the identifier its copy carries."""
        wanted = {
            f"{t}/{i}"
            for resource in produced
            for reference in _all_references(resource)
            if (parsed := parse_reference(reference, connection.base)) is not None
            for t, i in [parsed]
        }
        linked = await self.sync.links.many_by_ehr(connection.name, sorted(wanted))
        missing = sorted(r for r in wanted if r.startswith("Patient/") and r not in linked)
        if missing:
            raise _Held(
                "identity", f"{ehr_ref} refers to {missing[0]}, which fhirgoal does not follow"
            )

        def translate(rt: str, rid: str) -> dict[str, Any]:
            link = linked.get(f"{rt}/{rid}")
            if link is not None:
                return {"reference": link.local}
            return {"identifier": {"system": origin_system(connection.base, rt), "value": rid}}

        out = []
        for resource in produced:
            local = for_sending(resource)  # a deep copy: references are rewritten in place
            rewrite_references(local, connection.base, translate)
            out.append(local)
        return out

    async def _conflict(
        self,
        connection: EhrConnection,
        link: Link | None,
        local: str,
        current: Version,
        ehr_resource: dict[str, Any],
        ehr_ref: str,
        ehr_vid: str,
        ehr_at: datetime | None,
    ) -> str:
        name = connection.name
        if link is not None and link.conflict is not None and link.conflict.ehr_vid == ehr_vid:
            return "conflict"  # told already
        if link is None:  # a copy whose link was lost: link it, not in step
            await self.sync.links.save(name, local, ehr_ref, 0, "", None, "fhirgoal")
        patient = ((current.resource or {}).get("subject") or {}).get("reference", "")
        ehr_rt, _, ehr_id = ehr_ref.partition("/")
        ehr_url = version_url(connection.base, ehr_rt, ehr_id, ehr_vid)
        fid = await raise_conflict(
            self.service,
            name,
            patient.removeprefix("Patient/"),
            local,
            current.version,
            current.resource,
            ehr_url,
            ehr_resource,
        )
        await self.sync.links.set_conflict(name, local, Conflict(current.version, ehr_vid, fid))
        log.warning("EHR sync conflict", connection=name, goal=local, ehr=ehr_url, flag=fid)
        return "conflict"


def _earliest(instants: list[datetime | None]) -> datetime | None:
    """The earliest of the cursors; None when a type has none (it is pulled whole)."""
    if not instants or any(i is None for i in instants):
        return None
    return min(i for i in instants if i is not None)


def _all_references(value: Any) -> list[str]:
    return [r["reference"] for r in references(value)]


def _diagnostics(error: FhirError) -> str:
    return "; ".join(
        issue.diagnostics + (f" ({issue.expression})" if issue.expression else "")
        for issue in error.issues
    )[:500]


__all__ = ["PullError", "PullReport", "Puller", "keep_owned", "patient_of"]
