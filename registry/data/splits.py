"""Task data: load a labelled text data set and infer what the user did not say.

Sources (`load(source)`):

* a **directory** holding ``train.<ext>`` and ``dev.<ext>`` (or ``validation.<ext>`` /
  ``valid.<ext>``); without a dev file, 10% of the train file is held out (seeded);
* a **single file**: a deterministic, seeded 10% of its rows is held out for validation;
* a **Hugging Face hub dataset**, written ``hf:REPO_ID[:CONFIG][@REVISION]``, e.g.
  ``hf:nyu-mll/glue:cola`` or ``hf:stanfordnlp/imdb@main``. Only the ``hf:`` prefix selects the
  hub, so a local path is never mistaken for a dataset id. Its ``train`` split is used for
  training and its ``validation`` (or ``validation_matched`` / ``dev`` / ``valid``) split for
  validation; ``test`` is never used. Offline, this fails with a DataError.

Rows that cannot train — an empty text, no label, or a stray value in a label column of numbers
(see :mod:`registry.data.inference`) — are skipped, counted and named (reason and first line numbers) in
one of the ``inferred`` lines, up to :data:`MAX_SKIPPED_SHARE` of a file. More than that, or any
with ``strict=True``, is a DataError. The hold-out is drawn before skipping, so the same rows are
validation rows whatever is skipped.

Reading the files (formats, header detection, the hub) is :mod:`registry.data.sources`; the inference
rules are :mod:`registry.data.inference`; tokenising and batching a loaded split is
:mod:`registry.data.encoding`. Splits are held as ``pyarrow.Table`` (``datasets`` is imported only for a
hub source).

Every problem with the data raises :class:`registry.errors.DataError` with a one-line message that
names the file, column or row and says what to do.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from registry.data import inference, metrics
from registry.errors import DataError
from registry.data.inference import MAX_SKIPPED_SHARE
from registry.data.sources import Source, Table, load_dev, resolve
from registry.data.values import canonical_label, hashable, is_missing, is_missing_label, to_number

if TYPE_CHECKING:  # imported lazily at run time, with the first split built
    import pyarrow as pa

__all__ = [
    "TaskData",
    "load",
    "load_validation",
    "TASK_TYPES",
    "HOLDOUT_FRACTION",
    "MAX_SKIPPED_SHARE",
]

TASK_TYPES = ("classification", "regression")
HOLDOUT_FRACTION = 0.1
_SHOWN_LINES = 3                # line numbers shown per reason a row is skipped


@dataclass(frozen=True)
class TaskData:
    """A task's data, validated, with labels mapped (int class index or float target).

    ``train`` and ``validation`` hold the text columns, then the label column (int64 class index or
    float32 target). ``skipped`` counts the rows left out because they cannot train, per split.
    """

    train: pa.Table
    validation: pa.Table
    text_columns: tuple[str, ...]
    label_column: str
    task_type: str
    labels: tuple[str, ...] | None
    metric: str
    validation_from: str
    fingerprint: str
    inferred: tuple[str, ...]
    skipped: dict[str, int]


# --------------------------------------------------------------------------------------------
# options: checked once, the same way for load and load_validation


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"--seed must be a non-negative integer, got {seed!r}")


def _text_columns_option(text_columns: Sequence[str] | str | None) -> tuple[str, ...] | None:
    if text_columns is None:
        return None
    given = (text_columns,) if isinstance(text_columns, str) else tuple(str(c) for c in text_columns)
    if not 1 <= len(given) <= 2:
        raise DataError(
            f"--text-column was given {len(given)} times; give one column (single sentence) or two (a pair)"
        )
    if len(set(given)) != len(given):
        raise DataError(f"--text-column {given[0]} was given twice; a pair needs two different columns")
    return given


def _check_metric(metric: str, task_type: str | None, labels: Sequence[str] | None) -> None:
    """A known metric that suits the task type (when known) and the number of classes (when known)."""
    if metric not in metrics.METRICS:
        raise DataError(f"--metric {metric} is not a known metric; choose one of: {', '.join(metrics.METRICS)}")
    if task_type == "regression" and metric not in metrics.REGRESSION_METRICS:
        raise DataError(f"--metric {metric} needs class labels but the task is regression; use spearman or pearson")
    if task_type == "classification" and metric not in metrics.CLASSIFICATION_METRICS:
        raise DataError(
            f"--metric {metric} needs numeric targets but the task is classification; use accuracy, f1 or mcc"
        )
    if metric == "f1" and labels is not None and len(labels) != 2:
        raise DataError(f"--metric f1 is binary F1 but the task has {len(labels)} classes; use accuracy or mcc")


def _check_columns(table: Table, given: Sequence[str], flag: str) -> None:
    for column in given:
        if column not in table.columns:
            raise DataError(f"{flag} {column} names no column of {table.name}; columns are: {table.names()}")


# --------------------------------------------------------------------------------------------
# rows: the hold-out, and the rows that cannot train


def _holdout(n: int, seed: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    if n < 2:
        raise DataError(
            f"{name} has only {n} example; holding out validation rows needs at least 2 (10 or more to be useful)"
        )
    n_val = max(1, math.ceil(n * HOLDOUT_FRACTION))
    perm = np.random.default_rng([seed, 0]).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


@dataclass(frozen=True)
class _Split:
    """Rows of one table (indices into it, file order) that make up a split."""

    table: Table
    rows: np.ndarray


def _validation_split(src: Source, required: Sequence[str], seed: int, user: str) -> tuple[_Split, _Split | None, str]:
    """The validation rows, the train rows when they come from the same file (a hold-out), and where they came from."""
    if src.holdout_of is not None:
        table = src.train
        assert table is not None
        _check_validation_columns(table, required, user)
        train_rows, validation_rows = _holdout(table.n, seed, table.name)
        return (_Split(table, validation_rows), _Split(table, train_rows),
                f"{HOLDOUT_FRACTION:.0%} of {src.holdout_of} held out (seed {seed})")
    table = src.validation if src.validation is not None else load_dev(src, required)
    _check_validation_columns(table, required, user)
    return _Split(table, np.arange(table.n)), None, src.validation_from


def _check_validation_columns(table: Table, required: Sequence[str], user: str) -> None:
    for column in required:
        if column not in table.columns:
            raise DataError(
                f"{table.name} has no column {column}, which {user} uses; its columns are: {table.names()}; "
                "give it the same columns"
            )


def _unusable(table: Table, text_columns: Sequence[str], label: str, numeric_labels: bool) -> dict[str, list[int]]:
    """Rows of ``table`` that cannot train, by reason (each in file order)."""
    reasons: dict[str, list[int]] = {}
    for column in text_columns:
        if rows := [i for i, v in enumerate(table.columns[column]) if is_missing(v)]:
            reasons[f"empty {column}"] = rows
    values = table.columns[label]
    if rows := [i for i, v in enumerate(values) if is_missing_label(v)]:
        reasons[f"no {label}"] = rows
    if numeric_labels:
        stray = [i for i, v in enumerate(values) if not is_missing_label(v) and to_number(v) is None]
        if stray:
            shown = ", ".join(repr(canonical_label(v)) for v in dict.fromkeys(hashable(values[i]) for i in stray))
            reasons[f"{label} not a number ({shown[:80]})"] = stray
    return reasons


def _first_places(table: Table, rows: list[int]) -> str:
    """`line 5`, `lines 5, 9, 12, ...`: where the first rows are, in the file's terms."""
    unit = "line" if table.lines is not None else "row"
    shown = ", ".join(table.where(i).split()[1] for i in rows[:_SHOWN_LINES])
    return f"{unit}{'s' if len(rows) > 1 else ''} {shown}{', ...' if len(rows) > _SHOWN_LINES else ''}"


