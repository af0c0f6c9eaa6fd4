"""The code's rooms: each layer imports only the layers below it, and no module
imports another that (directly or not) imports it back."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("worker", "api", "cli")

# Lowest first. A module may import its own layer and those before it.
LAYERS = (
    ("worker.settings",),
    ("worker.domain",),
    ("worker.store",),
    ("worker.queueing",),
    ("worker.telemetry",),
    ("worker.runtime",),
    ("worker.services",),
    ("worker.celery_app", "worker.celeryconfig", "worker.tasks"),
    ("api",),
    ("cli",),
)


def modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules a module imports, at its top or inside functions."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names] + [node.module]
        else:
            continue
        for name in names:
            if name in known and known[name].name != "__init__.py":
                found.add(name)
    return found


def layer_of(module: str) -> int:
    for rank, prefixes in enumerate(LAYERS):
        if any(module == p or module.startswith(p + ".") for p in prefixes):
            return rank
    raise AssertionError(f"{module} belongs to no layer: add it to LAYERS")


GRAPH = {name: imports(path, modules()) for name, path in modules().items()}


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_a_module_imports_only_its_layer_and_those_below(module: str) -> None:
    upward = sorted(dep for dep in GRAPH[module] if layer_of(dep) > layer_of(module))
    assert upward == [], f"{module} (layer {layer_of(module)}) imports upwards: {upward}"


def test_the_import_graph_has_no_cycle() -> None:
    # Depth-first search, colouring modules in progress; a grey neighbour is a cycle.
    state: dict[str, str] = {}
    path: list[str] = []

    def visit(module: str) -> None:
        state[module] = "grey"
        path.append(module)
        for dep in sorted(GRAPH[module]):
            if state.get(dep) == "grey":
                cycle = [*path[path.index(dep) :], dep]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if dep not in state:
                visit(dep)
        path.pop()
        state[module] = "black"

    for module in sorted(GRAPH):
        if module not in state:
            visit(module)


def test_the_worker_knows_nothing_of_the_edge_or_flask() -> None:
    for module, deps in GRAPH.items():
        if module.startswith("worker"):
            assert not [d for d in deps if d.startswith(("api", "cli"))], module
            assert "import flask" not in modules()[module].read_text(), module


def test_the_check_sees_a_cycle_when_there_is_one() -> None:
    # The test above must be able to fail: a known two-module loop is refused.
    saved = {name: set(deps) for name, deps in GRAPH.items()}
    try:
        GRAPH["worker.domain.ids"].add("worker.domain.schema")
        GRAPH["worker.domain.schema"].add("worker.domain.ids")
        with pytest.raises(AssertionError, match="import cycle"):
            test_the_import_graph_has_no_cycle()
    finally:
        GRAPH.clear()
        GRAPH.update(saved)
