"""Where `--init-from auto` starts a new task, cheaply: the fallback ranking, the trials' probe, the guard.

Ranking of earlier tasks without a text embedding (registry.training.transfer): LogME (You et al., "LogME:
Practical Assessment of Pre-trained Models for Transfer Learning", ICML 2021). The [CLS] features of
`FEATURE_ROWS` of the new task's training rows, through the base with each candidate's adapters (one forward
pass, no training), are scored by the log evidence of a Bayesian linear model on them: the targets' one-hot
columns for classification (averaged over the classes), the values themselves for regression. Higher is better;
one SVD per candidate.

Trial: the new task's head fitted to convergence on a start's frozen [CLS] features of some training rows (`probe`:
ridge regression for a value, L2-penalised logistic regression for classes), `FOLDS` times, each fitted on the
other folds and giving the outputs of its own (`out_of_fold`): every row serves to fit and to score, and no head
scores a row it saw. The outputs are scored by `trial_score`. A forward pass per start and no backward pass, so a
trial sees more rows, for the cost of a few training steps, than a short fine-tuning run would (whose new head,
after a few steps, has barely moved).

Guard: the trials (registry.training.transfer) measure each shortlisted start and `none` on the same rows.
A start is chosen over `none` only if it is better in at least `CONFIDENCE` of `RESAMPLES` paired bootstrap
resamples of those rows: a win inside the trial's own noise keeps `none`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from registry.data import metrics
from registry.data.encoding import Encoded, batches

FEATURE_ROWS = 256
RESAMPLES = 200
CONFIDENCE = 0.95
FOLDS = 4
PENALTY = 1.0  # the probe's L2 penalty on its weights, against the mean loss over standardised features


@dataclass(frozen=True)
class Evidence:
    """LogME's value (the log evidence per row) and the prior and noise precisions it settled on."""

    value: float
    alpha: float
    beta: float


def evidence(features: np.ndarray, targets: np.ndarray, *, iterations: int = 100, tol: float = 1e-6) -> Evidence:
    """The maximised log evidence per row of y = F w + noise, w ~ N(0, I/alpha), noise ~ N(0, 1/beta).

    The paper's algorithm: one SVD of F, then the fixed-point updates alpha = gamma / |m|^2 and
    beta = (n - gamma) / |F m - y|^2 with gamma = sum(beta s_i / (alpha + beta s_i)) over F's eigenvalues s.
    """
    f = np.asarray(features, dtype=np.float64)
    y = np.asarray(targets, dtype=np.float64)
    n, dim = f.shape
    u, singular, _ = np.linalg.svd(f, full_matrices=False)
    sigma = singular ** 2
    z2 = (u.T @ y) ** 2  # the targets' squared coordinates along F's left singular vectors
    outside = max(float(y @ y - z2.sum()), 0.0)  # the part of y no weight can reach

    def parts(alpha: float, beta: float) -> tuple[float, float, float]:
        t = alpha + beta * sigma
        gamma = float((beta * sigma / t).sum())
        m2 = float((beta ** 2 * sigma * z2 / t ** 2).sum())  # |m|^2, m the posterior mean of w
        residual = float((alpha ** 2 * z2 / t ** 2).sum()) + outside  # |F m - y|^2
        return gamma, max(m2, 1e-300), max(residual, 1e-300)

    alpha, beta = 1.0, 1.0
    for _ in range(iterations):
        gamma, m2, residual = parts(alpha, beta)
        alpha, beta, ratio = gamma / m2, (n - gamma) / residual, alpha / beta
        if abs(alpha / beta - ratio) <= tol * ratio:
            break
    _, m2, residual = parts(alpha, beta)
    log_det = float(np.log(alpha + beta * sigma).sum()) + (dim - len(sigma)) * np.log(alpha)
    value = (dim * np.log(alpha) + n * np.log(beta) - n * np.log(2 * np.pi) - beta * residual - alpha * m2
             - log_det) / 2
    return Evidence(float(value / n), float(alpha), float(beta))


def logme(features: np.ndarray, labels: np.ndarray, task_type: str) -> float:
    """LogME of `features` for the labels: the values (regression) or the mean over the classes present of the
    evidence of each class's indicator."""
    if task_type == "regression":
        return evidence(features, labels).value
    return float(np.mean([evidence(features, (labels == c).astype(np.float64)).value for c in np.unique(labels)]))


