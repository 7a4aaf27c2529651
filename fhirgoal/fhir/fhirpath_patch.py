"""FHIRPath Patch: https://hl7.org/fhir/R4/fhirpatch.html

A Parameters resource whose `operation` parameters each change one place of the resource:

- `add` (path, name, value): a new child `name` of the one element at `path`; appended when the
  child repeats, refused when a child that does not repeat is already there;
- `insert` (path, index, value): into the list at `path` (0 <= index <= its length);
- `delete` (path): the one element at `path`; nothing when the path matches nothing;
- `replace` (path, value): the one element at `path`;
- `move` (path, source, destination): within the list at `path`, the item at `source` taken out
  and put back at `destination`.

A value is a `value[x]` of the part, its type that of the element (a choice element takes the
type the value names: `valueString` makes `valueString`), or for an element of no data type of
its own (a BackboneElement: Patient.contact) `part`s named by its children. The element
definitions come from the vendored R4 structure (fhir/structure.py). Paths are the FHIRPath the
spec's examples use: the resource type, element names, `[n]`, `where(criteria)` (criteria
evaluated by fhir/fhirpath_native.py), `first()` and `last()`; anything else is refused with a
clear 400 rather than guessed at. Operations apply in order to a copy; the first that fails
names itself (`Parameters.parameter[i]`) and nothing is stored. The patched resource is then
validated as any update is (fhir/service.py).
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from antlr4 import CommonTokenStream, InputStream
from fhirpathpy.parser.generated.FHIRPathLexer import FHIRPathLexer
from fhirpathpy.parser.generated.FHIRPathParser import FHIRPathParser as P

from fhirgoal.core.errors import FhirError
from fhirgoal.core.jsonio import check_nesting
from fhirgoal.fhir.fhirpath_native import Fallback, Unsupported, compile_subexpression
from fhirgoal.fhir.fhirpath_syntax import syntax_error
from fhirgoal.fhir.search.paths import CHOICE_TYPE_SUFFIXES
from fhirgoal.fhir.structure import Child, StructureChecker

OPERATION_TYPES = ("add", "insert", "delete", "replace", "move")


@dataclass
class Located:
    """One element found by a path: its value, where it sits (`holder[key]`, and `index` in the
    list there), and where its own children are defined (type, element path)."""

    value: Any
    holder: dict[str, Any] | None  # None: the resource itself
    key: str
    index: int | None
    child: Child | None
    scope: tuple[str, str] | None  # (type, path) of its children; None for a primitive
    holder_scope: tuple[str, str] | None = None  # (type, path) of its holder's children


def is_fhirpath_patch(body: Any) -> bool:
    return isinstance(body, dict) and body.get("resourceType") == "Parameters"


def apply_fhirpath_patch(
    resource: dict[str, Any],
    parameters: dict[str, Any],
    structure: StructureChecker,
    max_operations: int,
    max_depth: int,
) -> dict[str, Any]:
    """`resource` patched by `parameters` (a new object); FhirError on a refused or failed patch."""
    operations = parameters.get("parameter") or []
    if not isinstance(operations, list):
        raise FhirError("invalid", "Parameters.parameter must be an array")
    if len(operations) > max_operations:
        raise FhirError("bad-request", f"a patch may have at most {max_operations} operations")
    patched = copy.deepcopy(resource)
    patcher = _Patcher(patched, structure)
    for i, operation in enumerate(operations):
        where = f"Parameters.parameter[{i}]"
        try:
            parts = _parts(operation)
            patcher.apply(parts, max_depth)
        except FhirError as error:
            raise FhirError(
                error.category, f"{where}: {error.issues[0].diagnostics}", where
            ) from None
    _prune(patched)
    return patched


def _prune(node: Any) -> bool:
    """Drop the elements a delete left without value or children (json.html: an element has
    one or the other; `Patient.contact[0].name.text` deleted takes the emptied `name` with it);
    whether `node` itself is now empty."""
    if isinstance(node, dict):
        for key in [k for k, v in node.items() if _prune(v)]:
            del node[key]
        return not node
    if isinstance(node, list):
        node[:] = [item for item in node if not _prune(item)]
        return not node
    return False


def _parts(operation: Any) -> dict[str, dict[str, Any]]:
    if not isinstance(operation, dict) or operation.get("name") != "operation":
        raise FhirError("invalid", "each parameter of a FHIRPath Patch is named 'operation'")
    parts: dict[str, dict[str, Any]] = {}
    for part in operation.get("part") or []:
        name = part.get("name") if isinstance(part, dict) else None
        if not isinstance(name, str):
            raise FhirError("invalid", "each part of an operation has a name")
        if name in parts:
            raise FhirError("invalid", f"the operation has two '{name}' parts")
        parts[name] = part
    return parts


def _text(parts: dict[str, dict[str, Any]], name: str, key: str = "valueString") -> str:
    value = (parts.get(name) or {}).get(key)
    if not isinstance(value, str):
        raise FhirError("invalid", f"the operation needs its '{name}' part ({key})")
    return value


def _integer(parts: dict[str, dict[str, Any]], name: str) -> int:
    value = (parts.get(name) or {}).get("valueInteger")
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise FhirError("invalid", f"the operation needs its '{name}' part (valueInteger >= 0)")
    return value


class _Patcher:
    def __init__(self, resource: dict[str, Any], structure: StructureChecker) -> None:
        self.resource = resource
        self.structure = structure
        self.type = str(resource["resourceType"])

    def apply(self, parts: dict[str, dict[str, Any]], max_depth: int) -> None:
        kind = _text(parts, "type", "valueCode")
        if kind not in OPERATION_TYPES:
            raise FhirError("invalid", f"unknown operation type '{kind}'")
        path = _text(parts, "path")
        if kind == "delete":
            self.delete(path)
            return
        if kind == "move":
            items = self.collection(path)
            source, destination = _integer(parts, "source"), _integer(parts, "destination")
            if source >= len(items) or destination >= len(items):
                raise FhirError("processing", f"{path} has {len(items)} items; cannot move "
                                f"{source} to {destination}")  # fmt: skip
            items.insert(destination, items.pop(source))
            return
        if kind == "add":
            self.add(path, _text(parts, "name"), parts, max_depth)
        elif kind == "insert":
            self.insert(path, _integer(parts, "index"), parts, max_depth)
        else:
            self.replace(path, parts, max_depth)

    # ---- the operations ------------------------------------------------------------------------
    def add(self, path: str, name: str, parts: dict[str, dict[str, Any]], depth: int) -> None:
        target = self.single(path)
        if not isinstance(target.value, dict) or target.scope is None:
            raise FhirError("processing", f"{path} is a primitive: it has no element '{name}'")
        child, key, value = self.value(target.scope, name, parts, depth, path.count(".") + 2)
        node = target.value
        if child.repeats:
            node.setdefault(key, []).append(value)
            return
        if any(self.child_of(target.scope, k) is child for k in node):
            raise FhirError("processing", f"{path}.{name} is already there and does not repeat; "
                            "use replace")  # fmt: skip
        node[key] = value

    def insert(self, path: str, index: int, parts: dict[str, dict[str, Any]], depth: int) -> None:
        owner, name = self.list_owner(path)
        assert owner.scope is not None
        child, key, value = self.value(owner.scope, name, parts, depth, path.count(".") + 2)
        if not child.repeats:
            raise FhirError("processing", f"{path} does not repeat: nothing to insert into")
        items = owner.value.setdefault(key, [])
        if index > len(items):
            raise FhirError("processing", f"{path} has {len(items)} items; index {index} is "
                            "past its end")  # fmt: skip
        items.insert(index, value)

    def delete(self, path: str) -> None:
        found = self.evaluate(path)
        if not found:
            return  # fhirpatch.html: nothing to delete is no error
        if len(found) > 1:
            raise FhirError("processing", f"{path} matches {len(found)} elements; delete one")
        item = found[0]
        if item.holder is None:
            raise FhirError("processing", "the resource itself cannot be deleted by a patch")
        if item.index is None:
            del item.holder[item.key]
            return
        items = item.holder[item.key]
        del items[item.index]
        if not items:
            del item.holder[item.key]

    def replace(self, path: str, parts: dict[str, dict[str, Any]], depth: int) -> None:
        item = self.single(path)
        if item.holder is None or item.child is None or item.holder_scope is None:
            raise FhirError("processing", "the resource itself cannot be replaced by a patch")
        level = path.count(".") + 1
        _, key, value = self.value(item.holder_scope, item.child.name, parts, depth, level)
        if item.index is not None:
            if key != item.key:
                raise FhirError("processing", f"{path}: one item of a list keeps its type")
            item.holder[key][item.index] = value
            return
        del item.holder[item.key]  # a choice element may change its type (valueX -> valueY)
        item.holder[key] = value

    # ---- locating --------------------------------------------------------------------------------
    def single(self, path: str) -> Located:
        found = self.evaluate(path)
        if len(found) != 1:
            what = "nothing" if not found else f"{len(found)} elements"
            raise FhirError("processing", f"{path} matches {what}; it must match one element")
        return found[0]

    def collection(self, path: str) -> list[Any]:
        owner, name = self.list_owner(path)
        assert owner.scope is not None
        keys = [k for k in owner.value if (c := self.child_of(owner.scope, k)) and c.name == name]
        items = owner.value.get(keys[0]) if keys else None
        if not isinstance(items, list):
            raise FhirError("processing", f"{path} is not a list of this resource")
        return items

    def list_owner(self, path: str) -> tuple[Located, str]:
        """The one element whose child list `path` names (`Patient.identifier`: the Patient),
        and the child's name: a list may be empty, or absent, before an insert."""
        tree = _parse(path)
        if not (isinstance(tree, P.InvocationExpressionContext) and
                isinstance(tree.invocation(), P.MemberInvocationContext)):  # fmt: skip
            raise FhirError("bad-request", f"{path} must end with the name of a list element")
        owners = list(self._walk(tree.expression()))
        if len(owners) != 1 or not isinstance(owners[0].value, dict) or owners[0].scope is None:
            raise FhirError("processing", f"the element that holds {path} must be one element")
        return owners[0], tree.invocation().getText()

    def evaluate(self, path: str) -> list[Located]:
        return list(self._walk(_parse(path)))

    def _walk(self, tree: Any) -> Iterator[Located]:
        if isinstance(tree, P.TermExpressionContext):
            term = tree.term()
            invocation = term.invocation() if isinstance(term, P.InvocationTermContext) else None
            if isinstance(invocation, P.MemberInvocationContext):
                name = invocation.getText()
                if name == self.type:
                    yield Located(self.resource, None, "", None, None, (self.type, ""))
                    return
                root = Located(self.resource, None, "", None, None, (self.type, ""))
                yield from self._members(root, name)
                return
            raise FhirError("bad-request", f"a patch path starts at {self.type}, not "
                            f"'{tree.getText()}'")  # fmt: skip
        if isinstance(tree, P.IndexerExpressionContext):
            listed = list(self._walk(tree.expression(0)))
            index = tree.expression(1).getText()
            if not index.isdigit():
                raise FhirError("bad-request", f"an index in a patch path is a number, not {index}")
            if int(index) < len(listed):
                yield listed[int(index)]
            return
        if not isinstance(tree, P.InvocationExpressionContext):
            raise FhirError("bad-request", f"'{tree.getText()}' is not a path this server patches")
        found = self._walk(tree.expression())
        invocation = tree.invocation()
        if isinstance(invocation, P.MemberInvocationContext):
            for item in found:
                yield from self._members(item, invocation.getText())
            return
        if isinstance(invocation, P.FunctionInvocationContext):
            yield from self._function(list(found), invocation.functn())
            return
        raise FhirError("bad-request", f"'{invocation.getText()}' is not supported in a patch path")

    def _members(self, item: Located, name: str) -> Iterator[Located]:
        if not isinstance(item.value, dict) or item.scope is None:
            return
        for key, value in item.value.items():
            child = self.child_of(item.scope, key)
            if child is None or child.name != name:
                continue
            values = value if isinstance(value, list) else [value]
            for i, each in enumerate(values):
                index = i if isinstance(value, list) else None
                scope = self.inner(child, each, item.scope[0])
                yield Located(each, item.value, key, index, child, scope, item.scope)

    def _function(self, found: list[Located], functn: Any) -> Iterator[Located]:
        name = functn.identifier().getText()
        params = list(functn.paramList().expression()) if functn.paramList() is not None else []
        if name == "first" and not params:
            yield from found[:1]
        elif name == "last" and not params:
            yield from found[-1:]
        elif name == "where" and len(params) == 1:
            try:
                criteria = compile_subexpression(params[0])
                for item in found:
                    if criteria([item.value], {"resource": self.resource}) == [True]:
                        yield item
            except (Unsupported, Fallback):
                raise FhirError("bad-request", f"the criteria {params[0].getText()} are not "
                                "supported in a patch path") from None  # fmt: skip
        else:
            raise FhirError("bad-request", f"{name}() is not supported in a patch path")

    # ---- element definitions ---------------------------------------------------------------------
    def child_of(self, scope: tuple[str, str], key: str) -> Child | None:
        type_name, path = scope
        return self.structure.table(type_name).children.get(path, {}).get(key)

    def inner(self, child: Child, value: Any, type_name: str) -> tuple[str, str] | None:
        if not isinstance(value, dict):
            return None
        found = self.structure.inner_scope(child, value, type_name)
        return (found[0], found[1]) if found is not None else None

    def value(
        self, scope: tuple[str, str], name: str, parts: dict[str, dict[str, Any]], limit: int,
        level: int,
    ) -> tuple[Child, str, Any]:  # fmt: skip
        """The definition of child `name` in `scope`, the JSON key the value goes under, and
        the value, from the operation's `value` part."""
        part = parts.get("value")
        if part is None:
            raise FhirError("invalid", "the operation needs its 'value' part")
        children = [c for c in self.children(scope) if c.name == name]
        if not children:
            raise FhirError("processing", f"{scope[0]} has no element '{name}' there")
        key, value = self.part_value(part, children, scope[0])
        if isinstance(value, dict | list):
            check_nesting(value, limit, level)
        child = next(c for c in children if _key(c) == key)
        return child, key, value

    def children(self, scope: tuple[str, str]) -> list[Child]:
        type_name, path = scope
        return list(self.structure.table(type_name).children.get(path, {}).values())

    def part_value(
        self, part: dict[str, Any], children: list[Child], type_name: str
    ) -> tuple[str, Any]:
        typed = [(k, v) for k, v in part.items()
                 if k.startswith("value") and k[5:] in CHOICE_TYPE_SUFFIXES]  # fmt: skip
        nested = part.get("part")
        if len(typed) + (nested is not None) != 1:
            raise FhirError("invalid", "a value is one value[x], or parts for an element with "
                            "no data type of its own")  # fmt: skip
        if typed:
            suffix, value = typed[0][0][5:], typed[0][1]
            for child in children:
                if _suffix(child) == suffix:
                    return _key(child), value
            allowed = ", ".join(f"value{_suffix(c)}" for c in children)
            raise FhirError("processing", f"a {children[0].name} takes {allowed}, not "
                            f"value{suffix}")  # fmt: skip
        anonymous = [c for c in children if c.type_code in ("BackboneElement", "Element")]
        if not anonymous or not isinstance(nested, list):
            raise FhirError("processing", f"{children[0].name} has a data type: send value[x]")
        child = anonymous[0]
        built: dict[str, Any] = {}
        scope = (type_name, child.path)
        for sub in nested:
            name = sub.get("name") if isinstance(sub, dict) else None
            options = [c for c in self.children(scope) if c.name == name]
            if not options:
                raise FhirError("processing", f"{child.path} has no element '{name}'")
            key, value = self.part_value(sub, options, type_name)
            chosen = next(c for c in options if _key(c) == key)
            if chosen.repeats:
                built.setdefault(key, []).append(value)
            elif key in built:
                raise FhirError("processing", f"{child.path}.{name} does not repeat")
            else:
                built[key] = value
        return _key(child), built


def _suffix(child: Child) -> str:
    code = child.type_code or ""
    return code[:1].upper() + code[1:]


def _key(child: Child) -> str:
    return child.name + _suffix(child) if child.choice else child.name


def _parse(path: str) -> Any:
    broken = syntax_error(path)
    if broken is not None:
        raise FhirError("bad-request", f"the path {path!r} {broken}")
    parser = P(CommonTokenStream(FHIRPathLexer(InputStream(path))))
    parser.removeErrorListeners()
    return parser.expression()
