"""The use cases that train and evaluate: add_task (a new task or a new version of one) and evaluate_task.

This is where data, training, the store and the database meet. Transactions are drawn here only for a
task's runs and measurements (a run opened or finished, each epoch's metrics, an evaluation); the
ones that decide which tasks exist, in which order and which version is current (reserving a name,
publishing a version, promoting) are registry.catalog.lifecycle's, and the heartbeat and the sweep of dead
runs are registry.catalog.runs'. A task's row reserves its name while it trains; a version becomes `ready`
only once its adapter is stored and verified.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
import platform
from dataclasses import dataclass, replace

from safetensors.torch import load as load_tensors, save as save_tensors
import numpy as np
import torch
from sqlalchemy import Row, func, select, update

from registry.model import checkpoint, probe
from registry.data import splits as data, encoding, metrics
from registry.catalog import lifecycle
from registry.training import embedding, train, transfer
from registry.model.adapters import AdapterModel, trainable_parameters
from registry.catalog.queries import find_task, task_row
from registry.storage import fields
from registry.storage.core import Registry
from registry.errors import (DataError, NonFiniteOutput, OptionError, TaskExists, TrainingError, UnknownTask,
                             VersionError)
from registry.storage.models import Evaluation, Metric, Run, Task
from registry.options import Auto, FromTask, InitFrom, Scratch
from registry.storage.schema import utcnow
from registry.catalog.runs import Heartbeat, sweep_stale_runs, this_host
from registry.formats import DROPOUT_KEYS, AdapterConfig, head_size, pick_device, validate_name

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


def software_versions() -> dict[str, str]:
    """Versions that decide a run's numbers."""
    import transformers

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__}


