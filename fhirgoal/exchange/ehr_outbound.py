"""Outbound EHR sync: what fhirgoal owns goes to each connected EHR, once in effect.

Issue 15. The source (`EhrOutbox.targets`) records an outbox item (store/outbox.py) for each
connection that takes the new version's kind (exchange/connections.py OUTBOUND_KINDS: goals, GAS
ratings and T-scores, ORS/SRS/PHQ-9/GAD-7 totals, Flags), in the same acknowledged write; the
delivery worker (exchange/delivery.py) hands each item to `EhrDelivery`, which carries it out:

1. Nothing to do when the link (exchange/links.py) already holds this version or a later one,
   or when the client is not a patient the connection follows (their Patient is not linked).
2. References are translated to the EHR's ids (exchange/translate.py); a rating whose Goal is not
   in the EHR yet waits for it (a failed attempt, retried with the worker's backoff).
3. The dialect (exchange/dialect.py) turns the resource into the EHR's; the copy carries
   fhirgoal's identifier (system = this server's base + "/" + type, value = id).
4. Not yet in the EHR: a conditional create on that identifier
   (https://hl7.org/fhir/R4/http.html#ccreate, `If-None-Exist`): a delivery repeated after a
   crash finds the copy instead of making a second. In the EHR: an update with `If-Match` on the
   EHR version last in step (http.html#concurrency). A 412 means the EHR's copy changed: if it
   already says what this version says, an earlier attempt applied it (the answer was lost);
   else, for a Goal (both sides edit goals) it is a conflict (exchange/conflicts.py) and nothing
   is overwritten; for what fhirgoal owns (ratings, measures, Flags) fhirgoal's version is
   written over it.
5. The link records the versions now in step, and an AuditEvent the delivery
   (exchange/ehr_audit.py).

What a clinician's request causes goes with the clinician's own token when the EHR accepts it
(exchange/user_tokens.py): the source holds the request's token for the items it records, the
delivery uses it while it is valid and the backend token otherwise.
"""

from __future__ import annotations

from typing import Any

import structlog

from fhirgoal.core.access import UNRESTRICTED
from fhirgoal.core.delegation import UserCredential, user_credential
from fhirgoal.core.jsonio import dumps, loads
from fhirgoal.exchange.backend_auth import BackendAuthError
from fhirgoal.exchange.conflicts import CONFLICT, raise_conflict, settle_conflict
from fhirgoal.exchange.connections import EhrConnection
from fhirgoal.exchange.dialect import DialectError
from fhirgoal.exchange.ehr_audit import EXPORT, OnBehalf, record, sync_event
from fhirgoal.exchange.ehr_deletions import OutboundDeletions
from fhirgoal.exchange.ehr_http import (
    FHIR_JSON,
    EhrClient,
    Refused,
    ehr_version,
    failure,
    instant,
    resource_body,
)
from fhirgoal.exchange.ehr_sync import EHR_SYNC, EhrSync, applying_from
from fhirgoal.exchange.links import Conflict, Link
from fhirgoal.exchange.translate import (
    content,
    for_sending,
    origin_identifier,
    origin_system,
    parse_reference,
    references,
    rewrite_references,
    version_url,
    with_origin,
)
from fhirgoal.exchange.user_tokens import UserTokenClient, accepts
from fhirgoal.fhir.instants import now
from fhirgoal.fhir.outbox import SelfDelivery, Sent, Skip, Target, digest, item_key
from fhirgoal.store.outbox import OutboxItem
from fhirgoal.store.repository import Version

log = structlog.get_logger(__name__)

ALERTS = "https://fhirgoal.org/fhir/CodeSystem/fhirgoal-alerts"
# Both sides edit these: a 412 from the EHR is a conflict, not something to write over.
SHARED_TYPES = frozenset({"Goal"})
# References that must be in the EHR before a resource naming them goes (a rating's Goal).
WAIT_FOR = frozenset({"Goal"})
NOT_YET_SECONDS = 0.2
ORPHAN_SECONDS = 120.0


