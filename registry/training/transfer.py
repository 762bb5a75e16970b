"""Forward transfer: a new task's adapters and LayerNorms start from an earlier task's stored ones.

`add-task --init-from TASK` names the source; `--init-from auto` chooses in three steps, at a cost that does not
grow with the number of earlier tasks:
1. rank every earlier task with adapters of the run's size by the cosine of its stored text embedding and the new
   task's, centred on their mean (registry.training.embedding: computed once when each task is added, so ranking
   is a dot product per earlier task, no forward pass); the `shortlist` most similar (3 by default) go on, one
   per kind of data (tasks whose embeddings are as alike as one data set's samples: the best-scoring stands for
   them, `embedding.shortlist`). Earlier tasks without an embedding (added before schema 0005, or imported from a
   bundle) fill only the places similarity leaves empty: the `FALLBACK` latest of them are ranked by LogME
   (registry.training.selection: a forward pass each, so at most `FALLBACK` passes), the others are skipped with
   one line;
2. trial the shortlist and `none`: each fits the new task's head to convergence on that start's frozen [CLS]
   features of some training rows, sized from the run's planned work (`trial_size`), and scores the out-of-fold
   outputs (registry.training.selection.out_of_fold) by Spearman's rank correlation for regression and the loss
   for classification: a forward pass per start, no training of the adapters;
3. keep `none` unless the best trial beats it in 95% of paired bootstrap resamples of the trial rows (the
   guard: a win inside the trial's own noise is no win).
A candidate that cannot be used (adapters of another size, a stored file that fails verification) is skipped
with one line. Every figure is recorded in the run's `selection`.

The head is always new (the label spaces of two tasks rarely mean the same). The source's stored files
are only read: the new task gets its own copy of the weights, and adding it changes no earlier task.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from safetensors.torch import load as load_tensors
from sqlalchemy import and_

from registry.training import embedding, selection, train
from registry.model.adapters import AdapterModel
from registry.catalog.queries import find_task, served
from registry.storage.core import Opened
from registry.storage.schema import task_versions, tasks
from registry.data.encoding import Encoded
from registry.errors import ArtifactError, TrainingError

log = logging.getLogger("registry")

TRIAL_ROWS = 768  # the most rows one trial embeds
MIN_TRIAL_ROWS = 64  # the fewest, however small the run
TRIAL_SHARE = 0.25  # all trials' forward passes together cost about this share of the run's training
FORWARDS_PER_STEP = 2  # training a row costs about two forward passes (the frozen base's weights need no gradient)
FALLBACK = 3  # earlier tasks without an embedding that LogME may rank (a forward pass each)


@dataclass(frozen=True)
class Source:
    """An earlier task's current version, whose adapters and LayerNorms a new run starts from."""

    task_id: int
    name: str
    version: int
    adapter_sha256: str
    adapter_size: int
    embedding_sha256: str | None = None  # its text embedding, when it has one (registry.training.embedding)
    score: float | None = None  # its current version's validation score


def source_of(row) -> Source:
    """A task row's current version as a Source (with its embedding when the row carries one)."""
    return Source(row.id, row.name, row.current_version, row.adapter_sha256, row.adapter_size,
                  getattr(row, "embedding_sha256", None), row.score)


def named_source(registry: Opened, name: str, adapter_size: int) -> Source:
    """The ready task `name` as a source for a run with adapters of `adapter_size`, or a one-line error."""
    with registry.read() as session:
        source = source_of(find_task(session, name, ready=True))
    if source.adapter_size != adapter_size:
        raise TrainingError(f"--init-from {name}: its adapters have size {source.adapter_size}, this run's "
                            f"{adapter_size}: pass --adapter-size {source.adapter_size}")
    return source


def candidates(registry: Opened) -> list[Source]:
    """The ready, not retired tasks in order, each with its current version's embedding: what `auto` may start
    from (a new version, from its own task)."""
    current = and_(task_versions.c.task_id == tasks.c.id, task_versions.c.version == tasks.c.current_version)
    query = served(tasks, task_versions.c.embedding_sha256).outerjoin_from(tasks, task_versions, current)
    with registry.query() as connection:
        return [source_of(row) for row in connection.execute(query)]


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
    """A trial of one start: its out-of-fold outputs on the trial rows and its figure (higher is better)."""

    name: str | None
    score: float
    outputs: np.ndarray


@dataclass(frozen=True)
class Ranked:
    """auto's first step: the shortlist, and what it was drawn from."""

    shortlist: list[str]
    similarity: list[tuple[str, float]]  # every earlier task with an embedding, most similar first
    logme: list[tuple[str | None, float]]  # the fallback's LogME ranking (with none's), best first; often empty
    skipped: list[tuple[str, str]]
    unranked: list[str]  # earlier tasks without an embedding left out (beyond FALLBACK, or not needed)


