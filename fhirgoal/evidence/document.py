"""The FHIR document: a `document` Bundle, its Composition first
(https://hl7.org/fhir/R4/documents.html, https://hl7.org/fhir/R4/composition.html).

- Composition: type LOINC 34904-3 "Mental health Progress note" (from R4's document type codes,
  https://hl7.org/fhir/R4/valueset-c80-doc-typecodes.html: the closest fit for a behavioural-health
  progress summary, more specific than 11506-3 "Progress note"), status `final`, the client as
  subject, the period as `event.period`, the treating clinician and the server (Device/fhirgoal,
  which assembled it) as authors, the treating clinician as attester (mode `professional`),
  report.py's sections with their narrative and entries; the payer, when given, as the
  recipient (an extension: R4's Composition has no recipient element).
- Entries: the Composition, the Patient, then every resource a section lists (each once, in the
  order of first mention), the clinician, the signer and the payer when the caller may read them;
  stored resources as stored (meta and all), fullUrl `{base}/{type}/{id}`; the T-score points'
  Observations (computed, not stored) under stable `urn:uuid:` fullUrls.

Deterministic: the same inputs and data give the same document. The Composition's id and
identifier derive from the request (EvidenceRequest.key); R4 requires a date in three places (Bundle.timestamp, Composition.date,
Signature.when) and each is the latest `meta.lastUpdated` of the clinical records in the document,
the moment the data it shows was last changed, never the clock; the Bundle's id and identifier
(the version-specific document id) are a digest of the content, so a change in the data is a new
document (a document is never edited: each is kept) while the Composition identifier (one per
patient, period, plan and payer) stays.
"""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import dataclass
from typing import Any

from fhirgoal.clinical.achievement import instant_of
from fhirgoal.clinical.codes import FHIRGOAL
from fhirgoal.core.jsonio import dumps_canonical
from fhirgoal.evidence import interpretation
from fhirgoal.evidence.figures import Figures
from fhirgoal.evidence.narrative import narrative, summary
from fhirgoal.evidence.records import SIGNER, EvidenceRecords
from fhirgoal.evidence.report import LOINC, Section, tscore_urn
from fhirgoal.evidence.request import EvidenceRequest

DOCUMENT_IDENTIFIER = f"{FHIRGOAL}/medical-necessity"
RECIPIENT_EXTENSION = f"{FHIRGOAL}/StructureDefinition/evidence-recipient"
DOCUMENT_TYPE = {"system": LOINC, "code": "34904-3", "display": "Mental health Progress note"}
NO_ENTRIES = {
    "coding": [{"system": "http://terminology.hl7.org/CodeSystem/list-empty-reason",
                "code": "nilknown", "display": "Nil Known"}]
}  # fmt: skip


@dataclass(frozen=True)
class Document:
    bundle: dict[str, Any]  # unsigned
    timestamp: str  # the date the document carries (see the module docstring)


def document_id(ask: EvidenceRequest) -> str:
    return f"medical-necessity-{ask.key}"


def build_document(
    ask: EvidenceRequest,
    records: EvidenceRecords,
    figures: Figures,
    sections: list[Section],
    base: str,
) -> Document:
    known = _resources_by_reference(records, figures)
    references = [f"Patient/{ask.patient}"]
    for reference in _section_references(sections):
        if reference not in references:
            references.append(reference)
    for extra in (records.clinician_reference, SIGNER, ask.payer):
        if extra is not None and extra not in references:
            references.append(extra)
    included = [r for r in references if r in known]
    timestamp = _latest_update([known[r] for r in included if r != SIGNER])
    composition = _composition(ask, records, sections, set(included), timestamp)
    entries = [{"fullUrl": f"{base}/Composition/{composition['id']}", "resource": composition}]
    entries += [{"fullUrl": _full_url(base, r), "resource": known[r]} for r in included]
    bundle: dict[str, Any] = {
        "resourceType": "Bundle",
        "type": "document",
        "timestamp": timestamp,
        "entry": entries,
    }
    digest = hashlib.sha256(dumps_canonical(bundle)).hexdigest()
    bundle["id"] = f"medical-necessity-{digest[:32]}"
    bundle["identifier"] = {
        "system": DOCUMENT_IDENTIFIER,
        "value": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, f'{DOCUMENT_IDENTIFIER}|{digest}')}",
    }
    return Document(bundle, timestamp)


