"""A mapping's example pairs: what `fhirgoal mapping test DIR` runs (issue 15, "mappings as data").

Each mapping folder has `examples/inbound/` and `examples/outbound/`; an example is
`NAME.input.json` (one resource as the other side sends it) with either `NAME.output.json` (the
JSON array of resources the mapping must give, `[]` for "not mapped") or `NAME.error.json` (the
MappingError it must raise: `{"rule": .., "element": .., "message": <a part of the message>}`).
Outputs are compared as JSON text, so `72.50` against `72.5` is a difference, as it is on the wire.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from fhirgoal.core import jsonio
from fhirgoal.exchange.mapping import DIRECTIONS, Direction, Mapping, MappingError, read_json

_INPUT = ".input.json"


@dataclass(frozen=True)
class Example:
    name: str  # "outbound/goal-gas"
    direction: Direction
    input: dict[str, Any]
    expected: list[Any] | None  # the resources, or None when an error is expected
    expected_error: dict[str, Any] | None


@dataclass(frozen=True)
class ExampleResult:
    example: Example
    difference: str | None  # None: passed

    @property
    def passed(self) -> bool:
        return self.difference is None


def examples_of(directory: Path) -> list[Example]:
    """Every example pair of the folder, inbound then outbound, by name; a MappingError for an
    input without exactly one expectation beside it, or an expectation without an input."""
    examples = []
    for direction in DIRECTIONS:
        folder = directory / "examples" / direction
        if not folder.is_dir():
            continue
        inputs = sorted(folder.glob(f"*{_INPUT}"))
        names = {p.name.removesuffix(_INPUT) for p in inputs}
        for orphan in sorted(folder.glob("*.json")):
            stem = orphan.name.removesuffix(".output.json").removesuffix(".error.json")
            if not orphan.name.endswith(_INPUT) and stem not in names:
                raise MappingError(f"examples/{direction}", orphan.name, "no input beside it")
        for path in inputs:
            stem = path.name.removesuffix(_INPUT)
            name = f"{direction}/{stem}"
            output, error = folder / f"{stem}.output.json", folder / f"{stem}.error.json"
            if output.exists() == error.exists():
                raise MappingError(
                    f"examples/{name}", path.name, "needs exactly one of .output.json, .error.json"
                )
            resource = read_json(path, f"examples/{name}")
            expected = read_json(output, f"examples/{name}") if output.exists() else None
            expected_error = read_json(error, f"examples/{name}") if error.exists() else None
            if expected is not None and not isinstance(expected, list):
                raise MappingError(f"examples/{name}", output.name, "a JSON array of resources")
            if expected_error is not None and not isinstance(expected_error, dict):
                raise MappingError(f"examples/{name}", error.name, "a JSON object")
            examples.append(Example(name, direction, resource, expected, expected_error))
    return examples


def run_example(mapping: Mapping, example: Example) -> ExampleResult:
    try:
        produced = mapping.apply(example.direction, example.input)
    except MappingError as exc:
        if example.expected_error is None:
            return ExampleResult(example, f"MappingError {exc}")
        return ExampleResult(example, _error_difference(example.expected_error, exc))
    if example.expected is None:
        return ExampleResult(example, f"expected a MappingError, got {len(produced)} resource(s)")
    return ExampleResult(example, first_difference(example.expected, produced))


def run_examples(mapping: Mapping) -> list[ExampleResult]:
    return [run_example(mapping, example) for example in examples_of(mapping.directory)]


def _error_difference(expected: dict[str, Any], error: MappingError) -> str | None:
    for key, actual in (("rule", error.rule), ("element", error.element)):
        if key in expected and expected[key] != actual:
            return f"error {key}: expected {expected[key]!r}, got {actual!r} ({error.message})"
    if "message" in expected and str(expected["message"]) not in error.message:
        return (
            f"error message: expected it to contain {expected['message']!r}, got {error.message!r}"
        )
    return None


def _text(value: Any) -> str:
    return jsonio.dumps(value).decode()


def first_difference(expected: Any, actual: Any, path: str = "$") -> str | None:
    """Where two JSON values first differ (depth first, in the expected value's order), as
    `path: expected X, got Y`; None when they are the same JSON."""
    if isinstance(expected, dict) and isinstance(actual, dict):
        for key in expected:
            if key not in actual:
                return f"{path}.{key}: expected {_text(expected[key])[:200]}, got nothing"
            found = first_difference(expected[key], actual[key], f"{path}.{key}")
            if found:
                return found
        for key in actual:
            if key not in expected:
                return f"{path}.{key}: expected nothing, got {_text(actual[key])[:200]}"
        return None
    if isinstance(expected, list) and isinstance(actual, list):
        for index, (left, right) in enumerate(zip(expected, actual, strict=False)):
            found = first_difference(left, right, f"{path}[{index}]")
            if found:
                return found
        if len(expected) != len(actual):
            return f"{path}: expected {len(expected)} item(s), got {len(actual)}"
        return None
    if _scalar(expected) and _scalar(actual) and _text(expected) == _text(actual):
        return None
    return f"{path}: expected {_text(expected)[:200]}, got {_text(actual)[:200]}"


def _scalar(value: Any) -> bool:
    return isinstance(value, str | bool | int | Decimal) or value is None
