"""Forward transfer: a new task's adapters and LayerNorms start from an earlier task's stored ones.

`add-task --init-from TASK` names the source; `--init-from auto` chooses in three steps:
1. rank every earlier task with adapters of the run's size by LogME on its [CLS] features of a few hundred
   of the new task's training rows (registry.training.selection: one forward pass each, no training);
2. trial the `shortlist` best-ranked (3 by default) and `none`: each trains the new task briefly from that
   start — one epoch over at most `TRIAL_ROWS` training rows, the run's own learning rate, schedule and seed —
   and is measured on `HELD_ROWS` other training rows, by Spearman's rank correlation for regression and the
   loss for classification;
3. keep `none` unless the best trial beats it in 95% of paired bootstrap resamples of the held-out rows (the
   guard: a win inside the trial's own noise is no win).
A candidate that cannot be used (adapters of another size, a stored file that fails verification) is skipped
with one line. Every figure is recorded in the run's `selection`.

The head is always new (the label spaces of two tasks rarely mean the same). The source's stored files
are only read: the new task gets its own copy of the weights, and adding it changes no earlier task.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import torch
from safetensors.torch import load as load_tensors

from registry.training import selection, train
from registry.model.adapters import AdapterModel
from registry.catalog.queries import find_task, served
from registry.storage.core import Opened
from registry.data.encoding import Encoded
from registry.errors import ArtifactError, TrainingError

log = logging.getLogger("registry")

TRIAL_ROWS = 768  # 24 steps of 32
HELD_ROWS = 256


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


def named_source(registry: Opened, name: str, adapter_size: int) -> Source:
    """The ready task `name` as a source for a run with adapters of `adapter_size`, or a one-line error."""
    with registry.read() as session:
        source = source_of(find_task(session, name, ready=True))
    if source.adapter_size != adapter_size:
        raise TrainingError(f"--init-from {name}: its adapters have size {source.adapter_size}, this run's "
                            f"{adapter_size}: pass --adapter-size {source.adapter_size}")
    return source


def candidates(registry: Opened) -> list[Source]:
    """The ready, not retired tasks in order: what `auto` may start from (a new version, from its own task)."""
    with registry.query() as connection:
        return [source_of(row) for row in connection.execute(served())]


def source_tensors(registry: Opened, source: Source) -> dict[str, torch.Tensor]:
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


@dataclass(frozen=True)
class Trial:
    """A short run from one start: its outputs on the held-out rows and its figure (higher is better)."""

    name: str | None
    score: float
    outputs: np.ndarray


def choose(registry: Opened, build: Callable[[], AdapterModel], train_set: Encoded, config: train.TrainConfig, *,
           task_type: str, metric: str, pad_id: int, device: torch.device, shortlist: int) -> Choice:
    """Rank every earlier task by LogME, trial the `shortlist` best and `none`, choose with the guard; the
    choice's short block is logged (INFO) to the `registry` logger.

    `build()` makes the new task's freshly initialised model (the same weights every call).
    """
    started = time.perf_counter()
    trial_rows, held_rows = trial_split(train_set, config.seed)
    sources, skipped = [], []
    for source in candidates(registry):
        if source.adapter_size != config.adapter_size:
            skipped.append((source.name, f"adapters of size {source.adapter_size}, this run's {config.adapter_size}"))
        else:
            sources.append(source)
    ranking, unusable = rank(registry, build(), sources, train_set, config.seed, task_type=task_type, pad_id=pad_id,
                             device=device)
    skipped += unusable
    for name, why in skipped:  # a warning: it shows with --quiet too
        log.warning(f"--init-from auto: skipped {name} ({why})")
    ranked_seconds = time.perf_counter() - started
    picked = selection.shortlist(ranking, shortlist)
    by_name = {source.name: source for source in sources}
    trials = [trial(registry, build(), by_name.get(name), trial_rows, held_rows, config, task_type=task_type,
                    metric=metric, pad_id=pad_id, device=device) for name in ([None, *picked] if picked else [])]
    chosen, guard, why = decide(trials, held_rows.labels, task_type, config.seed)
    record = {"requested": "auto", "criterion": selection.criterion(task_type), "k": shortlist,
              "rows": [len(trial_rows), len(held_rows)], "feature_rows": min(selection.FEATURE_ROWS, len(train_set)),
              "ranking": [{"task": name, "logme": value} for name, value in ranking], "shortlist": picked,
              "trials": [{"task": t.name, selection.criterion(task_type): shown(t.score, task_type)} for t in trials],
              "guard": guard,
              "skipped": [{"task": name, "why": reason} for name, reason in skipped],
              "chosen": chosen, "why": why, "ranking_seconds": round(ranked_seconds, 3),
              "seconds": round(time.perf_counter() - started, 3)}
    for line in describe(record):
        log.info(line)
    return Choice(by_name[chosen] if chosen else None, record)


def rank(registry: Opened, model: AdapterModel, sources: list[Source], train_set: Encoded, seed: int, *,
         task_type: str, pad_id: int, device: torch.device) -> tuple[list[tuple[str | None, float]], list]:
    """LogME of `none` (the fresh start) and of every source whose stored weights load, best first; and the
    sources skipped, with why."""
    rows = subset(train_set, np.random.default_rng(seed).permutation(len(train_set))[:selection.FEATURE_ROWS])
    ranking, skipped = [], []
    for source in [None, *sources] if sources else []:
        if source is not None:
            try:
                start_from(model, source_tensors(registry, source))
            except ArtifactError as exc:
                skipped.append((source.name, str(exc)))
                continue
        features = selection.cls_features(model, rows, pad_id=pad_id, device=device)
        ranking.append((source.name if source else None, selection.logme(features, rows.labels, task_type)))
    return sorted(ranking, key=lambda item: -item[1]), skipped


def decide(trials: list[Trial], labels: np.ndarray, task_type: str, seed: int) -> tuple[str | None, dict | None, str]:
    """The start the trials choose: the best source if it beats `none` in `selection.CONFIDENCE` of the
    bootstrap resamples, else none; with the guard's figures and why."""
    sources = [t for t in trials if t.name is not None]
    if not sources:
        return None, None, "no usable earlier task with adapters of this size"
    none, best = trials[0], max(sources, key=lambda t: t.score)
    share = selection.wins(best.outputs, none.outputs, labels, task_type, seed)
    chosen = best.name if share >= selection.CONFIDENCE else None
    guard = {"best": best.name, "wins": share, "needed": selection.CONFIDENCE,
             "fired": chosen is None and best.score > none.score}
    beats = f"{best.name} beats none in {share:.0%} of {selection.RESAMPLES} resamples of the held-out rows"
    return chosen, guard, f"{beats}; needs {selection.CONFIDENCE:.0%}"


