"""Read-only queries: the base, tasks in order, one task, score history.

Core queries on registry.storage.schema's tables: the read commands import neither torch, transformers nor the ORM.
Rows are read by column name, so the helpers here take ORM objects from the writers as well.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, Select, case, func, select
from sqlalchemy.sql import alias

from registry.storage.core import Opened
from registry.errors import UnknownTask
from registry.formats import hidden_size, layer_count
from registry.storage.schema import evaluations, metrics, runs, task_events, task_versions, tasks


def iso(moment: datetime | None) -> str | None:
    """A timestamp as ISO 8601 text (UTC)."""
    return moment.isoformat(timespec="seconds") if moment else None


def base_info(registry: Opened) -> dict[str, Any]:
    """The frozen base: name, source, sha256, model type, parameters."""
    with registry.query() as connection:
        return base_row(registry.base(connection))


def base_row(base: Row) -> dict[str, Any]:
    """A base as a plain dict."""
    return {
        "name": base.name,
        "source": base.source,
        "model_type": base.model_type,
        "sha256": base.sha256,
        "parameters": base.parameters,
        "hidden_size": hidden_size(base.config),
        "layers": layer_count(base.config),
        "created_at": iso(base.created_at),
    }


def task_row(task: Row, base_parameters: int) -> dict[str, Any]:
    """A task as a plain dict, with its trainable share of the base."""
    share = task.trainable_params / base_parameters if task.trainable_params else None
    return {
        "position": task.position,
        "name": task.name,
        "version": task.current_version,
        "task_type": task.task_type,
        "metric": task.metric,
        "score": task.score,
        "trainable_params": task.trainable_params,
        "trainable_share": share,
        "adapter_size": task.adapter_size,
        "status": task.status,
        "created_at": iso(task.created_at),
        "ready_at": iso(task.ready_at),
        "retired_at": iso(task.retired_at),
    }


def list_tasks(registry: Opened, *, retired: bool = False) -> list[dict[str, Any]]:
    """Ready tasks by position, then tasks still training or failed, oldest first; retired ones only if asked."""
    not_ready_last = case((tasks.c.position.is_(None), 1), else_=0)
    query = select(tasks).order_by(not_ready_last, tasks.c.position, tasks.c.id)
    if not retired:
        query = query.where(tasks.c.retired_at.is_(None))
    with registry.query() as connection:
        base = registry.base(connection)
        rows = connection.execute(query)
        return [task_row(task, base.parameters) for task in rows]


def find_task(connection, name: str, *, ready: bool = False, retired: bool = False) -> Row:
    """The row of the task called `name`, or UnknownTask naming the known ones.

    With `ready`, only a ready task, and a retired one only if `retired` is also given (otherwise the
    error says how to restore it). `connection` is a Core connection or an ORM session.
    """
    query = select(tasks).where(tasks.c.name == name)
    if ready:
        query = query.where(tasks.c.status == "ready")
    task = connection.execute(query).first()
    if task is not None and ready and not retired and task.retired_at is not None:
        raise UnknownTask(f"task {name!r} is retired: `registry restore {name}` brings it back")
    if task is None:
        known = connection.scalars(served(tasks.c.name)).all()
        raise UnknownTask(
            f"no {'ready ' if ready else ''}task named {name!r}; known tasks: {', '.join(known) or '(none)'}"
        )
    return task


def show_task(registry: Opened, name: str) -> dict[str, Any]:
    """One task with its columns, label map, artifacts, versions, events (who moved its pointer) and runs."""
    with registry.query() as connection:
        base = registry.base(connection)
        task = find_task(connection, name)
        source = alias(tasks)
        task_runs = connection.execute(select(runs, source.c.name.label("init_task"))
                                       .outerjoin(source, runs.c.init_task_id == source.c.id)
                                       .where(runs.c.task_id == task.id).order_by(runs.c.id)).all()
        versions = connection.execute(select(task_versions).where(task_versions.c.task_id == task.id)
                                      .order_by(task_versions.c.version)).all()
        events = connection.execute(select(task_events).where(task_events.c.task_id == task.id)
                                    .order_by(task_events.c.id)).all()
        row = task_row(task, base.parameters)
        row.update(
            text_columns=task.text_columns,
            label_column=task.label_column,
            labels=task.labels,
            adapter_sha256=task.adapter_sha256,
            config_sha256=task.config_sha256,
            base_sha256=base.sha256,
            versions=[version_row(version, task.current_version) for version in versions],
            events=[event_row(event) for event in events],
            runs=[run_row(run) for run in task_runs],
        )
        return row


def version_row(version: Row, current: int | None) -> dict[str, Any]:
    """A task's version as a plain dict: current or candidate, and why it was or was not made current when published."""
    return {
        "version": version.version,
        "current": version.version == current,
        "score": version.score,
        "run": version.run_id,
        "adapter_size": version.adapter_size,
        "trainable_params": version.trainable_params,
        "data_source": version.data_source,
        "adapter_sha256": version.adapter_sha256,
        "config_sha256": version.config_sha256,
        "created_at": iso(version.created_at),
        "why": version.why,
    }


