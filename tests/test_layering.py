"""The structure drawing, as a test: floors, no import circles, the repository behind the service.

Every module of the package is parsed (not imported) and each `import` / `from ... import` in it,
at the top, inside a function or under `if TYPE_CHECKING:`, is an arrow to a fhirgoal module. The
rule (README, "Code layout"):

- `core/`, `charts/` and `config` are the ground floor: they import no other fhirgoal module
  (core/ and charts/ may import within themselves);
- `store/` imports only the ground floor;
- `fhir/` imports only the ground floor and `store/`;
- `webapp/` imports only the ground floor and itself (it talks to FHIR servers over HTTP);
- nothing in store/ or fhir/ imports auth/, clinical/, exchange/, evidence/, webapp/ or the
  top-level modules (app, bootstrap, cli, cli_mapping, demo, guard, logs, serving,
  system_routes);
- no circle among fhirgoal modules, whatever their floor;
- auth/, clinical/ (and exchange/, evidence/, webapp/) never touch `svc.repo`: they reach stored
  data through the service.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "fhirgoal"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(target: str, known: dict[str, Path]) -> str | None:
    """The fhirgoal module an imported name lives in (`a.b.c` may be module a.b's name c)."""
    while target:
        if target in known:
            return target
        target = target.rpartition(".")[0]
    return None


def _imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names]
        for target in targets:
            if not target.startswith("fhirgoal"):
                continue
            module = _resolve(target, known)
            if module is not None and module != name and module != "fhirgoal":
                found.add(module)
    return found


def graph() -> dict[str, set[str]]:
    known = _modules()
    return {name: _imports(name, path, known) for name, path in known.items()}


def _floor(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


GROUND = {"core", "config", "charts"}
ALLOWED = {
    "core": {"core"},
    # the charts the clinician app and the evidence PDF both draw
    "charts": {"charts"},
    "config": set(),
    "store": GROUND | {"store"},
    "fhir": GROUND | {"store", "fhir"},
    # the clinician app is a SMART app: it reaches the server over HTTP only, never its code
    "webapp": GROUND | {"webapp"},
}


def test_no_upward_arrows() -> None:
    upward = [
        f"{source} -> {target}"
        for source, targets in graph().items()
        if _floor(source) in ALLOWED
        for target in sorted(targets)
        if _floor(target) not in ALLOWED[_floor(source)]
    ]
    assert upward == []


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(edges.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_circles() -> None:
    assert _cycles(graph()) == []


def test_the_drawing_sees_function_local_imports() -> None:
    """A check on the check: imports inside functions are arrows too."""
    edges = graph()
    assert edges and all(isinstance(t, set) for t in edges.values())
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# The floors above fhir/ that reach stored data through the service (FhirService), never through
# its repository (`svc.repo`).
THROUGH_THE_SERVICE = {"auth", "clinical", "exchange", "evidence", "webapp"}


def test_upper_floors_do_not_reach_the_repository() -> None:
    reaching = [
        f"{name}:{node.lineno}"
        for name, path in _modules().items()
        if _floor(name) in THROUGH_THE_SERVICE
        for node in ast.walk(ast.parse(path.read_text(), str(path)))
        if isinstance(node, ast.Attribute) and node.attr == "repo"
    ]
    assert reaching == []
