"""Pictures of a registry's history, drawn with matplotlib (imported only here)."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any


def plot_history(rows: list[dict[str, Any]], metrics: dict[str, str], output: Path) -> Path:
    """Two panels: each task's score over time (epochs and re-evaluations), and per-epoch validation curves.

    rows are `catalog.history` rows; metrics maps each task to its primary metric, the one plotted.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    scores = [r for r in rows if r["split"] == "validation" and r["metric"] == metrics.get(r["task"])]
    timeline: dict[str, list[tuple[int, float]]] = defaultdict(list)
    curves: dict[tuple[str, int], list[tuple[int, float]]] = defaultdict(list)
    for step, row in enumerate(scores):
        timeline[row["task"]].append((step, row["value"]))
        if row["run"] is not None:
            curves[(row["task"], row["run"])].append((row["epoch"], row["value"]))

    figure, (left, right) = plt.subplots(1, 2, figsize=(12, 4.5))
    for task, points in timeline.items():
        left.plot(*zip(*points), marker="o", label=f"{task} ({metrics[task]})")
    left.set(
        title="score history: training epochs, then re-evaluations", xlabel="measurement", ylabel="validation score"
    )
    for (task, run), points in curves.items():
        right.plot(*zip(*points), marker="o", label=f"{task} run {run}")
    right.set(title="validation score per epoch", xlabel="epoch", ylabel="validation score")
    for axis in (left, right):
        axis.grid(alpha=0.3)
        if axis.lines:
            axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(output, dpi=120)
    plt.close(figure)
    return output
