"""Mappings as data (fhirgoal/exchange/mapping.py): the shipped mappings' example pairs, the errors a
mapping or a rule gives, decimals and determinism, and the round trip through the EHR dialect."""

from __future__ import annotations

import copy
import json
import shutil
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from fhirgoal.config import BUILTIN_MAPPINGS_DIR
from fhirgoal.core import jsonio
from fhirgoal.exchange.mapping import Mapping, MappingError, resolve_directory
from fhirgoal.exchange.mapping_examples import examples_of, first_difference, run_examples

REPO = Path(__file__).resolve().parents[2]
SHIPPED = ["us-core", "pco", "example-ehr"]
# Every shipped mapping maps these both ways (issue 15).
TYPES = {"Patient", "Encounter", "Condition", "CarePlan", "Goal", "Observation", "Flag"}
EHR = BUILTIN_MAPPINGS_DIR / "example-ehr"
GAS = "http://hl7.org/fhir/us/pco/StructureDefinition/pco-goal-attainment-scaling"


def read(path: Path) -> Any:
    return jsonio.loads(path.read_bytes())


@pytest.fixture(scope="module")
def ehr() -> Mapping:
    return Mapping.load(EHR)


# ---- the shipped mappings -------------------------------------------------------------------


def test_the_repository_root_mappings_folder_is_the_packaged_one() -> None:
    assert (REPO / "mappings").resolve() == BUILTIN_MAPPINGS_DIR.resolve()
    assert sorted(p.name for p in BUILTIN_MAPPINGS_DIR.iterdir() if p.is_dir()) == sorted(SHIPPED)
    assert resolve_directory("example-ehr") == EHR


@pytest.mark.parametrize("name", SHIPPED)
def test_every_example_pair_of_a_shipped_mapping_passes(name: str) -> None:
    mapping = Mapping.load(BUILTIN_MAPPINGS_DIR / name)
    results = run_examples(mapping)
    failures = [(r.example.name, r.difference) for r in results if not r.passed]
    assert failures == []
    # both directions, with error cases among them
    assert {r.example.direction for r in results} == {"inbound", "outbound"}
    assert any(r.example.expected_error for r in results)


@pytest.mark.parametrize("name", SHIPPED)
def test_a_shipped_mapping_has_rules_both_ways_for_every_clinical_type(name: str) -> None:
    mapping = Mapping.load(BUILTIN_MAPPINGS_DIR / name)
    for direction in ("inbound", "outbound"):
        assert {r.resource_type for r in mapping.rules_of(direction)} >= TYPES  # type: ignore[arg-type]


@pytest.mark.parametrize("name", SHIPPED)
def test_every_rule_with_a_transform_is_exercised_by_an_example(name: str) -> None:
    mapping = Mapping.load(BUILTIN_MAPPINGS_DIR / name)
    used = set()
    for example in examples_of(mapping.directory):
        try:
            rule = mapping.rule_for(example.direction, example.input)
        except MappingError:
            continue
        if rule is not None:
            used.add(rule.id)
    assert {r.id for r in mapping.rules} - used == set()


# ---- values ---------------------------------------------------------------------------------


def test_decimals_keep_their_digits_through_a_rule(ehr: Mapping) -> None:
    ors = read(EHR / "examples" / "outbound" / "ors-total.input.json")
    ors["valueQuantity"]["value"] = Decimal("17.50")
    (sent,) = ehr.outbound(ors)
    assert str(sent["valueQuantity"]["value"]) == "17.50"
    phq9 = read(EHR / "examples" / "inbound" / "phq9-total.input.json")
    phq9["valueQuantity"]["value"] = Decimal("14.0")
    (back,) = ehr.inbound(phq9)
    assert jsonio.dumps(back["valueQuantity"]["value"]) == b"14.0"


def test_a_mapping_is_deterministic_and_leaves_its_input_alone(ehr: Mapping) -> None:
    goal = read(EHR / "examples" / "outbound" / "goal-gas.input.json")
    before = copy.deepcopy(goal)
    assert jsonio.dumps(ehr.outbound(goal)) == jsonio.dumps(ehr.outbound(goal))
    assert goal == before


