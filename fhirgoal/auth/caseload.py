"""Which patients a practitioner's `user/` access reaches: their caseload (issue 12, item 9).

SMART App Launch 2.2 leaves a `user/` scope's reach to the server: "the resources that the user
is allowed to access" (https://hl7.org/fhir/smart-app-launch/scopes-and-launch-context.html#scopes-for-requesting-clinical-data).
With FHIRGOAL_USER_ACCESS=caseload (the default) that is, for the practitioner a token's `fhirUser`
names, the patients

- whose CareTeam (https://hl7.org/fhir/R4/careteam.html) lists as a participant `member` the
  practitioner or one of their PractitionerRoles (CareTeams `inactive` or `entered-in-error` do
  not count; a CareTeam whose subject is a Group opens none of the Group's members), or
- whose `generalPractitioner` (https://hl7.org/fhir/R4/patient-definitions.html#Patient.generalPractitioner)
  is the practitioner, one of their active PractitionerRoles, or the Organization of such a role;

and, in those patients' compartments, every resource. Resources in no patient's compartment are
shared: the types outside the patient CompartmentDefinition (Practitioner, Organization,
Questionnaire, ValueSet, ...) carry no condition at all, and a resource of a compartment type that
names no patient (a CareTeam of the clinic, a Group of practitioners) stays reachable too.
A `fhirUser` that is a Patient reaches that patient only; any other `fhirUser`, or none, reaches
no patient. With FHIRGOAL_USER_ACCESS=all a `user/` scope reaches every patient.

The caseload is computed with three indexed searches (more when the practitioner's roles and
organizations exceed FHIRGOAL_MAX_SEARCH_VALUES, one per that many) when a practitioner's token
is first used and kept per practitioner; a context built on it is rebuilt once it is older than
FHIRGOAL_CASELOAD_REFRESH_SECONDS, so a change to a CareTeam, a Patient or a PractitionerRole
reaches every token, on every replica, within that time.
"""

from __future__ import annotations

import time
from collections import OrderedDict

import structlog

from fhirgoal.auth.context import local_user
from fhirgoal.core.access import UNRESTRICTED, Caseload
from fhirgoal.fhir.service import FhirService

log = structlog.get_logger(__name__)

# Beyond this many patients a caseload is cut (and says so in the log): each patient is one
# value of an `$in` that the database checks against every candidate document.
MAX_CASELOAD = 10_000
MAX_ROLES = 1_000
CACHE_SIZE = 10_000
# CareTeams in these states no longer give access (https://hl7.org/fhir/R4/valueset-care-team-status.html).
ENDED_CARE_TEAM = ("inactive", "entered-in-error")


class Caseloads:
    """Caseloads per user, computed on demand and kept `refresh_seconds`."""

    def __init__(self, service: FhirService, refresh_seconds: float) -> None:
        self.service = service
        self.refresh_seconds = refresh_seconds
        # types whose resources can be in a patient's compartment; the others are shared
        self.patient_types = frozenset(service.conformance.patient_compartment)
        self._cache: OrderedDict[str, Caseload] = OrderedDict()

    async def of(self, fhir_user: str | None) -> Caseload:
        key = local_user(fhir_user) or ""
        hit = self._cache.get(key)
        if hit is not None and hit.fresh:
            self._cache.move_to_end(key)
            return hit
        patients, carers = await self.compute(key)
        caseload = Caseload(patients, time.monotonic() + self.refresh_seconds, carers)
        self._cache[key] = caseload
        self._cache.move_to_end(key)
        if len(self._cache) > CACHE_SIZE:
            self._cache.popitem(last=False)
        return caseload

    async def compute(self, user: str) -> tuple[frozenset[str], frozenset[str]]:
        """The user's patients ("Patient/id"), and the references that make a patient theirs
        as general practitioner."""
        rtype, _, rid = user.partition("/")
        if rtype == "Patient":
            return frozenset({user}), frozenset()
        if rtype != "Practitioner" or not rid:
            return frozenset(), frozenset()
        svc = self.service
        roles = await svc.find_resources(
            UNRESTRICTED, "PractitionerRole", [("practitioner", user)], MAX_ROLES
        )
        members, carers = [user], [user]
        for role in roles:
            resource = role.resource or {}
            if resource.get("active") is False:
                continue
            members.append(f"PractitionerRole/{role.id}")
            carers.append(f"PractitionerRole/{role.id}")
            organization = (resource.get("organization") or {}).get("reference")
            if isinstance(organization, str) and organization.startswith("Organization/"):
                carers.append(organization)
        # one search per FHIRGOAL_MAX_SEARCH_VALUES references: the limit on a request's
        # comma-separated values applies to these searches too (fhir/search/query.py)
        size = max(1, svc.engine.limits.values)
        patients: set[str] = set()
        for chunk in _chunks(members, size):
            teams = await svc.engine.compile(
                UNRESTRICTED,
                "CareTeam",
                [("participant", ",".join(chunk))]
                + [("status:not", status) for status in ENDED_CARE_TEAM],
                "",
            )
            found = await svc.references_where(
                UNRESTRICTED, "CareTeam", teams.filter, "subject", MAX_CASELOAD
            )
            patients.update(entry.partition("=")[2] for entry in found)
        for chunk in _chunks(sorted(set(carers)), size):
            cared = await svc.engine.compile(
                UNRESTRICTED, "Patient", [("general-practitioner", ",".join(chunk))], ""
            )
            ids = await svc.ids_where(UNRESTRICTED, "Patient", cared.filter, MAX_CASELOAD)
            patients.update(f"Patient/{pid}" for pid in ids)
        listed = sorted(p for p in patients if p.startswith("Patient/"))
        if len(listed) > MAX_CASELOAD:
            log.warning("caseload cut", user=user, patients=len(listed), kept=MAX_CASELOAD)
        return frozenset(listed[:MAX_CASELOAD]), frozenset(carers)


def _chunks(values: list[str], size: int) -> list[list[str]]:
    return [values[i : i + size] for i in range(0, len(values), size)]
