"""The add-task plan: every check add-task makes before it writes anything, and the runs it will train."""

from __future__ import annotations

import itertools
import logging
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from sqlalchemy import Row, select

from registry.catalog.queries import find_task
from registry.data import splits as data
from registry.errors import DataError, OptionError, TaskExists, TrainingError, UnknownTask, VersionError
from registry.formats import pick_device, validate_name
from registry.model import checkpoint
from registry.options import Auto, FromTask, InitFrom, Scratch
from registry.catalog.runs import sweep_stale_runs
from registry.storage import fields
from registry.storage.core import Opened
from registry.storage.models import Task
from registry.training import train, transfer

if TYPE_CHECKING:
    import torch

log = logging.getLogger("registry")

# The paper's grid (Houlsby et al. 2019, section 3.1) on our scale: learning rates 3e-4..3e-3, sizes 8/64/256
# → we keep 16/64.
SWEEP_LRS = (3e-4, 1e-3, 3e-3)
SWEEP_SIZES = (16, 64)
MAX_ADAPTER_WIDTH = 4  # --adapter-size at most this many times the base's hidden size


@dataclass(frozen=True)
class DataOptions:
    """What the user said about the data; None means infer it."""

    text_columns: tuple[str, ...] | None = None
    label_column: str | None = None
    task_type: str | None = None
    metric: str | None = None
    max_train_samples: int | None = None
    strict: bool = False  # refuse data with rows that cannot train instead of skipping them


def check_field(problem: str | None) -> None:
    """Refuse a task whose text fields could not be stored and read back alike everywhere (registry.storage.fields)."""
    if problem:
        raise DataError(f"{problem}: rename it (the registry stores, exports and imports only printable text of "
                        "bounded length)")


def check_options(*, new_version: bool, promote: bool, init_from: InitFrom, compare_scratch: bool) -> None:
    """Refuse options that cannot go together (the CLI shows these as usage errors)."""
    if promote and not new_version:
        raise OptionError("--promote needs --new-version (a new task's first version is always current)")
    if compare_scratch and isinstance(init_from, Scratch):
        raise OptionError("--compare-scratch needs --init-from auto or TASK (the run is already from scratch)")
    if isinstance(init_from, Auto) and (not isinstance(init_from.shortlist, int) or init_from.shortlist < 1):
        raise OptionError(f"--shortlist {init_from.shortlist!r}: give 1 or more (how many earlier tasks get a trial)")


def check_max_length(max_length: int, base_config: dict) -> None:
    """Refuse a max_length longer than the base reads (its position embeddings)."""
    limit = checkpoint.max_positions(base_config)
    if max_length > limit:
        raise DataError(f"--max-length {max_length} is more than the base's {limit} positions: "
                        f"use --max-length {limit} or less")


def check_adapter_size(adapter_size: int, base_config: dict) -> None:
    """Refuse a bottleneck over MAX_ADAPTER_WIDTH times the base's hidden size: wider only adds parameters (and an
    unbounded size is an unbounded allocation). The ratio leaves the default 64 to tiny test bases."""
    hidden = base_config.get("hidden_size") or base_config.get("dim")
    if isinstance(hidden, int) and adapter_size > MAX_ADAPTER_WIDTH * hidden:
        raise TrainingError(f"--adapter-size {adapter_size} is more than {MAX_ADAPTER_WIDTH} x the base's hidden "
                            f"size {hidden}: use --adapter-size {MAX_ADAPTER_WIDTH * hidden} or less "
                            "(64 is typical)")


@dataclass(frozen=True)
class Plan:
    """What one add-task will train: decided, and every check that can fail run, before anything is written."""

    name: str
    source: str
    base: Row
    existing: Task | None  # the task a new version is for; None for a new task
    loaded: data.TaskData
    config: train.TrainConfig  # as given: transfer's trials and the encoding follow it
    grid: list[train.TrainConfig]  # one run per entry (a sweep's grid, else `config`)
    init_from: InitFrom
    named: transfer.Source | None  # the task `init_from` names
    target: torch.device


def plan_task(registry: Opened, name: str, source: str, config: train.TrainConfig, options: DataOptions, *,
              new_version: bool, sweep: bool, init_from: InitFrom, device: str) -> Plan:
    """Check the name, the config, the source task, the existing task and the data; the runs to train."""
    validate_name(name)
    check_field(fields.problem(source, "data source"))
    train.check_config(config)
    named = transfer.named_source(registry, init_from.name, config.adapter_size) \
        if isinstance(init_from, FromTask) else None
    target = pick_device(device)
    sweep_stale_runs(registry)
    base, existing = existing_task(registry, name, new_version)
    if new_version:
        task_type = options.task_type or existing.task_type
        options = replace(options, task_type=task_type,
                          metric=options.metric or (existing.metric if task_type == existing.task_type else None))
    check_max_length(config.max_length, base.config)
    check_adapter_size(config.adapter_size, base.config)
    loaded = data.load(source, text_columns=options.text_columns, label_column=options.label_column,
                       task_type=options.task_type, metric=options.metric,
                       max_train_samples=options.max_train_samples, seed=config.seed, strict=options.strict)
    check_field(fields.task_problem(source, loaded.label_column, loaded.text_columns, loaded.labels))
    if new_version:
        check_fits(existing, loaded)
    for line in loaded.inferred:
        log.info(line)
    grid = [config]
    if sweep:  # a source fixes the adapter size: the sweep is then over learning rates only
        sizes = SWEEP_SIZES if isinstance(init_from, Scratch) else (config.adapter_size,)
        grid = [replace(config, lr=lr, adapter_size=size) for lr, size in itertools.product(SWEEP_LRS, sizes)]
    return Plan(name, source, base, existing if new_version else None, loaded, config, grid, init_from, named, target)


def existing_task(registry: Opened, name: str, new_version: bool) -> tuple[Row, Task | None]:
    """The base, and the task called `name`: a new version needs it ready (and not retired), a new task its absence
    (or a failed task, whose name it takes over)."""
    with registry.read() as session:
        base = registry.base(session)
        existing = session.scalars(select(Task).where(Task.name == name)).first()
        if new_version and existing is not None and existing.status == "ready":
            find_task(session, name, ready=True)  # refuses a retired task, saying how to restore it
    if new_version:
        if existing is None or existing.status != "ready":
            state = f" ({existing.status})" if existing is not None else ""
            raise UnknownTask(f"--new-version: no ready task named {name!r}{state}: "
                              "drop --new-version to add it as a new task")
    elif existing is not None and existing.status != "failed":
        if existing.retired_at is not None:
            raise TaskExists(f"task {name!r} already exists (retired): pick another name, or "
                             f"`registry restore {name}` to serve it again")
        hint = ", or pass --new-version to train its next version" if existing.status == "ready" else ""
        raise TaskExists(f"task {name!r} already exists ({existing.status}): pick another name{hint}")
    return base, existing


def check_fits(task: Task, loaded: data.TaskData) -> None:
    """Refuse data for a new version of `task` that makes it another task: type, labels, metric or texts differ."""
    labels = list(loaded.labels) if loaded.labels is not None else None
    differences = [(what, theirs, ours) for what, theirs, ours in (
        ("task type", loaded.task_type, task.task_type), ("labels", labels, task.labels),
        ("metric", loaded.metric, task.metric),
        ("number of text columns", len(loaded.text_columns), len(task.text_columns)),
    ) if theirs != ours]
    if differences:
        what, theirs, ours = differences[0]
        raise VersionError(f"--new-version of {task.name!r}: the data has {what} {theirs}, the task {ours}: "
                           "that is another task; add it under a new name without --new-version")
