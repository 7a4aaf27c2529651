"""Too little data for medical-necessity evidence: what is missing, named the way an auditor
names it, all gaps at once.

A behavioural-health record supports medical necessity when it has an individualized plan with
diagnoses and measurable goals, progress on standardized measures during the period, the sessions
provided, and an identified treating clinician: the elements CMS's Comprehensive Error Rate
Testing reviewers cite when they are missing (the Medicare Program Integrity Manual, Pub. 100-08,
chapter 3, on medical review and signatures; the Medicare Benefit Policy Manual, Pub. 100-02,
chapter 6, on outpatient psychiatric services: an individualized treatment plan with goals, and
documented progress). Each gap is one
OperationOutcome issue (`business-rule`, 422): the document is not produced at all rather than
produced with holes a reviewer would reject.
"""

from __future__ import annotations

from fhirgoal.core.errors import FhirError, Issue
from fhirgoal.evidence.figures import Figures
from fhirgoal.evidence.records import EvidenceRecords
from fhirgoal.evidence.request import EvidenceRequest


def check_sufficient(ask: EvidenceRequest, records: EvidenceRecords, figures: Figures) -> None:
    """Raise a 422 listing every gap; return when the evidence is complete enough."""
    period = f"{ask.start.isoformat()} to {ask.end.isoformat()}"
    who = f"Patient/{ask.patient}"
    gaps: list[Issue] = []
    if records.plan is None:
        gaps.append(_gap(f"no treatment plan: {who} has no CarePlan that is active or completed "
                         f"during {period}", "CarePlan"))  # fmt: skip
    elif not figures.goals:
        gaps.append(_gap(f"no measurable goal: {records.plan_reference} has no goal with "
                         "Goal Attainment Scaling levels", "CarePlan.goal"))  # fmt: skip
    if not records.conditions:
        gaps.append(_gap(f"no diagnosis: neither the plan nor {who}'s record has an active "
                         "Condition", "Condition"))  # fmt: skip
    if not figures.measured_between(ask.start, ask.end):
        gaps.append(_gap(f"no progress measure during {period}: no GAS rating, ORS, SRS, PHQ-9 "
                         "or GAD-7 result", "Observation"))  # fmt: skip
    if not records.encounters:
        gaps.append(_gap(f"no session attended during {period}: no finished Encounter",
                         "Encounter"))  # fmt: skip
    if records.clinician_reference is None:
        gaps.append(_gap("no treating clinician: the plan has no Practitioner author and no "
                         "session names one", "CarePlan.author"))  # fmt: skip
    if gaps:
        raise FhirError("processing", gaps[0].diagnostics, issues=gaps)


def _gap(diagnostics: str, expression: str) -> Issue:
    return Issue(f"insufficient evidence: {diagnostics}", expression, code="business-rule")
