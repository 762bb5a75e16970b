"""The tasks a server serves, and how they follow their source: a bundle (fixed) or the registry (watched).

`RegistryTasks` reads a registry's ready tasks and serves them as one `Predictor` on one
`FrozenBase`. `refresh()` looks at the registry again; when what it lists changed (a task published,
a task's adapter replaced, a task gone), it builds the next Predictor on the same base — tasks it
already serves copied out of the current stack, new or changed adapters read from the store and
verified by sha256 — and only then puts it in `predictor`, in one assignment. A batch that took the
old Predictor finishes on it; the next batch takes the new one.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

from safetensors.torch import load as load_tensors
from sqlalchemy import Row

from registry.model import checkpoint
from registry.catalog.queries import ready_tasks, served_rows
from registry.serving.loading import load
from registry.storage.core import Registry
from registry.serving.predictor import ABOUT_FIELDS, FrozenBase, Predictor, TaskSpec


class FixedTasks:
    """A bundle's tasks: verified once, served as they are for the server's life."""

    def __init__(self, path: str | os.PathLike, names: Sequence[str] | None = None, *, device: str = "auto") -> None:
        self.predictor: Predictor | None = load(path, names, device=device)

    def refresh(self) -> bool:
        """A bundle does not change: nothing to do."""
        return False


class RegistryTasks:
    """A registry's ready tasks (all, or those named), followed as they are published, replaced or dropped."""

    def __init__(self, registry: Registry, names: Sequence[str] | None = None, *, device: str = "auto") -> None:
        self.registry = registry
        self.names = list(names) if names is not None else None
        with registry.read() as session:
            base = registry.base(session)
            rows = ready_tasks(session, self.names)  # at start, an unknown name is an error
        self.base = FrozenBase(checkpoint.unpack(registry, base), device=device)
        self.listing = listing_of(rows)
        self.predictor: Predictor | None = None
        self.predictor = self._build(rows)

    def refresh(self) -> bool:
        """Serve what the registry lists now; True when that changed (the new Predictor is then in place)."""
        with self.registry.read() as session:
            rows = served_rows(session, self.names)
        listing = listing_of(rows)
        if listing == self.listing:
            return False
        self.predictor = self._build(rows) if rows else None
        self.listing = listing
        return True

    def _build(self, rows: list[Row]) -> Predictor:
        """A Predictor for `rows`: states of tasks served unchanged come from the current stack, others from the
        store."""
        current = self.predictor
        specs = [TaskSpec.from_config(row.name, json.loads(self.registry.store.get(row.config_sha256))) for row in rows]

        def state(row: Row, spec: TaskSpec):
            kept = current is not None and current.about.get(row.name, {}).get("adapter_sha256") == row.adapter_sha256 \
                and current.specs[row.name] == spec
            return current.task_state(row.name) if kept else load_tensors(self.registry.store.get(row.adapter_sha256))

        return Predictor(
            self.base, specs, (state(row, spec) for row, spec in zip(rows, specs)), [about(row) for row in rows]
        )


def from_registry(registry: Registry, tasks: Sequence[str] | None = None, *, device: str = "auto") -> Predictor:
    """Serve ready tasks of a registry (default all) from its store, as `serving.loading.load` serves a bundle."""
    return RegistryTasks(registry, tasks, device=device).predictor


def about(row: Row) -> dict:
    """What `GET /v1/tasks` lists for a task row."""
    return {field: getattr(row, field) for field in ABOUT_FIELDS}


def listing_of(rows: list[Row]) -> list[tuple]:
    """What decides whether the served tasks changed: each task's listed fields and its config."""
    return [(*about(row).values(), row.config_sha256) for row in rows]
