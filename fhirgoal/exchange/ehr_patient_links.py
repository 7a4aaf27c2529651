"""A matched Patient's `Patient.link` to the EHR's record, and the EHR merging its records (issue 15).

R4 Patient.link (https://hl7.org/fhir/R4/patient-definitions.html#Patient.link, link types
https://hl7.org/fhir/R4/valueset-link-type.html) relates records of the same person. Of its four
types, `seealso` says what a sync link is: "The patient resource containing this link is in use
and valid, but points to another patient resource that is known to contain data about the same
person. Data in this resource might overlap or contradict information found in the other patient
resource. This link does not indicate any relative importance of the resources concerned, and
both should be regarded as equally valid." `replaced-by`/`replaces` would say one record is no
longer to be used, and `refer` that fhirgoal's record is not the main source of information about
the client: neither holds (fhirgoal owns the goals, scales and ratings; the EHR the
demographics). So fhirgoal's Patient, once linked to an EHR's, carries one `seealso` link to it,
by its absolute URL (`<EHR base>/Patient/<id>`, Reference.reference may be absolute:
https://hl7.org/fhir/R4/references.html#literal), beside the EHR's identifiers
(exchange/translate.py). It is fhirgoal's element (exchange/ownership.py): an EHR edit neither
removes it nor brings the EHR's own links (they relate the EHR's records to each other and name
records fhirgoal does not follow).

The EHR merging or replacing a record (its Patient shows `link.type = replaced-by` to another of
its Patients, https://hl7.org/fhir/R4/patient.html#links): fhirgoal's link moves to the record
that replaces it, once, and is recorded (the link's `moved` list, an AuditEvent); fhirgoal's
Patient then says `seealso` the new record, its identifier for the old one is kept with `use`
old ("the identifier id no longer considered valid, but may be relevant for search purposes"),
and the new record is pulled whole at the next pull. Nothing is merged by guesswork: when the
new record is one another fhirgoal Patient follows, or the EHR names several replacements,
nothing moves and the record waits for a human.
"""

from __future__ import annotations

from typing import Any

import structlog

from fhirgoal.core.access import UNRESTRICTED
from fhirgoal.exchange.connections import EhrConnection
from fhirgoal.exchange.ehr_audit import IMPORT, record, sync_event
from fhirgoal.exchange.ehr_sync import EhrSync, applying
from fhirgoal.exchange.links import Link
from fhirgoal.exchange.translate import origin_system, parse_reference

log = structlog.get_logger(__name__)

SEEALSO = "seealso"
REPLACED_BY = "replaced-by"


def ehr_patient_url(base: str, ehr_id: str) -> str:
    return f"{base.rstrip('/')}/Patient/{ehr_id}"


def replacements(resource: dict[str, Any], base: str) -> list[str]:
    """The ids of the EHR's Patients that replace this one (its `replaced-by` links)."""
    found = []
    for link in resource.get("link") or []:
        if not isinstance(link, dict) or link.get("type") != REPLACED_BY:
            continue
        reference = (link.get("other") or {}).get("reference")
        parsed = parse_reference(reference, base) if isinstance(reference, str) else None
        if parsed is not None and parsed[0] == "Patient" and parsed[1] not in found:
            found.append(parsed[1])
    return found


def without_links(resource: dict[str, Any]) -> dict[str, Any]:
    """The EHR's Patient without its own `link` list (see the module)."""
    return {k: v for k, v in resource.items() if k != "link"}


def with_ehr_link(
    patient: dict[str, Any], current: dict[str, Any] | None, base: str, ehr_id: str
) -> dict[str, Any]:
    """fhirgoal's Patient with its links kept from `current`, those to this EHR's records
    replaced by one `seealso` link to `ehr_id` there."""
    own = f"{base.rstrip('/')}/"
    kept = [
        link
        for link in (current or {}).get("link") or []
        if not str(((link or {}).get("other") or {}).get("reference", "")).startswith(own)
    ]
    out = dict(patient)
    out["link"] = [*kept, {"other": {"reference": ehr_patient_url(base, ehr_id)}, "type": SEEALSO}]
    return out


class PatientMoves:
    def __init__(self, sync: EhrSync) -> None:
        self.sync = sync
        self.service = sync.service

    async def follow(self, connection: EhrConnection, link: Link, replaced_by: list[str]) -> str:
        """The EHR's `link.ehr` is replaced by `replaced_by`: 'moved', or 'held' for a human."""
        sync, name = self.sync, connection.name
        if len(replaced_by) != 1:
            await sync.links.hold(
                name, link.local, "identity",
                f"EHR {name} replaced {link.ehr} by {len(replaced_by)} records "
                f"({', '.join(f'Patient/{r}' for r in replaced_by)}): a human decides",
            )  # fmt: skip
            return "held"
        new_ref = f"Patient/{replaced_by[0]}"
        taken = await sync.links.by_ehr(name, new_ref)
        if taken is not None and taken.local != link.local:
            await sync.links.hold(
                name, link.local, "identity",
                f"EHR {name} replaced {link.ehr} by {new_ref}, which fhirgoal's {taken.local} "
                "follows; fhirgoal does not merge its records: a human decides",
            )  # fmt: skip
            return "held"
        async with sync.locks.hold(sync.links.key(name, link.local)):
            await self._relink(connection, link, replaced_by[0])
            await sync.links.move(name, link.local, new_ref, link.ehr)
        await sync.links.release(name, link.local, "identity")
        event = sync_event(
            IMPORT, name, "U", link.local, ehr_patient_url(connection.base, replaced_by[0]),
            link.local,
        )  # fmt: skip
        await record(self.service, [event])
        log.info(
            "EHR patient replaced", connection=name, local=link.local, old=link.ehr, new=new_ref
        )
        return "moved"

    async def _relink(self, connection: EhrConnection, link: Link, new_id: str) -> None:
        """fhirgoal's Patient: `seealso` the new record; the old record's identifier `old`, the
        new one's added."""
        rid = link.local_id
        current = await self.service.current(UNRESTRICTED, "Patient", rid)
        if current is None or current.resource is None:
            return
        system = origin_system(connection.base, "Patient")
        identifiers = []
        for identifier in current.resource.get("identifier") or []:
            if identifier == {"system": system, "value": link.ehr_id}:
                identifier = {**identifier, "use": "old"}
            identifiers.append(identifier)
        new = {"system": system, "value": new_id}
        if new not in identifiers:
            identifiers.append(new)
        patient = with_ehr_link(
            {**current.resource, "identifier": identifiers},
            current.resource,
            connection.base,
            new_id,
        )
        with applying(connection.name):
            await self.service.update(
                UNRESTRICTED, "Patient", rid, patient, f'W/"{current.version}"'
            )


__all__ = ["PatientMoves", "replacements", "with_ehr_link", "without_links"]