def choose(registry: Opened, build: Callable[[], AdapterModel], train_set: Encoded, config: train.TrainConfig, *,
           task_type: str, pad_id: int, device: torch.device, shortlist: int,
           new_embedding: np.ndarray) -> Choice:
    """Rank the earlier tasks by embedding similarity (LogME for a bounded few without one), trial the `shortlist`
    best and `none`, choose with the guard; the choice's short block is logged (INFO) to the `registry` logger.

    `build()` gives the new task's freshly initialised model (the same weights every call: add-task's one model,
    put back as built, registry.training.tasks.Models); `new_embedding` is the new task's text embedding
    (registry.training.embedding).
    """
    started = time.perf_counter()
    sources = candidates(registry)
    ranked = rank(registry, build, sources, train_set, config, new_embedding, shortlist, task_type=task_type,
                  pad_id=pad_id, device=device)
    ranked_seconds = time.perf_counter() - started
    size = trial_size(len(train_set), config.epochs, len(ranked.shortlist) + 1)
    rows = trial_rows(train_set, config.seed, size)
    by_name = {source.name: source for source in sources}
    trials, skipped = [], list(ranked.skipped)
    for name in [None, *ranked.shortlist] if ranked.shortlist else []:
        try:
            trials.append(trial(registry, build(), by_name.get(name), rows, task_type=task_type, pad_id=pad_id,
                                device=device, seed=config.seed))
        except ArtifactError as exc:  # its stored adapters fail verification
            skipped.append((name, str(exc)))
    for name, why in skipped:  # a warning: it shows with --quiet too
        log.warning(f"--init-from auto: skipped {name} ({why})")
    chosen, guard, why = decide(trials, rows.labels, task_type, config.seed)
    record = {"requested": "auto", "criterion": selection.criterion(task_type), "k": shortlist,
              "rows": len(rows), "folds": min(selection.FOLDS, len(rows)),
              "embedding_rows": min(embedding.ROWS, len(train_set)),
              "similarity": [{"task": name, "cosine": round(value, 6)} for name, value in ranked.similarity],
              "logme": [{"task": name, "logme": value} for name, value in ranked.logme],
              "unranked": ranked.unranked, "shortlist": ranked.shortlist,
              "trials": [{"task": t.name, selection.criterion(task_type): shown(t.score, task_type)} for t in trials],
              "guard": guard, "skipped": [{"task": name, "why": reason} for name, reason in skipped],
              "chosen": chosen, "why": why, "ranking_seconds": round(ranked_seconds, 3),
              "seconds": round(time.perf_counter() - started, 3)}
    for line in describe(record):
        log.info(line)
    return Choice(by_name[chosen] if chosen else None, record)


def rank(registry: Opened, build: Callable[[], AdapterModel], earlier: list[Source], train_set: Encoded,
         config: train.TrainConfig, new_embedding: np.ndarray, k: int, *, task_type: str, pad_id: int,
         device: torch.device) -> Ranked:
    """The shortlist: the `k` earlier tasks most similar to the new one; places left go to the `FALLBACK` latest
    tasks without an embedding, best ranked by LogME."""
    sources, skipped = [], []
    for source in earlier:
        if source.adapter_size != config.adapter_size:
            skipped.append((source.name, f"adapters of size {source.adapter_size}, this run's {config.adapter_size}"))
        else:
            sources.append(source)
    similar, picked, unreadable = similarities(registry, [s for s in sources if s.embedding_sha256], new_embedding, k)
    skipped += unreadable
    without = [s for s in sources if not s.embedding_sha256]
    fallback = without[-FALLBACK:] if len(picked) < k else []
    logme, unusable = by_logme(registry, build(), fallback, train_set, config.seed, task_type=task_type,
                               pad_id=pad_id, device=device) if fallback else ([], [])
    skipped += unusable
    picked += selection.shortlist(logme, k - len(picked))
    unranked = [s.name for s in without if s not in fallback]
    return Ranked(picked, similar, logme, skipped, unranked)


def similarities(registry: Opened, sources: list[Source], new_embedding: np.ndarray,
                 k: int) -> tuple[list[tuple[str, float]], list[str], list[tuple[str, str]]]:
    """The centred cosine (`embedding.centred_similarities`) of each source's stored embedding and the new task's,
    most similar first; the `k` picked, one per kind of data, each kind's best-scoring (`embedding.shortlist`);
    and the sources whose embedding cannot be read, with why. No forward pass. With `k` sources or fewer every
    one is picked: nothing is ranked, and the plain cosine is given (centred on so few, it says little)."""
    kept, stored, skipped = [], [], []
    for source in sources:
        try:
            stored.append(embedding.from_bytes(registry.store.get(source.embedding_sha256), len(new_embedding)))
        except ArtifactError as exc:
            skipped.append((source.name, str(exc)))
            continue
        kept.append(source)
    if len(kept) <= k:
        similar = sorted(((s.name, embedding.similarity(new_embedding, v)) for s, v in zip(kept, stored)),
                         key=lambda item: -item[1])
        return similar, [name for name, _ in similar], skipped
    similar = zip([s.name for s in kept], embedding.centred_similarities(new_embedding, stored))
    quality = [s.score if s.score is not None else -math.inf for s in kept]
    picked = [kept[i].name for i in embedding.shortlist(new_embedding, stored, k, quality)]
    return sorted(similar, key=lambda item: -item[1]), picked, skipped


