"""The training loop, readable top to bottom. It knows models, batches and metrics; nothing of the database.

Recipe (Houlsby et al. 2019): Adam, learning rate warmed up linearly over the first 10% of steps
then decayed linearly to 0, batch 32, validation after every epoch, the best epoch kept.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from registry.data import metrics
from registry.data.encoding import Encoded, batches
from registry.errors import TrainingError
from registry.options import TrainConfig


@dataclass(frozen=True)
class EpochResult:
    """What one epoch measured."""

    epoch: int
    train_loss: float
    scores: dict[str, float]
    seconds: float


@dataclass
class FitResult:
    """The best epoch of a run and its weights (CPU tensors of the trainable part only)."""

    best_epoch: int
    best_score: float
    best_state: dict[str, torch.Tensor]
    epochs: list[EpochResult] = field(default_factory=list)


MAX_LR = float(np.finfo(np.float32).max)


def check_config(config: TrainConfig) -> None:
    """Refuse hyper-parameters no run can use: a learning rate not positive and finite, a warm-up outside [0, 1)."""
    if not (isinstance(config.lr, (int, float)) and math.isfinite(config.lr) and config.lr > 0):
        raise TrainingError(f"--lr {config.lr} is not a positive finite number: pass one like 1e-3")
    if config.lr > MAX_LR:  # torch keeps lr as a float32 next to the weights: a larger one is not a number to it
        raise TrainingError(f"--lr {config.lr:g} is more than float32 holds ({MAX_LR:.3g}): pass one like 1e-3")
    if not (math.isfinite(config.warmup) and 0 <= config.warmup < 1):
        raise TrainingError(f"warm-up {config.warmup} is not a fraction of the steps in [0, 1)")


def model_inputs(batch: dict[str, torch.Tensor], device: torch.device) -> dict[str, torch.Tensor]:
    """The tensors of a batch the model takes, on `device`."""
    names = ("input_ids", "attention_mask", "token_type_ids")
    return {name: batch[name].to(device) for name in names if name in batch}


def loss_fn(logits: torch.Tensor, labels: torch.Tensor, task_type: str) -> torch.Tensor:
    """Cross-entropy for classification, mean squared error for regression."""
    if task_type == "regression":
        return F.mse_loss(logits.squeeze(-1).float(), labels.float())
    return F.cross_entropy(logits.float(), labels)


def schedule(step: int, total: int, warmup: float) -> float:
    """Learning-rate multiplier: linear warm-up over `warmup` of the steps, then linear decay to 0."""
    warmup_steps = max(1, math.ceil(total * warmup))
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    return max(0.0, (total - step) / max(1, total - warmup_steps))


def fit(
    model: torch.nn.Module,
    train: Encoded,
    validation: Encoded,
    config: TrainConfig,
    *,
    task_type: str,
    metric: str,
    pad_id: int,
    device: torch.device,
    on_epoch: Callable[[EpochResult], None] = lambda result: None,
    progress: bool = False,
    make_optimizer: Callable[[torch.nn.Module, float], torch.optim.Optimizer] | None = None,
) -> FitResult:
    """Train the model's trainable parameters; evaluate after every epoch; return the best epoch's weights.

    The optimizer is Adam at ``config.lr``, without weight decay or gradient clipping (docs/benchmarks.md,
    "The recipe against the reference"); ``make_optimizer(model, lr)`` replaces it (bench.recipe does).
    """
    model.to(device)
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = make_optimizer(model, config.lr) if make_optimizer else torch.optim.Adam(trainable, lr=config.lr)
    steps_per_epoch = math.ceil(len(train.labels) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: schedule(step, total_steps, config.warmup))
    best: FitResult | None = None
    history: list[EpochResult] = []

    for epoch in range(1, config.epochs + 1):
        # --- train one epoch ---
        model.train()
        started = time.perf_counter()
        losses = _train_epoch(model, train, config, epoch, optimizer, scheduler, task_type=task_type, pad_id=pad_id,
                              device=device, progress=progress)
        for parameter in trainable:
            if not torch.isfinite(parameter).all():  # the epoch's last step broke the weights
                raise diverged("weights", float("nan"), epoch, len(losses), config)

        # --- evaluate on validation, keep the best epoch ---
        scores = evaluate(model, validation, task_type=task_type, metric=metric, pad_id=pad_id, device=device,
                          batch_size=config.batch_size * 2, progress=progress)
        result = EpochResult(epoch, float(np.mean(losses)), scores, time.perf_counter() - started)
        history.append(result)
        on_epoch(result)
        if best is None or scores[metric] > best.best_score:
            state = {k: v.detach().to("cpu", copy=True) for k, v in model.task_state_dict().items()}
            best = FitResult(best_epoch=epoch, best_score=scores[metric], best_state=state, epochs=history)
    return best


def _train_epoch(model: torch.nn.Module, train: Encoded, config: TrainConfig, epoch: int,
                 optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler, *, task_type: str,
                 pad_id: int, device: torch.device, progress: bool) -> list[float]:
    """One pass over the training batches (seeded by the epoch), a step each; the losses, in order."""
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=device.type == "cuda")
    losses = []
    bar = tqdm(
        total=math.ceil(len(train.labels) / config.batch_size),
        desc=f"epoch {epoch}/{config.epochs}",
        unit="batch",
        disable=not progress,
        leave=False,
    )
    epoch_batches = batches(train, config.batch_size, pad_id=pad_id, shuffle=True, seed=config.seed + epoch)
    for step, batch in enumerate(epoch_batches, start=1):
        with autocast:
            logits = model(**model_inputs(batch, device))
        loss = loss_fn(logits, batch["labels"].to(device), task_type)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        value = loss.item()
        if not math.isfinite(value):  # diverged: no later step recovers, and no metric of it can be recorded
            raise diverged("loss", value, epoch, step, config)
        optimizer.step()
        scheduler.step()
        losses.append(value)
        bar.update()
        bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
    bar.close()
    return losses


def diverged(what: str, value: float, epoch: int, step: int, config: TrainConfig) -> TrainingError:
    """The error that ends a run whose loss or weights stopped being finite."""
    return TrainingError(f"{what} became {'NaN' if math.isnan(value) else 'infinite'} at epoch {epoch} step {step}: "
                         f"lower --lr (it was {config.lr:g})")


def predict(model: torch.nn.Module, encoded: Encoded, *, pad_id: int, device: torch.device, batch_size: int = 64,
            progress: bool = False) -> np.ndarray:
    """Model outputs (logits, or the regression value in column 0) for every example, in input order."""
    model.to(device)
    model.eval()
    chunks, order = [], []
    with torch.inference_mode():
        for batch in tqdm(list(batches(encoded, batch_size, pad_id=pad_id, shuffle=False, seed=0)),
                          desc="evaluating", unit="batch", disable=not progress, leave=False):
            logits = model(**model_inputs(batch, device))
            chunks.append(logits.float().cpu().numpy())
            order.append(batch["index"].numpy())
    outputs = np.empty((len(encoded.labels), chunks[0].shape[1]), dtype=np.float32)
    outputs[np.concatenate(order)] = np.concatenate(chunks)
    return outputs


def to_predictions(outputs: np.ndarray, task_type: str) -> np.ndarray:
    """Class indices for classification, the value for regression."""
    return outputs[:, 0] if task_type == "regression" else outputs.argmax(axis=1)


def evaluate(model: torch.nn.Module, encoded: Encoded, *, task_type: str, metric: str, pad_id: int,
             device: torch.device, batch_size: int = 64, progress: bool = False) -> dict[str, float]:
    """The GLUE metric (and its companions) of the model on `encoded`."""
    outputs = predict(model, encoded, pad_id=pad_id, device=device, batch_size=batch_size, progress=progress)
    return metrics.compute(metric, to_predictions(outputs, task_type), encoded.labels)
