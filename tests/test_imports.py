"""The import graphs of our own code have no cycle (module-level and function-level imports alike): between modules,
and between the three folders (registry/, cli/ as registry.cli, migrations/ as registry.migrations), where
`registry.storage.db` importing the migrations while `migrations/env.py` imports it was a cycle. And
`import registry` with `Registry.open(...).tasks()` stays light: no torch, transformers or fsspec (the read
commands' own check is in tests/test_cli_core.py)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import registry
from registry.api import Registry
from tests.helpers import REPO

FOLDERS = {"registry": "registry", "cli": "registry.cli", "migrations": "registry.migrations"}  # folder: package


def module_name(path: Path) -> str:
    folder, *rest = path.relative_to(REPO).with_suffix("").parts
    parts = [*FOLDERS[folder].split("."), *rest]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def folder_of(module: str) -> str:
    return max((f for f, package in FOLDERS.items() if module == package or module.startswith(package + ".")),
               key=lambda f: len(FOLDERS[f]))


def import_graph() -> dict[str, set[str]]:
    """Our module -> our modules it imports (a `from package import name` counts as the submodule when one exists)."""
    files = {module_name(p): p for folder in FOLDERS for p in (REPO / folder).rglob("*.py")}
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


def folder_graph(graph: dict[str, set[str]]) -> dict[str, set[str]]:
    folders: dict[str, set[str]] = {folder: set() for folder in FOLDERS}
    for module, targets in graph.items():
        folders[folder_of(module)].update(folder_of(t) for t in targets)
    return {folder: targets - {folder} for folder, targets in folders.items()}


def test_the_finder_sees_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle_among_our_modules():
    graph = import_graph()
    assert "registry.storage.db" in graph["registry.migrations.env"]  # the edge that made the old cycle is still seen
    assert find_cycle(graph) is None


def test_the_library_imports_neither_the_cli_nor_the_migrations():
    folders = folder_graph(import_graph())
    assert folders == {"registry": set(), "cli": {"registry"}, "migrations": {"registry"}}


def test_import_registry_and_listing_import_nothing_heavy(settings, tiny_base):
    Registry.create(settings.home, base=str(tiny_base), db=settings.db_url, store=settings.store_url).close()
    code = (
        "import sys\nimport registry\n"
        "assert 'registry.api' not in sys.modules\n"
        "from registry import Registry, TrainConfig\n"
        f"r = Registry.open({str(settings.home)!r}, db={settings.db_url!r}, store={settings.store_url!r})\n"
        "r.tasks(); r.history(); r.matrix(); r.base()\n"
        "heavy = ('torch', 'transformers', 'datasets', 'fsspec', 'fastapi', 'pandas')\n"
        "heavy = [m for m in heavy if m in sys.modules]\n"
        "print('HEAVY', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert "HEAVY []" in out.stdout, out.stdout + out.stderr
    assert set(registry.__all__) <= set(dir(registry))
    with pytest.raises(AttributeError, match="has no attribute 'Nope'"):
        registry.Nope  # noqa: B018
