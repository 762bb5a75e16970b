"""The house's floors: a module imports only from its own package or from a lower floor, never from a higher floor
nor from a sibling package on its own floor (module-level and function-level imports alike).

The floors, low to high (a package or module name; the longest that matches a module decides its floor):
"""

from __future__ import annotations

from tests.test_imports import import_graph

LAYERS: list[tuple[str, ...]] = [
    ("registry.errors",),                               # the exceptions every floor raises
    ("registry.formats", "registry.options", "registry.results"),  # shared facts; the API's typed values
    ("registry.storage",),                              # database, schema, artifact store, cache, registry creation
    ("registry.migrations",),                           # the schema's Alembic revisions (they read storage's schema)
    ("registry.catalog",),                              # what the registry answers: queries, lifecycle, runs, verify
    ("registry.data",),                                 # value rules, readers, inference, splits, encoding, metrics
    ("registry.model",),                                # the frozen base and its adapters
    ("registry.training", "registry.bundle"),           # adding a task | bundles (neither imports the other)
    ("registry.dashboard",),                            # read-only pages on the catalog (no torch, no model)
    ("registry.serving",),                              # predictor, task sources, HTTP app, start-up
    ("registry", "registry.api"),                       # the face: `from registry import Registry`
    ("registry.cli",),                                  # the command line
]
# Edges a floor allows that would still cross concerns: serving answers requests without the data loader.
FORBIDDEN = [("registry.serving", "registry.data.splits")]


def floor_of(module: str) -> tuple[int, str]:
    """The floor of `module` and the layer entry (package or module) that placed it there."""
    matches = [(len(name), floor, name) for floor, names in enumerate(LAYERS) for name in names
               if module == name or module.startswith(name + ".")]
    if not matches:
        raise LookupError(f"{module} is on no floor: add it (or its package) to tests/test_layers.py's LAYERS")
    _, floor, name = max(matches)
    return floor, name


def violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import that goes up a floor, sideways into a sibling package, or along a FORBIDDEN edge."""
    found = []
    for module, targets in sorted(graph.items()):
        floor, home = floor_of(module)
        for target in sorted(targets - {"registry"}):  # the root package runs first for any import; it stays light
            target_floor, target_home = floor_of(target)
            if target_floor > floor or (target_floor == floor and target_home != home):
                found.append(f"{module} (floor {floor}) imports {target} (floor {target_floor})")
            elif any(module.startswith(low) and (target == high or target.startswith(high + "."))
                     for low, high in FORBIDDEN):
                found.append(f"{module} imports {target}, which FORBIDDEN keeps it from")
    return found


def test_the_checker_sees_a_wrong_way_import():
    assert violations({"registry.formats": {"registry.storage.db"}}) == [
        "registry.formats (floor 1) imports registry.storage.db (floor 2)"]
    assert violations({"registry.training.tasks": {"registry.bundle.export"}}) == [
        "registry.training.tasks (floor 7) imports registry.bundle.export (floor 7)"]
    assert violations({"registry.serving.predictor": {"registry.data.splits"}}) == [
        "registry.serving.predictor imports registry.data.splits, which FORBIDDEN keeps it from"]
    assert violations({"registry.serving.live": {"registry.bundle.verify", "registry.serving.predictor"}}) == []


def test_every_module_is_on_a_floor_and_imports_only_downwards():
    graph = import_graph()
    assert "registry.formats" in graph and "registry.bundle.archive" in graph  # the graph sees the new rooms
    assert violations(graph) == []


def test_formats_imports_nothing_of_ours_but_errors():
    assert import_graph()["registry.formats"] <= {"registry", "registry.errors"}
