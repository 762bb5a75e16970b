"""The use cases that train and evaluate: add_task and evaluate_task.

This is the only place where data, training, the store and the database meet, and where
transactions are drawn. A task's row reserves its name while it trains; it becomes `ready`,
with the next position, only once its adapter is stored and verified.
"""

from __future__ import annotations

import itertools
import json
import os
import platform
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

from safetensors.torch import load as load_tensors, save as save_tensors
import torch
from sqlalchemy import Row, func, select, update
from sqlalchemy.exc import IntegrityError

from registry import checkpoint, data, encoding, train
from registry.adapters import AdapterModel, head_size, trainable_parameters
from registry.catalog import find_task, task_row
from registry.core import Registry
from registry.errors import InvalidName, RegistryError, TaskExists
from registry.models import Artifact, Evaluation, Metric, Run, Task
from registry.schema import utcnow
from registry.runs import Heartbeat, sweep_stale_runs, this_host
from registry.verify import ADAPTER_CONFIG_FORMAT

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]*")
# The paper's grid (Houlsby et al. 2019, section 3.1) on our scale: learning rates 3e-4..3e-3, sizes 8/64/256 → we keep 16/64.
SWEEP_LRS = (3e-4, 1e-3, 3e-3)
SWEEP_SIZES = (16, 64)


@dataclass(frozen=True)
class DataOptions:
    """What the user said about the data; None means infer it."""

    text_columns: tuple[str, ...] | None = None
    label_column: str | None = None
    task_type: str | None = None
    metric: str | None = None
    max_train_samples: int | None = None
    strict: bool = False  # refuse data with rows that cannot train instead of skipping them


def validate_name(name: str) -> None:
    """Task names are `[a-z0-9][a-z0-9_.-]*`, at most 100 characters, and never `..`."""
    if not NAME_PATTERN.fullmatch(name) or ".." in name or len(name) > 100:
        raise InvalidName(f"invalid task name {name!r}: use lowercase letters, digits, '_', '.', '-' (starting with a letter or digit)")


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
    sweep: bool = False,
    device: str = "auto",
    progress: bool = False,
    echo: Callable[[str], None] = lambda line: None,
) -> dict:
    """Train an adapter for a new task on the frozen base and publish it as the next task."""
    validate_name(name)
    target = pick_device(device)
    sweep_stale_runs(registry)
    with registry.read() as session:
        base = registry.base(session)
        existing = session.scalars(select(Task).where(Task.name == name)).first()
        if existing is not None and existing.status != "failed":
            raise TaskExists(f"task {name!r} already exists ({existing.status}): pick another name")
    loaded = data.load(source, text_columns=options.text_columns, label_column=options.label_column,
                       task_type=options.task_type, metric=options.metric,
                       max_train_samples=options.max_train_samples, seed=config.seed, strict=options.strict)
    for line in loaded.inferred:
        echo(line)
    grid = [replace(config, lr=lr, adapter_size=size) for lr, size in itertools.product(SWEEP_LRS, SWEEP_SIZES)] if sweep else [config]

    # From here on the task always has a run recording this process, so a kill is visible to the next command.
    task_id, run_id = reserve(registry, name, base.id, source, loaded, grid[0], target)
    try:
        with Heartbeat(registry, task_id):
            base_dir = checkpoint.unpack(registry, base)
            tokenizer = load_tokenizer(base_dir)
            train_set, validation_set = (encode_split(registry, base, tokenizer, loaded, split, config.max_length, progress)
                                         for split in ("train", "validation"))
            best = None
            for run_config in grid:
                run_id = run_id or open_run(registry, task_id, run_config, loaded, target)
                result, n_trainable = train_one(registry, run_id, task_id, base_dir, run_config, loaded,
                                                train_set, validation_set, tokenizer.pad_token_id, target, progress)
                finish_run(registry, run_id, result, n_trainable)
                echo(f"run {run_id}: lr={run_config.lr:g} adapter_size={run_config.adapter_size} "
                     f"best {loaded.metric}={result.best_score:.4f} at epoch {result.best_epoch}")
                if best is None or result.best_score > best[1].best_score:
                    best = (run_id, result, run_config, n_trainable)
                run_id = None
            publish(registry, task_id, base, loaded, *best)
    except BaseException as exc:
        abandon(registry, task_id, run_id, exc)
        raise
    with registry.read() as session:
        return task_row(session.get(Task, task_id), base.parameters)


