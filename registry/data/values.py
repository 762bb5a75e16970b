"""Value rules, the bottom of the data floor: what counts as a number, as missing, as text; labels' canonical form.

Readers (sources), inference and splits all decide by these, so one value means the same everywhere.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

MIN_TEXT_TOKENS = 3.0           # mean whitespace tokens for a column to look like text


def to_number(v: Any) -> float | None:
    """A finite number from an int/float/numeric string; None otherwise (booleans are not numbers)."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, (int, float, np.integer, np.floating)):
        f = float(v)
        return f if math.isfinite(f) else None
    if isinstance(v, str):
        s = v.strip()
        if not s or not (s[0].isdigit() or s[0] in "+-."):
            return None  # fast path; also keeps "nan"/"inf" words out
        try:
            f = float(s)
        except ValueError:
            return None
        return f if math.isfinite(f) else None
    return None


def looks_like_text(values: Sequence[str]) -> bool:
    """The one rule for "this column holds text": its values (a sample, as strings) are mostly not numbers
    and average MIN_TEXT_TOKENS or more whitespace-separated words."""
    if not values or sum(to_number(v) is not None for v in values) >= 0.9 * len(values):
        return False
    return sum(len(v.split()) for v in values) / len(values) >= MIN_TEXT_TOKENS


def norm(name: str) -> str:
    """A column name as it is compared with known names: stripped, lower case."""
    return name.strip().lower()


def is_missing(value: Any) -> bool:
    """None, NaN, or a blank string (an empty TSV/CSV field)."""
    if type(value) is str:
        return not value or value.isspace()
    return value is None or (isinstance(value, float) and math.isnan(value))


def is_missing_label(value: Any) -> bool:
    """A missing value, or the word "nan" (a missing label as pandas writes it, not a class called "nan")."""
    return is_missing(value) or (isinstance(value, str) and value.strip().lower() == "nan")


def canonical_label(value: Any) -> str:
    """The label map's string for a raw label: numbers canonically ("1.0" -> "1"), strings stripped."""
    number = to_number(value)
    if number is not None:
        return str(int(number)) if number.is_integer() and abs(number) < 2**53 else repr(number)
    return value.strip() if isinstance(value, str) else str(value)


def hashable(value: Any) -> Any:
    """A JSON list or object as its canonical text, so that it can be counted; anything else as it is."""
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value