def _usable_rows(table: Table, text_columns: Sequence[str], label: str, numeric_labels: bool,
                 strict: bool) -> tuple[np.ndarray, str | None]:
    """A mask of the rows of ``table`` that can train and the line that reports the others.

    Refuses any row that cannot train with ``strict``, and more than MAX_SKIPPED_SHARE of the table without.
    """
    reasons = _unusable(table, text_columns, label, numeric_labels)
    usable = np.ones(table.n, dtype=bool)
    for rows in reasons.values():
        usable[rows] = False
    bad = int(table.n - usable.sum())
    if not bad:
        return usable, None
    what = "; ".join(f"{reason} ({_first_places(table, rows)})" for reason, rows in reasons.items())
    share = bad / table.n
    if strict:
        raise DataError(f"{table.name} has {bad} of {table.n} rows that cannot train: {what}; "
                        "fix or drop those rows, or leave out --strict to skip them")
    if share > MAX_SKIPPED_SHARE:
        raise DataError(f"{table.name} has {bad} of {table.n} rows ({share:.1%}) that cannot train: {what}; more than "
                        f"the {MAX_SKIPPED_SHARE:.0%} that may be skipped: fix those rows, or check --text-column, "
                        "--label-column and --task-type")
    return usable, f"skipped {bad} of {table.n} rows of {table.name} that cannot train: {what} (--strict refuses them)"


