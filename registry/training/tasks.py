"""The use cases that train and evaluate: add_task (a new task or a new version of one) and evaluate_task.

This is where data, training, the store and the database meet. add_task follows its plan
(registry.training.plan: every check made before anything is written), writes about its runs only through the
run recorder (registry.training.recorder: a run opened, its start, each epoch's metrics, finished or abandoned),
trains, and publishes. Transactions are drawn here only for evaluations; the ones that decide which tasks exist,
in which order and which version is current (reserving a name, publishing a version, promoting) are
registry.catalog.lifecycle's, and the heartbeat and the sweep of dead runs are registry.catalog.runs'. A task's
row reserves its name while it trains; a version becomes `ready` only once its adapter is stored and verified.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from safetensors.torch import load as load_tensors, save as save_tensors
import numpy as np
import torch
from sqlalchemy import Row, func, select

from registry.model import checkpoint, probe
from registry.data import splits as data, encoding, metrics
from registry.catalog import lifecycle
from registry.training import embedding, train, transfer
from registry.training.plan import DataOptions, Plan, check_options, plan_task
from registry.training.recorder import RunRecorder
from registry.model.adapters import AdapterModel, trainable_parameters
from registry.catalog.queries import find_task, task_row
from registry.storage.core import Opened
from registry.errors import NonFiniteOutput, TrainingError
from registry.storage.models import Evaluation, Metric, Task
from registry.options import Auto, InitFrom, Scratch
from registry.catalog.runs import Heartbeat, sweep_stale_runs
from registry.formats import DROPOUT_KEYS, AdapterConfig, head_size, pick_device

log = logging.getLogger("registry")


def add_task(registry: Opened, name: str, source: str, config: train.TrainConfig,
             options: DataOptions = DataOptions(), *, new_version: bool = False, promote: bool = False,
             sweep: bool = False, init_from: InitFrom = Scratch(), compare_scratch: bool = False,
             device: str = "auto", progress: bool = False) -> dict:
    """Train an adapter for a new task and publish it as the next task, or (`new_version`) the next version of one.

    A new version becomes current with `promote`, or when it scores at least as well as the current
    version on its validation data (both scores are logged); otherwise it is kept as a candidate.
    `init_from` starts the adapters from an earlier task's (FromTask), from the one Auto picks (trials for the
    `shortlist` most similar earlier tasks), or from Scratch; `compare_scratch` also trains the same runs from
    scratch, and the best run is published.
    What it infers and each run's score are logged (INFO) to the `registry` logger.
    """
    check_options(new_version=new_version, promote=promote, init_from=init_from, compare_scratch=compare_scratch)
    plan = plan_task(registry, name, source, config, options, new_version=new_version, sweep=sweep,
                     init_from=init_from, device=device)
    runs = RunRecorder.start(registry, plan)  # from here a kill is visible to the next command
    try:
        with Heartbeat(registry, runs.task_id):
            prepared = prepare(registry, plan, runs, progress)
            origin, selection = choose_start(registry, plan, prepared)
            runs.record_start(origin, selection)
            starts = [origin, None] if compare_scratch and origin is not None else [origin]
            best = train_runs(registry, plan, prepared, runs, starts, selection, progress)
            terms = {}
            if new_version:
                terms = compare_with_current(registry, name, plan.base, plan.loaded, best[1].best_score, promote,
                                             plan.target, progress)
            runs.current = best[0]  # a failure to publish is recorded on the run being published
            published = publish(registry, runs.task_id, plan.base, source, plan.loaded, *best,
                                text_embedding=prepared.embedding, **terms)
    except BaseException as exc:
        runs.abandon(exc)
        raise
    return added(registry, plan, runs.task_id, published, origin)


def added(registry: Opened, plan: Plan, task_id: int, published: lifecycle.Published,
          origin: transfer.Source | None) -> dict:
    """What add_task returns: the task as listed, the version published, whether it is current and why; a new
    version's outcome is also logged."""
    if plan.existing is not None:
        name, version = plan.name, published.version
        log.info(f"{name} version {version} is current ({published.why})" if published.current else
                 f"{name} version {version} is kept as a candidate ({published.why}): "
                 f"`registry promote {name} --version {version}` makes it current")
    with registry.read() as session:
        return {**task_row(session.get(Task, task_id), plan.base.parameters),
                "published_version": published.version, "published_current": published.current,
                "why": published.why, "init_from": origin.name if origin else None}


# --------------------------------------------------------------------------------------------
# Training: the base and the encoded splits once, then each run


