"""GLUE evaluation metrics, in numpy only.

``compute(metric, predictions, references)`` returns the named metric plus the companions GLUE
reports beside it:

==========  ==========================
metric      returned keys (in order)
==========  ==========================
accuracy    accuracy
f1          f1, accuracy
mcc         mcc, accuracy
spearman    spearman, pearson
pearson     pearson, spearman
==========  ==========================

Classification metrics take class indices (``f1`` is the binary F1 of the positive class, label
index 1); correlation metrics take real values. Degenerate inputs (a constant prediction or a
constant reference) give 0.0 for ``mcc`` and the correlations rather than NaN.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

METRICS = ("accuracy", "f1", "mcc", "spearman", "pearson")
CLASSIFICATION_METRICS = ("accuracy", "f1", "mcc")
REGRESSION_METRICS = ("spearman", "pearson")

_COMPANIONS = {
    "accuracy": ("accuracy",),
    "f1": ("f1", "accuracy"),
    "mcc": ("mcc", "accuracy"),
    "spearman": ("spearman", "pearson"),
    "pearson": ("pearson", "spearman"),
}


def compute(metric: str, predictions: Sequence | np.ndarray, references: Sequence | np.ndarray) -> dict[str, float]:
    """Return ``{metric: value, companion: value, ...}`` as plain floats (primary metric first)."""
    if metric not in _COMPANIONS:
        raise ValueError(f"unknown metric {metric!r}; choose one of: {', '.join(METRICS)}")
    pred = _as_1d(predictions, "predictions")
    ref = _as_1d(references, "references")
    if pred.shape != ref.shape:
        raise ValueError(f"{pred.shape[0]} predictions but {ref.shape[0]} references; they must pair up one to one")
    if pred.size == 0:
        raise ValueError("no predictions to score; the evaluation set is empty")
    out: dict[str, float] = {}
    for name in _COMPANIONS[metric]:
        out[name] = float(_FUNCS[name](pred, ref))
    return out


def _as_1d(values, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{what} must be one value per example (1-D), got shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise ValueError(f"{what} must be numbers (class indices or scores), got dtype {arr.dtype}")
    if arr.dtype.kind == "f" and not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} contain NaN or infinite values; the model output diverged")
    return arr


def accuracy(pred: np.ndarray, ref: np.ndarray) -> float:
    return float(np.mean(pred == ref))


def f1(pred: np.ndarray, ref: np.ndarray) -> float:
    """Binary F1 of the positive class (label index 1); 0.0 when there is nothing to score."""
    p = pred == 1
    r = ref == 1
    tp = float(np.sum(p & r))
    fp = float(np.sum(p & ~r))
    fn = float(np.sum(~p & r))
    denom = 2 * tp + fp + fn
    return 0.0 if denom == 0 else 2 * tp / denom


def mcc(pred: np.ndarray, ref: np.ndarray) -> float:
    """Matthews correlation (multiclass form, equal to the binary formula for two classes)."""
    classes, inv = np.unique(np.concatenate([ref, pred]), return_inverse=True)
    k = classes.size
    n = ref.size
    t_idx, p_idx = inv[:n], inv[n:]
    conf = np.zeros((k, k), dtype=np.float64)
    np.add.at(conf, (t_idx, p_idx), 1.0)
    t_sum = conf.sum(axis=1)
    p_sum = conf.sum(axis=0)
    correct = np.trace(conf)
    s = float(n)
    cov_ytyp = correct * s - float(t_sum @ p_sum)
    cov_ypyp = s * s - float(p_sum @ p_sum)
    cov_ytyt = s * s - float(t_sum @ t_sum)
    denom = cov_ypyp * cov_ytyt
    if denom <= 0:
        return 0.0
    return float(cov_ytyp / np.sqrt(denom))


def pearson(pred: np.ndarray, ref: np.ndarray) -> float:
    """Pearson correlation; 0.0 when either side is constant."""
    x = pred.astype(np.float64) - pred.astype(np.float64).mean()
    y = ref.astype(np.float64) - ref.astype(np.float64).mean()
    sxx = float(x @ x)
    syy = float(y @ y)
    if sxx <= 0.0 or syy <= 0.0:
        return 0.0
    r = float(x @ y) / np.sqrt(sxx * syy)
    return float(np.clip(r, -1.0, 1.0))


def rankdata(values: np.ndarray) -> np.ndarray:
    """1-based ranks, ties given the average of the ranks they span (like scipy's 'average')."""
    v = np.asarray(values)
    n = v.size
    order = np.argsort(v, kind="mergesort")
    sorted_v = v[order]
    # boundaries of runs of equal values
    new_run = np.empty(n, dtype=bool)
    if n:
        new_run[0] = True
        new_run[1:] = sorted_v[1:] != sorted_v[:-1]
    starts = np.flatnonzero(new_run)
    ends = np.append(starts[1:], n)  # exclusive
    avg = (starts + ends + 1) / 2.0  # mean of 1-based ranks start+1 .. end
    run_of = np.cumsum(new_run) - 1
    ranks = np.empty(n, dtype=np.float64)
    ranks[order] = avg[run_of]
    return ranks


def spearman(pred: np.ndarray, ref: np.ndarray) -> float:
    """Spearman rank correlation with average ranks for ties; 0.0 when either side is constant."""
    return pearson(rankdata(pred), rankdata(ref))


_FUNCS = {"accuracy": accuracy, "f1": f1, "mcc": mcc, "pearson": pearson, "spearman": spearman}
