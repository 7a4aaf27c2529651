"""`Patient/{id}/$medical-necessity`: evidence of medical necessity for a payer, as a signed FHIR
document and/or a PDF (OperationDefinition profiles/operations/Patient-medical-necessity.json).

One path: inputs (request.py) -> records read with the caller's access (records.py) -> figures
computed by clinical/ (figures.py) -> gaps refused (gaps.py) -> sections (report.py) -> document
(document.py), signed (signing.py, keys.py) -> PDF (pdf.py) -> DocumentReferences
(references.py). GET previews (nothing stored); POST stores the Bundle and the DocumentReferences
in one unit of work: the Bundle under an id derived from its content (the same document again is
the same resource), the DocumentReferences under ids derived from the request (asking again for
the same period points them at the newest document rather than adding more). The answer is a Parameters resource: `document`, `documentReference`,
`pdf` as asked by `format`.
"""

from __future__ import annotations

from typing import Any

from fhirgoal.clinical.session_alerts import cutoffs_from
from fhirgoal.core.access import AccessContext
from fhirgoal.evidence.charts import chart_svgs
from fhirgoal.evidence.document import build_document
from fhirgoal.evidence.figures import compute_figures
from fhirgoal.evidence.gaps import check_sufficient
from fhirgoal.evidence.interpretation import person_name
from fhirgoal.evidence.keys import DocumentKeys, jwks_url
from fhirgoal.evidence.pdf import Cover, render_pdf
from fhirgoal.evidence.records import SIGNER, EvidenceRecords, gather
from fhirgoal.evidence.references import document_reference, pdf_reference
from fhirgoal.evidence.report import build_sections
from fhirgoal.evidence.request import EvidenceRequest, parse_request
from fhirgoal.evidence.signing import sign_document
from fhirgoal.fhir.operations import Invocation
from fhirgoal.fhir.outcome import Outcome
from fhirgoal.fhir.service import FhirService


class MedicalNecessity:
    """The operation's handler, holding the document-signing key."""

    def __init__(self, keys: DocumentKeys) -> None:
        self.keys = keys

    async def __call__(self, svc: FhirService, call: Invocation) -> Outcome:
        assert call.id is not None
        ask = parse_request(call.id, call.parameters)
        outputs = await self.evidence(svc, call.access, ask, call.base_url)
        if call.method == "POST":
            outputs = await _store(svc, call, outputs)
        return Outcome(200, body={
            "resourceType": "Parameters",
            "parameter": [{"name": name, "resource": r} for name, r in outputs.items()],
        })  # fmt: skip

    async def evidence(
        self, svc: FhirService, access: AccessContext, ask: EvidenceRequest, base_url: str
    ) -> dict[str, dict[str, Any]]:
        """The signed document and/or the PDF with their DocumentReferences, by output name
        (`document`, `documentReference`, `pdf`), read with `access`; nothing stored."""
        records = await gather(svc, access, ask)
        figures = compute_figures(records, cutoffs_from(svc.settings))
        check_sufficient(ask, records, figures)
        sections = build_sections(ask, records, figures)
        document = build_document(ask, records, figures, sections, base_url)
        key = await self.keys.signing_key()
        jku = jwks_url(base_url)
        bundle = sign_document(document.bundle, key, jku=jku, who=SIGNER, when=document.timestamp)
        outputs: dict[str, dict[str, Any]] = {}
        if "document" in ask.outputs:
            outputs["document"] = bundle
            outputs["documentReference"] = document_reference(bundle, ask, document.timestamp)
        if "pdf" in ask.outputs:
            cover = _cover(ask, records, bundle, key.kid or "", jku)
            pdf = render_pdf(cover, sections, charts=chart_svgs(ask, figures))
            outputs["pdf"] = pdf_reference(
                pdf, bundle, ask, document.timestamp, outputs.get("documentReference")
            )
        return outputs


async def _store(
    svc: FhirService, call: Invocation, outputs: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Store every output as one unit of work; the stored versions (with their meta)."""
    return await svc.in_transaction(lambda: store_outputs(svc, call.access, call.base_url, outputs))


async def store_outputs(
    svc: FhirService, access: AccessContext, base_url: str, outputs: dict[str, dict[str, Any]]
) -> dict[str, dict[str, Any]]:
    """Store every output (in the caller's unit of work); the stored versions (with their
    meta), by output name."""
    stored = {}
    for name, resource in outputs.items():
        rt, rid = resource["resourceType"], resource["id"]
        identifier = resource["identifier"]
        if isinstance(identifier, list):
            identifier = identifier[0]
        criteria = [("identifier", f"{identifier['system']}|{identifier['value']}")]
        # A conditional update on the identifier, creating under the id the request derives
        # (not a PUT to that id, which a caller who cannot see every resource of the type
        # may not do: core/access.py).
        body = {k: v for k, v in resource.items() if k != "id"}
        outcome = await svc.conditional_update(
            access, rt, criteria, body, None, base_url, new_id=rid
        )
        assert outcome.version is not None and outcome.version.resource is not None
        stored[name] = outcome.version.resource
    return stored


def _cover(
    ask: EvidenceRequest, records: EvidenceRecords, bundle: dict[str, Any], kid: str, jku: str
) -> Cover:
    patient = records.patient
    name = person_name(patient)
    period = f"{ask.start.isoformat()} to {ask.end.isoformat()}"
    lines = [
        f"Client: {name} (Patient/{patient['id']}), born {patient.get('birthDate', 'unknown')}",
        f"Period: {period}",
        f"Treatment plan: {records.plan_reference}",
    ]
    if ask.payer is not None:
        lines.append(f"Prepared for: {(records.payer or {}).get('name', ask.payer)} ({ask.payer})")
    lines.append(f"Data as of: {bundle['timestamp']}")
    identifier = bundle["identifier"]["value"]
    signature = [
        f"The FHIR document {identifier} (Bundle/{bundle['id']}) with the same content is signed "
        f"by the fhirgoal server ({SIGNER}): a detached JWS (RS256) over its canonical JSON "
        "(http://hl7.org/fhir/canonicalization/json#document) in Bundle.signature.",
        f"Key id {kid}, published at {jku}.",
    ]
    return Cover(
        title="Medical necessity evidence",
        lines=lines,
        signature_lines=signature,
        footer=f"{name}, {period}, document {identifier}",
    )
