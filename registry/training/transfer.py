"""Forward transfer: a new task's adapters and LayerNorms start from an earlier task's stored ones.

`add-task --init-from TASK` names the source; `--init-from auto` tries `none` (the paper's
initialisation) and every earlier task in a short trial and takes the best, or `none` unless a source
beats it by `AUTO_MARGIN`. A trial trains the new task briefly from that start — one epoch over
`TRIAL_ROWS` training rows, the run's own learning rate, schedule and seed — and measures the loss on
`HELD_ROWS` other training rows: does training go better from here? Each trial costs a short run
(auto took 1.5-2x a run from scratch with two to four earlier tasks). Neither it nor the first design,
a ridge probe of the frozen [CLS] features, is reliable yet: both rate SST-2's adapters a good start for
STS-B, which then trains worse than scratch (README, docs/benchmarks.md).

The head is always new (the label spaces of two tasks rarely mean the same). The source's stored files
are only read: the new task gets its own copy of the weights, and adding it changes no earlier task.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from safetensors.torch import load as load_tensors

from registry.training import train
from registry.model.adapters import AdapterModel
from registry.catalog.queries import find_task, served
from registry.storage.core import Registry
from registry.data.encoding import Encoded
from registry.errors import ArtifactError, TrainingError

log = logging.getLogger("registry")

TRIAL_ROWS = 768  # 24 steps of 32
HELD_ROWS = 256
AUTO_MARGIN = 0.02  # a source's held-out loss must be this fraction below none's to be chosen
CRITERION = (f"held-out loss ({HELD_ROWS} training rows) after one epoch on {TRIAL_ROWS} other training rows "
             f"from each start; a source must beat none by {AUTO_MARGIN:.0%}")


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
    with registry.query() as connection:
        return [source_of(row) for row in connection.execute(served())]


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


def choose(registry: Registry, build: Callable[[], AdapterModel], train_set: Encoded, config: train.TrainConfig, *,
           task_type: str, metric: str, pad_id: int, device: torch.device) -> Choice:
    """Try `none` and every earlier task with adapters of the run's size; pick the best start.

    `build()` makes the new task's freshly initialised model (the same weights every call).
    """
    started = time.perf_counter()
    trial_rows, held_rows = trial_split(train_set, config.seed)
    earlier = candidates(registry)
    sources = [s for s in earlier if s.adapter_size == config.adapter_size]
    skipped = [s.name for s in earlier if s.adapter_size != config.adapter_size]
    losses: dict[str | None, float] = {}
    for source in [None, *sources] if sources else []:  # with no source there is nothing to compare
        model = build()
        try:
            if source is not None:
                start_from(model, source_tensors(registry, source))
            loss = trial(model, trial_rows, held_rows, config, task_type=task_type, metric=metric, pad_id=pad_id,
                         device=device)
        except (ArtifactError, TrainingError) as exc:
            if source is None:
                raise
            loss = exc
        if source is not None and not (isinstance(loss, float) and math.isfinite(loss)):  # an unusable start
            why = loss if isinstance(loss, Exception) else "its trial loss is not finite: run `registry verify`"
            log.warning(f"--init-from auto: skipped {source.name}: {why}")
            skipped.append(source.name)
            continue
        losses[source.name if source else None] = loss
    best = min((s for s in sources if s.name in losses), key=lambda s: losses[s.name], default=None)
    chosen = best if best is not None and losses[best.name] < (1 - AUTO_MARGIN) * losses[None] else None
    figures = ", ".join(f"{name or 'none'} {loss:.4f}" for name, loss in losses.items())
    if chosen is not None:
        why = f"{chosen.name}'s held-out loss is {1 - losses[chosen.name] / losses[None]:.1%} below none's"
    elif best is not None:
        why = f"no source's held-out loss is {AUTO_MARGIN:.0%} below none's (best: {best.name})"
    else:
        why = "no earlier task with adapters of this size"
    tried = (f"held-out loss after a short trial from each start on {len(trial_rows)} + {len(held_rows)} training "
             f"rows: {figures} " if losses else "")
    log.info(f"--init-from auto: {tried}→ {chosen.name if chosen else 'none'} ({why})")
    selection = {"requested": "auto", "criterion": CRITERION, "rows": [len(trial_rows), len(held_rows)],
                 "losses": [{"task": name, "loss": loss} for name, loss in losses.items()],
                 "skipped": skipped, "chosen": chosen.name if chosen else None, "why": why,
                 "seconds": round(time.perf_counter() - started, 3)}
    return Choice(chosen, selection)


def subset(encoded: Encoded, keep: np.ndarray) -> Encoded:
    """The rows `keep` of `encoded`, in that order."""
    types = encoded.token_type_ids
    return Encoded(input_ids=[encoded.input_ids[i] for i in keep], labels=encoded.labels[keep],
                   token_type_ids=[types[i] for i in keep] if types is not None else None)


def trial_split(train_set: Encoded, seed: int) -> tuple[Encoded, Encoded]:
    """Seeded, disjoint trial and held-out rows of the training split (a quarter held out when it is small)."""
    order = np.random.default_rng(seed).permutation(len(train_set))
    held = min(HELD_ROWS, max(1, len(order) // 4))
    return subset(train_set, order[held:held + TRIAL_ROWS]), subset(train_set, order[:held])


def trial(model: AdapterModel, trial_rows: Encoded, held_rows: Encoded, config: train.TrainConfig, *,
          task_type: str, metric: str, pad_id: int, device: torch.device) -> float:
    """The mean loss on `held_rows` after one epoch on `trial_rows` with the run's recipe."""
    train.fit(model, trial_rows, held_rows, replace(config, epochs=1), task_type=task_type, metric=metric,
              pad_id=pad_id, device=device)  # one epoch: the model ends with the weights fit kept
    outputs = torch.from_numpy(train.predict(model, held_rows, pad_id=pad_id, device=device))
    labels = torch.from_numpy(held_rows.labels)
    return float(train.loss_fn(outputs, labels, task_type))
