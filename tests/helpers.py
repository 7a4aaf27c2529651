"""Small builders shared by the FHIR tests."""

from __future__ import annotations

from typing import Any

FHIR_JSON = {"Content-Type": "application/fhir+json"}


def patient(family: str = "Rivera", **extra: Any) -> dict[str, Any]:
    return {"resourceType": "Patient", "name": [{"family": family, "given": ["Alex"]}], **extra}


def observation(patient_id: str, value: str = "72.50", **extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "status": "final",
        "code": {
            "coding": [{"system": "http://loinc.org", "code": "29463-7"}],
            "text": "Body weight",
        },
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": "2026-01-05T10:00:00.120+01:00",
        "valueQuantity": {
            "value": float(value),
            "unit": "kg",
            "system": "http://unitsofmeasure.org",
            "code": "kg",
        },
        **extra,
    }


def raw_observation(patient_id: str, value: str = "72.50") -> bytes:
    """Observation JSON text with the decimal exactly as written (floats would lose '72.50')."""
    return (
        '{"resourceType":"Observation","status":"final",'
        '"code":{"coding":[{"system":"http://loinc.org","code":"29463-7"}],"text":"Body weight"},'
        f'"subject":{{"reference":"Patient/{patient_id}"}},'
        '"effectiveDateTime":"2026-01-05T10:00:00.120+01:00",'
        f'"valueQuantity":{{"value":{value},"unit":"kg","system":"http://unitsofmeasure.org","code":"kg"}}}}'
    ).encode()


def issues(body: dict[str, Any]) -> list[dict[str, Any]]:
    assert body["resourceType"] == "OperationOutcome", body
    return body["issue"]


def expressions(body: dict[str, Any]) -> list[str]:
    return [e for issue in issues(body) for e in issue.get("expression", [])]
