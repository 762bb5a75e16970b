"""Line charts as geometry for inline SVG: each series a polyline in pixel coordinates, with axis ticks.

The template draws what `line_chart` returns; nothing here writes markup, so every label is escaped there.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

WIDTH, HEIGHT = 560, 240
MARGIN = {"left": 56, "right": 40, "top": 12, "bottom": 36}
# Okabe-Ito: told apart by colour-blind readers too
COLOURS = ("#0072b2", "#e69f00", "#009e73", "#cc79a7", "#56b4e9", "#d55e00", "#f0e442", "#000000")


def ticks(low: float, high: float, count: int = 5) -> list[float]:
    """`count` evenly spaced values from low to high (one when they are equal)."""
    if high == low:
        return [low]
    return [low + (high - low) * k / (count - 1) for k in range(count)]


def line_chart(series: Sequence[tuple[str, Sequence[tuple[float, float]]]],
               x_format: Callable[[float], str] = lambda x: f"{x:g}", x_count: int = 5) -> dict[str, Any]:
    """Pixel geometry of named (x, y) series on shared axes; y ticks read 4 decimals, x ticks `x_format`."""
    xs = [x for _, points in series for x, _ in points]
    ys = [y for _, points in series for _, y in points]
    x_low, x_high, y_low, y_high = min(xs), max(xs), min(ys), max(ys)
    if y_high == y_low:
        y_low, y_high = y_low - 0.05, y_high + 0.05
    inner_w = WIDTH - MARGIN["left"] - MARGIN["right"]
    inner_h = HEIGHT - MARGIN["top"] - MARGIN["bottom"]

    def px(x: float) -> float:
        share = (x - x_low) / (x_high - x_low) if x_high != x_low else 0.5
        return round(MARGIN["left"] + share * inner_w, 1)

    def py(y: float) -> float:
        return round(MARGIN["top"] + (1 - (y - y_low) / (y_high - y_low)) * inner_h, 1)

    drawn = []
    for k, (label, points) in enumerate(series):
        dots = [(px(x), py(y), f"{y:.4f}") for x, y in points]
        drawn.append({"label": label, "colour": COLOURS[k % len(COLOURS)], "dots": dots,
                      "points": " ".join(f"{x},{y}" for x, y, _ in dots)})
    return {
        "width": WIDTH, "height": HEIGHT, "left": MARGIN["left"], "right": WIDTH - MARGIN["right"],
        "top": MARGIN["top"], "bottom": HEIGHT - MARGIN["bottom"], "series": drawn,
        "x_ticks": [(px(x), x_format(x)) for x in ticks(x_low, x_high, x_count)],
        "y_ticks": [(py(y), f"{y:.4f}") for y in ticks(y_low, y_high)],
    }