def _keep_usable(splits: Sequence[_Split | None], text_columns: Sequence[str], label: str, numeric_labels: bool,
                 strict: bool, notes: list[str]) -> tuple[list[_Split | None], list[int]]:
    """Each split without its rows that cannot train (checked once per table), and how many each lost."""
    masks: dict[int, np.ndarray] = {}
    kept: list[_Split | None] = []
    lost: list[int] = []
    for split in splits:
        if split is None:
            kept.append(None)
            lost.append(0)
            continue
        if id(split.table) not in masks:
            masks[id(split.table)], note = _usable_rows(split.table, text_columns, label, numeric_labels, strict)
            if note:
                notes.append(note)
        rows = split.rows[masks[id(split.table)][split.rows]]
        kept.append(_Split(split.table, rows))
        lost.append(int(split.rows.size - rows.size))
    return kept, lost


# --------------------------------------------------------------------------------------------
# targets


def _regression_targets(split: _Split, label: str) -> np.ndarray:
    values = split.table.columns[label]
    return np.array([to_number(values[i]) for i in split.rows], dtype=np.float32)


def _class_indices(split: _Split, label: str, index: dict[str, int], known_from: str) -> np.ndarray:
    values = split.table.columns[label]
    canonical: dict[Any, str] = {}
    out = np.empty(split.rows.size, dtype=np.int64)
    unknown: Counter = Counter()
    first_bad: int | None = None
    for k, i in enumerate(split.rows):
        key = hashable(values[i])
        name = canonical.get(key)
        if name is None:
            name = canonical[key] = canonical_label(values[i])
        j = index.get(name)
        if j is None:
            unknown[name] += 1
            first_bad = int(i) if first_bad is None else first_bad
            continue
        out[k] = j
    if unknown:
        shown = ", ".join(f"{k!r} ({n} rows)" for k, n in unknown.most_common(5))
        raise DataError(
            f"label column {label} of {split.table.name} has labels {known_from} never uses: {shown}, first at "
            f"{split.table.where(first_bad)}; known labels: {', '.join(index)}; fix those rows"
        )
    return out


def _targets(split: _Split, label: str, labels: tuple[str, ...] | None, known_from: str) -> np.ndarray:
    if labels is None:
        return _regression_targets(split, label)
    return _class_indices(split, label, {s: i for i, s in enumerate(labels)}, known_from)


def _build_table(split: _Split, text_columns: Sequence[str], label: str, targets: np.ndarray) -> pa.Table:
    import pyarrow as pa

    data: dict[str, Any] = {}
    for column in text_columns:
        values = split.table.columns[column]
        data[column] = pa.array(
            [v if isinstance(v, str) else str(v) for v in (values[i] for i in split.rows)], pa.string()
        )
    data[label] = pa.array(targets, pa.int64() if targets.dtype == np.int64 else pa.float32())
    return pa.table(data)


