"""Convert the example instances of the HL7 PCO IG (FSH) to FHIR R4 JSON test fixtures.

The Person-Centered Outcomes IG (http://hl7.org/fhir/us/pco, STU1) writes its examples in FHIR
Shorthand (https://build.fhir.org/ig/HL7/fhir-shorthand/). The IG's own compiler, SUSHI, needs
the IG's dependency packages (hl7.fhir.r4.core, hl7.fhir.us.core 6.1.0, ...), which the npm
registry does not carry, so this script implements the part of FSH those instances use, and only
that part, mechanically:

- `Alias:` lines; `CodeSystem:`, `Profile:` and `Extension:` names with their `Id:` (canonical
  `http://hl7.org/fhir/us/pco/{CodeSystem|StructureDefinition}/{id}`, as SUSHI derives them);
- `Instance:` blocks with `InstanceOf:`, and their assignment rules `* path = value`: paths with
  `[n]` indexes and slice names, `value` one of `#code`, `SYSTEM#code "display"`, `"string"`,
  numbers, `true`/`false`, `Reference(id) "display"`, `n SYSTEM#unit "display"` (a Quantity);
- element types and cardinalities from the R4 StructureDefinition snapshots (npm
  hl7.fhir.r4.examples@4.0.1): a repeating element without an index is its first repetition, a
  CodeableConcept gets `coding`, a Coding the code itself, a `code` just the code;
- `meta.profile` = the profile named by `InstanceOf` (SUSHI's default), `Reference(id)` resolved to
  `Type/id` of the instance with that id;
- what SUSHI implies from the IG's own profiles: an element the profile chain makes 1..1 and
  assigns a value (`* category[us-core] 1..1` + `* category[us-core] = OBSCAT#survey`) is added
  when the instance does not set it. Values implied by the US Core parent profiles (which are not
  available here) are not added; fixtures/pco/README.md lists them.

An element that the script cannot type, or a rule it does not understand, stops it with an error
(it never guesses). Output: one `{ResourceType}-{id}.json` per instance, keys in R4 element order.

Usage:
  python scripts/pco_fsh_examples.py --fsh PCO-IG/input/fsh --r4 R4-PACKAGE/package --out DIR
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

PCO = "http://hl7.org/fhir/us/pco"
US_CORE = "http://hl7.org/fhir/us/core/StructureDefinition/"
# The US Core 6.1.0 profiles the PCO examples and profiles name: url and base resource type.
US_CORE_PROFILES = {
    "USCorePatientProfile": (US_CORE + "us-core-patient", "Patient"),
    "USCorePractitionerProfile": (US_CORE + "us-core-practitioner", "Practitioner"),
    "USCoreGoalProfile": (US_CORE + "us-core-goal", "Goal"),
    "USCoreCarePlanProfile": (US_CORE + "us-core-careplan", "CarePlan"),
    "USCoreServiceRequestProfile": (US_CORE + "us-core-servicerequest", "ServiceRequest"),
    "USCoreSimpleObservationProfile": (US_CORE + "us-core-simple-observation", "Observation"),
    "USCoreObservationScreeningAssessmentProfile": (
        US_CORE + "us-core-observation-screening-assessment",
        "Observation",
    ),
}
_RULE = re.compile(r"^\*\s+(\S+)\s*=\s*(.+?)\s*$")
_CARD = re.compile(r"^\*\s+(\S+)\s+(\d+)\.\.(\d+|\*)\b")
_CODE = re.compile(r'^(\S*)#("[^"]+"|\S+)(?:\s+"([^"]*)")?$')
_QUANTITY = re.compile(r'^(-?\d+(?:\.\d+)?)\s+(\S+)#(\S+)(?:\s+"([^"]*)")?$')
_REFERENCE = re.compile(r'^Reference\(([^)]+)\)(?:\s+"([^"]*)")?$')
_STEP = re.compile(r"^([A-Za-z][A-Za-z0-9]*)((?:\[[^\]]+\])*)$")


@dataclass
class Definition:
    kind: str  # Profile | Extension | CodeSystem | Instance
    name: str
    id: str = ""
    parent: str = ""
    instance_of: str = ""
    url: str = ""
    rules: list[str] = field(default_factory=list)


def read_fsh(folder: Path) -> tuple[dict[str, str], dict[str, Definition]]:
    aliases: dict[str, str] = {}
    definitions: dict[str, Definition] = {}
    for path in sorted(folder.glob("*.fsh")):
        current: Definition | None = None
        in_comment = False
        for raw in path.read_text(encoding="utf-8").splitlines():
            line = raw.rstrip()
            if in_comment:
                in_comment = "*/" not in line
                continue
            if line.lstrip().startswith("/*"):
                in_comment = "*/" not in line
                continue
            line = re.sub(r"\s+//.*$", "", line) if not line.lstrip().startswith("*") else line
            if not line.strip() or line.lstrip().startswith("//"):
                continue
            head, _, rest = line.partition(":")
            if head == "Alias":
                name, _, url = rest.partition("=")
                aliases[name.strip()] = url.strip()
                continue
            if head in ("Profile", "Extension", "CodeSystem", "Instance", "ValueSet", "RuleSet",
                        "Logical", "Invariant", "Mapping"):  # fmt: skip
                current = Definition(head, rest.strip())
                definitions[f"{head}:{current.name}"] = current
                continue
            if current is None:
                continue
            if head in ("Id", "Parent", "InstanceOf") and not line.startswith("*"):
                setattr(current, {"Id": "id", "Parent": "parent", "InstanceOf": "instance_of"}[head],
                        rest.strip())  # fmt: skip
            elif line.startswith("* ") or line.startswith("*\t"):
                current.rules.append(line)
            elif raw[:1] in (" ", "\t") and not line.lstrip().startswith("*") and current.rules:
                current.rules[-1] += " " + line.strip()  # a rule continued on the next line
                if line.startswith("* ^url = "):
                    current.url = line.split("=", 1)[1].strip().strip('"')
    for d in definitions.values():
        if not d.url and d.kind in ("Profile", "Extension"):
            d.url = f"{PCO}/StructureDefinition/{d.id}"
        elif not d.url and d.kind == "CodeSystem":
            d.url = f"{PCO}/CodeSystem/{d.id}"
    return aliases, definitions


class Types:
    """Element types and cardinality from the R4 snapshots."""

    def __init__(self, package: Path) -> None:
        self.elements: dict[str, dict[str, dict[str, Any]]] = {}
        for path in package.glob("StructureDefinition-*.json"):
            sd = json.loads(path.read_text(encoding="utf-8"))
            if sd.get("derivation") != "specialization" or sd.get("kind") == "logical":
                continue
            self.elements[sd["type"]] = {
                e["path"]: e for e in sd.get("snapshot", {}).get("element", [])
            }

    def child(self, type_name: str, owner: str, name: str) -> tuple[str, str, bool, str]:
        """(JSON key, type, repeats, element path) of `name` under `owner` in `type_name`."""
        elements = self.elements[type_name]
        element = elements.get(f"{owner}.{name}")
        key = name
        if element is None:  # a choice: valueCodeableConcept -> value[x] of type CodeableConcept
            for path, candidate in elements.items():
                if path.startswith(f"{owner}.") and path.endswith("[x]"):
                    stem = path[len(owner) + 1 : -3]
                    if "." not in stem and name.startswith(stem):
                        suffix = name[len(stem) :]
                        codes = [t["code"] for t in candidate.get("type", [])]
                        match = [c for c in codes if c[0].upper() + c[1:] == suffix]
                        if match:
                            return name, match[0], candidate.get("max") != "1", path
            raise SystemExit(f"{type_name}: no element {owner}.{name}")
        if "contentReference" in element:
            target = element["contentReference"].lstrip("#")
            return key, "@" + target, element.get("max") != "1", target
        codes = [t["code"] for t in element.get("type", [])]
        if len(codes) != 1:
            raise SystemExit(f"{type_name}: {owner}.{name} is a choice; name its type")
        return key, codes[0], element.get("max") != "1", f"{owner}.{name}"


class Converter:
    def __init__(self, aliases: dict[str, str], definitions: dict[str, Definition], types: Types):
        self.aliases = aliases
        self.definitions = definitions
        self.types = types
        self.instances = {d.name: d for d in definitions.values() if d.kind == "Instance"}
        self.systems = dict(aliases)
        for d in definitions.values():
            if d.kind == "CodeSystem":
                self.systems[d.name] = d.url
        self.extensions = {d.name: d.url for d in definitions.values() if d.kind == "Extension"}

    # ---- profiles ----------------------------------------------------------------------------
    def profile_chain(self, name: str) -> tuple[str, str, list[Definition]]:
        """(profile url, resource type, the IG's own profiles from `name` up)."""
        chain: list[Definition] = []
        current = name
        while True:
            if current in US_CORE_PROFILES:
                url, rt = US_CORE_PROFILES[current]
                return (chain[0].url if chain else url), rt, chain
            profile = self.definitions.get(f"Profile:{current}")
            if profile is None:
                if current in self.types.elements:  # a base resource
                    return (chain[0].url if chain else ""), current, chain
                raise SystemExit(f"unknown profile {current}")
            chain.append(profile)
            current = profile.parent

    def slice_urls(self, chain: list[Definition]) -> dict[str, str]:
        """Extension slice name -> extension url (`* extension contains Ext named slice 0..5`)."""
        out: dict[str, str] = {}
        for profile in chain:
            text = "\n".join(profile.rules)
            for ext, slice_name in re.findall(r"(\w+)\s+named\s+([\w-]+)", text):
                if ext in self.extensions:
                    out[slice_name] = self.extensions[ext]
        return out

    def implied(self, chain: list[Definition]) -> list[tuple[str, str]]:
        """Rules the IG's profiles make required with an assigned value (SUSHI adds them)."""
        out = []
        for profile in reversed(chain):
            required = {m.group(1) for r in profile.rules if (m := _CARD.match(r))
                        and int(m.group(2)) >= 1}  # fmt: skip
            for rule in profile.rules:
                m = _RULE.match(rule)
                if m and m.group(1) in required and not m.group(1).startswith("^"):
                    out.append((m.group(1), m.group(2)))
        return out

    # ---- instances ---------------------------------------------------------------------------
    def convert(self, instance: Definition) -> dict[str, Any]:
        profile_url, rt, chain = self.profile_chain(instance.instance_of)
        resource: dict[str, Any] = {"resourceType": rt, "id": instance.name}
        if profile_url:
            resource["meta"] = {"profile": [profile_url]}
        slices = self.slice_urls(chain)
        rules = [m.groups() for r in instance.rules if (m := _RULE.match(r))]
        unread = [r for r in instance.rules if not _RULE.match(r)]
        if unread:
            raise SystemExit(f"{instance.name}: rules not understood: {unread}")
        set_paths = {path for path, _ in rules}
        for path, value in self.implied(chain):
            if path not in set_paths:
                rules.insert(0, (path, value))
        slice_index: dict[tuple[int, str], int] = {}
        for path, value in rules:
            self.assign(resource, rt, path, value, slices, slice_index)
        return self.ordered(resource, rt, rt)

    def assign(
        self,
        resource: dict[str, Any],
        rt: str,
        path: str,
        value: str,
        slices: dict[str, str],
        slice_index: dict[tuple[int, str], int],
    ) -> None:
        node: Any = resource
        type_name, owner = rt, rt
        steps = path.split(".")
        for n, step in enumerate(steps):
            m = _STEP.match(step)
            if not m:
                raise SystemExit(f"{resource['id']}: cannot read path step {step!r}")
            name, brackets = m.group(1), re.findall(r"\[([^\]]+)\]", m.group(2))
            key, element_type, repeats, element_path = self.types.child(type_name, owner, name)
            last = n == len(steps) - 1
            if repeats:
                items = node.setdefault(key, [])
                index = 0
                url = None
                for part in brackets:
                    if part.isdigit():
                        index = int(part)
                    elif name == "extension":
                        url = slices.get(part, part)  # a named slice or a sub-extension url
                        index = -1
                    else:  # a named slice of a repeating element: its own repetition
                        slot = (id(node), f"{key}[{part}]")
                        if slot not in slice_index:
                            slice_index[slot] = len(items)
                        index = slice_index[slot]
                if url is not None:
                    matching = [i for i, e in enumerate(items) if e.get("url") == url]
                    nth = int(brackets[-1]) if brackets[-1].isdigit() else 0
                    while len(matching) <= nth:
                        items.append({"url": url})
                        matching.append(len(items) - 1)
                    index = matching[nth]
                while len(items) <= index:
                    items.append({})
                if last:
                    items[index] = self.value(resource, element_type, value, items[index])
                    return
                node = items[index]
            else:
                if brackets:
                    raise SystemExit(f"{resource['id']}: {step} does not repeat")
                if last:
                    node[key] = self.value(resource, element_type, value, node.get(key))
                    return
                node = node.setdefault(key, {})
            if element_type.startswith("@"):
                target = element_type[1:]
                type_name, owner = target.split(".")[0], target
            elif element_type in ("BackboneElement", "Element"):
                owner = element_path
            else:
                type_name, owner = element_type, element_type

    def value(self, resource: dict[str, Any], element_type: str, text: str, current: Any) -> Any:
        if text.startswith('"'):
            return json.loads(text)
        if text in ("true", "false"):
            return text == "true"
        if re.fullmatch(r"-?\d+", text):
            return int(text)
        ref = _REFERENCE.match(text)
        if ref:
            target = self.instances.get(ref.group(1))
            if target is None:
                raise SystemExit(f"{resource['id']}: no instance {ref.group(1)}")
            _, target_rt, _ = self.profile_chain(target.instance_of)
            out = {"reference": f"{target_rt}/{target.name}"}
            if ref.group(2):
                out["display"] = ref.group(2)
            return out
        quantity = _QUANTITY.match(text)
        if quantity and element_type == "Quantity":
            out = dict(current or {})
            out["value"] = int(quantity.group(1)) if quantity.group(1).lstrip("-").isdigit() \
                else float(quantity.group(1))  # fmt: skip
            if quantity.group(4):
                out["unit"] = quantity.group(4)
            out["system"] = self.systems[quantity.group(2)]
            out["code"] = quantity.group(3)
            return out
        code = _CODE.match(text)
        if code:
            system = self.systems.get(code.group(1), code.group(1)) if code.group(1) else None
            coding = {"system": system, "code": code.group(2).strip('"'), "display": code.group(3)}
            coding = {k: v for k, v in coding.items() if v is not None}
            if element_type == "code":
                return coding["code"]
            if element_type == "Coding":
                return coding
            if element_type == "CodeableConcept":
                return {"coding": [coding]}
            raise SystemExit(f"{resource['id']}: a code for a {element_type}")
        raise SystemExit(f"{resource['id']}: cannot read value {text!r}")

    def ordered(self, node: Any, type_name: str, owner: str) -> Any:
        """The JSON with keys in the R4 element order (resourceType, id, meta first)."""
        if isinstance(node, list):
            return [self.ordered(item, type_name, owner) for item in node]
        if not isinstance(node, dict):
            return node
        if type_name not in self.types.elements:
            return node
        order = {path: i for i, path in enumerate(self.types.elements[type_name])}

        def rank(key: str) -> int:
            if key == "resourceType":
                return -1
            try:
                return order.get(self.types.child(type_name, owner, key)[3], 10**6)
            except SystemExit:
                return 10**6

        out: dict[str, Any] = {}
        for key in sorted(node, key=rank):
            value = node[key]
            if key == "resourceType":
                out[key] = value
                continue
            try:
                _, child_type, _, child_path = self.types.child(type_name, owner, key)
            except SystemExit:
                out[key] = value
                continue
            if child_type.startswith("@"):
                target = child_type[1:]
                out[key] = self.ordered(value, target.split(".")[0], target)
            elif child_type in ("BackboneElement", "Element"):
                out[key] = self.ordered(value, type_name, child_path)
            else:
                out[key] = self.ordered(value, child_type, child_type)
        return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fsh", type=Path, required=True, help="the IG's input/fsh folder")
    parser.add_argument("--r4", type=Path, required=True, help="hl7.fhir.r4.examples package/")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    aliases, definitions = read_fsh(args.fsh)
    converter = Converter(aliases, definitions, Types(args.r4))
    args.out.mkdir(parents=True, exist_ok=True)
    for instance in converter.instances.values():
        resource = converter.convert(instance)
        target = args.out / f"{resource['resourceType']}-{resource['id']}.json"
        target.write_text(json.dumps(resource, indent=2, ensure_ascii=False) + "\n", "utf-8")
        print(target.name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