class Models:
    """The models of one add-task, each shape built once (a load of the base): auto's trials and every run take
    theirs from `fresh`, put back as built."""

    def __init__(self, base_dir, outputs: int) -> None:
        self.base_dir, self.outputs = base_dir, outputs
        self.built: dict[tuple, tuple[AdapterModel, dict[str, torch.Tensor], torch.Tensor]] = {}

    def fresh(self, config: train.TrainConfig) -> AdapterModel:
        """The model for `config` with its task slot as `build_model` makes it, and torch's generators as building
        left them (seeded, then the initialisation's draws): it trains exactly as a model just built would."""
        key = (config.adapter_size, config.seed, config.base_dropout)
        if key not in self.built:
            model = build_model(self.base_dir, config.adapter_size, self.outputs, config.seed,
                                base_dropout=config.base_dropout)
            self.built[key] = (model, model.task_state_dict(), torch.get_rng_state())
            return model
        model, state, generator = self.built[key]
        model.load_task_state_dict(state)
        torch.manual_seed(config.seed)  # every device's generator as build_model seeded it
        torch.set_rng_state(generator)  # the CPU's as the initialisation left it
        return model


@dataclass(frozen=True)
class Prepared:
    """What every run of one add-task trains on: the unpacked base, its tokenizer, the encoded splits, and the
    models built for them."""

    base_dir: object
    loaded_base: str  # the sha256 of the base weights loaded
    tokenizer: object
    train_set: encoding.Encoded
    validation_set: encoding.Encoded
    embedding: np.ndarray  # the task's text embedding (registry.training.embedding), stored when it is published
    models: Models


def prepare(registry: Opened, plan: Plan, runs: RunRecorder, progress: bool) -> Prepared:
    """Unpack the base (its sha256 recorded on the run), load its tokenizer, encode both splits (cached), embed the
    training texts."""
    base_dir = checkpoint.unpack(registry, plan.base)
    loaded_base = checkpoint.weights_sha256(base_dir)
    runs.record_loaded_base(loaded_base)
    tokenizer = load_tokenizer(base_dir)
    train_set, validation_set = (
        encode_split(registry, plan.base, tokenizer, plan.loaded, split, plan.config.max_length, progress)
        for split in ("train", "validation"))
    vector = embedding.of_task(base_dir, train_set, plan.config.seed, pad_id=tokenizer.pad_token_id,
                               device=plan.target)
    models = Models(base_dir, head_size(plan.loaded.task_type, plan.loaded.labels))
    return Prepared(base_dir, loaded_base, tokenizer, train_set, validation_set, vector, models)


def choose_start(registry: Opened, plan: Plan, prepared: Prepared) -> tuple[transfer.Source | None, dict | None]:
    """Where the runs start, and how that was chosen: the task `init_from` names, the one `auto`'s trials pick,
    or scratch (None)."""
    config, loaded = plan.config, plan.loaded
    choice = transfer.Choice(plan.named, {"requested": plan.named.name, "chosen": plan.named.name}) \
        if plan.named else None
    if isinstance(plan.init_from, Auto):
        choice = transfer.choose(
            registry, lambda: prepared.models.fresh(config), prepared.train_set, config, task_type=loaded.task_type,
            pad_id=prepared.tokenizer.pad_token_id, device=plan.target, shortlist=plan.init_from.shortlist,
            new_embedding=prepared.embedding)
    return (choice.source, choice.selection) if choice else (None, None)


def train_runs(registry: Opened, plan: Plan, prepared: Prepared, runs: RunRecorder,
               starts: list[transfer.Source | None], selection: dict | None, progress: bool) -> tuple:
    """Every run (from each start, each config of the grid), recorded as it goes; the best as
    (run id, FitResult, config, trainable parameters)."""
    best = None
    for start in starts:
        for run_config in plan.grid:
            run_id = runs.open(run_config, prepared.loaded_base, start, selection)
            result, n_trainable = train_one(registry, runs.record_epoch, prepared.models, run_config,
                                            plan.loaded, prepared.train_set, prepared.validation_set,
                                            prepared.tokenizer.pad_token_id, plan.target, progress, start)
            runs.finish(result, n_trainable)
            log.info(f"run {run_id}: lr={run_config.lr:g} adapter_size={run_config.adapter_size} "
                     f"{f'from {start.name}' if start else 'from scratch'} "
                     f"best {plan.loaded.metric}={result.best_score:.4f} at epoch {result.best_epoch}")
            if best is None or result.best_score > best[1].best_score:
                best = (run_id, result, run_config, n_trainable)
    return best


def encode_split(registry: Opened, base, tokenizer, loaded: data.TaskData, split: str, max_length: int,
                 progress: bool) -> encoding.Encoded:
    """One split tokenised with the base's tokenizer, cached by data, tokenizer and length."""
    return encoding.encode(getattr(loaded, split), loaded.text_columns, tokenizer, max_length=max_length,
                           cache_dir=registry.settings.cache_dir / "tokens",
                           cache_key=f"{loaded.fingerprint}-{base.tokenizer_sha256}-{max_length}-{split}",
                           progress=progress)


