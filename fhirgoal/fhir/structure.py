"""Structural check of a resource against the R4 StructureDefinitions (element definitions).

https://hl7.org/fhir/R4/elementdefinition.html and https://hl7.org/fhir/R4/json.html . The R4 JSON
schema cannot express what this checks: required elements that are primitives (they may come as
`status` or `_status`), at most one variant of a choice element (`value[x]`), array versus single
value, and empty objects or arrays. The table comes from conformance/structure.json, generated from
the official snapshots, so the check is exactly R4 (the fhir.resources models are R4B).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from typing import Any

from fhirgoal.core.errors import Issue

_SAME_TYPE = {"BackboneElement", "Element"}
_INT32_MAX = 2**31 - 1
# https://hl7.org/fhir/R4/datatypes.html#primitive and json.html#primitive: whole JSON numbers
# (no fraction, no exponent) in these ranges. The R4 JSON schema types them as any `number` (its
# patterns apply to strings only), so 1.5, -1 or 2**40 would pass it.
_WHOLE_NUMBER_RANGES = {
    "integer": (-(2**31), _INT32_MAX),
    "unsignedInt": (0, _INT32_MAX),
    "positiveInt": (1, _INT32_MAX),
}


@dataclass(frozen=True, slots=True)
class Child:
    name: str  # element name without [x]
    path: str  # path relative to the owning type
    type_code: str | None  # the concrete type for this JSON key
    repeats: bool
    min: int
    choice: bool
    content_path: str | None  # where children live when defined elsewhere (contentReference)


@dataclass
class TypeTable:
    children: dict[str, dict[str, Child]]  # parent path -> JSON key -> child
    required: dict[str, list[tuple[str, tuple[str, ...]]]]  # parent path -> (name, json keys)


def _upper_first(code: str) -> str:
    return code[0].upper() + code[1:]


class StructureChecker:
    def __init__(self, structure: dict[str, Any]) -> None:
        self.structure = structure

    @cache  # noqa: B019 (one checker per conformance set, lives for the process)
    def table(self, type_name: str) -> TypeTable:
        elements: dict[str, Any] = self.structure[type_name].get("elements", {})
        children: dict[str, dict[str, Child]] = {}
        required: dict[str, list[tuple[str, tuple[str, ...]]]] = {}
        for path, element in elements.items():
            parent, _, name = path.rpartition(".")
            content = element.get("contentReference")
            content_path = content.split(".", 1)[1] if content else None
            types = element.get("types") or []
            choice = bool(element.get("choice"))
            keys: list[str] = []
            slot = children.setdefault(parent, {})
            for code in types if choice else (types[:1] or [None]):
                key = name + _upper_first(code) if choice else name
                keys.append(key)
                slot[key] = Child(
                    name=name,
                    path=path,
                    type_code=code,
                    repeats=element.get("max", "1") != "1",
                    min=int(element.get("min", 0)),
                    choice=choice,
                    content_path=content_path,
                )
            if int(element.get("min", 0)) >= 1:
                required.setdefault(parent, []).append((name, tuple(keys)))
        return TypeTable(children, required)

    def check(self, resource: dict[str, Any]) -> list[Issue]:
        issues: list[Issue] = []
        rt = resource.get("resourceType")
        if isinstance(rt, str) and rt in self.structure:
            self._walk(resource, rt, "", rt, issues, is_resource=True)
        return issues

    def _is_primitive(self, code: str | None) -> bool:
        entry = self.structure.get(code) if code is not None else None
        return entry is not None and bool(entry.get("primitive"))

    def _primitive_parts(
        self,
        child: Child,
        key: str,
        value: Any,
        values: Any,
        expr: str,
        issues: list[Issue],
    ) -> None:
        """`_name`: the id and extensions of primitive `name` (json.html#primitive), an Element;
        for a repeating primitive an array aligned with `name`'s, with null where a value has
        none, and never null at both places (nor where `name` is absent)."""
        where = f"{expr}.{key}"
        if not child.repeats:
            if not isinstance(value, dict) or not value:
                issues.append(Issue(f"'{key}' must be a non-empty object", where, "structure"))
            else:
                self._walk(value, "Element", "", where, issues)
            return
        if not isinstance(value, list) or not value:
            issues.append(Issue(f"'{key}' must be a non-empty array", where, "structure"))
            return
        aligned = isinstance(values, list)
        if aligned and len(values) != len(value):
            issues.append(
                Issue(f"'{key}' must have as many items as '{key[1:]}' ({len(values)}), "
                      f"not {len(value)}", where, "structure")
            )  # fmt: skip
            return
        for i, item in enumerate(value):
            if item is None:
                if not aligned or values[i] is None:
                    issues.append(
                        Issue(f"'{key}' may hold null only beside a value of '{key[1:]}'",
                              f"{where}[{i}]", "structure")
                    )  # fmt: skip
            elif not isinstance(item, dict) or not item:
                issues.append(
                    Issue(f"'{key}' items must be non-empty objects or null", f"{where}[{i}]",
                          "structure")
                )  # fmt: skip
            else:
                self._walk(item, "Element", "", f"{where}[{i}]", issues)

    def _is_complex(self, code: str | None) -> bool:
        if code is None:
            return False
        entry = self.structure.get(code)
        return entry is not None and not entry.get("primitive")

    def _walk(
        self,
        node: dict[str, Any],
        type_name: str,
        parent: str,
        expr: str,
        issues: list[Issue],
        is_resource: bool = False,
    ) -> None:
        # Every element of every write passes here: expression strings are built only for an
        # issue or a complex value to descend into, never for the primitives that most keys hold.
        table = self.table(type_name)
        children = table.children.get(parent, {})
        choices_seen: dict[str, str] = {}
        for key, value in node.items():
            if is_resource and key == "resourceType":
                continue
            primitive_part = key.startswith(
                "_"
            )  # id/extensions of a primitive (json.html#primitive)
            child = children.get(key[1:] if primitive_part else key)
            if child is None or (primitive_part and not self._is_primitive(child.type_code)):
                issues.append(Issue(f"unknown element '{key}'", f"{expr}.{key}", "structure"))
                continue
            if primitive_part:
                self._primitive_parts(child, key, value, node.get(key[1:]), expr, issues)
                continue
            if child.choice:
                other = choices_seen.get(child.name)
                if other and other != key:
                    issues.append(
                        Issue(
                            f"only one of {child.name}[x] is allowed ({other}, {key})",
                            f"{expr}.{key}",
                            "structure",
                        )
                    )
                choices_seen[child.name] = key
            repeated = isinstance(value, list)
            if repeated != child.repeats:
                shape = "an array" if child.repeats else "a single value, not an array"
                issues.append(Issue(f"'{key}' must be {shape}", f"{expr}.{key}", "structure"))
                continue
            if repeated and not value:
                issues.append(
                    Issue(f"'{key}' must not be an empty array", f"{expr}.{key}", "structure")
                )
            # a null in an array of primitives holds the place of one that has only extensions
            parts = node.get(f"_{key}") if repeated and None in value else None
            for i, item in enumerate(value if repeated else (value,)):
                complex_value = isinstance(item, dict)
                if isinstance(item, list):
                    where = f"{expr}.{key}[{i}]" if repeated else f"{expr}.{key}"
                    issues.append(
                        Issue(f"'{key}' must not hold an array (R4 JSON has no arrays of arrays)",
                              where, "structure")
                    )  # fmt: skip
                elif item is None:
                    placeholder = (
                        isinstance(parts, list) and i < len(parts) and parts[i] is not None
                    )
                    if not placeholder:
                        where = f"{expr}.{key}[{i}]" if repeated else f"{expr}.{key}"
                        issues.append(Issue(f"'{key}' must not be null", where, "structure"))
                elif item == "" or (complex_value and not item):
                    where = f"{expr}.{key}[{i}]" if repeated else f"{expr}.{key}"
                    issues.append(Issue(f"'{key}' must not be empty", where, "structure"))
                elif complex_value:  # primitives: their lexical form is checked by the JSON schema
                    where = f"{expr}.{key}[{i}]" if repeated else f"{expr}.{key}"
                    self._descend(child, item, type_name, where, issues)
                elif child.type_code in _WHOLE_NUMBER_RANGES:
                    low, high = _WHOLE_NUMBER_RANGES[child.type_code]
                    # the JSON parser gives an int only for a number written without a fraction
                    # or exponent (core/jsonio.py); a bool is the schema's to refuse
                    whole = type(item) is int
                    if (whole and not low <= item <= high) or (
                        not whole and not isinstance(item, bool | str)
                    ):
                        where = f"{expr}.{key}[{i}]" if repeated else f"{expr}.{key}"
                        issues.append(
                            Issue(
                                f"'{key}' must be a whole number from {low} to {high} "
                                f"({child.type_code}), not {item}",
                                where,
                                "value",
                            )
                        )
        for name, keys in table.required.get(parent, []):
            if not any(k in node or f"_{k}" in node for k in keys):
                label = f"{name}[x]" if len(keys) > 1 or (keys and keys[0] != name) else name
                issues.append(
                    Issue(f"missing required element '{label}'", f"{expr}.{name}", "required")
                )

    def inner_scope(
        self, child: Child, item: dict[str, Any], type_name: str
    ) -> tuple[str, str, bool] | None:
        """Where the elements of a complex value of `child` are defined: (type, parent path,
        whether the value is a resource), or None when the value is not complex (or is a
        resource of an unknown type). Shared with fhir/references.py's walk."""
        if child.content_path is not None:
            return type_name, child.content_path, False
        if child.type_code in _SAME_TYPE:
            return type_name, child.path, False
        if child.type_code == "Resource":
            inner = item.get("resourceType")
            if isinstance(inner, str) and inner in self.structure:
                return inner, "", True
            return None
        if self._is_complex(child.type_code):
            assert child.type_code is not None
            return child.type_code, "", False
        return None

    def _descend(
        self, child: Child, item: dict[str, Any], type_name: str, expr: str, issues: list[Issue]
    ) -> None:
        scope = self.inner_scope(child, item, type_name)
        if scope is not None:
            inner, parent, is_resource = scope
            self._walk(item, inner, parent, expr, issues, is_resource=is_resource)
        elif child.type_code == "Resource":
            inner_type = item.get("resourceType")
            issues.append(
                Issue(f"unknown or unsupported resourceType {inner_type!r}", expr, "structure")
            )