# --------------------------------------------------------------------------------------------
# load: a task's train and validation data


def load(
    source: str,
    *,
    text_columns: Sequence[str] | None = None,
    label_column: str | None = None,
    task_type: str | None = None,
    metric: str | None = None,
    max_train_samples: int | None = None,
    seed: int = 0,
    strict: bool = False,
) -> TaskData:
    """Load and validate a task's train and validation data, inferring what is not given.

    ``source`` is a directory, a single file or ``hf:REPO_ID[:CONFIG][@REVISION]`` (see the module
    docstring). Each keyword overrides one inference:

    * ``text_columns`` — one column (single sentence) or two (a pair, in that order);
    * ``label_column``; ``task_type`` — "classification" or "regression";
    * ``metric`` — one of :data:`registry.data.metrics.METRICS`, checked against the task type;
    * ``max_train_samples`` — keep a random subset of that many training rows (seeded);
    * ``strict`` — refuse data with any row that cannot train instead of skipping it.

    ``seed`` drives the 10% hold-out of a single file (or of a directory without a dev file) and the
    training subset. The label map and the metric come from all training rows, before subsetting;
    for a held-out file the label map covers the whole file, so a rare class that landed only in the
    held-out rows is still a known class.
    """
    _check_seed(seed)
    text_columns = _text_columns_option(text_columns)
    label_column = None if label_column is None else str(label_column)
    if task_type is not None and task_type not in TASK_TYPES:
        raise DataError(f"--task-type {task_type} is not one of: {', '.join(TASK_TYPES)}")
    if max_train_samples is not None and (
        isinstance(max_train_samples, bool)
        or not isinstance(max_train_samples, (int, np.integer))
        or max_train_samples < 1
    ):
        raise DataError(f"--max-train-samples must be a positive integer, got {max_train_samples!r}")
    if metric is not None:
        _check_metric(metric, None, None)
    return _load_source(resolve(source, need_train=True), text_columns=text_columns, label_column=label_column,
                        task_type=task_type, metric=metric, max_train_samples=max_train_samples, seed=seed,
                        strict=strict)


def _choose_columns(train: Table, text_columns: tuple[str, ...] | None, label_column: str | None,
                    notes: list[str]) -> tuple[tuple[str, ...], str, dict[str, inference.ColumnProfile]]:
    """The text and label columns, given or inferred, and every column's profile."""
    if label_column is not None:
        _check_columns(train, [label_column], "--label-column")
    if text_columns is not None:
        _check_columns(train, text_columns, "--text-column")
        if label_column in text_columns:
            raise DataError(f"--label-column {label_column} is also a --text-column; pick different columns")
    profiles = {column: inference.profile(values) for column, values in train.columns.items()}
    if label_column is None:
        label_column, note = inference.infer_label_column(train, profiles, exclude=text_columns or ())
        notes.append(note)
    if text_columns is None:
        text_columns, note = inference.infer_text_columns(train, profiles, label_column)
        notes.append(note)
    return text_columns, label_column, profiles


def _label_space(train: Table, label: str, column: inference.ColumnProfile, task_type: str | None,
                 notes: list[str]) -> tuple[str, tuple[str, ...] | None]:
    """The task type (given or inferred) and, for classification, the label map."""
    class_names = train.class_names.get(label)
    type_inferred = task_type is None
    if task_type is None:
        task_type, note = inference.infer_task_type(column, label, class_names is not None)
        if note:
            notes.append(note)
    if task_type == "regression":
        if class_names is not None:
            raise DataError(f"label column {label} of {train.name} holds class names, so it cannot be a regression "
                            "target; pass --task-type classification")
        if not column.numeric:
            values = train.columns[label]
            i = next(i for i, v in enumerate(values) if not is_missing_label(v) and to_number(v) is None)
            raise DataError(f"label column {label} of {train.name} has a non-numeric value {values[i]!r} "
                            f"({train.where(i)}), so it cannot be a regression target; "
                            "pass --task-type classification or fix those rows")
        return task_type, None
    labels = class_names or inference.label_map(train.columns[label], numbers_only=column.numeric)
    lead = f"task type: classification ({len(labels)} classes: " if type_inferred else "label map: "
    notes.append(lead + inference.describe_label_map(labels) + (")" if type_inferred else ""))
    return task_type, labels


