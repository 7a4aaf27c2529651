"""ORS/SRS alerts open and close as Flags, for responses and for Observations sent directly."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest

from fhirgoal.clinical.resources import rating_scale_response
from fhirgoal.clinical.session_alerts import CUTOFF_SETTINGS, cutoffs_from
from fhirgoal.clinical.session_measures import DEFAULT_CUTOFFS, Cutoffs
from fhirgoal.config import Settings
from fhirgoal.core.jsonio import loads
from tests.conftest import RunningServer
from tests.helpers import store

START = datetime(2026, 8, 3, 15, 0, tzinfo=UTC)
MEASURES = "https://fhirgoal.org/fhir/CodeSystem/fhirgoal-measures"


async def ors_session(fhir: RunningServer, n: int, total: str) -> None:
    when = (START + timedelta(weeks=n)).isoformat()
    await store(fhir.client, rating_scale_response(f"ors{n}", "ors", "p1", marks(total), when))


def marks(total: str) -> list[Decimal]:
    """Four marks of one decimal each that add up to `total`."""
    first = (Decimal(total) / 4).quantize(Decimal("0.1"))
    return [first, first, first, Decimal(total) - 3 * first]


async def flags(fhir: RunningServer, **params: str) -> dict[str, dict[str, Any]]:
    bundle = loads(
        (await fhir.client.get("/Flag", params={"patient": "Patient/p1", **params})).content
    )
    return {
        e["resource"]["code"]["coding"][0]["code"]: e["resource"] for e in bundle.get("entry", [])
    }


async def test_reliable_deterioration_opens_a_flag_that_closes_on_recovery(
    fhir: RunningServer,
) -> None:
    await store(fhir.client, {"resourceType": "Patient", "id": "p1", "birthDate": "1980-01-01"})
    await ors_session(fhir, 0, "30")
    await ors_session(fhir, 1, "24")  # -6 from intake: reliable deterioration
    opened = await flags(fhir, status="active")
    assert set(opened) == {"reliable-deterioration"}
    assert opened["reliable-deterioration"]["category"][0]["coding"][0]["code"] == "behavioral"
    evidence = [
        e["valueReference"]["reference"] for e in opened["reliable-deterioration"]["extension"]
    ]
    assert evidence == ["Observation/ors0-ors-total", "Observation/ors1-ors-total"]
    await ors_session(fhir, 2, "29")
    assert await flags(fhir, status="active") == {}
    assert (await flags(fhir))["reliable-deterioration"]["status"] == "inactive"


async def test_no_progress_by_session_six_in_the_clinical_range_opens_a_flag(
    fhir: RunningServer,
) -> None:
    await store(fhir.client, {"resourceType": "Patient", "id": "p1", "birthDate": "1980-01-01"})
    for n, total in enumerate(["18", "19", "18", "19", "20"]):
        await ors_session(fhir, n, total)
    assert await flags(fhir, status="active") == {}
    await ors_session(fhir, 5, "20")
    assert set(await flags(fhir, status="active")) == {"no-progress"}


async def test_the_adolescent_cutoff_applies_on_the_sessions_date(fhir: RunningServer) -> None:
    await store(
        fhir.client, {"resourceType": "Patient", "id": "p1", "birthDate": "2011-01-01"}
    )  # 15
    await ors_session(fhir, 0, "27")
    progress = loads(
        (await fhir.client.get("/Patient/p1/$progress", params={"date": "2026-12-31"})).content
    )
    point = {
        q["name"]: q for q in next(p for p in progress["parameter"] if p["name"] == "ors")["part"]
    }
    assert point["cutoff"]["valueDecimal"] == 28
    assert point["clinicalRange"]["valueCode"] == "clinical"


async def test_an_srs_sent_as_an_observation_raises_the_alliance_alert(fhir: RunningServer) -> None:
    await store(fhir.client, {"resourceType": "Patient", "id": "p1"})

    def srs(oid: str, total: str, day: int) -> dict[str, Any]:
        return {"resourceType": "Observation", "id": oid, "status": "final",
                "code": {"coding": [{"system": MEASURES, "code": "srs-total"}]},
                "subject": {"reference": "Patient/p1"}, "effectiveDateTime": f"2026-09-{day:02d}",
                "valueQuantity": {"value": Decimal(total)},
                "component": [{"code": {"coding": [{"system": MEASURES, "code": c}]}, "valueQuantity": {"value": m}}
                              for c, m in zip(("srs-relationship", "srs-goals-and-topics", "srs-approach-or-method", "srs-overall"), marks(total), strict=True)]}  # fmt: skip

    await store(fhir.client, srs("a", "39", 1))
    await store(fhir.client, srs("b", "37.6", 8))  # still above 36, but dropped 1.4
    alert = (await flags(fhir, status="active"))["alliance-concern"]
    assert "drop" in alert["code"]["text"]
    await store(fhir.client, srs("c", "38", 15))
    assert await flags(fhir, status="active") == {}


async def test_partial_session_dates_and_an_impossible_birth_date_do_not_stop_the_alerts(
    fhir: RunningServer,
) -> None:
    await store(fhir.client, {"resourceType": "Patient", "id": "p1", "birthDate": "2030-01-01"})
    first = rating_scale_response("a", "ors", "p1", marks("30"), "2026-08")  # month precision
    second = rating_scale_response("b", "ors", "p1", marks("24"), "2026-09-14")
    await store(fhir.client, first)
    await store(fhir.client, second)
    assert set(await flags(fhir, status="active")) == {"reliable-deterioration"}
    progress = await fhir.client.get("/Patient/p1/$progress", params={"date": "2026-12-31"})
    assert progress.status_code == 200
    point = {
        q["name"]: q
        for q in next(p for p in progress.json()["parameter"] if p["name"] == "ors")["part"]
    }
    assert "adult cutoff" in point["cutoffBasis"]["valueString"]


def test_every_cutoff_has_one_setting() -> None:
    assert set(CUTOFF_SETTINGS) == {f.name for f in dataclasses.fields(Cutoffs)}
    assert set(CUTOFF_SETTINGS.values()) <= set(Settings.model_fields)


def test_cutoffs_are_the_pcoms_defaults_unless_the_environment_sets_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    for setting in CUTOFF_SETTINGS.values():
        monkeypatch.delenv(f"FHIRGOAL_{setting.upper()}", raising=False)
    assert cutoffs_from(Settings()) == DEFAULT_CUTOFFS
    monkeypatch.setenv("FHIRGOAL_ORS_CUTOFF_ADULT", "20")
    monkeypatch.setenv("FHIRGOAL_NO_PROGRESS_SESSIONS", "3")
    assert cutoffs_from(Settings()) == dataclasses.replace(
        DEFAULT_CUTOFFS, ors_adult=Decimal(20), no_progress_sessions=3
    )
