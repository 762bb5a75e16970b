"""The public face: `Registry` does everything the `registry` command does, returning typed results.

    from registry import Registry, TrainConfig, Auto
    r = Registry.create("reg", base="sentence-transformers/all-MiniLM-L6-v2")
    r.add_task("cola", data="hf:nyu-mll/glue:cola", config=TrainConfig(epochs=3))
    r.add_task("mrpc", data="glue/MRPC", init_from=Auto())
    r.tasks(); r.task("cola").versions; r.history("cola"); r.matrix()

Each method opens nothing heavy until it needs it: listing, showing and the history import neither torch,
transformers nor fsspec. Errors are registry.errors' kinds, with the CLI's one-line messages. Notices
(what was inferred, each run's score, cache repairs) go to the `registry` logger; nothing is printed.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from registry.catalog import queries as catalog
from registry.storage import core
from registry.storage.config import ServeLimits, Settings, resolve
from registry.errors import BundleError, OptionError
from registry.options import Auto, FromTask, InitFrom, Scratch, TrainConfig
from registry.results import (Base, Evaluation, Imported, Matrix, Promotion, Restoration, Retirement, Rows,
                              RunSummary, SchemaRevision, Score, Task, TaskDetail, TaskVersion, VerifyReport, build)

if TYPE_CHECKING:
    from fastapi import FastAPI

    from registry.serving import live
    from registry.serving.predictor import Predictor

Names = Sequence[str] | None  # some tasks by name; None: every ready task


def terminal() -> bool:
    """Whether progress bars can be drawn: stderr is a terminal."""
    return sys.stderr.isatty()


class class_or_instance:
    """A method bound to (class, instance) when called on an instance, to (class, None) when called on the class."""

    def __init__(self, function):
        self.function = function
        functools.update_wrapper(self, function)

    def __get__(self, instance, owner):
        return functools.partial(self.function, owner, instance)


class Registry:
    """An open registry: tasks, versions, runs and scores in SQL, artifacts in the store. Close it when done
    (or use `with`)."""

    def __init__(self, opened: core.Opened) -> None:
        self._registry = opened

    @classmethod
    def create(cls, home: str | os.PathLike | None = None, *, base: str, name: str | None = None,
               db: str | None = None, store: str | None = None) -> Registry:
        """Create a registry and register `base` (a checkpoint directory or hub id) as its frozen base."""
        from registry.model import checkpoint

        settings = resolve(home=home, db=db, store=store)
        checkpoint.init(settings, base, name)
        return cls(core.open_registry(settings))

    @classmethod
    def open(cls, home: str | os.PathLike | None = None, *, db: str | None = None,
             store: str | None = None) -> Registry:
        """Open an existing registry: arguments win over REGISTRY_HOME / REGISTRY_DB_URL / REGISTRY_STORE,
        which win over ./.registry."""
        return cls(core.open_registry(resolve(home=home, db=db, store=store)))

    @class_or_instance
    def schema_revision(cls, self: Registry | None, home: str | os.PathLike | None = None, *,
                        db: str | None = None) -> SchemaRevision:
        """The schema revision of the database (of this registry, or the one located as `open` does) and the one
        this code expects; an older database cannot be opened until `upgrade`d."""
        from registry.storage import db as registry_db

        url = self.settings.db_url if self is not None else resolve(home=home, db=db).db_url
        return SchemaRevision(registry_db.revision_at(url), registry_db.head_revision())

    @classmethod
    def upgrade(cls, home: str | os.PathLike | None = None, *, db: str | None = None) -> SchemaRevision:
        """Migrate the registry's database (located as `open` does) to the schema this code expects."""
        from registry.storage import db as registry_db

        revision = registry_db.upgrade_registry(resolve(home=home, db=db).db_url)
        return SchemaRevision(revision, registry_db.head_revision())

    @property
    def settings(self) -> Settings:
        """Where this registry lives: home, database URL and store URL."""
        return self._registry.settings

    def close(self) -> None:
        """Release database connections."""
        self._registry.close()

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Registry(home={str(self.settings.home)!r})"

    # ---------------------------------------------------------------------------------------------- reading

    def base(self) -> Base:
        """The frozen base checkpoint."""
        with self._registry.query() as connection:
            return Base(**catalog.base_row(self._registry.base(connection)))

    def tasks(self, include_retired: bool = False) -> Rows[Task]:
        """Ready tasks by position, then tasks training or failed; retired ones only with `include_retired`."""
        return Rows(Task(**row) for row in catalog.list_tasks(self._registry, retired=include_retired))

    def task(self, name: str) -> TaskDetail:
        """One task with its versions, events (who moved its current version, when, why) and runs."""
        return TaskDetail.of(catalog.show_task(self._registry, name))

    def history(self, name: str | None = None) -> Rows[Score]:
        """Every score recorded (of one task, or all), oldest first."""
        return Rows(Score(**row) for row in catalog.history(self._registry, name))

    def matrix(self) -> Matrix:
        """The continual-learning matrix with ACC, BWT and FWT."""
        return Matrix.of(catalog.score_matrix(self._registry))

    def runs(self, name: str | None = None) -> Rows[RunSummary]:
        """Training runs (of one task, or all), oldest first."""
        from registry.catalog.runs import list_runs

        return Rows(build(RunSummary, row) for row in list_runs(self._registry, name))

    def sweep_runs(self) -> int:
        """Mark runs whose process died (or went silent) as interrupted; returns how many."""
        from registry.catalog.runs import sweep_stale_runs

        return sweep_stale_runs(self._registry)

    # --------------------------------------------------------------------------------------------- training

    def add_task(self, name: str, data: str, *, config: TrainConfig = TrainConfig(), init_from: InitFrom = Scratch(),
                 new_version: bool = False, promote: bool = False, compare_scratch: bool = False, sweep: bool = False,
                 text_columns: Sequence[str] | None = None, label_column: str | None = None,
                 task_type: str | None = None, metric: str | None = None, max_train_samples: int | None = None,
                 strict: bool = False, device: str = "auto", progress: bool | None = None) -> TaskVersion:
        """Train an adapter on `data` (a directory, a file, or hf:REPO[:CONFIG]) and publish it as the next task,
        or with `new_version` as the task's next version (current if it scores at least as well, or with
        `promote`). Columns, task type and metric are inferred unless given; `progress` defaults to whether
        stderr is a terminal."""
        if not isinstance(init_from, (Scratch, Auto, FromTask)):
            raise OptionError(f"init_from={init_from!r}: pass Scratch(), Auto() or FromTask(name)")
        from registry.training.plan import DataOptions
        from registry.training.tasks import add_task

        options = DataOptions(text_columns=tuple(text_columns) if text_columns else None, label_column=label_column,
                              task_type=task_type, metric=metric, max_train_samples=max_train_samples, strict=strict)
        row = add_task(self._registry, name, data, config, options, new_version=new_version, promote=promote,
                       sweep=sweep, init_from=init_from, compare_scratch=compare_scratch, device=device,
                       progress=terminal() if progress is None else progress)
        return TaskVersion(**row)

    def evaluate(self, name: str, data: str | None = None, *, device: str = "auto",
                 progress: bool | None = None) -> Evaluation:
        """Score a task's current version again (on `data`, default what it was trained on) and record it."""
        from registry.training.tasks import evaluate_task

        return Evaluation(**evaluate_task(self._registry, name, data, device=device,
                                          progress=terminal() if progress is None else progress))

    # ------------------------------------------------------------------------------------------- lifecycle

    def promote(self, name: str, version: int, why: str | None = None) -> Promotion:
        """Make `version` the task's current one (a candidate, or an older one to roll back to)."""
        from registry.catalog import lifecycle

        return Promotion(**lifecycle.promote(self._registry, name, version, why))

    def retire(self, name: str, why: str | None = None) -> Retirement:
        """Hide a task from tasks(), export and serving; its versions and history stay."""
        from registry.catalog import lifecycle

        return Retirement(**lifecycle.retire(self._registry, name, why))

    def restore(self, name: str, why: str | None = None) -> Restoration:
        """Bring back a retired task."""
        from registry.catalog import lifecycle

        return Restoration(**lifecycle.restore(self._registry, name, why))

    def verify(self, prune: bool = False) -> VerifyReport:
        """Check every artifact's sha256, every ready task and the store; `prune` removes unreferenced files."""
        from registry.results import Problem
        from registry.catalog.verify import verify

        report = verify(self._registry, prune=prune)
        problems = tuple(Problem(p.kind, p.subject, p.message) for p in report.problems)
        return VerifyReport(ok=report.ok, problems=problems, pruned=tuple(report.pruned),
                            discarded=tuple(report.discarded), checked=report.checked)

    # ----------------------------------------------------------------------------------- bundles, predicting

    def export(self, tasks: Names, output: str | os.PathLike, *, dtype: str = "float32", archive: bool = False,
               force: bool = False) -> Exported:
        """Write the base once and each task's adapter into a bundle (a directory, or a .tar with `archive`)."""
        from registry.bundle.export import export

        result = export(self._registry, output, tasks, dtype=dtype, archive=archive, force=force)
        return Exported(**{**result, "tasks": tuple(result["tasks"])})

    @class_or_instance
    def import_bundle(cls, self: Registry | None, path: str | os.PathLike, *, home: str | os.PathLike | None = None,
                      db: str | None = None, store: str | None = None) -> Imported:
        """Add a bundle's tasks after the registry's own: `r.import_bundle(path)`, or
        `Registry.import_bundle(path, home=...)`, which starts an empty registry from the bundle's base."""
        from registry.bundle.importer import import_bundle

        settings = self.settings if self is not None else resolve(home=home, db=db, store=store)
        result = import_bundle(settings, path)
        return Imported(result["initialised"], result["base_sha256"], Rows(Task(**row) for row in result["tasks"]))

    def predictor(self, tasks: Names = None, *, device: str = "auto") -> Predictor:
        """The ready tasks (all, or those named) on one copy of the base: `predict` and `predict_mixed`."""
        from registry.serving import live

        return live.from_registry(self._registry, tasks, device=device)

    def app(self, tasks: Names = None, *, device: str = "auto", backend: str = "eager",
            limits: ServeLimits = ServeLimits(), token: str | None = None) -> FastAPI:
        """`registry serve`'s ASGI app over these tasks (tasks published later are served within
        `limits.poll_seconds`; the read-only dashboard under /ui); run it with uvicorn."""
        from registry.serving import startup

        return startup.app_of(self._tasks(tasks, device, backend), limits, token=token)

    def serve(self, tasks: Names = None, *, host: str = "127.0.0.1", port: int = 8000, device: str = "auto",
              backend: str = "auto", limits: ServeLimits = ServeLimits(), token: str | None = None) -> None:
        """`registry serve`: these tasks (and those published later) over HTTP until SIGTERM or Ctrl-C. The address
        is taken before any model loads; it is logged (INFO) with the tasks served."""
        from registry.serving import startup

        startup.serve(lambda: self._tasks(tasks, device, backend), backend=backend, host=host, port=port,
                      limits=limits, token=token)

    def _tasks(self, names: Names, device: str, backend: str) -> live.RegistryTasks:
        """The registry's ready tasks (all, or those named) as a server follows them."""
        from registry.serving import live

        return live.RegistryTasks(self._registry, names, device=device, backend=backend)


