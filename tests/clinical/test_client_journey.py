"""A client from intake through twelve sessions, through the FHIR API only.

Plan, goals, GAS ratings and ORS/SRS QuestionnaireResponses go in; out come the derived
Observations, goal statuses (with Provenance), alerts as Flags that open and close, the GAS
T-score and the $progress summary. Every derived value is asserted.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

from fhirgoal.clinical.resources import gas_goal, gas_rating, rating_scale_response
from fhirgoal.core.jsonio import dumps, loads
from tests.conftest import RunningServer
from tests.helpers import store

START = datetime(2026, 8, 3, 15, 0, tzinfo=UTC)
ORS = ["18", "19", "19.5", "21", "22", "23.5", "24", "25.5", "26", "27", "28", "29"]
SRS = ["38", "38.5", "39", "39", "38.8", "34.5", "38", "38.6", "39", "39.2", "39.5", "39.5"]
# GAS levels at baseline (session 1) and the practitioner's follow-ups at sessions 4, 7, 10, 12
GAS = {
    "g1": ["-1", "-1", "0", "1", "1"],  # improves, then achieved and sustained
    "g2": ["-1", "-1", "-1", "-1", "-1"],  # stalls
    "g3": ["-2", "-1", "-2", "-0.5", "0"],  # up, down, partial, achieved
}
WEIGHTS = {"g1": (2, 2), "g2": (1, 1), "g3": (3, 2)}  # importance, difficulty
EXPECTED_STATUS = {
    "g1": ["in-progress", "no-change", "achieved", "sustaining", "sustaining"],
    "g2": ["in-progress", "no-change", "no-change", "no-change", "no-change"],
    "g3": ["in-progress", "improving", "worsening", "improving", "achieved"],
}
REVIEWS = [1, 4, 7, 10, 12]
LEVELS = ["much less", "less", "expected", "more", "much more"]


def items(total: str) -> list[Decimal]:
    """Four marks (one decimal each) that add up to `total`."""
    whole = Decimal(total)
    first = (whole / 4).quantize(Decimal("0.1"))
    return [first, first, first, whole - 3 * first]


class Client:
    def __init__(self, fhir: RunningServer) -> None:
        self.fhir = fhir

    async def put(self, resource: dict[str, Any]) -> dict[str, Any]:
        return await store(self.fhir.client, resource)

    async def get(self, path: str, **params: str) -> Any:
        response = await self.fhir.client.get(path, params=params)
        assert response.status_code == 200, response.text
        return loads(response.content)

    async def status(self, gid: str) -> str:
        goal = await self.get(f"/Goal/{gid}")
        return str(goal["achievementStatus"]["coding"][0]["code"])

    async def active_flags(self) -> dict[str, dict[str, Any]]:
        bundle = await self.get("/Flag", patient="Patient/jo", status="active")
        return {
            e["resource"]["code"]["coding"][0]["code"]: e["resource"]
            for e in bundle.get("entry", [])
        }


def tscore(levels: dict[str, Decimal]) -> Decimal:
    """Kiresuk & Sherman with rho 0.3, computed independently of the server (floats, rounded)."""
    w = {g: WEIGHTS[g][0] * WEIGHTS[g][1] for g in levels}
    x = {g: -1.0 if lvl == Decimal("-0.5") else float(lvl) for g, lvl in levels.items()}
    num = sum(w[g] * x[g] for g in levels)
    den = math.sqrt(0.7 * sum(v * v for v in w.values()) + 0.3 * sum(w.values()) ** 2)
    return Decimal(f"{50 + 10 * num / den:.2f}")


async def test_a_client_from_intake_through_twelve_sessions(fhir: RunningServer) -> None:
    c = Client(fhir)
    await c.put({"resourceType": "Patient", "id": "jo", "birthDate": "1990-05-01",
                 "name": [{"family": "Doe", "given": ["Jo"]}]})  # fmt: skip
    await c.put({"resourceType": "Practitioner", "id": "t1", "name": [{"family": "Lee"}]})
    for gid, (importance, difficulty) in WEIGHTS.items():
        await c.put(gas_goal(gid, "jo", f"goal {gid}", LEVELS, start="2026-08-03",
                             importance=importance, difficulty=difficulty,
                             expressed_by="Patient/jo"))  # fmt: skip
    await c.put({"resourceType": "CarePlan", "id": "plan", "status": "active", "intent": "plan",
                 "subject": {"reference": "Patient/jo"},
                 "goal": [{"reference": f"Goal/{g}"} for g in GAS]})  # fmt: skip

    for n in range(1, 13):
        when = (START + timedelta(weeks=n - 1)).isoformat().replace("+00:00", "Z")
        eid = f"s{n:02d}"
        await c.put({"resourceType": "Encounter", "id": eid, "status": "finished",
                     "class": {"system": "http://terminology.hl7.org/CodeSystem/v3-ActCode", "code": "AMB"},
                     "subject": {"reference": "Patient/jo"}, "period": {"start": when}})  # fmt: skip
        await c.put(
            rating_scale_response(f"ors-{eid}", "ors", "jo", items(ORS[n - 1]), when, encounter=eid)
        )
        await c.put(
            rating_scale_response(f"srs-{eid}", "srs", "jo", items(SRS[n - 1]), when, encounter=eid)
        )
        if n in REVIEWS:
            review = REVIEWS.index(n)
            for gid, levels in GAS.items():
                await c.put(gas_rating(f"{gid}-r{n:02d}", "jo", gid, levels[review], when,
                                       baseline=n == 1, performer="Practitioner/t1", encounter=eid))  # fmt: skip
            for gid in GAS:  # the status follows every review
                assert await c.status(gid) == EXPECTED_STATUS[gid][review], (gid, n)

        # Derived: one ORS and one SRS Observation per session, with exact totals.
        for kind, totals in (("ors", ORS), ("srs", SRS)):
            derived = await c.get(f"/Observation/{kind}-{eid}-{kind}-total")
            assert derived["valueQuantity"]["value"] == Decimal(totals[n - 1])
            assert derived["derivedFrom"] == [{"reference": f"QuestionnaireResponse/{kind}-{eid}"}]
            assert derived["encounter"] == {"reference": f"Encounter/{eid}"}

        # Alerts: the alliance dip at session 6 opens a Flag; session 7 closes it.
        flags = await c.active_flags()
        if n == 6:
            assert set(flags) == {"alliance-concern"}
            assert "below 36" in flags["alliance-concern"]["code"]["text"]
        else:
            assert "alliance-concern" not in flags
        assert "reliable-deterioration" not in flags and "no-progress" not in flags

    closed = (await c.get("/Flag", patient="Patient/jo"))["entry"]
    assert [e["resource"]["status"] for e in closed] == ["inactive"]
    assert "end" in closed[0]["resource"]["period"]

    # Every status change left a Provenance by the server.
    provenance = await c.get("/Provenance", agent="Device/fhirgoal", _count="100")
    changes = sum(
        sum(1 for before, after in zip([None, *s], s, strict=False) if before != after)
        for s in EXPECTED_STATUS.values()
    )
    assert provenance["total"] == changes == 11  # one per change: g1 4, g2 2, g3 5

    # T-score: stored once, from the latest practitioner ratings.
    final = {g: Decimal(levels[-1]) for g, levels in GAS.items()}
    body = {"resourceType": "Parameters", "parameter": [
        {"name": "date", "valueDate": "2026-10-31"}, {"name": "store", "valueBoolean": True},
        {"name": "carePlan", "valueReference": {"reference": "CarePlan/plan"}}]}  # fmt: skip
    response = await fhir.client.post("/Patient/jo/$gas-tscore", content=dumps(body),
                                      headers={"Content-Type": "application/fhir+json"})  # fmt: skip
    assert response.status_code == 200, response.text
    result = loads(response.content)
    stored = next(p["resource"] for p in result["parameter"] if p["name"] == "observation")
    assert stored["valueQuantity"]["value"] == tscore(final)
    assert {d["reference"] for d in stored["derivedFrom"]} == {f"Observation/{g}-r12" for g in GAS}

    # $progress: the whole picture.
    progress = await c.get("/Patient/jo/$progress", date="2026-10-31")
    by_name: dict[str, list[Any]] = {}
    for p in progress["parameter"]:
        by_name.setdefault(p["name"], []).append(p)
    assert by_name["status"][0]["valueCode"] == "green"
    ors_points = [{q["name"]: q for q in p["part"]} for p in by_name["ors"]]
    assert [pt["total"]["valueDecimal"] for pt in ors_points] == [Decimal(t) for t in ORS]
    assert ors_points[0]["clinicalRange"]["valueCode"] == "clinical"
    assert ors_points[-1]["clinicalRange"]["valueCode"] == "non-clinical"
    assert ors_points[-1]["reliableChange"]["valueCode"] == "reliable-improvement"
    assert ors_points[-1]["clinicallySignificant"]["valueBoolean"] is True
    band = {q["name"]: q["valueDecimal"] for q in by_name["reliableChangeBand"][0]["part"]}
    assert band == {"intake": Decimal("18"), "low": Decimal("13"), "high": Decimal("23")}
    srs_alerts = [
        any(q["name"] == "alert" and q["valueBoolean"] for q in p["part"]) for p in by_name["srs"]
    ]
    assert srs_alerts == [n == 6 for n in range(1, 13)]
    goals = {next(q for q in p["part"] if q["name"] == "goal")["valueReference"]["reference"]: p
             for p in by_name["goal"]}  # fmt: skip
    g3 = {q["name"]: q for q in goals["Goal/g3"]["part"] if q["name"] != "rating"}
    assert g3["achievementStatus"]["valueCoding"]["code"] == "achieved"
    assert g3["statusSetBy"]["valueCode"] == "server"
    raw = [next(q for q in r["part"] if q["name"] == "level")["valueDecimal"]
           for r in goals["Goal/g3"]["part"] if r["name"] == "rating"]  # fmt: skip
    assert raw == [Decimal(x) for x in GAS["g3"]]  # raw levels, -0.5 included
    series = [{q["name"]: q for q in p["part"]} for p in by_name["tscore"]]
    assert len(series) == len(REVIEWS)
    assert series[-1]["tscore"]["valueDecimal"] == tscore(final)
    assert series[0]["tscore"]["valueDecimal"] == tscore({g: Decimal(v[0]) for g, v in GAS.items()})
    assert "alert" not in by_name  # nothing open at the end
