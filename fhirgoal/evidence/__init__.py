"""Evidence for payers: `Patient/{id}/$medical-necessity`, a signed FHIR document and its PDF
(operation.py). Reaches stored data only through the FhirService."""