def _codes(resource: dict[str, Any]) -> set[tuple[str, str]]:
    codings = (resource.get("code") or {}).get("coding") or []
    return {
        (str(c.get("system")), str(c.get("code")))
        for c in codings
        if isinstance(c, dict) and c.get("system") and c.get("code")
    }


def is_conflict_flag(resource: dict[str, Any]) -> bool:
    return (ALERTS, CONFLICT) in _codes(resource)


def subject_patient(resource: dict[str, Any]) -> str | None:
    """The Patient id a Goal, Observation or Flag is about."""
    reference = (resource.get("subject") or {}).get("reference")
    if isinstance(reference, str) and reference.startswith("Patient/"):
        return reference.removeprefix("Patient/")
    return None


class EhrOutbox:
    """The outbox source of EHR sync items (fhir/outbox.py OutboxSource)."""

    def __init__(self, sync: EhrSync) -> None:
        self.sync = sync

    def follows(self, rt: str) -> bool:
        """Whether any connection sends `rt` (fhir/outbox.py Outbox.follows)."""
        return any(rt in connection.sends() for connection in self.sync.connections)

    def targets(self, version: Version, index: dict[str, Any]) -> list[Target]:
        connections = self.sync.connections
        if not connections:
            return []
        came_from = applying_from()
        if version.deleted:
            # every connection that sends the type: the delivery finds out from the link whether
            # the EHR holds a copy (exchange/ehr_deletions.py), and voids the item if not
            return [
                Target(EHR_SYNC, connection.dest)
                for connection in connections
                if version.resource_type in connection.sends() and connection.name != came_from
            ]
        resource = version.resource
        if resource is None:
            return []
        found = []
        for connection in connections:
            codes = connection.sends().get(version.resource_type)
            if codes is None or connection.name == came_from:
                continue
            if codes and not codes & _codes(resource):
                continue
            if version.resource_type == "Flag" and is_conflict_flag(resource):
                continue
            found.append(Target(EHR_SYNC, connection.dest))
        credential = user_credential()
        if credential is not None and found:
            self._hold_user_token(version, credential, found)
        return found

    def _hold_user_token(
        self, version: Version, credential: UserCredential, found: list[Target]
    ) -> None:
        """Keep the request's user token for its items to the connections that accept it."""
        tokens = self.sync.user_tokens
        if not credential.valid(tokens.margin):
            return
        dests = {target.dest for target in found}
        accepting = [c for c in self.sync.connections if c.dest in dests and accepts(c, credential)]
        if not accepting:
            return
        ref = f"{version.resource_type}/{version.id}"
        text_digest = digest(version)
        for connection in accepting:
            key = item_key(connection.dest, ref, version.version, text_digest)
            tokens.hold(key, connection.name, credential)


