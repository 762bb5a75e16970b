"""Forward transfer: a new task's adapters and LayerNorms start from an earlier task's stored ones.

`add-task --init-from TASK` names the source; `--init-from auto` scores every earlier task (and `none`,
the paper's initialisation) with a cheap probe and takes the best, or `none` unless a source beats it
by `AUTO_MARGIN`. The probe: the [CLS] features of up to `PROBE_ROWS` training rows through the frozen
base with the candidate's adapters (a forward pass, no training), a ridge classifier or regressor on
them, and the task's own metric on its 5-fold out-of-fold predictions. A source whose adapters already
make the [CLS] vector say what the new task needs scores high.

The head is always new (the label spaces of two tasks rarely mean the same). The source's stored files
are only read: the new task gets its own copy of the weights, and adding it changes no earlier task.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from sqlalchemy import select

from registry import metrics, train
from registry.adapters import AdapterModel
from registry.catalog import find_task
from registry.core import Registry
from registry.encoding import Encoded, batches
from registry.errors import TrainingError
from registry.schema import tasks

PROBE_ROWS = 1000
PROBE_FOLDS = 5
RIDGE = 0.1  # ridge penalty per training row, on standardised features
AUTO_MARGIN = 0.02  # a source must beat `none` on the probe by this much (in the task's metric) to be chosen
CRITERION = (f"ridge probe on [CLS] features of {PROBE_ROWS} training rows, {PROBE_FOLDS}-fold, "
             f"the task's metric; a source must beat none by {AUTO_MARGIN}")


@dataclass(frozen=True)
class Source:
    """An earlier task's current version, whose adapters and LayerNorms a new run starts from."""

    task_id: int
    name: str
    version: int
    adapter_sha256: str
    adapter_size: int


def source_of(row) -> Source:
    """A task row's current version as a Source."""
    return Source(row.id, row.name, row.current_version, row.adapter_sha256, row.adapter_size)


def named_source(registry: Registry, name: str, adapter_size: int) -> Source:
    """The ready task `name` as a source for a run with adapters of `adapter_size`, or a one-line error."""
    with registry.read() as session:
        source = source_of(find_task(session, name, ready=True))
    if source.adapter_size != adapter_size:
        raise TrainingError(f"--init-from {name}: its adapters have size {source.adapter_size}, this run's "
                            f"{adapter_size}: pass --adapter-size {source.adapter_size}")
    return source


def candidates(registry: Registry) -> list[Source]:
    """The ready, not retired tasks in order: what `auto` may start from (a new version, from its own task)."""
    query = (select(tasks).where(tasks.c.status == "ready", tasks.c.retired_at.is_(None))
             .order_by(tasks.c.position))
    with registry.query() as connection:
        return [source_of(row) for row in connection.execute(query)]


def source_tensors(registry: Registry, source: Source) -> dict[str, torch.Tensor]:
    """The source's adapters and LayerNorms (its head left out), read from the verified store."""
    stored = load_tensors(registry.store.get(source.adapter_sha256))
    return {key: value for key, value in stored.items() if not key.startswith("head.")}


def start_from(model: AdapterModel, tensors: dict[str, torch.Tensor]) -> None:
    """Copy a source's adapters and LayerNorms into the model's task slot 0; the head stays as initialised."""
    state = model.task_state_dict()
    state.update(tensors)
    model.load_task_state_dict(state)


@dataclass(frozen=True)
class Choice:
    """What `auto` chose, and the figures it chose by (recorded in the run as `selection`)."""

    source: Source | None
    selection: dict


