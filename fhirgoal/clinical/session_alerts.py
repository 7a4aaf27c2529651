"""ORS/SRS alerts as Flags that open and close with the client's sessions.

After every write of an ORS, CORS, SRS or CSRS total (extracted from a QuestionnaireResponse or
sent as an Observation), the client's series is interpreted again (session_measures.py: clinical
cutoff by age band, reliable change from intake, SRS alliance rule) and the open alerts are
reconciled with the client's Flags (flags.py): one Flag per client and alert kind, active while
the condition holds, inactive with `period.end` once it clears. Observations are never altered:
interpretation is computed from them (here and in `$progress`), not written into them.
"""

from __future__ import annotations

from typing import Any

from fhirgoal.clinical.flags import AlertFlag, clear_flag, flag_id, raise_flag
from fhirgoal.clinical.gas import ClinicalInputError
from fhirgoal.clinical.records import measure_series, series_key
from fhirgoal.clinical.session_measures import (
    Alert,
    Cutoffs,
    OrsPoint,
    SessionScore,
    SrsPoint,
    interpret_ors,
    interpret_srs,
    open_alerts,
)
from fhirgoal.config import Settings
from fhirgoal.core.access import UNRESTRICTED
from fhirgoal.fhir.hooks import WriteEvent
from fhirgoal.fhir.instants import instant_text, now
from fhirgoal.fhir.service import FhirService

ALERT_CODES = {
    "alliance": ("alliance-concern", "Alliance concern"),
    "deterioration": ("reliable-deterioration", "Reliable deterioration"),
    "no-progress": ("no-progress", "Not on track"),
}


# Cutoffs field <- Settings field (FHIRGOAL_<NAME>); an unset setting keeps the Cutoffs default.
CUTOFF_SETTINGS = {
    "ors_adult": "ors_cutoff_adult",
    "ors_adolescent": "ors_cutoff_adolescent",
    "ors_child": "ors_cutoff_child",
    "reliable_change": "reliable_change",
    "srs_alert_below": "srs_alert_below",
    "srs_drop": "srs_drop",
    "no_progress_sessions": "no_progress_sessions",
}


def cutoffs_from(settings: Settings) -> Cutoffs:
    """The configured cutoffs: the PCOMS defaults of `Cutoffs`, with what the settings override."""
    overrides = {
        name: value
        for name, setting in CUTOFF_SETTINGS.items()
        if (value := getattr(settings, setting)) is not None
    }
    return Cutoffs(**overrides)


def alert_flag_id(patient: str, kind: str) -> str:
    return flag_id("session-alert", patient, kind)


def interpret_outcome(
    series: list[SessionScore], birth_date: Any, cutoffs: Cutoffs
) -> list[OrsPoint]:
    """interpret_ors, taking a birth date that cannot apply (after a session, malformed) as
    unknown - the adult cutoff, said so in each point - rather than refusing the whole series:
    one typing error in a Patient must not stop a client's alerts."""
    try:
        return interpret_ors(series, birth_date, cutoffs)
    except ClinicalInputError as error:
        if error.fields != ("birth_date",):
            raise
        return interpret_ors(series, None, cutoffs)


async def interpret(
    svc: FhirService, patient: dict[str, Any], cutoffs: Cutoffs
) -> tuple[list[OrsPoint], list[SrsPoint], list[Alert]]:
    series = await measure_series(svc, UNRESTRICTED, patient["id"])
    ors = interpret_outcome(series.outcome, patient.get("birthDate"), cutoffs)
    srs = interpret_srs(series.alliance, cutoffs)
    return ors, srs, open_alerts(ors, srs)


def _patient_of(resource: dict[str, Any] | None) -> str | None:
    if resource is None or series_key(resource) not in ("outcome", "alliance"):
        return None
    reference = str((resource.get("subject") or {}).get("reference", ""))
    return reference.removeprefix("Patient/") if reference.startswith("Patient/") else None


class SessionAlertHook:
    resource_types = frozenset({"Observation"})

    def __init__(self, service: FhirService) -> None:
        self.service = service
        self.cutoffs = cutoffs_from(service.settings)

    def _patients(self, event: WriteEvent) -> set[str]:
        previous = event.previous.resource if event.previous is not None else None
        return {p for p in (_patient_of(event.resource), _patient_of(previous)) if p}

    def interested(self, event: WriteEvent) -> bool:
        return bool(self._patients(event))

    async def before_write(self, event: WriteEvent) -> None:
        return None

    async def after_write(self, event: WriteEvent) -> None:
        for pid in sorted(self._patients(event)):
            await self.refresh(pid)

    async def after_writes(self, events: list[WriteEvent]) -> None:
        """The writes of a unit of work (fhir/hooks.py): each client's series interpreted once."""
        patients: set[str] = set()
        for event in events:
            patients |= self._patients(event)
        for pid in sorted(patients):
            await self.refresh(pid)

    async def refresh(self, pid: str) -> None:
        svc = self.service
        current = await svc.current(UNRESTRICTED, "Patient", pid)
        patient = current.resource if current is not None else None
        if patient is None:
            return
        _, _, alerts = await interpret(svc, patient, self.cutoffs)
        raised = {a.kind for a in alerts}
        for alert in alerts:
            code, display = ALERT_CODES[alert.kind]
            await raise_flag(
                svc,
                AlertFlag(
                    id=alert_flag_id(pid, alert.kind),
                    patient=pid,
                    kind=code,
                    display=display,
                    text=f"{display} since session {alert.since.session}: {alert.reason}",
                    details=tuple(f"Observation/{o}" for o in alert.evidence),
                    since=str(alert.since.when),
                    category="behavioral",
                ),
            )
        for kind in ALERT_CODES.keys() - raised:
            await clear_flag(svc, alert_flag_id(pid, kind), instant_text(now()),
                             "the latest session no longer meets the condition")  # fmt: skip