def pick_device(requested: str) -> torch.device:
    """The torch device for `--device`, refusing CUDA where there is none."""
    if requested == "cuda" and not torch.cuda.is_available():
        raise RegistryError("--device cuda: no CUDA device is available here; use --device auto or cpu")
    return train.pick_device(requested)


def reserve(registry: Registry, name: str, base_id: int, source: str, loaded: data.TaskData, config: train.TrainConfig,
            device: torch.device) -> tuple[int, int]:
    """One transaction: the task row in state `training` (or a failed one revived) and its first run, `running`.

    A concurrent add of the same name fails here. Returns the task's and the run's ids.
    """
    fields = dict(status="training", base_id=base_id, data_source=source, task_type=loaded.task_type,
                  metric=loaded.metric, text_columns=list(loaded.text_columns), label_column=loaded.label_column,
                  labels=list(loaded.labels) if loaded.labels is not None else None)
    try:
        with registry.write() as session:
            revived = session.execute(
                update(Task).where(Task.name == name, Task.status == "failed").values(**fields, created_at=utcnow())
            ).rowcount
            if revived:
                task_id = session.scalars(select(Task.id).where(Task.name == name)).one()
            else:
                task = Task(name=name, **fields)
                session.add(task)
                session.flush()
                task_id = task.id
            run = new_run(task_id, config, loaded, device)
            session.add(run)
            session.flush()
            return task_id, run.id
    except IntegrityError:
        raise TaskExists(f"task {name!r} already exists (another process is adding it): pick another name") from None


def encode_split(registry: Registry, base, tokenizer, loaded: data.TaskData, split: str, max_length: int,
                 progress: bool) -> encoding.Encoded:
    """One split tokenised with the base's tokenizer, cached by data, tokenizer and length."""
    return encoding.encode(getattr(loaded, split), loaded.text_columns, tokenizer, max_length=max_length,
                           cache_dir=registry.settings.cache_dir / "tokens",
                           cache_key=f"{loaded.fingerprint}-{base.tokenizer_sha256}-{max_length}-{split}", progress=progress)


def load_tokenizer(base_dir):
    """The base's tokenizer."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_dir)


def build_model(base_dir, adapter_size: int, head_size: int, seed: int) -> AdapterModel:
    """The frozen base with freshly initialised adapters and one head; same seed, same weights."""
    from transformers import AutoModel

    checkpoint.quiet_transformers()
    encoder = AutoModel.from_pretrained(base_dir)
    torch.manual_seed(seed)
    return AdapterModel(encoder, adapter_size, [head_size])


def open_run(registry: Registry, task_id: int, config: train.TrainConfig, loaded: data.TaskData, device: torch.device) -> int:
    """Record a run in state `running`."""
    with registry.write() as session:
        run = new_run(task_id, config, loaded, device)
        session.add(run)
        session.flush()
        return run.id


def new_run(task_id: int, config: train.TrainConfig, loaded: data.TaskData, device: torch.device) -> Run:
    """A `running` run of this process (host and pid let the next command tell whether it died)."""
    # The rows skipped because they cannot train go with the hyper-parameters: what this run was trained on.
    hyperparams = {**config.as_dict(), "skipped_rows": loaded.skipped}
    return Run(task_id=task_id, status="running", hyperparams=hyperparams, seed=config.seed,
               versions=software_versions(), device=str(device), host=this_host(), pid=os.getpid(),
               data_fingerprint=loaded.fingerprint, validation_from=loaded.validation_from)


def train_one(registry, run_id, task_id, base_dir, config, loaded, train_set, validation_set, pad_id, device, progress):
    """One run: build, fit, and commit every epoch's metrics as they come (add_task's Heartbeat keeps the run alive)."""
    model = build_model(base_dir, config.adapter_size, head_size(loaded.task_type, loaded.labels), config.seed)

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


def adapter_files(base, loaded: data.TaskData, config: train.TrainConfig, state: dict[str, torch.Tensor]) -> tuple[bytes, bytes]:
    """The task's two artifacts: trainable tensors as safetensors, and its JSON config."""
    weights = save_tensors(dict(sorted(state.items())))
    task_config = {
        "format": ADAPTER_CONFIG_FORMAT,
        "model_type": base.model_type,
        "base_sha256": base.sha256,
        "adapter_size": config.adapter_size,
        "max_length": config.max_length,
        "seed": config.seed,
        "task_type": loaded.task_type,
        "labels": list(loaded.labels) if loaded.labels is not None else None,
        "text_columns": list(loaded.text_columns),
        "label_column": loaded.label_column,
        "metric": loaded.metric,
    }
    return weights, json.dumps(task_config, indent=2, sort_keys=True).encode()


