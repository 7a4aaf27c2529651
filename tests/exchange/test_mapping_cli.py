"""`fhirgoal mapping test|apply|list` (fhirgoal/cli_mapping.py), through the real `fhirgoal` app."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from fhirgoal.cli import app
from fhirgoal.config import BUILTIN_MAPPINGS_DIR

EHR = BUILTIN_MAPPINGS_DIR / "example-ehr"
runner = CliRunner()


def test_mapping_test_runs_every_pair_of_a_shipped_mapping() -> None:
    result = runner.invoke(app, ["mapping", "test", "example-ehr"])
    assert result.exit_code == 0, result.output
    pairs = len(list(EHR.glob("examples/*/*.input.json")))
    assert result.output.count("pass ") == pairs
    assert f"example-ehr: {pairs} passed, 0 failed" in result.output


def test_mapping_test_reports_the_first_difference_and_exits_1(tmp_path: Path) -> None:
    copy = tmp_path / "ehr"
    shutil.copytree(EHR, copy)
    expected = copy / "examples" / "outbound" / "ors-total.output.json"
    body = json.loads(expected.read_text())
    body[0]["code"]["coding"][0]["code"] = "ORS"  # the mapping gives ORS-TOTAL
    expected.write_text(json.dumps(body))
    result = runner.invoke(app, ["mapping", "test", str(copy)])
    assert result.exit_code == 1
    assert 'FAIL outbound/ors-total: $[0].code.coding[0].code: expected "ORS", got' in result.output
    assert "pass outbound/srs-total" in result.output
    assert "1 failed" in result.output


def test_mapping_test_of_a_broken_folder_exits_2(tmp_path: Path) -> None:
    (tmp_path / "mapping.json").write_text('{"name": "x", "rules": []}')
    result = runner.invoke(app, ["mapping", "test", str(tmp_path)])
    assert result.exit_code == 2
    assert "at least one rule" in result.output


def test_mapping_apply_prints_the_mapped_resources() -> None:
    source = EHR / "examples" / "inbound" / "encounter.input.json"
    result = runner.invoke(
        app, ["mapping", "apply", str(EHR), "--direction", "inbound", str(source)]
    )
    assert result.exit_code == 0, result.output
    produced = json.loads(result.stdout)
    assert produced == json.loads(
        (EHR / "examples" / "inbound" / "encounter.output.json").read_text()
    )
    assert '\n  {\n    "resourceType": "Encounter"' in result.stdout  # indented for people


def test_mapping_apply_keeps_decimal_text(tmp_path: Path) -> None:
    ors = (EHR / "examples" / "outbound" / "ors-total.input.json").read_text()
    source = tmp_path / "ors.json"
    source.write_text(ors.replace('"value": 17.9,', '"value": 17.90,', 1))
    result = runner.invoke(app, ["mapping", "apply", "example-ehr", "-d", "outbound", str(source)])
    assert result.exit_code == 0, result.output
    assert '"value": 17.90,' in result.stdout


def test_mapping_apply_names_the_rule_and_element_of_an_error() -> None:
    source = EHR / "examples" / "inbound" / "gas-rating-without-goal.input.json"
    result = runner.invoke(app, ["mapping", "apply", "example-ehr", "-d", "inbound", str(source)])
    assert result.exit_code == 1
    assert "rule gas-rating-in at Observation.focus: required element is missing" in result.output
    bad = runner.invoke(app, ["mapping", "apply", "example-ehr", "-d", "sideways", str(source)])
    assert bad.exit_code == 2


def test_mapping_list_names_the_shipped_mappings() -> None:
    result = runner.invoke(app, ["mapping", "list"])
    assert result.exit_code == 0
    assert [line.split()[0] for line in result.output.splitlines()] == [
        "example-ehr", "pco", "us-core",
    ]  # fmt: skip
