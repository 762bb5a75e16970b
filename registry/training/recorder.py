"""The run recorder: every write about one add-task's runs, and which run a failure is recorded on.

A run is opened `running` (on a new task, whose name it reserves, or on the task a new version is for), records
the base it loaded and where it started, commits every epoch's metrics as they come, and ends `succeeded`, or
`failed`/`interrupted` with the first line of why (the task's name is then released).
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass

import torch
from sqlalchemy import update

from registry.catalog import lifecycle
from registry.catalog.runs import this_host
from registry.data import splits as data
from registry.storage import fields
from registry.storage.core import Opened
from registry.storage.models import Metric, Run, Task
from registry.storage.schema import utcnow
from registry.training import train, transfer
from registry.training.plan import Plan


def software_versions() -> dict[str, str]:
    """Versions that decide a run's numbers."""
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}


def run_fields(config: train.TrainConfig, loaded: data.TaskData, device: torch.device,
               base_sha256: str | None = None) -> dict:
    """A run's fields; host and pid let the next command tell whether its process died.

    `versions` holds what the run ran with: the software, and (once loaded) `base_sha256`, the sha256 of the
    base weights file it loaded, which `registry verify` checks is the registry's base."""
    versions = software_versions() | ({"base_sha256": base_sha256} if base_sha256 else {})
    # The rows skipped because they cannot train go with the hyper-parameters: what this run was trained on.
    hyperparams = {**config.as_dict(), "skipped_rows": loaded.skipped}
    return dict(status="running", hyperparams=hyperparams, seed=config.seed, versions=versions,
                device=str(device), host=this_host(), pid=os.getpid(), data_fingerprint=loaded.fingerprint,
                validation_from=fields.clip(loaded.validation_from, "validation source"))


def start_fields(source: transfer.Source | None, selection: dict | None) -> dict:
    """A run's starting point: the earlier task (and version, and adapter bytes) it started from, and how
    that was chosen."""
    return dict(init_task_id=source.task_id if source else None, init_version=source.version if source else None,
                init_adapter_sha256=source.adapter_sha256 if source else None, selection=selection)


def describe(source: str, loaded: data.TaskData) -> lifecycle.Description:
    """What the task is, from its data."""
    return lifecycle.Description(data_source=source, task_type=loaded.task_type, metric=loaded.metric,
                                 text_columns=list(loaded.text_columns), label_column=loaded.label_column,
                                 labels=list(loaded.labels) if loaded.labels is not None else None)


@dataclass
class RunRecorder:
    """The runs of one add-task in the database; `current` is the open run a failure is recorded on."""

    registry: Opened
    plan: Plan
    task_id: int
    current: int | None

    @classmethod
    def start(cls, registry: Opened, plan: Plan) -> RunRecorder:
        """Open the first run: on the task of a new version, or on a new task whose name it reserves."""
        first = run_fields(plan.grid[0], plan.loaded, plan.target)
        if plan.existing is not None:
            recorder = cls(registry, plan, plan.existing.id, None)
            recorder.current = recorder._insert({**first, **start_fields(None, None)})
            return recorder
        task_id, run_id = lifecycle.reserve(registry, plan.name, plan.base.id, describe(plan.source, plan.loaded),
                                            first)
        return cls(registry, plan, task_id, run_id)

    def record_loaded_base(self, base_sha256: str) -> None:
        """Add the sha256 of the base weights the run loaded to what it ran with (`runs.versions`)."""
        with self.registry.write() as session:
            run = session.get(Run, self.current)
            run.versions = {**run.versions, "base_sha256": base_sha256}

    def record_start(self, source: transfer.Source | None, selection: dict | None) -> None:
        """Record the starting point of the run opened before it was chosen."""
        with self.registry.write() as session:
            session.execute(update(Run).where(Run.id == self.current).values(**start_fields(source, selection)))

    def open(self, config: train.TrainConfig, loaded_base: str, start: transfer.Source | None,
             selection: dict | None) -> int:
        """The open run (the first was opened by `start`), or a new one for `config` from `start`."""
        if self.current is None:
            self.current = self._insert({**run_fields(config, self.plan.loaded, self.plan.target, loaded_base),
                                         **start_fields(start, selection)})
        return self.current

    def _insert(self, values: dict) -> int:
        """A new run of the task in state `running`."""
        with self.registry.write() as session:
            run = Run(task_id=self.task_id, **values)
            session.add(run)
            session.flush()
            return run.id

    def record_epoch(self, epoch: train.EpochResult) -> None:
        """Commit an epoch's training loss and validation scores on the open run (and beat its heart)."""
        with self.registry.write() as session:
            rows = [("loss", "train", epoch.train_loss), *(((k, "validation", v) for k, v in epoch.scores.items()))]
            session.add_all(Metric(task_id=self.task_id, run_id=self.current, key=key, split=split, epoch=epoch.epoch,
                                   value=value) for key, split, value in rows)
            session.execute(update(Run).where(Run.id == self.current).values(heartbeat_at=utcnow()))

    def finish(self, result: train.FitResult, n_trainable: int) -> None:
        """Mark the open run succeeded with its best validation score."""
        with self.registry.write() as session:
            run = session.get(Run, self.current)
            run.status, run.finished_at = "succeeded", utcnow()
            run.score, run.best_epoch, run.trainable_params = result.best_score, result.best_epoch, n_trainable
        self.current = None

    def abandon(self, exc: BaseException) -> None:
        """After a failure: the open run records why, and the task's name is released."""
        interrupted = isinstance(exc, KeyboardInterrupt)
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        with self.registry.write() as session:
            if self.current is not None:
                session.execute(update(Run).where(Run.id == self.current).values(
                    status="interrupted" if interrupted else "failed", finished_at=utcnow(), error=message))
            session.execute(update(Task).where(Task.id == self.task_id, Task.status == "training")
                            .values(status="failed"))
