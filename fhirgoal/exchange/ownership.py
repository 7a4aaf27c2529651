"""Which elements of a pulled resource are fhirgoal's: kept from fhirgoal's copy when the EHR's
version replaces it (issue 15: "ownership per element ... GAS scales, ratings and measures from
fhirgoal").

An EHR's edit of a resource it shares with fhirgoal (exchange/ehr_inbound.py) replaces fhirgoal's
version, except what fhirgoal owns in it, which `keep_owned` takes from fhirgoal's current copy
(before the dialect restores what it cannot carry: exchange/dialect.py):

- **Extensions of fhirgoal's** (any type): those under fhirgoal's own canonical base and the PCO
  GAS extension (https://hl7.org/fhir/R4/extensibility.html: an extension belongs to whoever
  defines it); the EHR's own extensions follow the EHR.
- **meta** (https://hl7.org/fhir/R4/resource.html#Meta): `meta.profile` claims of fhirgoal's
  and the PCO IG's profiles (the GAS goal profile is claimed because of the GAS scale fhirgoal
  keeps, and an EHR that drops the profile must not drop the claim); `meta.security` labels are
  never removed by a pull (a label restricts access: an EHR that does not carry labels must not
  open a record up; https://hl7.org/fhir/R4/security-labels.html); `meta.tag` of fhirgoal's code
  systems. Other profiles and tags follow the EHR.
- **Goal**: its GAS targets (`target.measure` the GAS LOINC code); the EHR's targets follow
  the EHR.
- **Patient**: identifiers from elsewhere (the EHR's are added, none removed) and the care team
  (fhirgoal's caseloads are built from `generalPractitioner`); `Patient.link` is fhirgoal's
  (exchange/ehr_patient_links.py).
"""

from __future__ import annotations

from typing import Any

from fhirgoal.clinical.codes import (
    DERIVED_STATUS_EXTENSION,
    FHIRGOAL,
    GAS_EXTENSION,
    GAS_GOAL_COMPONENT_EXTENSION,
    GAS_GOAL_MEASURE,
    GAS_VARIANT_EXTENSION,
    GAS_WEIGHT_EXTENSION,
    PCO,
)

# fhirgoal's elements of a Goal (issue 15: GAS scales are fhirgoal's)
OWNED_GOAL_EXTENSIONS = frozenset(
    {
        GAS_EXTENSION,
        GAS_WEIGHT_EXTENSION,
        GAS_VARIANT_EXTENSION,
        GAS_GOAL_COMPONENT_EXTENSION,
        DERIVED_STATUS_EXTENSION,
    }
)
OWNED_CANONICALS = (f"{FHIRGOAL}/", f"{PCO}/")  # profiles and code systems of fhirgoal's


def is_owned_extension(extension: Any) -> bool:
    url = str((extension or {}).get("url", ""))
    return url in OWNED_GOAL_EXTENSIONS or url.startswith(f"{FHIRGOAL}/StructureDefinition/")


def keep_owned(rt: str, current: dict[str, Any] | None, incoming: dict[str, Any]) -> dict[str, Any]:
    """`incoming` with the elements fhirgoal owns taken from its `current` version."""
    if current is None:
        return incoming
    merged = dict(incoming)
    mine = [e for e in current.get("extension") or [] if is_owned_extension(e)]
    theirs = [e for e in incoming.get("extension") or [] if not is_owned_extension(e)]
    if mine or theirs:
        merged["extension"] = theirs + mine
    elif "extension" in merged:
        del merged["extension"]
    meta = _kept_meta(current.get("meta") or {}, incoming.get("meta") or {})
    if meta:
        merged["meta"] = meta
    if rt == "Goal":
        gas = [t for t in current.get("target") or [] if _is_gas_target(t)]
        other = [t for t in incoming.get("target") or [] if not _is_gas_target(t)]
        if gas or other:
            merged["target"] = other + gas
    elif rt == "Patient":
        # identifiers and care team from elsewhere (caseloads are built from generalPractitioner)
        ids = list(incoming.get("identifier") or [])
        ids += [i for i in current.get("identifier") or [] if i not in ids]
        merged["identifier"] = ids
        team = list(incoming.get("generalPractitioner") or [])
        team += [
            r
            for r in current.get("generalPractitioner") or []
            if r not in team and "reference" in r
        ]
        if team:
            merged["generalPractitioner"] = team
    return merged


def _kept_meta(current: dict[str, Any], incoming: dict[str, Any]) -> dict[str, Any]:
    """The incoming meta with fhirgoal's profiles, every security label and fhirgoal's tags of
    the current one added."""
    meta = dict(incoming)
    profiles = list(incoming.get("profile") or [])
    profiles += [
        p
        for p in current.get("profile") or []
        if isinstance(p, str) and p.startswith(OWNED_CANONICALS) and p not in profiles
    ]
    labels = list(incoming.get("security") or [])
    labels += [s for s in current.get("security") or [] if not _coded_in(s, labels)]
    tags = list(incoming.get("tag") or [])
    tags += [
        t
        for t in current.get("tag") or []
        if str((t or {}).get("system", "")).startswith(OWNED_CANONICALS) and not _coded_in(t, tags)
    ]
    for key, values in (("profile", profiles), ("security", labels), ("tag", tags)):
        if values:
            meta[key] = values
    return meta


def _coded_in(coding: Any, codings: list[Any]) -> bool:
    """Whether a Coding with the same system and code is among `codings`."""
    key = ((coding or {}).get("system"), (coding or {}).get("code"))
    return any(((c or {}).get("system"), (c or {}).get("code")) == key for c in codings)


def _is_gas_target(target: Any) -> bool:
    codings = ((target or {}).get("measure") or {}).get("coding") or []
    return any(c.get("code") == GAS_GOAL_MEASURE for c in codings if isinstance(c, dict))


__all__ = ["OWNED_GOAL_EXTENSIONS", "is_owned_extension", "keep_owned"]