def event_row(event: Row) -> dict[str, Any]:
    """A move of a task's pointer as a plain dict: which, to which version, when, by whom and why."""
    return {"at": iso(event.at), "action": event.action, "version": event.version, "by": event.by, "why": event.why}


def run_row(run: Row) -> dict[str, Any]:
    """A run as a plain dict; `init_from` is the earlier task's version its adapters started from (None: scratch)."""
    return {
        "run": run.id,
        "status": run.status,
        "init_from": start_point(run),
        "selection": run.selection,
        "hyperparams": run.hyperparams,
        "seed": run.seed,
        "device": run.device,
        "score": run.score,
        "best_epoch": run.best_epoch,
        "trainable_params": run.trainable_params,
        "validation_from": run.validation_from,
        "versions": run.versions,
        "started_at": iso(run.started_at),
        "finished_at": iso(run.finished_at),
        "error": run.error,
    }


def start_point(run: Row) -> dict[str, Any] | None:
    """Where a run's adapters started: the earlier task (`init_task`, joined by name), version and adapter bytes."""
    if run.init_task_id is None:
        return None
    return {"task": run.init_task, "version": run.init_version, "adapter_sha256": run.init_adapter_sha256}


def history(registry: Opened, name: str | None = None) -> list[dict[str, Any]]:
    """Every metric row ever recorded (of one task, or all), oldest first, with the version it measured.

    A run's rows belong to the version it produced (none for a run that was not published); an evaluation's
    to the version it scored.
    """
    version = func.coalesce(task_versions.c.version, evaluations.c.version)
    query = (
        select(tasks.c.name, version, metrics.c.run_id, metrics.c.evaluation_id, evaluations.c.tasks_present,
               metrics.c.split, metrics.c.epoch, metrics.c.step, metrics.c.key, metrics.c.value, metrics.c.recorded_at)
        .join(tasks, metrics.c.task_id == tasks.c.id)
        .outerjoin(evaluations, metrics.c.evaluation_id == evaluations.c.id)
        .outerjoin(task_versions, metrics.c.run_id == task_versions.c.run_id)
        .order_by(metrics.c.id)
    )
    with registry.query() as connection:
        if name is not None:
            query = query.where(metrics.c.task_id == find_task(connection, name).id)
        return [
            {
                "task": task_name,
                "version": version_number,
                "run": run_id,
                "evaluation": evaluation_id,
                "tasks_present": tasks_present,
                "split": split,
                "epoch": epoch,
                "step": step,
                "metric": key,
                "value": value,
                "recorded_at": iso(recorded_at),
            }
            for (task_name, version_number, run_id, evaluation_id, tasks_present, split, epoch, step, key, value,
                 recorded_at) in connection.execute(query)
        ]


