"""The import graphs of our own code have no cycle (module-level and function-level imports alike): between modules,
and between the top-level packages (registry, cli, migrations), where `registry.db` importing `migrations`
while `migrations/env.py` imports `registry.db` is a cycle."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("registry", "cli", "migrations")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """Our module -> our modules it imports (a `from package import name` counts as the submodule when one exists)."""
    files = {module_name(p): p for package in PACKAGES for p in (REPO / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets.add(node.module)
                targets.update(f"{node.module}.{alias.name}" for alias in node.names)
        graph[name] = {t for t in targets if t in files and t != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_finder_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def package_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    top = {package: set() for package in PACKAGES}
    for module, targets in graph.items():
        top[module.split(".")[0]].update(t.split(".")[0] for t in targets)
    return {package: targets - {package} for package, targets in top.items()}


def test_no_import_cycle_among_our_modules():
    graph = import_graph()
    assert "registry.db" in graph["migrations.env"]  # the edge that made the old cycle is still seen
    assert find_cycle(graph) is None


def test_no_import_cycle_among_our_packages():
    packages = package_graph(import_graph())
    assert packages["migrations"] == {"registry"} and "registry" in packages["cli"]
    assert find_cycle(packages) is None