def cls_features(model, rows: Encoded, *, pad_id: int, device: torch.device, batch_size: int = 64) -> np.ndarray:
    """The [CLS] representation of every row (in row order) through the model's task slot 0: a forward pass."""
    model.to(device)
    model.eval()
    out = np.empty((len(rows.labels), model.encoder.config.hidden_size), dtype=np.float64)
    names = ("input_ids", "attention_mask", "token_type_ids")
    with torch.inference_mode():
        for batch in batches(rows, batch_size, pad_id=pad_id, shuffle=False, seed=0):
            inputs = {name: batch[name].to(device) for name in names if name in batch}
            out[batch["index"].numpy()] = model.encode(**inputs).float().cpu().numpy()
    return out


def probe(features: np.ndarray, labels: np.ndarray, held: np.ndarray, task_type: str, classes: int) -> np.ndarray:
    """The outputs on `held` of a linear head fitted to convergence on (`features`, `labels`), both standardised
    by `features`' mean and spread: ridge regression (one column) for regression, multinomial logistic regression
    over `classes` (L-BFGS) for classification; `PENALTY` keeps either from fitting the rows' noise."""
    mean, spread = features.mean(axis=0), features.std(axis=0) + 1e-6
    x, h = (features - mean) / spread, (held - mean) / spread
    if task_type == "regression":
        y = np.asarray(labels, dtype=np.float64)
        weights = np.linalg.solve(x.T @ x / len(x) + PENALTY * np.eye(x.shape[1]), x.T @ (y - y.mean()) / len(x))
        return (h @ weights + y.mean())[:, None]
    x, h, y = torch.from_numpy(x), torch.from_numpy(h), torch.from_numpy(np.asarray(labels, dtype=np.int64))
    weights = torch.zeros(x.shape[1], classes, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(classes, dtype=torch.float64, requires_grad=True)
    solver = torch.optim.LBFGS([weights, bias], max_iter=200, tolerance_change=1e-9, line_search_fn="strong_wolfe")

    def loss() -> torch.Tensor:
        solver.zero_grad()
        value = torch.nn.functional.cross_entropy(x @ weights + bias, y) + PENALTY / 2 * (weights ** 2).sum()
        value.backward()
        return value

    solver.step(loss)
    with torch.no_grad():
        return (h @ weights + bias).numpy()


def out_of_fold(features: np.ndarray, labels: np.ndarray, task_type: str, classes: int, seed: int) -> np.ndarray:
    """Every row's output from a `probe` fitted on the rows of the other folds (`FOLDS` seeded folds, fewer when
    there are fewer rows)."""
    folds = np.empty(len(labels), dtype=np.int64)
    folds[np.random.default_rng(seed).permutation(len(labels))] = np.arange(len(labels)) % min(FOLDS, len(labels))
    outputs = np.empty((len(labels), 1 if task_type == "regression" else classes))
    for fold in np.unique(folds):
        inside = folds == fold
        outputs[inside] = probe(features[~inside], labels[~inside], features[inside], task_type, classes)
    return outputs


def shortlist(ranking: list[tuple[str | None, float]], k: int) -> list[str]:
    """The `k` best-ranked candidates (`none`, the fresh start, is always tried and so never takes a place)."""
    return [name for name, _ in sorted(ranking, key=lambda item: -item[1]) if name is not None][:k]


def criterion(task_type: str) -> str:
    """What the trials compare: Spearman's rank correlation for regression, the loss for classification."""
    return "spearman" if task_type == "regression" else "loss"


def trial_score(outputs: np.ndarray, labels: np.ndarray, task_type: str) -> float:
    """The trial's figure on its rows' out-of-fold outputs, higher better: Spearman (regression) or minus the mean
    cross-entropy."""
    if task_type == "regression":
        return metrics.spearman(outputs[:, 0], labels)
    return -float(np.mean(row_losses(outputs, labels)))


def row_losses(outputs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Each row's cross-entropy."""
    shifted = outputs - outputs.max(axis=1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return -log_probs[np.arange(len(labels)), labels]


def wins(candidate: np.ndarray, none: np.ndarray, labels: np.ndarray, task_type: str, seed: int) -> float:
    """The share of paired bootstrap resamples of the trial rows on which `candidate`'s outputs score better
    than `none`'s (by `trial_score`)."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(labels), size=(RESAMPLES, len(labels)))
    if task_type != "regression":  # the loss is a mean over rows: resample the per-row differences
        gain = row_losses(none, labels) - row_losses(candidate, labels)
        return float((gain[draws].mean(axis=1) > 0).mean())
    better = [trial_score(candidate[d], labels[d], task_type) > trial_score(none[d], labels[d], task_type)
              for d in draws]
    return float(np.mean(better))