def test_first_difference_compares_json_text() -> None:
    assert first_difference({"v": Decimal("72.50")}, {"v": Decimal("72.5")}) == (
        "$.v: expected 72.50, got 72.5"
    )
    assert first_difference([{"a": [1, 2]}], [{"a": [1, 3]}]) == "$[0].a[1]: expected 2, got 3"
    assert first_difference({"a": 1}, {"a": 1, "b": 2}) == "$.b: expected nothing, got 2"
    assert first_difference({"a": True}, {"a": 1}) is not None
    assert first_difference({"a": 1, "b": "x"}, {"b": "x", "a": 1}) is None


# ---- round trip through the EHR dialect -----------------------------------------------------


def without_meta(resource: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in resource.items() if key != "meta"}


def outbound_inputs() -> list[Path]:
    return sorted((EHR / "examples" / "outbound").glob("*.input.json"))


@pytest.mark.parametrize("path", outbound_inputs(), ids=lambda p: p.name.split(".")[0])
def test_round_trip_fhirgoal_to_the_ehr_and_back_keeps_what_the_dialect_can_carry(
    ehr: Mapping, path: Path
) -> None:
    original = read(path)
    try:
        sent = ehr.outbound(original)
    except MappingError:
        return  # the error examples: nothing was sent
    if not sent:
        return  # not sent to the EHR at all
    (in_ehr,) = sent
    taken_back = ehr.inbound(in_ehr)
    if not taken_back:
        # deliberately not taken back (ORS/SRS rows: fhirgoal owns them, with their items)
        rule = ehr.rule_for("inbound", in_ehr)
        assert rule is not None and rule.skip_reason
        assert original["code"]["coding"][0]["code"] in ("ors-total", "srs-total")
        return
    (came_back,) = taken_back
    restored = ehr.restore(came_back, original)
    if path.name.startswith("gas-rating-partial"):
        # lossy, as mapping.json says: a -0.5 rating comes back as its LL6900-6 answer (-1)
        assert restored["valueCodeableConcept"]["coding"] == [
            original["valueCodeableConcept"]["coding"][0]
        ]
        return
    assert first_difference(without_meta(original), restored) is None


def test_what_the_dialect_cannot_carry_comes_back_only_from_fhirgoals_copy(ehr: Mapping) -> None:
    goal = read(EHR / "examples" / "outbound" / "goal-gas.input.json")
    (in_ehr,) = ehr.outbound(goal)
    assert not [e for e in in_ehr.get("extension", []) if e["url"] == GAS]
    assert "GAS levels: -2: Not working" in in_ehr["note"][0]["text"]  # for the clinician there
    (came_back,) = ehr.inbound(in_ehr)
    # the EHR's copy alone: a free-text goal, the GAS note not parsed back into levels
    assert "extension" not in came_back and "note" not in came_back
    assert came_back["target"] == [{"dueDate": goal["target"][0]["dueDate"]}]
    restored = ehr.restore(came_back, goal)
    assert [e for e in restored["extension"] if e["url"] == GAS] == [
        e for e in goal["extension"] if e["url"] == GAS
    ]
    # an EHR edit of the text is kept; the GAS scale stays fhirgoal's
    came_back["description"] = {"text": "Return to work four days a week"}
    edited = ehr.restore(came_back, goal)
    assert edited["description"]["text"] == "Return to work four days a week"
    assert edited["target"] == goal["target"]
    assert ehr.restore(came_back, None) is came_back  # a goal made in the EHR: nothing to restore


def test_restore_keeps_the_ehrs_own_extensions_after_fhirgoals(ehr: Mapping) -> None:
    goal = read(EHR / "examples" / "outbound" / "goal-gas.input.json")
    incoming = {**without_meta(goal), "extension": [{"url": "urn:ehr:x", "valueString": "y"}]}
    restored = ehr.restore(incoming, goal)
    assert restored["extension"][-1] == {"url": "urn:ehr:x", "valueString": "y"}
    assert restored["extension"][:-1] == goal["extension"]


# ---- errors: a rule that cannot apply -------------------------------------------------------


def test_a_code_without_translation_names_the_rule_and_the_element(ehr: Mapping) -> None:
    encounter = read(EHR / "examples" / "outbound" / "encounter.input.json")
    encounter["type"][0]["coding"][0]["code"] = "99999"
    with pytest.raises(MappingError) as caught:
        ehr.outbound(encounter)
    assert (caught.value.rule, caught.value.element) == ("encounter-out", "Encounter.type")
    assert "cpt|99999" in caught.value.message


