"""The ground floor: primitives every other floor may import, importing none of them.

errors.py (FhirError and the one status table), jsonio.py (lossless FHIR JSON text I/O),
access.py (the AccessContext value the repository applies) and delegation.py (the user a request
acts for, with their token). See README, "Layout".
"""