def _composition(
    ask: EvidenceRequest,
    records: EvidenceRecords,
    sections: list[Section],
    included: set[str],
    timestamp: str,
) -> dict[str, Any]:
    patient = records.patient
    name = interpretation.person_name(patient)
    title = f"Medical necessity evidence, {ask.start.isoformat()} to {ask.end.isoformat()}"
    lines = [
        title,
        f"Client: {name} (Patient/{patient['id']}), born {patient.get('birthDate', 'unknown')}.",
    ]
    composition: dict[str, Any] = {
        "resourceType": "Composition",
        "id": document_id(ask),
        "identifier": {"system": DOCUMENT_IDENTIFIER,
                       "value": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, DOCUMENT_IDENTIFIER + '|' + ask.key)}"},
        "status": "final",
        "type": {"coding": [DOCUMENT_TYPE], "text": "Medical necessity evidence"},
        "subject": {"reference": f"Patient/{patient['id']}", "display": name},
        "date": timestamp,
        "author": [],
        "title": title,
        "event": [{"period": {"start": ask.start.isoformat(), "end": ask.end.isoformat()}}],
        "section": [_section(s, included) for s in sections],
    }  # fmt: skip
    clinician = records.clinician_reference
    if clinician is not None:
        party = _reference(clinician, records.clinician)
        composition["author"].append(party)
        composition["attester"] = [{"mode": "professional", "party": party}]
    composition["author"].append({"reference": SIGNER, "display": "fhirgoal server"})
    if ask.payer is not None:
        composition["extension"] = [
            {"url": RECIPIENT_EXTENSION, "valueReference": _reference(ask.payer, records.payer)}
        ]
        lines.append(f"Prepared for: {(records.payer or {}).get('name', ask.payer)} ({ask.payer}).")
    composition["text"] = summary(lines)
    return composition


def _section(section: Section, included: set[str]) -> dict[str, Any]:
    out: dict[str, Any] = {"title": section.title}
    if section.code is not None:
        code, display = section.code
        out["code"] = {"coding": [{"system": LOINC, "code": code, "display": display}]}
    out["text"] = narrative(section)
    entries = [e for e in section.entries if e in included]
    if entries:
        out["entry"] = [{"reference": e} for e in entries]
    if section.sections:
        out["section"] = [_section(s, included) for s in section.sections]
    if not entries and not section.sections and section.key == "alerts":
        out["emptyReason"] = NO_ENTRIES
    return out


def _section_references(sections: list[Section]) -> list[str]:
    found: list[str] = []
    for section in sections:
        found += section.entries
        found += _section_references(section.sections)
    return found


def _resources_by_reference(records: EvidenceRecords, figures: Figures) -> dict[str, Any]:
    known: dict[str, Any] = {}
    stored = [
        records.patient, records.plan, *records.plan_goals,
        *(g.resource for g in records.gas_goals), *records.conditions, *records.observations,
        *records.encounters, *records.flags, records.clinician, records.payer, records.signer,
    ]  # fmt: skip
    for resource in stored:
        if resource is not None:
            known[f"{resource['resourceType']}/{resource['id']}"] = resource
    for point in figures.tscores:
        known[tscore_urn(point)] = point.observation
    return known


def _full_url(base: str, reference: str) -> str:
    return reference if reference.startswith("urn:") else f"{base}/{reference}"


def _reference(reference: str, resource: dict[str, Any] | None) -> dict[str, str]:
    value = {"reference": reference}
    if resource is not None:
        display = resource.get("name") if isinstance(resource.get("name"), str) else None
        value["display"] = display or interpretation.person_name(resource)
    return value


def _latest_update(resources: list[dict[str, Any]]) -> str:
    moments = [
        r["meta"]["lastUpdated"] for r in resources if (r.get("meta") or {}).get("lastUpdated")
    ]
    return max(moments, key=instant_of)