def test_a_missing_required_element_names_the_fhirpath(ehr: Mapping) -> None:
    with pytest.raises(MappingError) as caught:
        ehr.inbound({"resourceType": "Goal", "description": {"text": "x"}})
    assert (caught.value.rule, caught.value.element) == ("goal-in", "Goal.subject")


def test_a_fail_in_a_rule_names_its_element(ehr: Mapping) -> None:
    encounter = read(EHR / "examples" / "outbound" / "encounter.input.json")
    encounter["length"] = {
        "value": 1,
        "unit": "h",
        "system": "http://unitsofmeasure.org",
        "code": "h",
    }
    with pytest.raises(MappingError) as caught:
        ehr.outbound(encounter)
    assert (caught.value.rule, caught.value.element) == ("encounter-out", "Encounter.length")


def test_not_a_resource_is_an_error_not_a_crash(ehr: Mapping) -> None:
    with pytest.raises(MappingError, match="resourceType"):
        ehr.outbound({"id": "x"})
    with pytest.raises(MappingError, match="resourceType"):
        ehr.outbound([])  # type: ignore[arg-type]


# ---- errors: a mapping folder that cannot be loaded -----------------------------------------


def folder(tmp_path: Path, rules: list[dict[str, Any]], **manifest: Any) -> Path:
    (tmp_path / "rules").mkdir(exist_ok=True)
    body = {"name": "t", "rules": rules, **manifest}
    (tmp_path / "mapping.json").write_text(json.dumps(body))
    return tmp_path


def rule(rule_id: str = "r", transform: str = "rules/r.jsonata", **more: Any) -> dict[str, Any]:
    base = {"id": rule_id, "direction": "outbound", "resourceType": "Goal", "transform": transform}
    return base | more


def write_rule(directory: Path, text: str, name: str = "r") -> None:
    (directory / "rules").mkdir(exist_ok=True)
    (directory / "rules" / f"{name}.jsonata").write_text(text)


def load_error(directory: Path) -> MappingError:
    with pytest.raises(MappingError) as caught:
        Mapping.load(directory)
    return caught.value


def test_load_errors_name_the_file_and_the_element(tmp_path: Path) -> None:
    assert load_error(tmp_path / "nowhere").message == "no such mapping folder"
    (tmp_path / "mapping.json").write_text("{ not json")
    assert load_error(tmp_path).rule == "mapping.json"
    d = folder(tmp_path, [rule()], colour="blue")
    assert load_error(d).element == "colour"
    write_rule(d, "$")
    d = folder(tmp_path, [rule(resourceType="Gaol")])
    assert (load_error(d).rule, load_error(d).element) == ("r", "resourceType")
    d = folder(tmp_path, [rule(transform="rules/missing.jsonata")])
    assert "no file rules/missing.jsonata" in load_error(d).message
    d = folder(tmp_path, [rule(transform="../outside.jsonata")])
    assert "inside the folder" in load_error(d).message
    d = folder(tmp_path, [rule(when="Goal.where(")])
    assert load_error(d).element == "Goal.where(" and "FHIRPath" in load_error(d).message
    d = folder(tmp_path, [rule(skip="why")])
    assert "either a transform or a skip" in load_error(d).message
    d = folder(tmp_path, [rule(), rule("r2")])
    assert (load_error(d).rule, load_error(d).element) == ("r2", "when")  # never reached
    d = folder(tmp_path, [rule(), rule("r")])
    assert "two rules" in load_error(d).message
    d = folder(tmp_path, [rule()], unmappedTypes="drop")
    assert load_error(d).element == "unmappedTypes"


def test_a_jsonata_syntax_error_is_located(tmp_path: Path) -> None:
    d = folder(tmp_path, [rule()])
    write_rule(d, '{"resourceType": "Goal", "x": }')
    error = load_error(d)
    assert error.rule == "r" and error.element.startswith("rules/r.jsonata at character")
    assert "not valid JSONata" in error.message


def test_a_rule_may_not_read_the_clock_or_dice(tmp_path: Path) -> None:
    d = folder(tmp_path, [rule()])
    write_rule(d, '{"resourceType": "Goal", "date": $now()}')
    assert "not deterministic" in load_error(d).message
    write_rule(d, '($f := $random; {"resourceType": "Goal", "n": $f()})')
    assert "$random" in load_error(d).message


