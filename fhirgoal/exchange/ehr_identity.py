"""Identity matching for EHR sync: which EHR Patient is which of fhirgoal's, by identifiers only.

Issue 15: "Identity matching by identifiers, with links kept, never by guesswork; unmatched
records queue for a human with a clear reason." fhirgoal's Patients not yet linked to the
connection are looked up in the EHR by their identifiers (only those of the connection's
`patient_system`, the EHR's MRN say, when set), in batches: `Patient?identifier=s|v,s|v,...`
(https://hl7.org/fhir/R4/search.html#token, a comma is OR). The outcome for each:

- exactly one EHR Patient, which matches no other fhirgoal Patient and is linked to no other:
  linked (exchange/links.py), and from then on followed by the pulls (exchange/ehr_inbound.py);
- none: held for a human ("no Patient in EHR ... has identifier ...");
- several, or one that other fhirgoal Patients match too: held, naming them all.

Names, birth dates and addresses are never compared: two people may share them, and a wrong
link would send one client's plan into another's record.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from fhirgoal.core.access import UNRESTRICTED
from fhirgoal.exchange.backend_auth import BackendServicesClient
from fhirgoal.exchange.connections import EhrConnection
from fhirgoal.exchange.ehr_search import chunks, search_pages
from fhirgoal.exchange.ehr_sync import EhrSync
from fhirgoal.store.repository import Version

LOCAL_PAGE = 500  # fhirgoal Patients read per query


def identifier_tokens(resource: dict[str, Any], system: str | None, skip_prefix: str) -> set[str]:
    """The `system|value` tokens of a resource's identifiers: of `system` only when given, never
    those whose system starts with `skip_prefix` (the identifiers the sync itself assigns)."""
    found = set()
    for identifier in resource.get("identifier") or []:
        if not isinstance(identifier, dict):
            continue
        sys, value = identifier.get("system"), identifier.get("value")
        if not isinstance(sys, str) or not isinstance(value, str) or sys.startswith(skip_prefix):
            continue
        if system is None or sys == system:
            found.add(f"{sys}|{value}")
    return found


class PatientMatcher:
    def __init__(self, sync: EhrSync) -> None:
        self.sync = sync

    async def _local_patients(self) -> AsyncIterator[Version]:
        service, after = self.sync.service, ""
        while True:
            query: dict[str, Any] = {"_id": {"$gt": after}} if after else {}
            page = await service.find_where(
                UNRESTRICTED, "Patient", query, [("_id", 1)], LOCAL_PAGE
            )
            for version in page:
                yield version
            if len(page) < LOCAL_PAGE:
                return
            after = page[-1].id

    async def match(self, connection: EhrConnection, client: BackendServicesClient) -> int:
        """Link what can be linked, hold the rest with the reason; the number linked now."""
        name, links = connection.name, self.sync.links
        followed = {link.local for link in await links.patients(name)}
        own = f"{self.sync.base}/"
        wanted: dict[str, set[str]] = {}  # token -> local ids
        tokens_of: dict[str, set[str]] = {}
        async for version in self._local_patients():
            if f"Patient/{version.id}" in followed or version.resource is None:
                continue
            tokens = identifier_tokens(version.resource, connection.patient_system, own)
            if tokens:
                tokens_of[version.id] = tokens
                for token in tokens:
                    wanted.setdefault(token, set()).add(version.id)
        if not wanted:
            return 0
        ehr_of: dict[str, set[str]] = {}  # local id -> EHR ids
        locals_of: dict[str, set[str]] = {}  # EHR id -> local ids
        for chunk in chunks(sorted(wanted)):
            params = [("identifier", ",".join(chunk)), ("_count", str(len(chunk) * 2))]
            async for page in search_pages(client, connection, "Patient", params):
                for patient in page:
                    for token in identifier_tokens(patient, None, "\0") & set(chunk):
                        for local in wanted[token]:
                            ehr_of.setdefault(local, set()).add(patient["id"])
                            locals_of.setdefault(patient["id"], set()).add(local)
        linked = 0
        for local, tokens in tokens_of.items():
            record = f"Patient/{local}"
            matches = ehr_of.get(local, set())
            if not matches:
                await links.hold(
                    name, record, "identity",
                    f"no Patient in EHR {name} has identifier {', '.join(sorted(tokens))}",
                )  # fmt: skip
                continue
            if len(matches) > 1:
                await links.hold(
                    name, record, "identity",
                    f"{len(matches)} Patients in EHR {name} share its identifiers: "
                    + ", ".join(f"Patient/{e}" for e in sorted(matches)),
                )  # fmt: skip
                continue
            ehr_id = next(iter(matches))
            others = locals_of[ehr_id] - {local}
            taken = await links.by_ehr(name, f"Patient/{ehr_id}")
            if others or (taken is not None and taken.local != record):
                clash = sorted(
                    {*(f"Patient/{o}" for o in others), *([taken.local] if taken else [])}
                )
                await links.hold(
                    name, record, "identity",
                    f"EHR Patient/{ehr_id} matches other fhirgoal patients too: {', '.join(clash)}",
                )  # fmt: skip
                continue
            await links.save(name, record, f"Patient/{ehr_id}", 0, "", None, "match")
            await links.release(name, record, "identity")
            linked += 1
        return linked
