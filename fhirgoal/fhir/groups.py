"""The Patients a Group's members stand for, by literal reference or by business identifier.

R4 Group (https://hl7.org/fhir/R4/group.html): `member.entity` is a Reference, and an R4
Reference may carry only an `identifier` (https://hl7.org/fhir/R4/references.html#logical): a
payer's list of attributed members usually names them by member or medical-record number, not by
this server's ids. Such a reference is resolved here by an `identifier` search on Patient (the
same search a client would make, `Patient?identifier=system|value`, with the caller's access):
one match is the member; none, or several, cannot be told apart and are reported, never guessed.

Which members count: those not marked `inactive` (`member.period` is not read: R4 gives it as
when the member was in the group, and an `inactive` flag as whether it still is). A literal
reference counts when it names a Patient (`Patient/{id}`; no read: a reference to a Patient
outside the caller's access is the caller's to follow, and a search confined by its access finds
nothing there anyway). Members of other types (a Practitioner, a Device) are not patients and
are skipped.

Used by `Group/{id}/$export` (fhir/export.py: unresolved members become OperationOutcomes in the
manifest's `error` list) and by Da Vinci CDex requests (evidence/cdex/: is the Task's patient an
attributed member of the requesting payer's Group?).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fhirgoal.core.errors import Issue

if TYPE_CHECKING:
    from fhirgoal.core.access import AccessContext
    from fhirgoal.fhir.service import FhirService


@dataclass(frozen=True)
class Unresolved:
    """A member whose identifier matched no Patient or several."""

    index: int  # position in Group.member
    identifier: str  # "system|value" as searched
    matches: int  # 0 or more than 1

    @property
    def issue(self) -> Issue:
        found = "no Patient" if self.matches == 0 else f"{self.matches} Patients"
        return Issue(
            f"Group member {self.index} (identifier {self.identifier}) matches {found}: "
            "it is left out",
            f"Group.member[{self.index}].entity.identifier",
            code="not-found" if self.matches == 0 else "multiple-matches",
            severity="warning",
        )

    def outcome(self) -> dict[str, Any]:
        """As an OperationOutcome resource (Bulk Data's manifest `error` entries are these)."""
        return {"resourceType": "OperationOutcome", "issue": [self.issue.to_json("not-found")]}


@dataclass(frozen=True)
class Members:
    patients: list[str] = field(default_factory=list)  # "Patient/{id}", sorted, once each
    unresolved: list[Unresolved] = field(default_factory=list)


def identifier_token(identifier: Any) -> str | None:
    """An Identifier as an `identifier` search value (`system|value`, or `value` alone)."""
    if not isinstance(identifier, dict) or not isinstance(identifier.get("value"), str):
        return None
    system = identifier.get("system")
    return f"{system}|{identifier['value']}" if isinstance(system, str) else identifier["value"]


async def patients_by_identifier(
    svc: FhirService, access: AccessContext, identifier: Any, limit: int = 2
) -> list[str]:
    """The Patients ("Patient/{id}") carrying a business identifier, up to `limit`."""
    token = identifier_token(identifier)
    if token is None:
        return []
    found = await svc.find_resources(access, "Patient", [("identifier", token)], limit=limit)
    return [f"Patient/{version.id}" for version in found]


async def resolve_members(
    svc: FhirService, access: AccessContext, group: dict[str, Any]
) -> Members:
    """The Group's active Patient members, with the identifier-only ones resolved."""
    patients: set[str] = set()
    unresolved: list[Unresolved] = []
    for index, member in enumerate(group.get("member") or []):
        if not isinstance(member, dict) or member.get("inactive") is True:
            continue
        entity = member.get("entity") or {}
        reference = entity.get("reference")
        if isinstance(reference, str) and reference:
            if reference.startswith("Patient/"):
                patients.add(reference)
            continue
        if entity.get("type") not in (None, "Patient"):
            continue
        found = await patients_by_identifier(svc, access, entity.get("identifier"))
        if len(found) == 1:
            patients.add(found[0])
        else:
            token = identifier_token(entity.get("identifier")) or "(none)"
            unresolved.append(Unresolved(index, token, len(found)))
    return Members(sorted(patients), unresolved)
