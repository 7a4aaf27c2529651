"""Plugs the payer evidence into the FHIR service: the `$medical-necessity` operation, with the
document-signing key it signs with (keys.py), Da Vinci CDex requests (cdex/): the write rule
on Task and the clinician's `Task/{id}/$approve` and `$reject`, and submissions to payers
(payers/): their outbox source and delivery, and `Patient/{id}/$submit-to-payer`."""

from __future__ import annotations

from fhirgoal.clinical.codes import FHIRGOAL
from fhirgoal.evidence.cdex.fulfil import CdexAnswers
from fhirgoal.evidence.cdex.rule import CdexRequestRule
from fhirgoal.evidence.keys import DocumentKeys
from fhirgoal.evidence.operation import MedicalNecessity
from fhirgoal.evidence.payers.outbox import install as install_payer_outbox
from fhirgoal.evidence.payers.unsolicited import SubmitToPayer
from fhirgoal.fhir.operations import Operation
from fhirgoal.fhir.service import FhirService


def install_evidence(service: FhirService) -> None:
    handler = MedicalNecessity(DocumentKeys(service.settings, service.database))
    # affects_state False: GET is the preview; the handler stores only on POST
    service.operations.register(
        Operation("medical-necessity", "instance", "Patient", handler,
                  definition=f"{FHIRGOAL}/OperationDefinition/Patient-medical-necessity")
    )  # fmt: skip
    answers = CdexAnswers(handler)
    for name, answer in (("approve", answers.approve), ("reject", answers.reject)):
        service.operations.register(
            Operation(name, "instance", "Task", answer, affects_state=True,
                      definition=f"{FHIRGOAL}/OperationDefinition/Task-{name}")
        )  # fmt: skip
    service.hooks.register_preparer(CdexRequestRule(service))
    service.operations.register(
        Operation("submit-to-payer", "instance", "Patient", SubmitToPayer(handler),
                  affects_state=True,
                  definition=f"{FHIRGOAL}/OperationDefinition/Patient-submit-to-payer")
    )  # fmt: skip
    install_payer_outbox(service)
