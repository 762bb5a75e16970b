"""What :mod:`registry.data.splits` infers when the user does not say it, one rule per function.

* :func:`profile` sums up a column: how many values are missing, how many distinct, whether they are
  numbers, whether they look like text.
* :func:`infer_label_column`: a column named like a label, else the most class-like column
  (:func:`label_preference` says which wins and why).
* :func:`infer_text_columns`: the columns that look like text; one is a single sentence, two a pair.
* :func:`infer_task_type`: class names or words are classification; non-integer numbers, or more
  than :data:`MAX_CLASSES` distinct integers, are regression.
* :func:`label_map`: the class names in a stable order (:func:`label_order`).
* :func:`pick_metric`: GLUE's choice — MCC or F1 for a skewed binary task, accuracy otherwise,
  Spearman for regression.

A label column *holds numbers* when at least :data:`NUMERIC_SHARE` of its present values are finite
numbers. Its other values (``inf``, a header repeated as a row, ``3 stars``) are *stray*: never a
class, never a reason to switch to classification; :mod:`registry.data.splits` skips their rows and says so.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from registry.errors import DataError
from registry.data.sources import LABEL_NAMES, SAMPLE, Table
from registry.data.values import (MIN_TEXT_TOKENS, canonical_label, hashable, is_missing, is_missing_label,
                                  looks_like_text, norm, to_number)

__all__ = [
    "ColumnProfile",
    "profile",
    "is_missing",
    "is_missing_label",
    "canonical_label",
    "label_order",
    "label_map",
    "infer_label_column",
    "infer_text_columns",
    "infer_task_type",
    "pick_metric",
    "MAX_CLASSES",
    "MAX_SKIPPED_SHARE",
    "NUMERIC_SHARE",
]

MAX_CLASSES = 100               # more distinct integer labels than this -> regression
MAX_SKIPPED_SHARE = 0.05        # rows that cannot train are skipped up to this share of a file, refused beyond
NUMERIC_SHARE = 0.95            # a label column holds numbers when this share of its values are numbers
MINORITY_FOR_MCC_F1 = 0.40      # binary tasks whose minority class is rarer use mcc / f1
# Text columns recognised by name once digits, '#', '_' and spaces are removed ("#1 String" -> "string").
TEXT_NAMES = re.compile(
    r"^(sentence|text|texta|textb|question|premise|hypothesis|string|passage|context|query|"
    r"document|review|content|utterance|title|body|abstract|summary|claim|evidence)$"
)


# --------------------------------------------------------------------------------------------
# labels


def label_order(label: str) -> tuple:
    """Sort key of the label map: numbers first, in numeric order ("2" before "10"), then names alphabetically."""
    number = to_number(label)
    return (0, number, "") if number is not None else (1, 0.0, label)


# --------------------------------------------------------------------------------------------
# column profiles


@dataclass(frozen=True)
class ColumnProfile:
    """What inference needs to know about one column."""

    missing: int            # missing values (see is_missing_label)
    distinct: int           # distinct present values (numbers counted canonically, strays left out)
    numeric: bool           # at least NUMERIC_SHARE of the present values are numbers
    integer: bool           # ... and every one of those numbers is an integer
    stray: int              # present values of a numeric column that are not numbers
    text: bool              # looks like text (values.looks_like_text)
    mean_chars: float       # mean length of a sample of present values


def profile(values: list) -> ColumnProfile:
    """The profile of one column's raw values."""
    counts = Counter(hashable(v) for v in values if not is_missing_label(v))
    present = sum(counts.values())
    numbers = {v: to_number(v) for v in counts}
    numeric_rows = sum(n for v, n in counts.items() if numbers[v] is not None)
    numeric = present > 0 and numeric_rows >= NUMERIC_SHARE * present
    if numeric:
        distinct = len({canonical_label(v) for v in counts if numbers[v] is not None})
        integer = all(x.is_integer() for x in numbers.values() if x is not None)
    else:
        distinct, integer = len(counts), False
    sample = [v if isinstance(v, str) else str(v) for v in values if not is_missing(v)]
    sample = sample[:: max(1, len(sample) // SAMPLE)]
    return ColumnProfile(
        missing=len(values) - present,
        distinct=distinct,
        numeric=numeric,
        integer=integer,
        stray=present - numeric_rows if numeric else 0,
        text=not numeric and looks_like_text(sample),
        mean_chars=sum(map(len, sample)) / len(sample) if sample else 0.0,
    )


# --------------------------------------------------------------------------------------------
# columns


def label_preference(column: ColumnProfile, position: int, rows: int) -> tuple | None:
    """How well a column suits being the labels (smaller is better), or None when it cannot be.

    It cannot when it looks like text, has fewer than two values, or misses more than a few of them
    (a label column misses at most the rows that get skipped). Otherwise, in this order: a column of
    *few* values (at most MAX_CLASSES, and at most one distinct value per two rows, so ids are not
    classes) before one of many; numbers before words; fewer distinct values first; then file order.
    A column of many values qualifies only when it holds non-integer numbers (a regression target).
    """
    if column.text or column.distinct < 2 or column.missing > MAX_SKIPPED_SHARE * rows:
        return None
    few = column.distinct <= MAX_CLASSES and (column.distinct <= 2 or 2 * column.distinct <= rows)
    if not few and not (column.numeric and not column.integer):
        return None
    return (not few, not column.numeric, column.distinct, position)


def infer_label_column(table: Table, profiles: dict[str, ColumnProfile], exclude: Sequence[str]) -> tuple[str, str]:
    """The label column and the line that says why: by its name (LABEL_NAMES, in order), else by label_preference."""
    by_name: dict[str, str] = {}
    for column in table.columns:
        if column not in exclude:
            by_name.setdefault(norm(column), column)
    for name in LABEL_NAMES:
        if name in by_name:
            return by_name[name], f"label column: {by_name[name]} (by its name)"
    ranked = sorted(
        (rank, column) for position, column in enumerate(table.columns)
        if column not in exclude and (rank := label_preference(profiles[column], position, table.n)) is not None
    )
    if not ranked:
        raise DataError(
            f"cannot tell which column of {table.name} holds the labels (none is named label/score/... or has "
            f"a few distinct values in every row); columns are: {table.names()}; pass --label-column NAME"
        )
    chosen = ranked[0][1]
    others = [column for _, column in ranked[1:]]
    note = f"label column: {chosen} ({profiles[chosen].distinct} distinct values in every row"
    return chosen, note + (f"; also possible: {', '.join(others)})" if others else ")")


def infer_text_columns(table: Table, profiles: dict[str, ColumnProfile], label: str) -> tuple[tuple[str, ...], str]:
    """One or two text columns and the line that says why.

    More than two look like text: the ones named like text (TEXT_NAMES) when one or two are, else the
    two longest on average (of the named ones, if any), kept in file order.
    """
    found = [c for c, p in profiles.items() if c != label and p.text]
    if not found:
        raise DataError(
            f"no column of {table.name} looks like text (a mean of {MIN_TEXT_TOKENS:g}+ words); columns are: "
            f"{table.names()}; pass --text-column NAME (twice for a sentence pair)"
        )
    why = ""
    if len(found) > 2:
        named = [c for c in found if TEXT_NAMES.match(re.sub(r"[\d#_\s-]+", "", c.lower()))]
        if 1 <= len(named) <= 2:
            why = f"; chosen by name from {', '.join(found)}"
            found = named
        else:
            pool = named or found
            longest = sorted(pool, key=lambda c: -profiles[c].mean_chars)[:2]
            why = f"; the two longest of {', '.join(pool)} — pass --text-column to choose"
            found = [c for c in found if c in longest]
    if len(found) == 1:
        return (found[0],), f"text column: {found[0]} (single sentence{why})"
    return (found[0], found[1]), f"text columns: {found[0]} + {found[1]} (a sentence pair{why})"


# --------------------------------------------------------------------------------------------
# task type, labels, metric


def infer_task_type(column: ColumnProfile, name: str, class_names: bool) -> tuple[str, str | None]:
    """Classification or regression, and a line saying why when it is regression.

    Class names (a hub ClassLabel) or words are classes; numbers that are not all integers are a
    regression target, and so are more than MAX_CLASSES distinct integers.
    """
    if class_names or not column.numeric:
        return "classification", None
    if not column.integer:
        return "regression", f"task type: regression (numeric, non-integer labels in {name})"
    if column.distinct > MAX_CLASSES:
        return "regression", (f"task type: regression ({column.distinct} distinct integer labels, more than "
                              f"{MAX_CLASSES}; pass --task-type classification to change that)")
    return "classification", None


def label_map(values: list, numbers_only: bool) -> tuple[str, ...]:
    """The distinct labels in label_order; with ``numbers_only`` stray values are left out (they are skipped)."""
    distinct = {canonical_label(v) for v in {hashable(v) for v in values} if not is_missing_label(v)}
    if numbers_only:
        distinct = {s for s in distinct if to_number(s) is not None}
    return tuple(sorted(distinct, key=label_order))


def describe_label_map(labels: Sequence[str]) -> str:
    """`0 -> 'neg', 1 -> 'pos'`, the first ten."""
    shown = ", ".join(f"{i} -> {s!r}" for i, s in enumerate(labels[:10]))
    return shown + (f", ... ({len(labels)} in all)" if len(labels) > 10 else "")


def pick_metric(task_type: str, targets: np.ndarray | None, labels: Sequence[str] | None, pair: bool,
                where: str) -> tuple[str, str]:
    """GLUE's metric for the task and the line that says why: spearman for regression; for a binary task
    whose minority class is under MINORITY_FOR_MCC_F1 of ``where``, MCC (single sentence) or F1 of class 1
    (a pair); accuracy otherwise."""
    if task_type == "regression":
        return "spearman", "metric: spearman (regression)"
    assert labels is not None and targets is not None
    if len(labels) == 2 and targets.size:
        counts = np.bincount(targets, minlength=2)
        minority = int(np.argmin(counts))
        share = counts[minority] / targets.size
        if share < MINORITY_FOR_MCC_F1:
            metric = "f1" if pair else "mcc"
            kind = "sentence pair; F1 of class 1 = " + repr(labels[1]) if pair else "single sentence"
            return metric, (f"metric: {metric} (binary labels; the minority class {labels[minority]!r} is "
                            f"{share:.1%} of {where} < {MINORITY_FOR_MCC_F1:.0%}; {kind})")
        return "accuracy", (f"metric: accuracy (binary labels, balanced: the minority class {labels[minority]!r} "
                            f"is {share:.1%} of {where})")
    return "accuracy", f"metric: accuracy ({len(labels)} classes)"
