"""The generic FHIR R4 layer (resource-type agnostic): https://hl7.org/fhir/R4/http.html"""