def test_a_concept_map_that_cannot_be_reversed_is_refused(tmp_path: Path) -> None:
    d = folder(tmp_path, [rule()])
    write_rule(d, "$")
    (d / "conceptmaps").mkdir()
    two_to_one = {
        "resourceType": "ConceptMap",
        "id": "m",
        "group": [
            {
                "source": "urn:a",
                "target": "urn:b",
                "element": [
                    {"code": "1", "target": [{"code": "X", "equivalence": "equivalent"}]},
                    {"code": "2", "target": [{"code": "X", "equivalence": "equivalent"}]},
                ],
            }
        ],
    }
    (d / "conceptmaps" / "m.json").write_text(json.dumps(two_to_one))
    error = load_error(d)
    assert error.rule == "conceptmaps/m.json" and "not reversible" in error.message
    two_to_one["group"][0]["unmapped"] = {"mode": "provided"}  # type: ignore[index]
    (d / "conceptmaps" / "m.json").write_text(json.dumps(two_to_one))
    assert load_error(d).element == "ConceptMap.group[0].unmapped"


# ---- errors: at run time --------------------------------------------------------------------


def test_an_engine_error_names_the_rule_and_the_position(tmp_path: Path) -> None:
    d = folder(tmp_path, [rule()])
    write_rule(d, '{"resourceType": "Goal", "n": $substring(description, 1)}')
    mapping = Mapping.load(d)
    with pytest.raises(MappingError) as caught:
        mapping.outbound({"resourceType": "Goal", "description": {"text": "x"}})
    assert caught.value.rule == "r"
    assert caught.value.element.startswith("rules/r.jsonata at character")


def test_a_rule_whose_value_is_not_a_resource_is_an_error(tmp_path: Path) -> None:
    d = folder(tmp_path, [rule()])
    write_rule(d, '"just text"')
    with pytest.raises(MappingError, match="not a FHIR resource"):
        Mapping.load(d).outbound({"resourceType": "Goal"})


def test_one_resource_may_become_several_and_empty_parts_are_dropped(tmp_path: Path) -> None:
    d = folder(tmp_path, [rule()])
    write_rule(
        d,
        '[{"resourceType": "Goal", "id": id & "-a", "note": [note], "target": {"x": missing}},'
        ' {"resourceType": "Basic", "id": id & "-b", "extension": []}]',
    )
    produced = Mapping.load(d).outbound({"resourceType": "Goal", "id": "g"})
    assert produced == [
        {"resourceType": "Goal", "id": "g-a"},
        {"resourceType": "Basic", "id": "g-b"},
    ]


def test_unmapped_types_are_skipped_or_refused_as_configured(tmp_path: Path) -> None:
    d = folder(tmp_path, [rule()])
    write_rule(d, "$")
    assert Mapping.load(d).outbound({"resourceType": "Provenance"}) == []
    assert Mapping.load(d).inbound({"resourceType": "Goal"}) == []  # no inbound rules at all
    d = folder(tmp_path, [rule()], unmappedTypes="error")
    with pytest.raises(MappingError) as caught:
        Mapping.load(d).outbound({"resourceType": "Provenance"})
    assert caught.value.element == "Provenance"


def test_a_resource_no_rule_of_its_type_takes_is_an_error(ehr: Mapping, tmp_path: Path) -> None:
    d = folder(tmp_path, [rule(when="Goal.lifecycleStatus = 'active'")])
    write_rule(d, "$")
    with pytest.raises(MappingError, match="no outbound rule applies") as caught:
        Mapping.load(d).outbound({"resourceType": "Goal", "lifecycleStatus": "proposed"})
    assert caught.value.element == "Goal"


def test_example_folders_must_pair_inputs_with_one_expectation(tmp_path: Path) -> None:
    d = tmp_path / "m"
    shutil.copytree(EHR, d)
    (d / "examples" / "outbound" / "goal-gas.error.json").write_text("{}")
    with pytest.raises(MappingError, match="exactly one"):
        examples_of(d)
    (d / "examples" / "outbound" / "goal-gas.error.json").unlink()
    (d / "examples" / "outbound" / "lonely.output.json").write_text("[]")
    with pytest.raises(MappingError, match="no input"):
        examples_of(d)
