"""The inputs of `Patient/{id}/$medical-necessity` (OperationDefinition
profiles/operations/Patient-medical-necessity.json), checked before anything is read.

- `start`, `end` (date, both required, start <= end): the period the evidence covers;
- `carePlan` (reference, optional): the treatment plan; by default the client's latest plan
  that is active or completed and overlaps the period;
- `payer` (Organization reference, optional): who the document is prepared for;
- `format`: `document`, `pdf` or `both` (default).

Both dates are required: a default `end` of "today" would make the same request give different
documents on different days, and the document must be reproducible from its inputs.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import date

from fhirgoal.core.errors import FhirError
from fhirgoal.fhir.operations import Parameters, ParameterValue

FORMATS = {"document": ("document",), "pdf": ("pdf",), "both": ("document", "pdf")}
KNOWN = {"start", "end", "carePlan", "payer", "format"}


@dataclass(frozen=True)
class EvidenceRequest:
    patient: str  # the Patient's id
    start: date
    end: date
    care_plan: str | None  # "CarePlan/{id}" as asked, or None
    payer: str | None  # "Organization/{id}" or None
    outputs: tuple[str, ...]  # "document" and/or "pdf"

    @property
    def key(self) -> str:
        """A stable name of these inputs: the ids of what the request stores derive from it, so
        asking again for the same period replaces the earlier document instead of adding one."""
        text = "|".join(
            [self.patient, self.start.isoformat(), self.end.isoformat(),
             self.care_plan or "", self.payer or ""]
        )  # fmt: skip
        return hashlib.sha256(text.encode()).hexdigest()[:32]


def parse_request(patient: str, params: Parameters) -> EvidenceRequest:
    params.reject_unknown(KNOWN)
    start = date_parameter(params.one("start"), "start")
    end = date_parameter(params.one("end"), "end")
    if start > end:
        raise FhirError("invalid", f"start ({start}) is after end ({end})", "start")
    chosen = params.one("format")
    fmt = chosen.text() if chosen else "both"
    if fmt not in FORMATS:
        raise FhirError("invalid", "format must be document, pdf or both", "format")
    return EvidenceRequest(
        patient,
        start,
        end,
        _reference(params.one("carePlan"), "CarePlan"),
        _reference(params.one("payer"), "Organization"),
        FORMATS[fmt],
    )


def date_parameter(param: ParameterValue | None, name: str) -> date:
    """A required date parameter, exactly YYYY-MM-DD."""
    if param is None:
        raise FhirError("invalid", f"'{name}' (YYYY-MM-DD) is required", name)
    text = param.text()
    try:
        if len(text) != len("YYYY-MM-DD"):  # fromisoformat would take 20260803 too
            raise ValueError(text)
        return date.fromisoformat(text)
    except ValueError:
        raise FhirError("invalid", f"{name} must be a date YYYY-MM-DD, not {text!r}",
                        param.expression) from None  # fmt: skip


def _reference(param: ParameterValue | None, resource_type: str) -> str | None:
    """`Type/id` from a relative reference or a plain id; anything else is refused."""
    if param is None:
        return None
    kind, _, rid = param.text().rpartition("/")
    if kind not in ("", resource_type) or not rid:
        raise FhirError("invalid", f"'{param.name}' must reference a {resource_type}",
                        param.expression)  # fmt: skip
    return f"{resource_type}/{rid}"
