"""The codes of Da Vinci CDex Task requests (STU2 2.0.0 and 2.1.0).

- Task.code: `attachment-request-code` (CDex Task Attachment Request Profile; 2.1.0 takes it from
  the PAS temporary code system, 2.0.0 from CDex's own `cdex-temp`: both are accepted),
  `data-request-query` (CDex Task Data Request Profile, `cdex-temp`);
- Task.input types: `attachments-needed` (PAS or cdex-temp) with a LOINC code, `data-query`
  (HRex `hrex-temp`) with a FHIR query, `service-date` (cdex-temp), `payer-url`;
- Task.output types: `attachments-needed` for attachments, `data-value` (hrex-temp) for data;
- Task.reasonCode: claim-use `claim` | `preauthorization`.

The codes of a request this server cannot answer (`data-request-code`,
`data-request-questionnaire`, `attachment-request-questionnaire`) are refused when the Task is
created, naming the ones it can.
"""

from __future__ import annotations

from fhirgoal.clinical.codes import FHIRGOAL

CDEX_TEMP = "http://hl7.org/fhir/us/davinci-cdex/CodeSystem/cdex-temp"
PAS_TEMP = "http://hl7.org/fhir/us/davinci-pas/CodeSystem/PASTempCodes"
HREX_TEMP = "http://hl7.org/fhir/us/davinci-hrex/CodeSystem/hrex-temp"
CLAIM_USE = "http://hl7.org/fhir/claim-use"
LOINC = "http://loinc.org"

ATTACHMENT_REQUEST = "attachment-request-code"
DATA_REQUEST = "data-request-query"
# Task.code -> the systems it is taken from
REQUEST_CODES = {ATTACHMENT_REQUEST: (PAS_TEMP, CDEX_TEMP), DATA_REQUEST: (CDEX_TEMP,)}

ATTACHMENTS_NEEDED = "attachments-needed"
DATA_QUERY = "data-query"
SERVICE_DATE = "service-date"
DATA_VALUE = "data-value"

# The LOINC attachment codes the medical-necessity evidence answers (the document is a "Mental
# health Progress note", 34904-3, holding the plan of care and the progress notes' content).
ANSWERABLE = {
    "34904-3": "Mental health Progress note",
    "11506-3": "Progress note",
    "18776-5": "Plan of care note",
}

# The Patient the server resolved Task.for to (a server-added extension: the payer names its
# member by identifier or by a contained Patient, which the server cannot index as a patient).
RESOLVED_PATIENT = f"{FHIRGOAL}/StructureDefinition/resolved-patient"

OPEN = ("requested", "received", "accepted", "ready", "in-progress", "on-hold")
