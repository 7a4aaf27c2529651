"""Plugs the payer evidence into the FHIR service: the `$medical-necessity` operation, with the
document-signing key it signs with (keys.py)."""

from __future__ import annotations

from fhirgoal.clinical.codes import FHIRGOAL
from fhirgoal.evidence.keys import DocumentKeys
from fhirgoal.evidence.operation import MedicalNecessity
from fhirgoal.fhir.operations import Operation
from fhirgoal.fhir.service import FhirService


def install_evidence(service: FhirService) -> None:
    handler = MedicalNecessity(DocumentKeys(service.settings, service.database))
    # affects_state False: GET is the preview; the handler stores only on POST
    service.operations.register(
        Operation("medical-necessity", "instance", "Patient", handler,
                  definition=f"{FHIRGOAL}/OperationDefinition/Patient-medical-necessity")
    )  # fmt: skip