def score_matrix(registry: Opened) -> dict[str, Any]:
    """The continual-learning matrix R[i][j]: task j's score once the registry held i+1 tasks (GEM's ACC, BWT, FWT).

    R[i][j] is the latest evaluation of task j recorded with i+1 tasks present; the diagonal falls back
    to the validation score the task was published with. FWT is per task, see `forward_transfer`.
    """
    with registry.query() as connection:
        ready = connection.execute(select(tasks).where(tasks.c.status == "ready").order_by(tasks.c.position)).all()
        scores = connection.execute(select(evaluations.c.task_id, evaluations.c.tasks_present, evaluations.c.score)
                                    .order_by(evaluations.c.id)).all()
        published = dict(connection.execute(
            select(task_versions.c.task_id, task_versions.c.run_id).join(tasks, task_versions.c.task_id == tasks.c.id)
            .where(task_versions.c.version == tasks.c.current_version)).all())
        succeeded = connection.execute(
            select(runs.c.id, runs.c.task_id, runs.c.score, runs.c.seed, runs.c.data_fingerprint, runs.c.hyperparams,
                   runs.c.init_task_id).where(runs.c.status == "succeeded").order_by(runs.c.id)).all()
    latest = {(task_id, present): score for task_id, present, score in scores}
    size = len(ready)
    matrix: list[list[float | None]] = [[None] * size for _ in range(size)]
    for i in range(size):
        for j, task in enumerate(ready[: i + 1]):
            matrix[i][j] = latest.get((task.id, i + 1), task.score if i == j else None)
    final = matrix[-1] if size else []
    # a cell is blank until `eval` measures it with that many tasks present; ACC and BWT need every cell they read
    complete = size and None not in final and None not in (matrix[j][j] for j in range(size))
    acc = sum(final) / size if complete else None
    bwt = sum(final[j] - matrix[j][j] for j in range(size - 1)) / (size - 1) if complete and size > 1 else None
    by_task: dict[int, list[Row]] = {}
    for run in succeeded:
        by_task.setdefault(run.task_id, []).append(run)
    fwt = [forward_transfer(published.get(task.id), by_task.get(task.id, [])) for task in ready]
    measured = [value for value in fwt if value is not None]
    return {"tasks": [task.name for task in ready], "metrics": [task.metric for task in ready],
            "matrix": matrix, "acc": acc, "bwt": bwt, "fwt": fwt,
            "fwt_mean": sum(measured) / len(measured) if measured else None}


def forward_transfer(published_run: int | None, succeeded: list[Row]) -> float | None:
    """A task's forward transfer: its score when started from an earlier task minus its score from scratch.

    `succeeded` holds the task's succeeded runs, oldest first.
    GEM's FWT adapted to one adapter per task: the two runs are of the task's current version's training
    (same data, seed and hyper-parameters as the run that produced it, as `add-task --compare-scratch` trains
    them), the latest of each kind. None until both exist.
    """
    run = next((r for r in succeeded if r.id == published_run), None)
    if run is None:
        return None
    alike = [r for r in succeeded if (r.data_fingerprint, r.seed, r.hyperparams)
             == (run.data_fingerprint, run.seed, run.hyperparams)]
    transferred = [r.score for r in alike if r.init_task_id is not None]
    scratch = [r.score for r in alike if r.init_task_id is None]
    return transferred[-1] - scratch[-1] if transferred and scratch else None


def ready_tasks(session, names: Sequence[str] | None) -> list[Row]:
    """Rows of ready, unretired tasks by position, each with its current version's adapter: all, or those named
    (UnknownTask lists the known ones)."""
    if names is not None and not names:
        raise UnknownTask("no task named: pass all, or NAME,NAME…")
    if names is None:
        rows = served_rows(session)
        if not rows:
            raise UnknownTask("the registry has no ready tasks: add one with `registry add-task NAME --data PATH`")
        return list(rows)
    picked = {name: find_task(session, name, ready=True) for name in names}
    return sorted(picked.values(), key=lambda task: task.position)


def served_rows(session, names: Sequence[str] | None = None) -> list[Row]:
    """Rows of the tasks a registry serves now, by position, each with its current version's adapter: every ready,
    unretired task, or those of `names` that are.

    The one rule of what is served: `ready_tasks` and a server following the registry (serving.live) both use it.
    """
    query = served()
    if names is not None:
        query = query.where(tasks.c.name.in_(names))
    return list(session.execute(query).all())


def served(*columns) -> Select:
    """SELECT (of `columns`, default whole rows) of the tasks served now: ready, not retired, by position.

    The one place this rule is written: served_rows, find_task's list of known names and transfer's candidates.
    """
    return (select(*(columns or (tasks,))).where(tasks.c.status == "ready", tasks.c.retired_at.is_(None))
            .order_by(tasks.c.position))


def taken_names(connection, names: Sequence[str]) -> list[str]:
    """Those of `names` a task holds (any task but a failed one, whose name a new task may take over)."""
    return list(connection.scalars(select(tasks.c.name).where(tasks.c.name.in_(names), tasks.c.status != "failed")))