def choose(registry: Registry, model: AdapterModel, train_set: Encoded, *, task_type: str, metric: str,
           adapter_size: int, pad_id: int, device: torch.device, seed: int,
           echo: Callable[[str], None] = lambda line: None) -> Choice:
    """Score `none` and every earlier task with adapters of `adapter_size` by the probe; pick the best.

    `model` is a freshly initialised model for the new task (its slot 0 is `none`); it is left as it was.
    """
    started = time.perf_counter()
    rows = probe_rows(train_set, seed)
    fresh = model.task_state_dict()
    scores: dict[str | None, float] = {None: probe(model, rows, task_type, metric, pad_id, device, seed)}
    earlier = candidates(registry)
    sources = [s for s in earlier if s.adapter_size == adapter_size]
    skipped = [s.name for s in earlier if s.adapter_size != adapter_size]
    for source in sources:
        start_from(model, source_tensors(registry, source))
        scores[source.name] = probe(model, rows, task_type, metric, pad_id, device, seed)
    model.load_task_state_dict(fresh)
    best = max(sources, key=lambda s: scores[s.name], default=None)
    chosen = best if best is not None and scores[best.name] - scores[None] > AUTO_MARGIN else None
    figures = ", ".join(f"{name or 'none'} {score:.4f}" for name, score in scores.items())
    if chosen is not None:
        why = f"{chosen.name} scored {scores[chosen.name] - scores[None]:+.4f} over none on the probe"
    elif best is not None:
        why = f"no source beat none by more than {AUTO_MARGIN} on the probe (best: {best.name})"
    else:
        why = "no earlier task with adapters of this size"
    echo(f"--init-from auto: probe {metric} on {len(rows)} training rows: {figures} → "
         f"{chosen.name if chosen else 'none'} ({why})")
    selection = {"requested": "auto", "criterion": CRITERION, "rows": len(rows),
                 "scores": [{"task": name, "score": score} for name, score in scores.items()],
                 "skipped": skipped, "chosen": chosen.name if chosen else None, "why": why,
                 "seconds": round(time.perf_counter() - started, 3)}
    return Choice(chosen, selection)


def probe_rows(train_set: Encoded, seed: int) -> Encoded:
    """A seeded subset of at most PROBE_ROWS training rows."""
    n = len(train_set)
    keep = np.sort(np.random.default_rng(seed).permutation(n)[:PROBE_ROWS])
    types = train_set.token_type_ids
    return Encoded(input_ids=[train_set.input_ids[i] for i in keep], labels=train_set.labels[keep],
                   token_type_ids=[types[i] for i in keep] if types is not None else None)


def features(model: AdapterModel, rows: Encoded, pad_id: int, device: torch.device) -> np.ndarray:
    """The [CLS] representation of every row, in row order, in eval mode (no dropout)."""
    model.to(device)
    model.eval()
    out = np.empty((len(rows), model.encoder.config.hidden_size), dtype=np.float64)
    with torch.inference_mode():
        for batch in batches(rows, 64, pad_id=pad_id, shuffle=False, seed=0):
            inputs = train.model_inputs(batch, device)
            out[batch["index"].numpy()] = model.encode(**inputs).float().cpu().numpy()
    return out


def probe(model: AdapterModel, rows: Encoded, task_type: str, metric: str, pad_id: int, device: torch.device,
          seed: int) -> float:
    """The task's metric of a ridge probe on the model's [CLS] features, on out-of-fold predictions."""
    x = features(model, rows, pad_id, device)
    labels = rows.labels
    if task_type == "regression":
        targets = labels.astype(np.float64)[:, None]
    else:
        targets = np.eye(int(labels.max()) + 1)[labels]
    folds = np.random.default_rng(seed).permutation(len(labels)) % PROBE_FOLDS
    predicted = np.empty_like(targets)
    for fold in range(PROBE_FOLDS):
        fit, held = folds != fold, folds == fold
        if not held.any():
            continue
        predicted[held] = ridge(x[fit], targets[fit], x[held])
    if task_type == "regression":
        return metrics.compute(metric, predicted[:, 0], labels)[metric]
    return metrics.compute(metric, predicted.argmax(axis=1), labels)[metric]


def ridge(x: np.ndarray, y: np.ndarray, x_new: np.ndarray) -> np.ndarray:
    """Ridge regression of y on standardised x with an intercept; its predictions for x_new."""
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    a, b = (x - mean) / scale, (x_new - mean) / scale
    y_mean = y.mean(axis=0)
    weights = np.linalg.solve(a.T @ a + RIDGE * len(a) * np.eye(a.shape[1]), a.T @ (y - y_mean))
    return b @ weights + y_mean
