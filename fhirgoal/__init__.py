"""fhirgoal: a FHIR R4 (4.0.1) server for goals, Goal Attainment Scaling and session measures."""

__version__ = "0.1.0"