def shown(score: float, task_type: str) -> float:
    """A trial's figure as recorded and printed: the loss itself (lower is better), or Spearman."""
    return -score if selection.criterion(task_type) == "loss" else score


def describe(record: dict) -> list[str]:
    """auto's short block: the ranking (the first five), the shortlist, the trials, the choice."""
    def name(task: str | None) -> str:
        return task or "none"

    ranking = record["ranking"]
    top = ", ".join(f"{name(r['task'])} {r['logme']:.3f}" for r in ranking[:5])
    more = f" (+{len(ranking) - 5} more)" if len(ranking) > 5 else ""
    lines = [f"--init-from auto: LogME on {record['feature_rows']} training rows, {len(ranking)} starts in "
             f"{record['ranking_seconds']:.1f} s: {top}{more}" if ranking else "--init-from auto: no candidate"]
    if record["trials"]:
        trained, held = record["rows"]
        lines.append(f"  shortlist (k={record['k']}): {', '.join(record['shortlist'])}; trials, held-out "
                     f"{record['criterion']} after 1 epoch on {trained} rows ({held} held out): "
                     + ", ".join(f"{name(t['task'])} {t[record['criterion']]:.4f}" for t in record["trials"]))
    lines.append(f"  → {name(record['chosen'])} ({record['why']})")
    return lines


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


def trial(registry: Opened, model: AdapterModel, source: Source | None, trial_rows: Encoded, held_rows: Encoded,
          config: train.TrainConfig, *, task_type: str, metric: str, pad_id: int, device: torch.device) -> Trial:
    """One epoch on `trial_rows` from `source` (or the fresh start) with the run's recipe; scored on `held_rows`."""
    if source is not None:
        start_from(model, source_tensors(registry, source))
    train.fit(model, trial_rows, held_rows, replace(config, epochs=1), task_type=task_type, metric=metric,
              pad_id=pad_id, device=device)  # one epoch: the model ends with the weights fit kept
    outputs = train.predict(model, held_rows, pad_id=pad_id, device=device)
    return Trial(source.name if source else None, selection.trial_score(outputs, held_rows.labels, task_type), outputs)