def publish(registry: Registry, task_id: int, base, loaded: data.TaskData, run_id: int, result: train.FitResult,
            config: train.TrainConfig, n_trainable: int) -> None:
    """Store the best weights and config, verify them, then make the task ready at the next position."""
    weights, task_config = adapter_files(base, loaded, config, result.best_state)
    adapter_sha, config_sha = registry.store.put(weights), registry.store.put(task_config)
    registry.store.get(adapter_sha), registry.store.get(config_sha)  # read back: refuses a corrupt write
    for attempt in itertools.count():
        try:
            with registry.write() as session:
                for sha, kind, size in ((adapter_sha, "adapter", len(weights)), (config_sha, "adapter-config", len(task_config))):
                    if session.get(Artifact, sha) is None:
                        session.add(Artifact(sha256=sha, kind=kind, size=size))
                position = (session.scalar(select(func.max(Task.position))) or 0) + 1
                published = session.execute(update(Task).where(Task.id == task_id, Task.status == "training").values(
                    status="ready", position=position, adapter_sha256=adapter_sha, config_sha256=config_sha,
                    adapter_size=config.adapter_size, score=result.best_score, trainable_params=n_trainable,
                    ready_at=utcnow())).rowcount
                if not published:  # swept as interrupted meanwhile (silent for over STALE_AFTER): not ours any more
                    raise RegistryError(f"task {session.get(Task, task_id).name!r} was marked interrupted while it trained "
                                        "(no heartbeat reached the database): run add-task again")
                session.execute(update(Run).where(Run.id == run_id).values(adapter_sha256=adapter_sha))
            return
        except IntegrityError:
            if attempt >= 20:  # another writer took the same position each time
                raise
            time.sleep(0.05 * (attempt + 1))


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
    """Score a stored task again on validation data and record it as an evaluation."""
    sweep_stale_runs(registry)
    with registry.read() as session:
        base = registry.base(session)
        task = find_task(session, name, ready=True)
        tasks_present = session.scalar(select(func.count()).select_from(Task).where(Task.status == "ready"))
    task_config = json.loads(registry.store.get(task.config_sha256))
    loaded = data.load_validation(source or task.data_source, text_columns=task.text_columns,
                                  label_column=task.label_column, task_type=task.task_type, labels=task.labels,
                                  metric=task.metric, seed=task_config["seed"])
    target = pick_device(device)
    model, tokenizer = load_task_model(registry, task, base, target)
    encoded = encode_split(registry, base, tokenizer, loaded, "validation", task_config["max_length"], progress)
    scores = train.evaluate(model, encoded, task_type=task.task_type, metric=task.metric,
                            pad_id=tokenizer.pad_token_id, device=target, progress=progress)
    with registry.write() as session:
        evaluation = Evaluation(task_id=task.id, adapter_sha256=task.adapter_sha256, tasks_present=tasks_present,
                                data_fingerprint=loaded.fingerprint, score=scores[task.metric])
        session.add(evaluation)
        session.flush()
        session.add_all(Metric(task_id=task.id, evaluation_id=evaluation.id, key=key, split="validation", value=value)
                        for key, value in scores.items())
    return {"task": name, "metric": task.metric, "score": scores[task.metric], "scores": scores,
            "tasks_present": tasks_present, "evaluation": evaluation.id}
