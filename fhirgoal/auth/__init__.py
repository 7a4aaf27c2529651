"""SMART-on-FHIR authorization: https://hl7.org/fhir/smart-app-launch/"""
