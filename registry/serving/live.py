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
import logging
import os
from collections.abc import Sequence

from safetensors import SafetensorError
from safetensors.torch import load as load_tensors
from sqlalchemy import Row

from registry.catalog.queries import ready_tasks, served_rows
from registry.errors import ArtifactError, NonFiniteOutput, RegistryError
from registry.formats import adapter_problem
from registry.model import checkpoint, probe
from registry.serving.loading import load
from registry.serving.onnx_backend import accelerate
from registry.serving.predictor import ABOUT_FIELDS, FrozenBase, Predictor, TaskSpec
from registry.storage.core import Opened
from registry.storage.db import first_line

log = logging.getLogger("registry.serve")


class FixedTasks:
    """A bundle's tasks: verified once, served as they are for the server's life."""

    def __init__(self, path: str | os.PathLike, names: Sequence[str] | None = None, *, device: str = "auto",
                 backend: str = "eager") -> None:
        self.predictor: Predictor | None = accelerate(load(path, names, device=device), backend)
        self.unavailable: dict[str, dict] = {}  # a bundle is verified whole: none of its tasks is quarantined

    def refresh(self) -> bool:
        """A bundle does not change: nothing to do."""
        return False


class RegistryTasks:
    """A registry's ready tasks (all, or those named), followed as they are published, replaced or dropped.

    A task that cannot be served (an artifact missing or corrupt, adapters that do not fit the registry's stored
    base, NaN or infinite outputs on the probe sentences) is quarantined: logged once, listed in `unavailable`
    with why, and left out; the others serve. It is tried again when its row changes (a new version, promote,
    retire and restore) or when the server restarts.
    """

    def __init__(self, registry: Opened, names: Sequence[str] | None = None, *, device: str = "auto",
                 backend: str = "eager", quarantine: bool = True) -> None:
        """Without `quarantine`, a task that cannot be served is an error naming it (what `predict` wants)."""
        self.registry = registry
        self.names = list(names) if names is not None else None
        self.quarantine = quarantine
        self.backend = backend  # registry.serving.onnx_backend: each task set's Predictor runs on it
        with registry.read() as session:
            base = registry.base(session)
            rows = ready_tasks(session, self.names)  # at start, an unknown name is an error
        self.base = FrozenBase(checkpoint.unpack(registry, base), device=device)
        self.base_config = base.config
        self.listing = listing_of(rows)
        self.unavailable: dict[str, dict] = {}  # quarantined: name -> what /v1/tasks lists, with its problem
        self.predictor: Predictor | None = None
        self.predictor = self._build(rows)

    def refresh(self) -> bool:
        """Serve what the registry lists now; True when that changed (the new Predictor is then in place)."""
        with self.registry.read() as session:
            rows = served_rows(session, self.names)
        listing = listing_of(rows)
        if listing == self.listing:
            return False
        self.predictor = self._build(rows)
        self.listing = listing
        return True

    def _build(self, rows: list[Row]) -> Predictor | None:
        """A Predictor for the rows that load and give finite outputs (None when none does); the others are
        quarantined. States of tasks served unchanged come from the current stack, others from the store."""
        predictor, problems = self._assemble(rows, self.predictor)
        self._quarantine(problems)
        return accelerate(predictor, self.backend) if predictor is not None else None

    def _assemble(self, rows: list[Row], current: Predictor | None) -> tuple[Predictor | None, dict]:
        """The Predictor of the rows that can be served, and why each other one cannot."""
        loaded, problems = [], {}
        for row in rows:
            try:
                loaded.append((row, *self._load(row, current)))
            except (RegistryError, ValueError, KeyError, TypeError, SafetensorError) as exc:
                problems[row.name] = (row, f"{type(exc).__name__}: {first_line(exc)}")
        if not loaded:
            return None, problems
        predictor = Predictor(self.base, [spec for _, spec, _, _ in loaded], (state for _, _, state, _ in loaded),
                              [about(row) for row, _, _, _ in loaded])
        try:
            probe.check_tasks(predictor, [row.name for row, _, _, fresh in loaded if fresh])
        except NonFiniteOutput as exc:
            problems |= {row.name: (row, "NaN or infinite outputs on the probe sentences: run `registry verify`")
                         for row, _, _, _ in loaded if row.name in exc.tasks}
            predictor, more = self._assemble([row for row in rows if row.name not in problems], current)
            problems |= more
        return predictor, problems

    def _load(self, row: Row, current: Predictor | None) -> tuple[TaskSpec, dict, bool]:
        """A row's spec and tensors, and whether they were read afresh (then checked against the stored base)."""
        spec = TaskSpec.from_config(row.name, json.loads(self.registry.store.get(row.config_sha256)))
        if current is not None and current.about.get(row.name, {}).get("adapter_sha256") == row.adapter_sha256 \
                and current.specs.get(row.name) == spec:
            return spec, current.task_state(row.name), False
        raw = self.registry.store.get(row.adapter_sha256)
        problem = adapter_problem(raw, self.base_config, spec.adapter_size, spec.head_size)
        if problem:
            raise ArtifactError(f"its adapter {problem}")
        return spec, load_tensors(raw), True

    def _quarantine(self, problems: dict[str, tuple[Row, str]]) -> None:
        """Record the tasks left out now; each is logged once (again only when its row or problem changes)."""
        if problems and not self.quarantine:
            name, (_, problem) = next(iter(problems.items()))
            raise ArtifactError(f"task {name!r} cannot be served ({problem}): run `registry verify`")
        unavailable = {}
        for name, (row, problem) in problems.items():
            unavailable[name] = {**about(row), "available": False, "problem": problem}
            if self.unavailable.get(name) != unavailable[name]:
                log.error("task %r is unavailable (quarantined; the other tasks serve): %s", name, problem)
        self.unavailable = unavailable


def from_registry(registry: Opened, tasks: Sequence[str] | None = None, *, device: str = "auto") -> Predictor:
    """Serve ready tasks of a registry (default all) from its store, as `serving.loading.load` serves a bundle."""
    return RegistryTasks(registry, tasks, device=device, quarantine=False).predictor


def about(row: Row) -> dict:
    """What `GET /v1/tasks` lists for a task row."""
    return {field: getattr(row, field) for field in ABOUT_FIELDS}


def listing_of(rows: list[Row]) -> list[tuple]:
    """What decides whether the served tasks changed: each task's listed fields and its config."""
    return [(*about(row).values(), row.config_sha256) for row in rows]