def load_tokenizer(base_dir):
    """The base's tokenizer."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_dir, trust_remote_code=False)


def build_model(base_dir, adapter_size: int, head_size: int, seed: int, *, base_dropout: bool = False) -> AdapterModel:
    """The frozen base with freshly initialised adapters and one head; same seed, same weights.

    Unless `base_dropout`, the base is loaded with its dropout probabilities at 0 (and so the head's, which
    takes the base's): no dropout masks, and attention may use the fused kernel (train.TrainConfig's default).
    """
    from transformers import AutoConfig, AutoModel

    checkpoint.quiet_transformers()
    config = AutoConfig.from_pretrained(base_dir, trust_remote_code=False)
    if not base_dropout:
        for key in DROPOUT_KEYS:
            if hasattr(config, key):
                setattr(config, key, 0.0)
    encoder = AutoModel.from_pretrained(base_dir, config=config, trust_remote_code=False)
    torch.manual_seed(seed)
    return AdapterModel(encoder, adapter_size, [head_size])


def train_one(registry, on_epoch, models: Models, config, loaded, train_set, validation_set, pad_id, device, progress,
              source: transfer.Source | None = None):
    """One run: its model fresh (from `source`'s adapters, or as built) and fit, passing every epoch's metrics to
    `on_epoch` as they come (add_task's recorder commits them; its Heartbeat keeps the run alive)."""
    model = models.fresh(config)
    if source is not None:
        transfer.start_from(model, transfer.source_tensors(registry, source))
    result = train.fit(model, train_set, validation_set, config, task_type=loaded.task_type, metric=loaded.metric,
                       pad_id=pad_id, device=device, on_epoch=on_epoch, progress=progress)
    return result, trainable_parameters(model)


def adapter_files(base, loaded: data.TaskData, config: train.TrainConfig,
                  state: dict[str, torch.Tensor]) -> tuple[bytes, bytes]:
    """The task's two artifacts: trainable tensors as safetensors, and its JSON config."""
    weights = save_tensors(dict(sorted(state.items())))
    task_config = AdapterConfig(
        model_type=base.model_type,
        base_sha256=base.sha256,
        adapter_size=config.adapter_size,
        max_length=config.max_length,
        seed=config.seed,
        task_type=loaded.task_type,
        labels=list(loaded.labels) if loaded.labels is not None else None,
        text_columns=list(loaded.text_columns),
        label_column=loaded.label_column,
        metric=loaded.metric,
    )
    return weights, task_config.to_json()


def publish(registry: Opened, task_id: int, base, source: str, loaded: data.TaskData, run_id: int,
            result: train.FitResult, config: train.TrainConfig, n_trainable: int, *, text_embedding: np.ndarray,
            promote: bool = False, compared_with: int | None = None, why: str = "first version") -> lifecycle.Published:
    """Store the best weights, config and text embedding, verify them, then publish them as the task's next version.

    `lifecycle.publish` draws the transaction; `promote`, `compared_with` and `why` decide whether a later
    version becomes current (see lifecycle.Publication).
    """
    weights, task_config = adapter_files(base, loaded, config, result.best_state)
    probe_task(registry, base, task_id, task_config, result.best_state)
    vector = embedding.to_bytes(text_embedding)
    # each verified once, by put's read-back
    adapter_sha, config_sha, embedding_sha = (registry.store.put(blob) for blob in (weights, task_config, vector))
    release = lifecycle.Release(adapter_sha256=adapter_sha, config_sha256=config_sha, adapter_size=config.adapter_size,
                                score=result.best_score, trainable_params=n_trainable, data_source=source,
                                data_fingerprint=loaded.fingerprint, run_id=run_id, embedding_sha256=embedding_sha)
    publication = lifecycle.Publication(release=release, task_id=task_id, promote=promote, compared_with=compared_with,
                                        why=why)
    artifacts = [(adapter_sha, "adapter", len(weights)), (config_sha, "adapter-config", len(task_config)),
                 (embedding_sha, embedding.KIND, len(vector))]
    return lifecycle.publish(registry, [publication], artifacts)[0]


def probe_task(registry: Opened, base, task_id: int, task_config: bytes, state: dict[str, torch.Tensor]) -> None:
    """Refuse to publish adapters whose outputs on the probe sentences are NaN or infinite (registry.model.probe)."""
    with registry.read() as session:
        name = session.get(Task, task_id).name
    encoder, tokenizer = probe.load_base(checkpoint.unpack(registry, base), "the registry's base")
    try:
        probe.check_adapters(encoder, tokenizer, name, json.loads(task_config), state)
    except NonFiniteOutput:
        raise TrainingError(f"task {name!r}: its trained adapters give NaN or infinite outputs, so they are not "
                            "published: train again with a lower --lr") from None


def load_task_model(registry: Opened, task: Row, base: Row, device: torch.device) -> tuple[AdapterModel, object]:
    """A stored task's model (verified weights) and the base tokenizer."""
    base_dir = checkpoint.unpack(registry, base)
    model = build_model(base_dir, task.adapter_size, head_size(task.task_type, task.labels), seed=0)
    model.load_task_state_dict(load_tensors(registry.store.get(task.adapter_sha256)))
    return model.to(device), load_tokenizer(base_dir)


def evaluate_task(registry: Opened, name: str, source: str | None = None, *, device: str = "auto",
                  progress: bool = False) -> dict:
    """Score a stored task's current version again on validation data and record it as an evaluation."""
    sweep_stale_runs(registry)
    with registry.read() as session:
        base = registry.base(session)
        task = find_task(session, name, ready=True)
    task_config = json.loads(registry.store.get(task.config_sha256))
    loaded = data.load_validation(source or task.data_source, text_columns=task.text_columns,
                                  label_column=task.label_column, task_type=task.task_type, labels=task.labels,
                                  metric=task.metric, seed=task_config["seed"])
    scores = score_task(registry, base, task, loaded, task_config["max_length"], pick_device(device), progress)
    evaluation, tasks_present = record_evaluation(registry, task, loaded, scores)
    return {"task": name, "version": task.current_version, "metric": task.metric, "score": scores[task.metric],
            "scores": scores, "tasks_present": tasks_present, "evaluation": evaluation}


def score_task(registry: Opened, base: Row, task: Row, loaded: data.TaskData, max_length: int, device: torch.device,
               progress: bool) -> dict:
    """The scores of `task`'s current version on `loaded`'s validation rows, tokenised as that version was trained
    (`max_length`, from its config)."""
    model, tokenizer = load_task_model(registry, task, base, device)
    encoded = encode_split(registry, base, tokenizer, loaded, "validation", max_length, progress)
    outputs = train.predict(model, encoded, pad_id=tokenizer.pad_token_id, device=device, progress=progress)
    if not np.isfinite(outputs).all():  # a score of NaN answers is no score
        raise NonFiniteOutput(f"task {task.name!r} gives NaN or infinite outputs on its validation data, so no score "
                              "is recorded: its adapter is broken; run `registry verify`, or re-add the task")
    return metrics.compute(task.metric, train.to_predictions(outputs, task.task_type), encoded.labels)


def record_evaluation(registry: Opened, task: Row, loaded: data.TaskData,
                      scores: dict[str, float]) -> tuple[int, int]:
    """Record scores of `task`'s current version as an evaluation, with how many tasks are ready.

    Returns the evaluation's id and that count.
    """
    with registry.write() as session:
        tasks_present = session.scalar(select(func.count()).select_from(Task).where(Task.status == "ready"))
        evaluation = Evaluation(task_id=task.id, version=task.current_version, adapter_sha256=task.adapter_sha256,
                                tasks_present=tasks_present, data_fingerprint=loaded.fingerprint,
                                score=scores[task.metric])
        session.add(evaluation)
        session.flush()
        session.add_all(Metric(task_id=task.id, evaluation_id=evaluation.id, key=key, split="validation", value=value)
                        for key, value in scores.items())
        return evaluation.id, tasks_present


def compare_with_current(registry: Opened, name: str, base: Row, loaded: data.TaskData, score: float, promote: bool,
                         device: torch.device, progress: bool) -> dict:
    """How a new version of `name` that scored `score` is published: the current version is scored on the same
    validation rows (recorded as an evaluation), both are logged, and the new one is current only if it is at
    least as good, or with `promote`."""
    with registry.read() as session:
        current = find_task(session, name, ready=True, retired=True)
    max_length = json.loads(registry.store.get(current.config_sha256))["max_length"]
    old = score_task(registry, base, current, loaded, max_length, device, progress)[current.metric]
    record_evaluation(registry, current, loaded, {current.metric: old})
    version, metric = current.current_version, loaded.metric
    log.info(f"{metric} on the same validation data ({loaded.validation_from}): new version {score:.4f}, "
             f"current version {version} {old:.4f}")
    versus = f"{metric} {score:.4f} vs version {version}'s {old:.4f} on the same validation data"
    if promote:
        return {"promote": True, "why": f"promoted with --promote ({versus})"}
    if score >= old:
        return {"compared_with": version, "why": f"at least as good: {versus}"}
    return {"why": f"candidate: worse than the current version: {versus}"}
