"""Read-only queries: the base, tasks in order, one task, score history. Imports neither torch nor transformers."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import case, select

from registry.core import Registry
from registry.errors import UnknownTask
from registry.models import BaseCheckpoint, Evaluation, Metric, Run, Task


def iso(moment: datetime | None) -> str | None:
    """A timestamp as ISO 8601 text (UTC)."""
    return moment.isoformat(timespec="seconds") if moment else None


def base_info(registry: Registry) -> dict[str, Any]:
    """The frozen base: name, source, sha256, model type, parameters."""
    with registry.read() as session:
        return base_row(registry.base(session))


def base_row(base: BaseCheckpoint) -> dict[str, Any]:
    """A base as a plain dict."""
    return {
        "name": base.name,
        "source": base.source,
        "model_type": base.model_type,
        "sha256": base.sha256,
        "parameters": base.parameters,
        "hidden_size": base.config.get("hidden_size") or base.config.get("dim"),
        "layers": base.config.get("num_hidden_layers") or base.config.get("n_layers"),
        "created_at": iso(base.created_at),
    }


def task_row(task: Task, base_parameters: int) -> dict[str, Any]:
    """A task as a plain dict, with its trainable share of the base."""
    share = task.trainable_params / base_parameters if task.trainable_params else None
    return {
        "position": task.position,
        "name": task.name,
        "task_type": task.task_type,
        "metric": task.metric,
        "score": task.score,
        "trainable_params": task.trainable_params,
        "trainable_share": share,
        "adapter_size": task.adapter_size,
        "status": task.status,
        "created_at": iso(task.created_at),
        "ready_at": iso(task.ready_at),
    }


def list_tasks(registry: Registry) -> list[dict[str, Any]]:
    """Ready tasks by position, then tasks still training or failed, oldest first."""
    not_ready_last = case((Task.position.is_(None), 1), else_=0)
    with registry.read() as session:
        base = registry.base(session)
        tasks = session.scalars(select(Task).order_by(not_ready_last, Task.position, Task.id)).all()
        return [task_row(task, base.parameters) for task in tasks]


def find_task(session, name: str, *, ready: bool = False) -> Task:
    """The task called `name` (ready only, if asked), or UnknownTask naming the known ones."""
    query = select(Task).where(Task.name == name)
    if ready:
        query = query.where(Task.status == "ready")
    task = session.scalars(query).first()
    if task is None:
        known = session.scalars(select(Task.name).where(Task.status == "ready").order_by(Task.position)).all()
        raise UnknownTask(f"no {'ready ' if ready else ''}task named {name!r}; known tasks: {', '.join(known) or '(none)'}")
    return task


def show_task(registry: Registry, name: str) -> dict[str, Any]:
    """One task with its columns, label map, artifacts and runs."""
    with registry.read() as session:
        base = registry.base(session)
        task = find_task(session, name)
        row = task_row(task, base.parameters)
        row.update(
            text_columns=task.text_columns,
            label_column=task.label_column,
            labels=task.labels,
            adapter_sha256=task.adapter_sha256,
            config_sha256=task.config_sha256,
            base_sha256=base.sha256,
            runs=[run_row(run) for run in task.runs],
        )
        return row


def run_row(run: Run) -> dict[str, Any]:
    """A run as a plain dict."""
    return {
        "run": run.id,
        "status": run.status,
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


def history(registry: Registry, name: str | None = None) -> list[dict[str, Any]]:
    """Every metric row ever recorded (of one task, or all), oldest first."""
    query = (
        select(Metric, Task.name, Evaluation.tasks_present)
        .join(Task, Metric.task_id == Task.id)
        .outerjoin(Evaluation, Metric.evaluation_id == Evaluation.id)
        .order_by(Metric.id)
    )
    with registry.read() as session:
        if name is not None:
            query = query.where(Metric.task_id == find_task(session, name).id)
        return [
            {
                "task": task_name,
                "run": metric.run_id,
                "evaluation": metric.evaluation_id,
                "tasks_present": tasks_present,
                "split": metric.split,
                "epoch": metric.epoch,
                "step": metric.step,
                "metric": metric.key,
                "value": metric.value,
                "recorded_at": iso(metric.recorded_at),
            }
            for metric, task_name, tasks_present in session.execute(query)
        ]


def score_matrix(registry: Registry) -> dict[str, Any]:
    """The continual-learning matrix R[i][j]: task j's score once the registry held i+1 tasks (GEM's ACC and BWT).

    R[i][j] is the latest evaluation of task j recorded with i+1 tasks present; the diagonal falls back
    to the validation score the task was published with.
    """
    with registry.read() as session:
        tasks = session.scalars(select(Task).where(Task.status == "ready").order_by(Task.position)).all()
        evaluations = session.execute(select(Evaluation.task_id, Evaluation.tasks_present, Evaluation.score)
                                      .order_by(Evaluation.id)).all()
    latest = {(task_id, present): score for task_id, present, score in evaluations}
    size = len(tasks)
    matrix: list[list[float | None]] = [[None] * size for _ in range(size)]
    for i in range(size):
        for j, task in enumerate(tasks[: i + 1]):
            matrix[i][j] = latest.get((task.id, i + 1), task.score if i == j else None)
    final = matrix[-1] if size else []
    acc = sum(final) / size if size and None not in final else None
    backward = [final[j] - matrix[j][j] for j in range(size - 1)] if size > 1 else []
    bwt = sum(backward) / len(backward) if backward and None not in final else None
    return {"tasks": [task.name for task in tasks], "metrics": [task.metric for task in tasks],
            "matrix": matrix, "acc": acc, "bwt": bwt}