def _check_learnable(train: _Split, label: str, labels: tuple[str, ...] | None, targets: np.ndarray) -> None:
    """Two classes, or two different targets, among the training rows."""
    if not targets.size:
        raise DataError(f"{train.table.name} has no training row left that can train; fix the file")
    if labels is None and float(np.ptp(targets)) == 0.0:
        raise DataError(
            f"label column {label} of {train.table.name} has the same value ({float(targets[0]):g}) in every "
            "training row; nothing to learn — check --label-column or the data"
        )
    present = np.unique(targets)
    if labels is not None and len(present) < 2:
        raise DataError(
            f"label column {label} of {train.table.name} has one class ({labels[int(present[0])]!r}) in all "
            f"{targets.size} training rows; a classifier needs at least two — check --label-column or the data"
        )


def _subset(train: _Split, targets: np.ndarray, labels: tuple[str, ...] | None, max_train_samples: int | None,
            seed: int, notes: list[str]) -> tuple[_Split, np.ndarray]:
    """A seeded random subset of the training rows (file order kept), when ``max_train_samples`` asks for one."""
    n = train.rows.size
    if max_train_samples is None:
        return train, targets
    if max_train_samples >= n:
        notes.append(f"training subset: all {n} rows (--max-train-samples {max_train_samples} is not fewer)")
        return train, targets
    pick = np.sort(np.random.default_rng([seed, 1]).choice(n, size=int(max_train_samples), replace=False))
    if labels is not None and len(np.unique(targets[pick])) < 2:
        raise DataError(
            f"--max-train-samples {max_train_samples} leaves a single class in the training subset; raise it"
        )
    notes.append(f"training subset: {max_train_samples} of {n} rows, drawn at random (seed {seed})")
    return _Split(train.table, train.rows[pick]), targets[pick]


def _load_source(src: Source, *, text_columns: tuple[str, ...] | None, label_column: str | None, task_type: str | None,
                 metric: str | None, max_train_samples: int | None, seed: int, strict: bool = False) -> TaskData:
    """load() once the source is read: columns, label space, rows, metric, subset."""
    train_table = src.train
    assert train_table is not None
    notes: list[str] = []
    if train_table.header is False:
        notes.append(f"{train_table.name} has no header row: columns are named by position: {train_table.names()}")
    text_columns, label_column, profiles = _choose_columns(train_table, text_columns, label_column, notes)
    column = profiles[label_column]
    task_type, labels = _label_space(train_table, label_column, column, task_type, notes)
    if metric is not None:
        _check_metric(metric, task_type, labels)

    validation, train, validation_from = _validation_split(src, [*text_columns, label_column], seed, train_table.name)
    notes.insert(0, f"validation: {validation_from}")
    numeric_labels = task_type == "regression" or column.numeric
    (train, validation), (train_lost, validation_lost) = _keep_usable(
        [train or _Split(train_table, np.arange(train_table.n)), validation], text_columns, label_column,
        numeric_labels, strict, notes)
    assert train is not None and validation is not None
    train_targets = _targets(train, label_column, labels, train_table.name)
    _check_learnable(train, label_column, labels, train_targets)
    validation_targets = _targets(validation, label_column, labels, train_table.name)
    if metric is None:
        metric, note = inference.pick_metric(task_type, None if labels is None else train_targets, labels,
                                             len(text_columns) == 2, "train")
        notes.append(note)
    train, train_targets = _subset(train, train_targets, labels, max_train_samples, seed, notes)
    return TaskData(
        train=_build_table(train, text_columns, label_column, train_targets),
        validation=_build_table(validation, text_columns, label_column, validation_targets),
        text_columns=text_columns,
        label_column=label_column,
        task_type=task_type,
        labels=labels,
        metric=metric,
        validation_from=validation_from,
        fingerprint=src.fingerprint,
        inferred=tuple(src.notes + notes),
        skipped={"train": train_lost, "validation": validation_lost},
    )