def by_logme(registry: Opened, model: AdapterModel, sources: list[Source], train_set: Encoded, seed: int, *,
             task_type: str, pad_id: int, device: torch.device) -> tuple[list[tuple[str | None, float]], list]:
    """LogME of `none` (the fresh start) and of every source whose stored weights load, best first; and the
    sources skipped, with why. A forward pass each."""
    rows = train_set.take(np.random.default_rng(seed).permutation(len(train_set))[:selection.FEATURE_ROWS])
    ranking, skipped = [], []
    for source in [None, *sources]:
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
    beats = f"{best.name} beats none in {share:.0%} of {selection.RESAMPLES} resamples of the trial rows"
    return chosen, guard, f"{beats}; needs {selection.CONFIDENCE:.0%}"


def shown(score: float, task_type: str) -> float:
    """A trial's figure as recorded and printed: the loss itself (lower is better), or Spearman."""
    return -score if selection.criterion(task_type) == "loss" else score


def describe(record: dict) -> list[str]:
    """auto's short block: the similarity ranking (the first five), the fallback, the shortlist, the trials, the
    choice."""
    def name(task: str | None) -> str:
        return task or "none"

    similar = record["similarity"]
    top = ", ".join(f"{r['task']} {r['cosine']:.3f}" for r in similar[:5])
    more = f" (+{len(similar) - 5} more)" if len(similar) > 5 else ""
    tasks = f"{len(similar)} earlier task{'s' if len(similar) > 1 else ''}"
    lines = [f"--init-from auto: text similarity of {tasks} ({record['embedding_rows']} training rows embedded) in "
             f"{record['ranking_seconds']:.1f} s: {top}{more}" if similar else
             "--init-from auto: no earlier task with a text embedding"]
    if record["logme"] or record["unranked"]:
        ranked = ", ".join(f"{name(r['task'])} {r['logme']:.3f}" for r in record["logme"]) or "not needed"
        unranked = f"; not ranked: {', '.join(record['unranked'])}" if record["unranked"] else ""
        lines.append(f"  without an embedding (added before schema 0005, or imported), LogME: {ranked}{unranked}")
    if record["trials"]:
        lines.append(f"  shortlist (k={record['k']}, one per kind of data): {', '.join(record['shortlist'])}; "
                     "trials, out-of-fold "
                     f"{record['criterion']} of a head fitted on each start's features of {record['rows']} rows "
                     f"({record['folds']} folds): "
                     + ", ".join(f"{name(t['task'])} {t[record['criterion']]:.4f}" for t in record["trials"]))
    lines.append(f"  → {name(record['chosen'])} ({record['why']})")
    return lines


def trial_size(train_rows: int, epochs: int, trials: int) -> int:
    """Rows each trial embeds: forward passes worth `TRIAL_SHARE` of the run's training (its rows × epochs,
    `FORWARDS_PER_STEP` passes each), split among the trials, within [`MIN_TRIAL_ROWS`, `TRIAL_ROWS`]."""
    budget = TRIAL_SHARE * train_rows * epochs * FORWARDS_PER_STEP
    return min(TRIAL_ROWS, max(MIN_TRIAL_ROWS, math.ceil(budget / max(1, trials))))


def trial_rows(train_set: Encoded, seed: int, size: int) -> Encoded:
    """At most `size` seeded rows of the training split: the rows every trial of one choice embeds."""
    return train_set.take(np.random.default_rng(seed).permutation(len(train_set))[:size])


def trial(registry: Opened, model: AdapterModel, source: Source | None, rows: Encoded, *, task_type: str, pad_id: int,
          device: torch.device, seed: int) -> Trial:
    """The head fitted on `source`'s (or the fresh start's) frozen features of `rows`, scored out of fold: one
    forward pass of the rows."""
    if source is not None:
        start_from(model, source_tensors(registry, source))
    features = selection.cls_features(model, rows, pad_id=pad_id, device=device)
    outputs = selection.out_of_fold(features, rows.labels, task_type, model.heads[0].out_features, seed)
    return Trial(source.name if source else None, selection.trial_score(outputs, rows.labels, task_type), outputs)