class EhrDelivery:
    """The delivery handler of `ehr-sync` items (fhir/outbox.py DeliveryHandler)."""

    def __init__(self, sync: EhrSync) -> None:
        self.sync = sync
        self.service = sync.service
        self.deletions = OutboundDeletions(sync)

    async def refresh(self) -> None:
        await self.sync.refresh()
        self.sync.user_tokens.purge()

    async def settled(self, item: OutboxItem, error: str | None, gave_up: bool) -> None:
        if error is None or gave_up:
            self.sync.user_tokens.drop(item.key)
        if gave_up:
            log.warning("EHR sync item dead", key=item.key, error=error)

    async def prepare(self, item: OutboxItem) -> SelfDelivery | Skip:
        name = item.dest.removeprefix("EhrConnection/")
        connection = self.sync.get(name)
        if connection is None:
            await self.sync.refresh()  # added since the last refresh (the CLI, a replica)
            connection = self.sync.get(name)
        if connection is None:
            self.sync.user_tokens.drop(item.key)
            return Skip(f"the EHR connection {name} was removed")
        rt, _, rid = item.ref.partition("/")
        version = await self.service.stored_version(UNRESTRICTED, rt, rid, item.vid)
        if version is None or digest(version) != item.digest:
            age = (now() - item.created).total_seconds()
            if version is None and age < ORPHAN_SECONDS:
                return Skip("its version is not stored yet", NOT_YET_SECONDS)
            self.sync.user_tokens.drop(item.key)
            return Skip("its version was never stored (the write failed)")

        async def run() -> Sent:
            action = "D" if version.deleted else "U"
            client: EhrClient = self.sync.client(connection)
            credential = self.sync.user_tokens.get(item.key, name)
            if credential is not None:
                client = UserTokenClient(credential, self.sync.client(connection), self.sync.user_tokens.margin)  # fmt: skip
            async with self.sync.locks.hold(self.sync.links.key(name, item.ref)):
                try:
                    if version.deleted:
                        sent = await self.deletions.deliver(connection, version)
                    else:
                        sent = await self._deliver(connection, version, client)
                    return await self._used(item, connection, client, sent)
                except Refused as refused:
                    sent = refused.sent
                except BackendAuthError as error:
                    sent = Sent(error=str(error))
                except DialectError as error:
                    # the mapping cannot express this version: another attempt changes nothing
                    sent = Sent(error=str(error), final=True)
            on_behalf = client.on_behalf() if isinstance(client, UserTokenClient) else None
            await self._audit(connection, version, None, action, sent.error, sent.final, on_behalf)
            return await self._used(item, connection, client, sent)

        return SelfDelivery(run)

    async def _used(
        self, item: OutboxItem, connection: EhrConnection, client: EhrClient, sent: Sent
    ) -> Sent:
        """After a delivery: the user's token is dropped once the item is done with or the EHR
        refused it (kept only for a retry of a transient failure), and counted."""
        if not isinstance(client, UserTokenClient):
            return sent
        if sent.error is None or sent.final or client.fell_back is not None:
            self.sync.user_tokens.drop(item.key)
        if sent.error is None and sent.void is None:
            await self.sync.store.count_user_delivery(connection.name, client.on_behalf().as_user)
        return sent

    # ---- one delivery ----------------------------------------------------------------------
    async def _deliver(
        self, connection: EhrConnection, version: Version, client: EhrClient
    ) -> Sent:
        sync, name = self.sync, connection.name
        resource = version.resource or {}
        ref = f"{version.resource_type}/{version.id}"
        current = await self.service.current(UNRESTRICTED, version.resource_type, version.id)
        if current is not None and current.deleted:
            # deleted since: its deletion's item carries that over, this version must not make
            # a copy after it (exchange/ehr_deletions.py)
            return Sent(void=f"{ref} was deleted in fhirgoal since version {version.version}")
        link = await sync.links.by_local(name, ref)
        if link is not None and link.deleted == "ehr":
            return Sent(
                void=f"{link.ehr} was deleted in EHR {name}; fhirgoal does not make it again"
            )
        if link is not None and link.deleted is not None:
            link = None  # made again in fhirgoal after both copies were deleted: a new copy
        if link is not None and link.local_vid >= version.version:
            return Sent(void=f"the EHR has {ref} version {link.local_vid} already")
        if link is not None and link.conflict and version.version <= link.conflict.local_vid:
            return Sent(void=f"in conflict with the EHR's version (Flag/{link.conflict.flag})")
        patient = subject_patient(resource)
        local_refs = {
            f"{t}/{i}"
            for r in references(resource)
            if (parsed := parse_reference(r["reference"], sync.base)) is not None
            for t, i in [parsed]
        }
        if patient is not None:
            local_refs.add(f"Patient/{patient}")
        linked = await sync.links.many_by_local(name, sorted(local_refs))
        if patient is None or f"Patient/{patient}" not in linked:
            who = f"Patient/{patient}" if patient else "its subject"
            return Sent(void=f"{who} is not followed in EHR {name}")
        # a rating waits for its Goal, when the connection sends goals at all
        wait_for = WAIT_FOR & connection.sends().keys()
        waiting = sorted(r for r in local_refs - linked.keys() if r.split("/")[0] in wait_for)
        if waiting:
            return Sent(error=f"waits for {waiting[0]} to reach EHR {name}")

        def translate(rt: str, rid: str) -> dict[str, Any]:
            target = linked.get(f"{rt}/{rid}")
            if target is not None:
                return {"reference": target.ehr}
            return {"identifier": origin_identifier(sync.base, rt, rid)}

        outgoing = for_sending(resource)
        rewrite_references(outgoing, sync.base, translate)
        mapped = sync.dialect(connection).outbound(outgoing)
        if not mapped:
            return Sent(void=f"the mapping sends nothing for {ref}")
        copies = [
            with_origin(
                copy,
                sync.base,
                version.resource_type,
                version.id if n == 0 else f"{version.id}-{n}",
                version.version,
                connection.base,
            )
            for n, copy in enumerate(mapped)
        ]
        primary = copies[0]
        if link is None:
            stored = await self._create(client, connection, primary)
        else:
            stored_or_conflict = await self._update(client, connection, link, version, primary)
            if isinstance(stored_or_conflict, Sent):
                return stored_or_conflict
            stored = stored_or_conflict
        ehr_ref, ehr_vid, ehr_at = stored
        await sync.links.save(
            name, ref, ehr_ref, version.version, ehr_vid, instant(ehr_at), "fhirgoal"
        )
        if link is not None and link.conflict is not None:
            await settle_conflict(self.service, link.conflict.flag, ref, version.version)
        for extra in copies[1:]:
            await self._put_conditional(client, connection, extra)
        action = "C" if link is None else "U"
        ehr_rt, _, ehr_id = ehr_ref.partition("/")
        ehr_url = version_url(connection.base, ehr_rt, ehr_id, ehr_vid)
        on_behalf = client.on_behalf() if isinstance(client, UserTokenClient) else None
        await self._audit(connection, version, ehr_url, action, None, on_behalf=on_behalf)
        return Sent()

    async def _create(
        self, client: EhrClient, connection: EhrConnection, copy: dict[str, Any]
    ) -> tuple[str, str, str]:
        """Conditional create on fhirgoal's identifier: (EHR ref, version, lastUpdated). A copy
        made by an earlier attempt is found, and brought up to this version if it differs."""
        rt = copy["resourceType"]
        identifier = copy["identifier"][-1]
        url = f"{connection.base}/{rt}"
        headers = {
            "Content-Type": FHIR_JSON,
            "Accept": FHIR_JSON,
            "If-None-Exist": f"identifier={identifier['system']}|{identifier['value']}",
            "Prefer": "return=representation",
        }
        response = await client.request("POST", url, headers=headers, content=dumps(copy))
        if response.status_code not in (200, 201):
            raise Refused(failure("POST", url, response))
        body = resource_body(response)
        if response.status_code == 200 and (body is None or content(body) != content(copy)):
            # an earlier attempt's copy (of an earlier version, or the answer carried no body)
            found = body or await self._find(client, connection, rt, identifier)
            return await self._put(client, connection, rt, str(found["id"]), found, copy)
        eid, vid, at = ehr_version(response, body)
        return f"{rt}/{eid}", vid, at

    async def _update(
        self,
        client: EhrClient,
        connection: EhrConnection,
        link: Link,
        version: Version,
        copy: dict[str, Any],
    ) -> tuple[str, str, str] | Sent:
        rt, _, eid = link.ehr.partition("/")
        expected = link.conflict.ehr_vid if link.conflict else link.ehr_vid
        url = f"{connection.base}/{rt}/{eid}"
        response = await client.request(
            "PUT",
            url,
            headers={
                "Content-Type": FHIR_JSON,
                "Accept": FHIR_JSON,
                "If-Match": f'W/"{expected}"',
                "Prefer": "return=representation",
            },
            content=dumps({**copy, "id": eid}),
        )
        if response.status_code in (200, 201):
            return (f"{rt}/{eid}", *ehr_version(response, resource_body(response))[1:])
        if response.status_code in (404, 410):
            return Sent(void=f"{link.ehr} is gone from EHR {connection.name}")
        if response.status_code not in (409, 412):
            raise Refused(failure("PUT", url, response))
        current = await self._read(client, url)
        _, current_vid, current_at = ehr_version(response, current)
        if content(current) == content(copy):
            # an earlier attempt applied this version and its answer was lost
            return f"{rt}/{eid}", current_vid, current_at
        if version.resource_type not in SHARED_TYPES:
            # fhirgoal owns it: its version stands
            return await self._put(client, connection, rt, eid, current, copy)
        # a Goal changed in the EHR since the versions were last in step
        patient = subject_patient(version.resource or {}) or ""
        ehr_url = version_url(connection.base, rt, eid, current_vid)
        fid = await raise_conflict(
            self.service,
            connection.name,
            patient,
            link.local,
            version.version,
            version.resource,
            ehr_url,
            current,
        )
        conflict = Conflict(version.version, current_vid, fid)
        await self.sync.links.set_conflict(connection.name, link.local, conflict)
        return Sent(void=f"conflict: {link.ehr} was edited in the EHR too (Flag/{fid})")

    async def _put(
        self,
        client: EhrClient,
        connection: EhrConnection,
        rt: str,
        eid: str,
        current: dict[str, Any],
        copy: dict[str, Any],
    ) -> tuple[str, str, str]:
        """Write `copy` over the EHR's `current` (If-Match on its version)."""
        url = f"{connection.base}/{rt}/{eid}"
        vid = str((current.get("meta") or {}).get("versionId", ""))
        response = await client.request(
            "PUT",
            url,
            headers={
                "Content-Type": FHIR_JSON,
                "Accept": FHIR_JSON,
                "If-Match": f'W/"{vid}"',
                "Prefer": "return=representation",
            },
            content=dumps({**copy, "id": eid}),
        )
        if response.status_code not in (200, 201):
            raise Refused(failure("PUT", url, response))
        return (f"{rt}/{eid}", *ehr_version(response, resource_body(response))[1:])

    async def _put_conditional(
        self, client: EhrClient, connection: EhrConnection, copy: dict[str, Any]
    ) -> None:
        """A further resource the mapping made: a conditional update on its identifier."""
        rt = copy["resourceType"]
        identifier = copy["identifier"][-1]
        url = f"{connection.base}/{rt}"
        params = [("identifier", f"{identifier['system']}|{identifier['value']}")]
        response = await client.request(
            "PUT",
            url,
            headers={"Content-Type": FHIR_JSON, "Accept": FHIR_JSON},
            content=dumps(copy),
            params=params,
        )
        if response.status_code not in (200, 201):
            raise Refused(failure("PUT", url, response))

    async def _find(
        self,
        client: EhrClient,
        connection: EhrConnection,
        rt: str,
        identifier: dict[str, str],
    ) -> dict[str, Any]:
        url = f"{connection.base}/{rt}"
        params = [("identifier", f"{identifier['system']}|{identifier['value']}")]
        response = await client.request("GET", url, headers={"Accept": FHIR_JSON}, params=params)
        if response.status_code != 200:
            raise Refused(failure("GET", url, response))
        bundle = loads(response.content)
        for entry in bundle.get("entry") or []:
            resource = entry.get("resource") or {}
            if resource.get("resourceType") == rt:
                return dict(resource)
        raise Refused(Sent(error=f"GET {url}: the copy the EHR reported is not found"))

    async def _read(self, client: EhrClient, url: str) -> dict[str, Any]:
        response = await client.request("GET", url, headers={"Accept": FHIR_JSON})
        if response.status_code != 200:
            raise Refused(failure("GET", url, response))
        return dict(loads(response.content))

    async def _audit(
        self,
        connection: EhrConnection,
        version: Version,
        ehr_url: str | None,
        action: str,
        error: str | None,
        final: bool = False,
        on_behalf: OnBehalf | None = None,
    ) -> None:
        patient = subject_patient(version.resource or {})
        event = sync_event(
            EXPORT,
            connection.name,
            action,
            f"{version.resource_type}/{version.id}/_history/{version.version}",
            ehr_url,
            f"Patient/{patient}" if patient else None,
            error,
            final,
            on_behalf=on_behalf,
        )
        await record(self.service, [event])


def install(sync: EhrSync) -> EhrOutbox:
    """Plug outbound EHR sync into the service: its outbox source and delivery handler."""
    source = EhrOutbox(sync)
    sync.service.outbox.add_source(source)
    sync.service.outbox.handlers[EHR_SYNC] = EhrDelivery(sync)
    return source


__all__ = ["EhrDelivery", "EhrOutbox", "install", "origin_system"]
