"""The medical-necessity document of each demo client, section by section, against the server's
own `$progress` (the figures must be the same ones), and every figure traceable to an entry."""

from __future__ import annotations

import html
import re
from typing import Any

import pytest

from fhirgoal.demo import CLIENTS
from tests.conftest import RunningServer
from tests.evidence.conftest import (
    OPERATION,
    PERIOD,
    composition_of,
    entries_by_url,
    outputs,
    sections_by_title,
)

SECTIONS = [
    ("Diagnoses", "11450-4"),
    ("Treatment plan", "18776-5"),
    ("Goal attainment (GAS)", "61146-7"),
    ("Outcome measures", "11383-7"),
    ("Sessions attended", "46240-8"),
    ("Open alerts", "75310-3"),
    ("Attestation", None),
]


def rows(section: dict[str, Any], table: int = 0) -> list[list[str]]:
    """The body rows of the section narrative's n-th table, as text."""
    tables = re.findall(r"<table>(.*?)</table>", section["text"]["div"])
    body = re.findall(r"<tbody>(.*?)</tbody>", tables[table])
    if not body:
        return []
    return [
        [html.unescape(cell) for cell in re.findall(r"<td>(.*?)</td>", row)]
        for row in re.findall(r"<tr>(.*?)</tr>", body[0])
    ]


def parts(parameter: dict[str, Any]) -> dict[str, Any]:
    return {
        p["name"]: next(v for k, v in p.items() if k.startswith("value")) for p in parameter["part"]
    }


def resolve(base: str, reference: str) -> str:
    return reference if reference.startswith("urn:") else f"{base}/{reference}"