@dataclass(frozen=True)
class Bundle:
    """A bundle written by `export` (a directory or .tar): serves its tasks without the database."""

    path: str

    @classmethod
    def open(cls, path: str | os.PathLike) -> Bundle:
        """The bundle at `path` (checked when it is loaded)."""
        if not Path(path).exists():
            raise BundleError(f"no bundle at {path}: pass a directory or .tar written by `registry export`")
        return cls(str(path))

    def predictor(self, tasks: Names = None, *, device: str = "auto") -> Predictor:
        """The bundle's tasks (all, or those named), every file verified first."""
        from registry.serving.loading import load

        return load(self.path, tasks, device=device)

    def app(self, tasks: Names = None, *, device: str = "auto", backend: str = "eager",
            limits: ServeLimits = ServeLimits(), token: str | None = None) -> FastAPI:
        """`registry serve --bundle`'s ASGI app over the bundle's tasks; run it with uvicorn."""
        from registry.serving import startup

        return startup.app_of(self._tasks(tasks, device, backend), limits, token=token)

    def serve(self, tasks: Names = None, *, host: str = "127.0.0.1", port: int = 8000, device: str = "auto",
              backend: str = "auto", limits: ServeLimits = ServeLimits(), token: str | None = None) -> None:
        """`registry serve --bundle`: the bundle's tasks over HTTP until SIGTERM or Ctrl-C (see Registry.serve)."""
        from registry.serving import startup

        startup.serve(lambda: self._tasks(tasks, device, backend), backend=backend, host=host, port=port,
                      limits=limits, token=token)

    def _tasks(self, names: Names, device: str, backend: str) -> live.FixedTasks:
        """The bundle's tasks (all, or those named), verified once."""
        from registry.serving import live

        return live.FixedTasks(self.path, names, device=device, backend=backend)


@dataclass(frozen=True)
class Exported:
    """What `export` wrote: where, in which dtype, which tasks, and its size. `.bundle` opens it."""

    output: str
    archive: bool
    dtype: str
    tasks: tuple[str, ...]
    files: int
    bytes: int
    base_bytes: int
    adapter_bytes: int

    @property
    def bundle(self) -> Bundle:
        return Bundle(self.output)

    def predictor(self, tasks: Names = None, *, device: str = "auto") -> Predictor:
        """The bundle's predictor (see Bundle.predictor)."""
        return self.bundle.predictor(tasks, device=device)
