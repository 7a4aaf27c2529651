"""FHIR search: https://hl7.org/fhir/R4/search.html"""