@pytest.mark.parametrize("client", [c["id"] for c in CLIENTS])
async def test_each_demo_client_gets_a_document_whose_sections_match_progress(
    demo: RunningServer, client: str
) -> None:
    response = await demo.client.get(
        f"/Patient/{client}/{OPERATION}", params={**PERIOD, "format": "document"}
    )
    found = outputs(response)
    assert set(found) == {"document", "documentReference"}
    bundle = found["document"]
    assert bundle["type"] == "document" and bundle["identifier"]["system"]
    composition = composition_of(bundle)
    assert composition["resourceType"] == "Composition" and composition["status"] == "final"
    assert composition["subject"]["reference"] == f"Patient/{client}"
    assert composition["event"][0]["period"] == PERIOD
    assert bundle["timestamp"] == composition["date"] == bundle["signature"]["when"]
    top = [
        (s["title"], (s.get("code") or {}).get("coding", [{}])[0].get("code"))
        for s in composition["section"]
    ]
    assert top == SECTIONS
    sections = sections_by_title(bundle)

    # every reference in the Composition resolves inside the Bundle, and nothing is left unused
    urls = entries_by_url(bundle)
    referenced = {resolve(demo.base, composition["subject"]["reference"])}
    referenced |= {resolve(demo.base, a["reference"]) for a in composition["author"]}
    for section in sections.values():
        for entry in section.get("entry", []):
            assert resolve(demo.base, entry["reference"]) in urls, entry
            referenced.add(resolve(demo.base, entry["reference"]))
    assert set(urls) - {bundle["entry"][0]["fullUrl"]} == referenced

    assert [e["reference"] for e in sections["Diagnoses"]["entry"]] == [f"Condition/{client}-dx"]
    plan = [e["reference"] for e in sections["Treatment plan"]["entry"]]
    assert plan[0] == f"CarePlan/{client}-plan" and all(r.startswith("Goal/") for r in plan[1:])
    sessions = sections["Sessions attended"]
    assert len(sessions["entry"]) == 12 and "12 sessions attended" in sessions["text"]["div"]
    assert composition["attester"][0]["party"]["reference"] == "Practitioner/demo-therapist"
    assert "NPI 1234567893" in sections["Attestation"]["text"]["div"]

    progress = (
        await demo.client.get(f"/Patient/{client}/$progress", params={"date": PERIOD["end"]})
    ).json()["parameter"]

    # ORS: the same sessions, totals, cutoffs, reliable change and colours as $progress
    ors = [parts(p) for p in progress if p["name"] == "ors"]
    assert rows(sections["Outcome Rating Scale (ORS)"]) == [
        [
            str(p["session"]), p["date"][:10], str(p["total"]), str(p["cutoff"]),
            p["clinicalRange"], rows_change(p["changeFromIntake"]),
            p.get("reliableChange", "intake"), p["status"], p["observation"]["reference"],
        ]
        for p in ors
    ]  # fmt: skip
    # SRS: the same totals and alerts
    srs = [parts(p) for p in progress if p["name"] == "srs"]
    srs_rows = rows(sections["Session Rating Scale (SRS)"])
    assert [(r[0], r[2], r[4] != "no") for r in srs_rows] == [
        (str(p["session"]), str(p["total"]), p["alert"]) for p in srs
    ]
    # GAS T-score: the same series as $progress, each point an Observation derived from ratings
    tscores = [(parts(p)["date"], parts(p)["tscore"]) for p in progress if p["name"] == "tscore"]
    points = [urls[resolve(demo.base, e["reference"])] for e in sections["GAS T-score"]["entry"]]
    assert [(o["effectiveDateTime"], o["valueQuantity"]["value"]) for o in points] == tscores
    for observation in points:
        assert observation["derivedFrom"]
        for source in observation["derivedFrom"]:
            rating = urls[resolve(demo.base, source["reference"])]
            assert rating["focus"][0]["reference"] in plan
    # each goal's baseline and latest rating, as $progress lists them
    for goal in (p for p in progress if p["name"] == "goal"):
        display = goal["part"][0]["valueReference"]["display"]
        ratings = [parts(r) for r in goal["part"] if r["name"] == "rating"]
        row = next(r for r in rows(sections["Goal attainment (GAS)"]) if r[0] == display)
        baseline = next(r for r in ratings if r["kind"] == "baseline")
        assert f"({baseline['date'][:10]}, practitioner)" in row[2]
        assert f"({ratings[-1]['date'][:10]}, {ratings[-1]['rater']})" in row[3]
    # open alerts are Flags open at the period's end
    for entry in sections["Open alerts"].get("entry", []):
        flag = urls[resolve(demo.base, entry["reference"])]
        assert flag["period"]["start"][:10] <= PERIOD["end"]
        assert flag["status"] == "active" or flag["period"]["end"][:10] > PERIOD["end"]


def rows_change(value: Any) -> str:
    text = str(value)
    return f"+{text}" if not text.startswith("-") and text not in ("0", "0.0") else text


async def test_comparators_appear_when_recorded(demo: RunningServer) -> None:
    alex = outputs(await demo.client.get(f"/Patient/demo-alex/{OPERATION}", params={**PERIOD}))[
        "document"
    ]
    phq9 = sections_by_title(alex)["PHQ-9"]
    assert [r[1] for r in rows(phq9)] == ["13", "8", "4"]
    assert "PHQ-9 total 13 on 2026-08-03, 4 on 2026-10-19 (-9)." in phq9["text"]["div"]
    blair = outputs(await demo.client.get(f"/Patient/demo-blair/{OPERATION}", params={**PERIOD}))[
        "document"
    ]
    assert "PHQ-9" not in sections_by_title(blair)


async def test_a_shorter_period_keeps_the_intake_it_measures_change_from(
    demo: RunningServer,
) -> None:
    bundle = outputs(
        await demo.client.get(
            f"/Patient/demo-alex/{OPERATION}",
            params={"start": "2026-10-01", "end": "2026-10-31", "format": "document"},
        )
    )["document"]
    sections = sections_by_title(bundle)
    ors = rows(sections["Outcome Rating Scale (ORS)"])
    assert [r[0] for r in ors] == ["1", "10", "11", "12"]  # the intake, then the period's
    assert len(sections["Sessions attended"]["entry"]) == 3
