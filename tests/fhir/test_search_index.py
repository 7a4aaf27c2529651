"""Write-time search index entries (fhirgoal.fhir.search.index)."""

from __future__ import annotations

from fhirgoal.fhir.search.index import (
    compartment_members,
    composite_entries,
    local_reference,
    quantity_entries,
    reference_entries,
    string_entries,
    token_entries,
    uri_entries,
)
from fhirgoal.fhir.search.keys import number_key
from fhirgoal.fhir.search.paths import compile_relative

LOINC = "http://loinc.org"
UCUM = "http://unitsofmeasure.org"

# --- token_entries ------------------------------------------------------------------------------


def test_coding_gives_a_coarse_code_key_and_exact_system_keys() -> None:
    assert token_entries("code", [{"system": LOINC, "code": "1234-5", "display": "x"}]) == (
        {"code#1234-5"},
        {f"code|{LOINC}|1234-5", f"code@{LOINC}"},
    )


def test_coding_without_system_is_indexed_as_explicitly_no_system() -> None:
    assert token_entries("code", [{"code": "abc"}]) == ({"code#abc"}, {"code||abc"})


def test_codeable_concept_indexes_every_coding() -> None:
    concept = {
        "coding": [
            {"system": LOINC, "code": "1234-5"},
            {"system": "http://snomed.info/sct", "code": "987"},
        ],
        "text": "ignored",
    }
    assert token_entries("code", [concept]) == (
        {"code#1234-5", "code#987"},
        {
            f"code|{LOINC}|1234-5",
            f"code@{LOINC}",
            "code|http://snomed.info/sct|987",
            "code@http://snomed.info/sct",
        },
    )


def test_codeable_concept_with_only_text_gives_no_entries() -> None:
    assert token_entries("code", [{"text": "free text"}]) == (set(), set())


def test_identifier_uses_system_and_value() -> None:
    identifier = {"system": "urn:oid:1.2.3", "value": "MRN-1", "use": "official"}
    assert token_entries("identifier", [identifier]) == (
        {"identifier#MRN-1"},
        {"identifier|urn:oid:1.2.3|MRN-1", "identifier@urn:oid:1.2.3"},
    )


def test_identifier_without_value_gives_no_entries() -> None:
    assert token_entries("identifier", [{"system": "urn:oid:1.2.3"}]) == (set(), set())


def test_contact_point_matches_on_value_only_not_on_its_kind() -> None:
    coarse, exact = token_entries("telecom", [{"system": "phone", "value": "555-1", "use": "home"}])
    assert (coarse, exact) == ({"telecom#555-1"}, {"telecom||555-1"})


def test_code_string_is_a_token_without_system() -> None:
    assert token_entries("status", ["final"]) == ({"status#final"}, {"status||final"})


def test_booleans_are_indexed_as_true_and_false_text() -> None:
    assert token_entries("active", [True]) == ({"active#true"}, {"active||true"})
    assert token_entries("active", [False]) == ({"active#false"}, {"active||false"})


def test_non_token_values_are_ignored() -> None:
    assert token_entries("x", [42, None, {"value": 5}, {"code": 7}]) == (set(), set())


def test_token_entries_merge_values_of_several_elements() -> None:
    assert token_entries("status", ["final", "amended", "final"]) == (
        {"status#final", "status#amended"},
        {"status||final", "status||amended"},
    )


def test_every_exact_token_key_implies_its_coarse_key() -> None:
    values = [{"coding": [{"system": LOINC, "code": "1"}, {"code": "2"}]}, "3", True]
    coarse, exact = token_entries("code", values)
    for key in exact:
        code = key.rsplit("|", 1)[1] if "|" in key else None
        assert code is None or f"code#{code}" in coarse  # system-only keys imply no code


def test_string_entries_index_the_folded_text_and_keep_the_exact_text_apart() -> None:
    assert string_entries("name", [{"family": "Müller", "given": ["Éric"]}]) == (
        {"name|muller", "name|eric"},
        {"name=Müller", "name=Éric"},
    )


def test_quantity_entries_index_the_number_and_keep_the_units_apart() -> None:
    quantity = {"value": 72.5, "unit": "kg", "system": "http://unitsofmeasure.org", "code": "kg"}
    number = "#" + number_key(72.5)
    assert quantity_entries("value-quantity", [quantity, {"unit": "kg"}]) == (
        {f"value-quantity|{number}"},
        {f"value-quantity|http://unitsofmeasure.org|kg|{number}", f"value-quantity||kg|{number}"},
    )