def add_task(
    registry: Registry,
    name: str,
    source: str,
    config: train.TrainConfig,
    options: DataOptions = DataOptions(),
    *,
    new_version: bool = False,
    promote: bool = False,
    sweep: bool = False,
    init_from: InitFrom = Scratch(),
    compare_scratch: bool = False,
    device: str = "auto",
    progress: bool = False,
) -> dict:
    """Train an adapter for a new task and publish it as the next task, or (`new_version`) the next version of one.

    A new version becomes current with `promote`, or when it scores at least as well as the current
    version on its validation data (both scores are logged); otherwise it is kept as a candidate.
    `init_from` starts the adapters from an earlier task's (FromTask), from the one Auto picks (trials for its
    `shortlist` best LogME ranks), or from Scratch; `compare_scratch` also trains the same runs from scratch, and
    the best run is published.
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
    if new_version:
        log.info(f"{name} version {published.version} is current ({published.why})" if published.current else
                 f"{name} version {published.version} is kept as a candidate ({published.why}): "
                 f"`registry promote {name} --version {published.version}` makes it current")
    with registry.read() as session:
        return {**task_row(session.get(Task, runs.task_id), plan.base.parameters),
                "published_version": published.version, "published_current": published.current,
                "why": published.why, "init_from": origin.name if origin else None}


# --------------------------------------------------------------------------------------------
# The plan: every check add-task makes before it writes anything


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


def plan_task(registry: Registry, name: str, source: str, config: train.TrainConfig, options: DataOptions, *,
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


def existing_task(registry: Registry, name: str, new_version: bool) -> tuple[Row, Task | None]:
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


# --------------------------------------------------------------------------------------------
# The runs: every write about them, and which one a failure is recorded on


@dataclass
class RunRecorder:
    """The runs of one add-task in the database; `current` is the open run a failure is recorded on."""

    registry: Registry
    plan: Plan
    task_id: int
    current: int | None

    @classmethod
    def start(cls, registry: Registry, plan: Plan) -> RunRecorder:
        """Open the first run: on the task of a new version, or on a new task whose name it reserves."""
        first, loaded, target = plan.grid[0], plan.loaded, plan.target
        if plan.existing is not None:
            return cls(registry, plan, plan.existing.id, open_run(registry, plan.existing.id, first, loaded, target))
        task_id, run_id = lifecycle.reserve(registry, plan.name, plan.base.id, describe(plan.source, loaded),
                                            run_fields(first, loaded, target))
        return cls(registry, plan, task_id, run_id)

    def record_loaded_base(self, base_sha256: str) -> None:
        record_loaded_base(self.registry, self.current, base_sha256)

    def record_start(self, source: transfer.Source | None, selection: dict | None) -> None:
        record_start(self.registry, self.current, source, selection)

    def open(self, config: train.TrainConfig, loaded_base: str, start: transfer.Source | None,
             selection: dict | None) -> int:
        """The open run (the first was opened by `start`), or a new one for `config` from `start`."""
        self.current = self.current or open_run(self.registry, self.task_id, config, self.plan.loaded,
                                                self.plan.target, loaded_base, start, selection)
        return self.current

    def finish(self, result: train.FitResult, n_trainable: int) -> None:
        finish_run(self.registry, self.current, result, n_trainable)
        self.current = None

    def abandon(self, exc: BaseException) -> None:
        abandon(self.registry, self.task_id, self.current, exc)


# --------------------------------------------------------------------------------------------
# Training: the base and the encoded splits once, then each run


@dataclass(frozen=True)
class Prepared:
    """What every run of one add-task trains on: the unpacked base, its tokenizer, the encoded splits."""

    base_dir: object
    loaded_base: str  # the sha256 of the base weights loaded
    tokenizer: object
    train_set: encoding.Encoded
    validation_set: encoding.Encoded
    embedding: np.ndarray  # the task's text embedding (registry.training.embedding), stored when it is published


def prepare(registry: Registry, plan: Plan, runs: RunRecorder, progress: bool) -> Prepared:
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
    return Prepared(base_dir, loaded_base, tokenizer, train_set, validation_set, vector)


def choose_start(registry: Registry, plan: Plan, prepared: Prepared) -> tuple[transfer.Source | None, dict | None]:
    """Where the runs start, and how that was chosen: the task `init_from` names, the one `auto`'s trials pick,
    or scratch (None)."""
    config, loaded = plan.config, plan.loaded
    choice = transfer.Choice(plan.named, {"requested": plan.named.name, "chosen": plan.named.name}) \
        if plan.named else None
    if isinstance(plan.init_from, Auto):
        head = head_size(loaded.task_type, loaded.labels)
        choice = transfer.choose(
            registry, lambda: build_model(prepared.base_dir, config.adapter_size, head, config.seed,
                                          base_dropout=config.base_dropout),
            prepared.train_set, config, task_type=loaded.task_type, metric=loaded.metric,
            pad_id=prepared.tokenizer.pad_token_id, device=plan.target, shortlist=plan.init_from.shortlist,
            new_embedding=prepared.embedding)
    return (choice.source, choice.selection) if choice else (None, None)


def train_runs(registry: Registry, plan: Plan, prepared: Prepared, runs: RunRecorder,
               starts: list[transfer.Source | None], selection: dict | None, progress: bool) -> tuple:
    """Every run (from each start, each config of the grid), recorded as it goes; the best as
    (run id, FitResult, config, trainable parameters)."""
    best = None
    for start in starts:
        for run_config in plan.grid:
            run_id = runs.open(run_config, prepared.loaded_base, start, selection)
            result, n_trainable = train_one(registry, run_id, runs.task_id, prepared.base_dir, run_config,
                                            plan.loaded, prepared.train_set, prepared.validation_set,
                                            prepared.tokenizer.pad_token_id, plan.target, progress, start)
            runs.finish(result, n_trainable)
            log.info(f"run {run_id}: lr={run_config.lr:g} adapter_size={run_config.adapter_size} "
                     f"{f'from {start.name}' if start else 'from scratch'} "
                     f"best {plan.loaded.metric}={result.best_score:.4f} at epoch {result.best_epoch}")
            if best is None or result.best_score > best[1].best_score:
                best = (run_id, result, run_config, n_trainable)
    return best


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


def describe(source: str, loaded: data.TaskData) -> lifecycle.Description:
    """What the task is, from its data."""
    return lifecycle.Description(data_source=source, task_type=loaded.task_type, metric=loaded.metric,
                                 text_columns=list(loaded.text_columns), label_column=loaded.label_column,
                                 labels=list(loaded.labels) if loaded.labels is not None else None)


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


def encode_split(registry: Registry, base, tokenizer, loaded: data.TaskData, split: str, max_length: int,
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


def open_run(registry: Registry, task_id: int, config: train.TrainConfig, loaded: data.TaskData,
             device: torch.device, base_sha256: str | None = None, source: transfer.Source | None = None,
             selection: dict | None = None) -> int:
    """Record a run in state `running`."""
    with registry.write() as session:
        run = Run(task_id=task_id, **run_fields(config, loaded, device, base_sha256), **start_fields(source, selection))
        session.add(run)
        session.flush()
        return run.id


def start_fields(source: transfer.Source | None, selection: dict | None) -> dict:
    """A run's starting point: the earlier task (and version, and adapter bytes) it started from, and how
    that was chosen."""
    return dict(init_task_id=source.task_id if source else None, init_version=source.version if source else None,
                init_adapter_sha256=source.adapter_sha256 if source else None, selection=selection)


def record_start(registry: Registry, run_id: int, source: transfer.Source | None, selection: dict | None) -> None:
    """Record the starting point of a run opened before it was chosen."""
    with registry.write() as session:
        session.execute(update(Run).where(Run.id == run_id).values(**start_fields(source, selection)))


def record_loaded_base(registry: Registry, run_id: int, base_sha256: str) -> None:
    """Add the sha256 of the base weights the run loaded to what it ran with (`runs.versions`)."""
    with registry.write() as session:
        run = session.get(Run, run_id)
        run.versions = {**run.versions, "base_sha256": base_sha256}


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


def train_one(registry, run_id, task_id, base_dir, config, loaded, train_set, validation_set, pad_id, device, progress,
              source: transfer.Source | None = None):
    """One run: build (from `source`'s adapters, or fresh), fit, and commit every epoch's metrics as they come
    (add_task's Heartbeat keeps the run alive)."""
    model = build_model(base_dir, config.adapter_size, head_size(loaded.task_type, loaded.labels), config.seed,
                        base_dropout=config.base_dropout)
    if source is not None:
        transfer.start_from(model, transfer.source_tensors(registry, source))

    def record(epoch: train.EpochResult) -> None:
        with registry.write() as session:
            rows = [("loss", "train", epoch.train_loss), *(((k, "validation", v) for k, v in epoch.scores.items()))]
            session.add_all(Metric(task_id=task_id, run_id=run_id, key=key, split=split, epoch=epoch.epoch, value=value)
                            for key, split, value in rows)
            session.execute(update(Run).where(Run.id == run_id).values(heartbeat_at=utcnow()))

    result = train.fit(model, train_set, validation_set, config, task_type=loaded.task_type, metric=loaded.metric,
                       pad_id=pad_id, device=device, on_epoch=record, progress=progress)
    return result, trainable_parameters(model)


def finish_run(registry: Registry, run_id: int, result: train.FitResult, n_trainable: int) -> None:
    """Mark a run succeeded with its best validation score."""
    with registry.write() as session:
        run = session.get(Run, run_id)
        run.status, run.finished_at = "succeeded", utcnow()
        run.score, run.best_epoch, run.trainable_params = result.best_score, result.best_epoch, n_trainable


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


def publish(registry: Registry, task_id: int, base, source: str, loaded: data.TaskData, run_id: int,
            result: train.FitResult, config: train.TrainConfig, n_trainable: int, *, text_embedding: np.ndarray,
            promote: bool = False, compared_with: int | None = None, why: str = "first version") -> lifecycle.Published:
    """Store the best weights, config and text embedding, verify them, then publish them as the task's next version.

    `lifecycle.publish` draws the transaction; `promote`, `compared_with` and `why` decide whether a later
    version becomes current (see lifecycle.Publication).
    """
    weights, task_config = adapter_files(base, loaded, config, result.best_state)
    probe_task(registry, base, task_id, task_config, result.best_state)
    vector = embedding.to_bytes(text_embedding)
    adapter_sha, config_sha, embedding_sha = (registry.store.put(data) for data in (weights, task_config, vector))
    for sha in (adapter_sha, config_sha, embedding_sha):
        registry.store.get(sha)  # read back: refuses a corrupt write
    release = lifecycle.Release(adapter_sha256=adapter_sha, config_sha256=config_sha, adapter_size=config.adapter_size,
                                score=result.best_score, trainable_params=n_trainable, data_source=source,
                                data_fingerprint=loaded.fingerprint, run_id=run_id, embedding_sha256=embedding_sha)
    publication = lifecycle.Publication(release=release, task_id=task_id, promote=promote, compared_with=compared_with,
                                        why=why)
    artifacts = [(adapter_sha, "adapter", len(weights)), (config_sha, "adapter-config", len(task_config)),
                 (embedding_sha, embedding.KIND, len(vector))]
    return lifecycle.publish(registry, [publication], artifacts)[0]


def probe_task(registry: Registry, base, task_id: int, task_config: bytes, state: dict[str, torch.Tensor]) -> None:
    """Refuse to publish adapters whose outputs on the probe sentences are NaN or infinite (registry.model.probe)."""
    with registry.read() as session:
        name = session.get(Task, task_id).name
    encoder, tokenizer = probe.load_base(checkpoint.unpack(registry, base), "the registry's base")
    try:
        probe.check_adapters(encoder, tokenizer, name, json.loads(task_config), state)
    except NonFiniteOutput:
        raise TrainingError(f"task {name!r}: its trained adapters give NaN or infinite outputs, so they are not "
                            "published: train again with a lower --lr") from None


def abandon(registry: Registry, task_id: int, run_id: int | None, exc: BaseException) -> None:
    """After a failure: the open run records why, and the task's name is released."""
    interrupted = isinstance(exc, KeyboardInterrupt)
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    with registry.write() as session:
        if run_id is not None:
            session.execute(update(Run).where(Run.id == run_id).values(
                status="interrupted" if interrupted else "failed", finished_at=utcnow(), error=message))
        session.execute(update(Task).where(Task.id == task_id, Task.status == "training").values(status="failed"))


def load_task_model(registry: Registry, task: Row, base: Row, device: torch.device) -> tuple[AdapterModel, object]:
    """A stored task's model (verified weights) and the base tokenizer."""
    base_dir = checkpoint.unpack(registry, base)
    model = build_model(base_dir, task.adapter_size, head_size(task.task_type, task.labels), seed=0)
    model.load_task_state_dict(load_tensors(registry.store.get(task.adapter_sha256)))
    return model.to(device), load_tokenizer(base_dir)


def evaluate_task(registry: Registry, name: str, source: str | None = None, *, device: str = "auto",
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
    scores = score_task(registry, base, task, loaded, pick_device(device), progress)
    evaluation, tasks_present = record_evaluation(registry, task, loaded, scores)
    return {"task": name, "version": task.current_version, "metric": task.metric, "score": scores[task.metric],
            "scores": scores, "tasks_present": tasks_present, "evaluation": evaluation}


def score_task(registry: Registry, base: Row, task: Row, loaded: data.TaskData, device: torch.device,
               progress: bool) -> dict:
    """The scores of `task`'s current version on `loaded`'s validation rows, tokenised as that version was trained."""
    max_length = json.loads(registry.store.get(task.config_sha256))["max_length"]
    model, tokenizer = load_task_model(registry, task, base, device)
    encoded = encode_split(registry, base, tokenizer, loaded, "validation", max_length, progress)
    outputs = train.predict(model, encoded, pad_id=tokenizer.pad_token_id, device=device, progress=progress)
    if not np.isfinite(outputs).all():  # a score of NaN answers is no score
        raise NonFiniteOutput(f"task {task.name!r} gives NaN or infinite outputs on its validation data, so no score "
                              "is recorded: its adapter is broken; run `registry verify`, or re-add the task")
    return metrics.compute(task.metric, train.to_predictions(outputs, task.task_type), encoded.labels)


def record_evaluation(registry: Registry, task: Row, loaded: data.TaskData,
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


def compare_with_current(registry: Registry, name: str, base: Row, loaded: data.TaskData, score: float, promote: bool,
                         device: torch.device, progress: bool) -> dict:
    """How a new version of `name` that scored `score` is published: the current version is scored on the same
    validation rows (recorded as an evaluation), both are logged, and the new one is current only if it is at
    least as good, or with `promote`."""
    with registry.read() as session:
        current = find_task(session, name, ready=True, retired=True)
    old = score_task(registry, base, current, loaded, device, progress)[current.metric]
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