def check_task_fields(text_columns: Sequence[str], label_column: str, task_type: str, labels: Sequence[str] | None,
                      metric: str | None) -> tuple[tuple[str, ...], str, tuple[str, ...] | None]:
    """A stored (or imported) task's columns, type, label map and metric, checked as add-task checks its own.

    Returns the text columns, label column and labels as the loaders use them.
    """
    text_cols = _text_columns_option(text_columns)
    if not text_cols:
        raise DataError("the task records no text column; re-register it")
    label_column = str(label_column)
    if label_column in text_cols:
        raise DataError(f"label column {label_column} is also a text column; re-register the task")
    if task_type not in TASK_TYPES:
        raise DataError(f"task type {task_type!r} is not one of: {', '.join(TASK_TYPES)}")
    if task_type == "classification":
        if not labels or len(labels) < 2:
            raise DataError("the task records no label map (it needs two or more classes); re-register it")
        labels = tuple(str(s) for s in labels)
        if len(set(labels)) != len(labels):
            raise DataError("the task's label map names a class twice; re-register it")
    elif labels is not None:
        raise DataError("a regression task has no label map; pass labels=None")
    if metric is not None:
        _check_metric(metric, task_type, labels)
    return text_cols, label_column, labels


# --------------------------------------------------------------------------------------------
# load_validation: a stored task's validation rows


def load_validation(
    source: str,
    *,
    text_columns: Sequence[str],
    label_column: str,
    task_type: str,
    labels: Sequence[str] | None,
    metric: str | None = None,
    seed: int = 0,
    strict: bool = False,
) -> TaskData:
    """Load only the validation rows of ``source`` with a stored task's columns and label map.

    The validation rows are the ones :func:`load` would pick for the same source and ``seed``: the
    directory's dev file, the hub's validation split, or the seeded 10% hold-out of a single file,
    less the rows that cannot train (skipped or refused as in :func:`load`). A label outside
    ``labels`` is a DataError. The returned ``train`` is empty (zero rows, same columns);
    ``fingerprint`` equals what :func:`load` gives for the same files. Without ``metric`` it is
    inferred as in :func:`load`, from the validation rows.
    """
    _check_seed(seed)
    text_columns, label_column, labels = check_task_fields(text_columns, label_column, task_type, labels, metric)
    src = resolve(source, need_train=False)
    validation, _, validation_from = _validation_split(src, [*text_columns, label_column], seed, "the task")
    notes = [f"validation: {validation_from}"]
    # As in load: a stray value is one among numbers, in a file whose labels are numbers.
    numeric_labels = labels is None or (all(to_number(s) is not None for s in labels)
                                        and inference.profile(validation.table.columns[label_column]).numeric)
    (validation,), (lost,) = _keep_usable([validation], text_columns, label_column, numeric_labels, strict, notes)
    assert validation is not None
    targets = _targets(validation, label_column, labels, "the task's training data")
    if metric is None:
        metric, note = inference.pick_metric(task_type, None if labels is None else targets, labels,
                                             len(text_columns) == 2, "the validation rows")
        notes.append(note)
    table = _build_table(validation, text_columns, label_column, targets)
    return TaskData(train=table.slice(0, 0), validation=table, text_columns=text_columns, label_column=label_column,
                    task_type=task_type, labels=labels, metric=metric, validation_from=validation_from,
                    fingerprint=src.fingerprint, inferred=tuple(notes), skipped={"train": 0, "validation": lost})