def test_composite_entries_pair_values_of_one_node_with_one_coarse_pair() -> None:
    component = {
        "code": {"coding": [{"system": LOINC, "code": "8480-6"}]},
        "valueQuantity": {"value": 120, "unit": "mmHg", "system": UCUM, "code": "mm[Hg]"},
    }
    first = compile_relative("code", "Observation")
    second = compile_relative("value.as(Quantity)", "Observation")
    tok, num = composite_entries("pair", [component], (("token", first), ("quantity", second)))
    n = "#" + number_key(120)
    assert tok == (set(), set())
    assert num.coarse == {f"pair|#8480-6${n}"}
    assert num.exact == {
        f"pair|#8480-6${n}", f"pair|#8480-6${UCUM}|mm[Hg]|{n}", f"pair|#8480-6$|mm[Hg]|{n}", f"pair|#8480-6$|mmHg|{n}",
        f"pair||{LOINC}|8480-6${n}", f"pair||{LOINC}|8480-6${UCUM}|mm[Hg]|{n}",
        f"pair||{LOINC}|8480-6$|mm[Hg]|{n}", f"pair||{LOINC}|8480-6$|mmHg|{n}",
    }  # fmt: skip


def test_uri_entries_keep_strings_only() -> None:
    assert uri_entries("url", ["http://example.org/vs", 3]) == {"url#http://example.org/vs"}


# --- reference_entries --------------------------------------------------------------------------


def test_relative_reference() -> None:
    assert reference_entries("subject", [{"reference": "Patient/1"}]) == {"subject=Patient/1"}


def test_versioned_reference_drops_the_history_part() -> None:
    assert reference_entries("subject", [{"reference": "Patient/1/_history/2"}]) == {
        "subject=Patient/1"
    }


def test_absolute_url_is_kept_as_written() -> None:
    url = "http://other.org/fhir/Patient/1/_history/2"
    assert reference_entries("subject", [{"reference": url}]) == {f"subject={url}"}


def test_contained_reference_is_kept_as_written() -> None:
    assert reference_entries("medication", [{"reference": "#med1"}]) == {"medication=#med1"}


def test_urn_reference_is_kept_as_written() -> None:
    urn = "urn:uuid:61ebe359-bfdc-4613-8bf2-c5e300945f0a"
    assert reference_entries("subject", [{"reference": urn}]) == {f"subject={urn}"}


def test_canonical_string_is_kept_as_written() -> None:
    canonical = "http://example.org/Questionnaire/phq-9|1.0"
    assert reference_entries("questionnaire", [canonical]) == {f"questionnaire={canonical}"}


def test_reference_without_reference_text_is_skipped() -> None:
    values = [{"display": "Dr X"}, {"identifier": {"value": "1"}}, {"reference": 5}]
    assert reference_entries("performer", values) == set()


def test_several_references_are_all_indexed() -> None:
    values = [{"reference": "Practitioner/a"}, {"reference": "Organization/b/_history/1"}]
    assert reference_entries("performer", values) == {
        "performer=Practitioner/a",
        "performer=Organization/b",
    }


def test_local_reference_only_for_type_slash_id() -> None:
    assert local_reference("Goal/g1/_history/7") == "Goal/g1"
    assert local_reference("goal/g1") is None
    assert local_reference("g1") is None
    assert local_reference("#x") is None
    assert local_reference("urn:uuid:1") is None
    assert local_reference("http://x.org/fhir/Goal/g1") is None


# --- compartment_members ------------------------------------------------------------------------


def test_compartment_members_come_from_the_compartment_params_only() -> None:
    refs = {
        "subject=Patient/1",
        "performer=Patient/2",
        "performer=Practitioner/3",
        "author=Patient/4",  # not a compartment param here
    }
    assert compartment_members(refs, ["subject", "performer"]) == ["Patient/1", "Patient/2"]


def test_compartment_members_ignore_non_patient_targets() -> None:
    refs = {"subject=Group/g1", "subject=#contained", "subject=urn:uuid:1"}
    assert compartment_members(refs, ["subject"]) == []


def test_compartment_members_are_sorted_and_unique() -> None:
    refs = {"subject=Patient/b", "patient=Patient/b", "patient=Patient/a"}
    assert compartment_members(refs, ["subject", "patient"]) == ["Patient/a", "Patient/b"]


def test_compartment_param_must_match_the_whole_code() -> None:
    refs = {"participant=Patient/1", "subject-x=Patient/2"}
    assert compartment_members(refs, ["part", "subject"]) == []


def test_compartment_members_from_indexed_reference_entries() -> None:
    refs = reference_entries("subject", [{"reference": "Patient/7/_history/3"}])
    refs |= reference_entries("performer", [{"reference": "Practitioner/1"}])
    assert compartment_members(refs, ["subject", "performer"]) == ["Patient/7"]
