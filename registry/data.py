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

Reading the files (formats, header detection, the hub) is :mod:`registry.sources`; tokenising and
batching a loaded split is :mod:`registry.encoding`.

Every problem with the data raises :class:`registry.errors.DataError` with a one-line message that
names the file, column or row and says what to do.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from registry import metrics as _metrics
from registry.errors import DataError
from registry.sources import (LABEL_NAMES, MIN_TEXT_TOKENS, SAMPLE, Source, Table, load_dev, norm, resolve,
                              to_number)

if TYPE_CHECKING:  # imported lazily at run time: `datasets` is slow to import
    import datasets

__all__ = [
    "TaskData",
    "load",
    "load_validation",
    "TASK_TYPES",
    "HOLDOUT_FRACTION",
]

TASK_TYPES = ("classification", "regression")
HOLDOUT_FRACTION = 0.1

# Text columns recognised by name once digits, '#', '_' and spaces are removed ("#1 String" -> "string").
_TEXT_NAME_RE = re.compile(
    r"^(sentence|text|texta|textb|question|premise|hypothesis|string|passage|context|query|"
    r"document|review|content|utterance|title|body|abstract|summary|claim|evidence)$"
)
_MAX_CLASSES = 100              # more distinct integer labels than this -> regression
_MINORITY_FOR_MCC_F1 = 0.40     # binary tasks whose minority class is rarer use mcc / f1


# --------------------------------------------------------------------------------------------
# public types


@dataclass(frozen=True)
class TaskData:
    """A task's data, validated, with labels mapped (int class index or float target)."""

    train: datasets.Dataset
    validation: datasets.Dataset
    text_columns: tuple[str, ...]
    label_column: str
    task_type: str
    labels: tuple[str, ...] | None
    metric: str
    validation_from: str
    fingerprint: str
    inferred: tuple[str, ...]


# --------------------------------------------------------------------------------------------
# values


def _is_missing(v: Any) -> bool:
    """None, NaN, or a blank string (an empty TSV/CSV field)."""
    if type(v) is str:
        return not v or v.isspace()
    return v is None or (isinstance(v, float) and math.isnan(v))


def _canon_label(v: Any) -> str:
    """The label map's string for a raw label: numbers canonically ("1.0" -> "1"), strings stripped."""
    num = to_number(v)
    if num is not None:
        return str(int(num)) if num.is_integer() and abs(num) < 2**53 else repr(num)
    if isinstance(v, str):
        return v.strip()
    return str(v)


def _label_sort_key(s: str) -> tuple:
    num = to_number(s)
    return (0, num, "") if num is not None else (1, 0.0, s)


def _missing_rows(values: list) -> list[int]:
    return [i for i, v in enumerate(values) if _is_missing(v)]


@dataclass
class _ColStats:
    missing: int
    distinct: int
    numeric: bool          # every present value is a number
    integer: bool          # ... and an integer
    mean_tokens: float     # over a sample of present values
    mean_chars: float

    @property
    def text_like(self) -> bool:
        return not self.numeric and self.mean_tokens >= MIN_TEXT_TOKENS


def _stats(values: list) -> _ColStats:
    present = [v for v in values if not _is_missing(v)]
    try:
        uniq = set(present)
    except TypeError:  # lists/dicts from JSON
        uniq = set(map(_hashable, present))
    step = max(1, len(present) // SAMPLE)
    sample = present[::step]
    numeric = (
        bool(present)
        and all(to_number(v) is not None for v in sample[:200])
        and all(to_number(v) is not None for v in uniq)
    )
    if numeric:
        distinct = len({_canon_label(v) for v in uniq})
        integer = all(to_number(v).is_integer() for v in uniq)  # type: ignore[union-attr]
    else:
        distinct = len(uniq)
        integer = False
    strs = [v if isinstance(v, str) else str(v) for v in sample]
    return _ColStats(
        missing=len(values) - len(present),
        distinct=distinct,
        numeric=numeric,
        integer=integer,
        mean_tokens=(sum(len(s.split()) for s in strs) / len(strs)) if strs else 0.0,
        mean_chars=(sum(len(s) for s in strs) / len(strs)) if strs else 0.0,
    )


def _hashable(v: Any) -> Any:
    return json.dumps(v, sort_keys=True) if isinstance(v, (list, dict)) else v


# --------------------------------------------------------------------------------------------
# inference


def _check_columns(table: Table, given: Sequence[str], flag: str) -> None:
    for c in given:
        if c not in table.columns:
            raise DataError(f"{flag} {c} names no column of {table.name}; columns are: {table.names()}")


def _infer_label_column(table: Table, stats: dict[str, _ColStats], exclude: Sequence[str]) -> tuple[str, str]:
    by_norm = {}
    for c in table.columns:
        if c not in exclude:
            by_norm.setdefault(norm(c), c)
    for nm in LABEL_NAMES:
        if nm in by_norm:
            return by_norm[nm], f"label column: {by_norm[nm]} (by its name)"
    n = table.n
    cands = []
    for c, st in stats.items():
        if c in exclude or st.missing or st.text_like or st.distinct < 2:
            continue
        few = st.distinct <= _MAX_CLASSES and (st.distinct <= 2 or 2 * st.distinct <= n)
        if few or (st.numeric and not st.integer):
            cands.append((not few, not st.numeric, st.distinct, list(table.columns).index(c), c))
    if not cands:
        raise DataError(
            f"cannot tell which column of {table.name} holds the labels (none is named label/score/... or has "
            f"a few distinct values in every row); columns are: {table.names()}; pass --label-column NAME"
        )
    cands.sort()
    chosen = cands[0][-1]
    others = [c[-1] for c in cands[1:]]
    note = f"label column: {chosen} ({stats[chosen].distinct} distinct values in every row"
    note += f"; also possible: {', '.join(others)})" if others else ")"
    return chosen, note


def _infer_text_columns(table: Table, stats: dict[str, _ColStats], label: str) -> tuple[tuple[str, ...], str]:
    cands = [c for c, st in stats.items() if c != label and st.text_like]
    if not cands:
        raise DataError(
            f"no column of {table.name} looks like text (a mean of {MIN_TEXT_TOKENS:g}+ words); columns are: "
            f"{table.names()}; pass --text-column NAME (twice for a sentence pair)"
        )
    extra = ""
    if len(cands) > 2:
        named = [c for c in cands if _TEXT_NAME_RE.match(re.sub(r"[\d#_\s-]+", "", c.lower()))]
        if 1 <= len(named) <= 2:
            chosen = named
            extra = f"; chosen by name from {', '.join(cands)}"
        else:
            pool = named or cands
            longest = sorted(pool, key=lambda c: -stats[c].mean_chars)[:2]
            chosen = [c for c in cands if c in longest]
            extra = f"; the two longest of {', '.join(pool)} — pass --text-column to choose"
        cands = chosen
    if len(cands) == 1:
        return (cands[0],), f"text column: {cands[0]} (single sentence{extra})"
    return (cands[0], cands[1]), f"text columns: {cands[0]} + {cands[1]} (a sentence pair{extra})"


def _check_text(table: Table, text_columns: Sequence[str]) -> None:
    for c in text_columns:
        bad = _missing_rows(table.columns[c])
        if bad:
            raise DataError(
                f"text column {c} of {table.name} is empty in {len(bad)} of {table.n} rows "
                f"(first: {table.where(bad[0])}); fill in or drop those rows"
            )


def _check_labels_present(table: Table, label: str) -> None:
    bad = _missing_rows(table.columns[label])
    if bad:
        raise DataError(
            f"label column {label} of {table.name} is empty in {len(bad)} of {table.n} rows "
            f"(first: {table.where(bad[0])}); fill in or drop those rows"
        )
    nan = [i for i, v in enumerate(table.columns[label]) if isinstance(v, str) and v.strip().lower() == "nan"]
    if nan:  # a missing value as pandas writes it, not a class called "nan"
        raise DataError(
            f"label column {label} of {table.name} is NaN in {len(nan)} of {table.n} rows "
            f"(first: {table.where(nan[0])}); fill in or drop those rows"
        )


def _regression_targets(table: Table, label: str, hint: str) -> np.ndarray:
    values = table.columns[label]
    out = np.empty(len(values), dtype=np.float32)
    for i, v in enumerate(values):
        x = to_number(v)
        if x is None:
            raise DataError(
                f"label column {label} of {table.name} has a non-numeric value {v!r} ({table.where(i)}), "
                f"so it cannot be a regression target; {hint}"
            )
        out[i] = x
    return out


def _class_indices(table: Table, label: str, index: dict[str, int], known_from: str) -> np.ndarray:
    values = table.columns[label]
    cache: dict[Any, str] = {}
    out = np.empty(len(values), dtype=np.int64)
    unknown: Counter = Counter()
    first_bad: int | None = None
    for i, v in enumerate(values):
        key = _hashable(v)
        s = cache.get(key)
        if s is None:
            s = cache[key] = _canon_label(v)
        j = index.get(s)
        if j is None:
            unknown[s] += 1
            first_bad = i if first_bad is None else first_bad
            continue
        out[i] = j
    if unknown:
        shown = ", ".join(f"{k!r} ({n} rows)" for k, n in unknown.most_common(5))
        raise DataError(
            f"label column {label} of {table.name} has labels {known_from} never uses: {shown}, first at "
            f"{table.where(first_bad)}; known labels: {', '.join(index)}; fix those rows"
        )
    return out


def _pick_metric(task_type: str, label_idx: np.ndarray | None, labels: tuple[str, ...] | None,
                 n_text: int, where: str) -> tuple[str, str]:
    if task_type == "regression":
        return "spearman", "metric: spearman (regression)"
    assert labels is not None and label_idx is not None
    if len(labels) == 2 and label_idx.size:
        counts = np.bincount(label_idx, minlength=2)
        minority = int(np.argmin(counts))
        share = counts[minority] / label_idx.size
        if share < _MINORITY_FOR_MCC_F1:
            m = "mcc" if n_text == 1 else "f1"
            kind = "single sentence" if n_text == 1 else "sentence pair; F1 of class 1 = " + repr(labels[1])
            return m, (f"metric: {m} (binary labels; the minority class {labels[minority]!r} is "
                       f"{share:.1%} of {where} < {_MINORITY_FOR_MCC_F1:.0%}; {kind})")
        return "accuracy", (f"metric: accuracy (binary labels, balanced: the minority class {labels[minority]!r} "
                            f"is {share:.1%} of {where})")
    return "accuracy", f"metric: accuracy ({len(labels)} classes)"


def _check_metric_name(metric: str) -> None:
    if metric not in _metrics.METRICS:
        raise DataError(f"--metric {metric} is not a known metric; choose one of: {', '.join(_metrics.METRICS)}")


def _check_metric(metric: str, task_type: str, labels: tuple[str, ...] | None) -> None:
    _check_metric_name(metric)
    if task_type == "regression" and metric not in _metrics.REGRESSION_METRICS:
        raise DataError(f"--metric {metric} needs class labels but the task is regression; use spearman or pearson")
    if task_type == "classification" and metric not in _metrics.CLASSIFICATION_METRICS:
        raise DataError(f"--metric {metric} needs numeric targets but the task is classification; use accuracy, f1 or mcc")
    if metric == "f1" and labels is not None and len(labels) != 2:
        raise DataError(f"--metric f1 is binary F1 but the task has {len(labels)} classes; use accuracy or mcc")


def _build_dataset(table: Table, rows: np.ndarray | None, text_columns: Sequence[str], label: str,
                   targets: np.ndarray) -> datasets.Dataset:
    import datasets as hf
    import pyarrow as pa

    data: dict[str, Any] = {}
    feats: dict[str, Any] = {}
    for c in text_columns:
        vals = table.columns[c]
        if rows is not None:
            vals = [vals[i] for i in rows]
        data[c] = pa.array([v if isinstance(v, str) else str(v) for v in vals], pa.string())
        feats[c] = hf.Value("string")
    y = targets if rows is None else targets[rows]
    if y.dtype == np.int64:
        data[label] = pa.array(y, pa.int64())
        feats[label] = hf.Value("int64")
    else:
        data[label] = pa.array(y.astype(np.float32), pa.float32())
        feats[label] = hf.Value("float32")
    return hf.Dataset.from_dict(data, features=hf.Features(feats))


def _check_seed(seed: int) -> None:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise DataError(f"--seed must be a non-negative integer, got {seed!r}")


def _holdout(n: int, seed: int, name: str) -> tuple[np.ndarray, np.ndarray]:
    if n < 2:
        raise DataError(f"{name} has only {n} example; holding out validation rows needs at least 2 (10 or more to be useful)")
    n_val = max(1, math.ceil(n * HOLDOUT_FRACTION))
    perm = np.random.default_rng([seed, 0]).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _validate_text_override(text_columns: Sequence[str] | None) -> tuple[str, ...] | None:
    if text_columns is None:
        return None
    if isinstance(text_columns, str):
        text_columns = (text_columns,)
    tc = tuple(str(c) for c in text_columns)
    if not 1 <= len(tc) <= 2:
        raise DataError(f"--text-column was given {len(tc)} times; give one column (single sentence) or two (a pair)")
    if len(set(tc)) != len(tc):
        raise DataError(f"--text-column {tc[0]} was given twice; a pair needs two different columns")
    return tc


def _check_validation_columns(val: Table, required: Sequence[str], user: str) -> None:
    for c in required:
        if c not in val.columns:
            raise DataError(
                f"{val.name} has no column {c}, which {user} uses; its columns are: {val.names()}; "
                "give it the same columns"
            )


def _validation_split(src: Source, required: Sequence[str], seed: int,
                      user: str) -> tuple[Table, np.ndarray | None, np.ndarray | None, str]:
    """The validation table (columns checked), the hold-out's train and validation rows, and where it came from."""
    if src.holdout_of is not None:
        table = src.train
        assert table is not None
        _check_validation_columns(table, required, user)
        train_rows, validation_rows = _holdout(table.n, seed, table.name)
        return table, train_rows, validation_rows, f"{HOLDOUT_FRACTION:.0%} of {src.holdout_of} held out (seed {seed})"
    table = src.validation if src.validation is not None else load_dev(src, required)
    _check_validation_columns(table, required, user)
    return table, None, None, src.validation_from


def _label_map_note(labels: tuple[str, ...]) -> str:
    shown = ", ".join(f"{i} -> {s!r}" for i, s in enumerate(labels[:10]))
    return shown + (f", ... ({len(labels)} in all)" if len(labels) > 10 else "")


# --------------------------------------------------------------------------------------------
# public loading API


def load(
    source: str,
    *,
    text_columns: Sequence[str] | None = None,
    label_column: str | None = None,
    task_type: str | None = None,
    metric: str | None = None,
    max_train_samples: int | None = None,
    seed: int = 0,
) -> TaskData:
    """Load and validate a task's train and validation data, inferring what is not given.

    ``source`` is a directory, a single file or ``hf:REPO_ID[:CONFIG][@REVISION]`` (see the module
    docstring). Each keyword overrides one inference:

    * ``text_columns`` — one column (single sentence) or two (a pair, in that order);
    * ``label_column``; ``task_type`` — "classification" or "regression";
    * ``metric`` — one of :data:`registry.metrics.METRICS`, checked against the task type;
    * ``max_train_samples`` — keep a random subset of that many training rows (seeded).

    ``seed`` drives the 10% hold-out of a single file (or of a directory without a dev file) and the
    training subset. The label map and the metric come from all training rows, before subsetting;
    for a held-out file the label map covers the whole file, so a rare class that landed only in the
    held-out rows is still a known class.
    """
    _check_seed(seed)
    tc_given = _validate_text_override(text_columns)
    if label_column is not None:
        label_column = str(label_column)
    if task_type is not None and task_type not in TASK_TYPES:
        raise DataError(f"--task-type {task_type} is not one of: {', '.join(TASK_TYPES)}")
    if max_train_samples is not None and (
        isinstance(max_train_samples, bool)
        or not isinstance(max_train_samples, (int, np.integer))
        or max_train_samples < 1
    ):
        raise DataError(f"--max-train-samples must be a positive integer, got {max_train_samples!r}")
    if metric is not None:
        _check_metric_name(metric)

    src = resolve(source, need_train=True)
    return _load_source(
        src, text_columns=tc_given, label_column=label_column, task_type=task_type, metric=metric,
        max_train_samples=max_train_samples, seed=seed,
    )


def _load_source(
    src: Source,
    *,
    text_columns: tuple[str, ...] | None,
    label_column: str | None,
    task_type: str | None,
    metric: str | None,
    max_train_samples: int | None,
    seed: int,
) -> TaskData:
    """load() once the source is read: inference, validation, splits."""
    tc_given = text_columns
    train = src.train
    assert train is not None
    notes: list[str] = []
    if train.header is False:
        notes.append(f"{train.name} has no header row: columns are named by position: {train.names()}")

    # ---- columns
    if label_column is not None:
        _check_columns(train, [label_column], "--label-column")
    if tc_given is not None:
        _check_columns(train, tc_given, "--text-column")
        if label_column is not None and label_column in tc_given:
            raise DataError(f"--label-column {label_column} is also a --text-column; pick different columns")
    stats = {c: _stats(v) for c, v in train.columns.items()}
    if label_column is None:
        label_column, note = _infer_label_column(train, stats, exclude=tc_given or ())
        notes.append(note)
    if tc_given is None:
        tc_given, note = _infer_text_columns(train, stats, label_column)
        notes.append(note)
    text_cols: tuple[str, ...] = tc_given
    _check_text(train, text_cols)
    _check_labels_present(train, label_column)

    # ---- validation rows
    val_table, tr_rows, va_rows, validation_from = _validation_split(src, [*text_cols, label_column], seed, train.name)
    if val_table is not train:
        _check_text(val_table, text_cols)
        _check_labels_present(val_table, label_column)
    notes.insert(0, f"validation: {validation_from}")

    # ---- task type, targets, label map
    lstats = stats[label_column]
    class_label = label_column in train.class_names
    type_inferred = task_type is None
    if task_type is None:
        if class_label or not lstats.numeric:
            task_type = "classification"
        elif not lstats.integer:
            task_type = "regression"
            notes.append(f"task type: regression (numeric, non-integer labels in {label_column})")
        elif lstats.distinct > _MAX_CLASSES:
            task_type = "regression"
            notes.append(
                f"task type: regression ({lstats.distinct} distinct integer labels, more than {_MAX_CLASSES}; "
                "pass --task-type classification to change that)"
            )
        else:
            task_type = "classification"

    labels: tuple[str, ...] | None
    if task_type == "regression":
        if class_label:
            raise DataError(
                f"label column {label_column} of {train.name} holds class names, so it cannot be a regression "
                "target; pass --task-type classification"
            )
        hint = "pass --task-type classification or fix those rows"
        targets = _regression_targets(train, label_column, hint)
        labels = None
        fit = targets if tr_rows is None else targets[tr_rows]
        if float(np.ptp(fit)) == 0.0:
            raise DataError(
                f"label column {label_column} of {train.name} has the same value ({float(fit[0]):g}) in every "
                "training row; nothing to learn — check --label-column or the data"
            )
        val_targets = targets if val_table is train else _regression_targets(val_table, label_column, hint)
    else:
        if class_label:
            labels = train.class_names[label_column]
        else:
            distinct = {_canon_label(v) for v in set(map(_hashable, train.columns[label_column]))}
            labels = tuple(sorted(distinct, key=_label_sort_key))
        index = {s: i for i, s in enumerate(labels)}
        targets = _class_indices(train, label_column, index, train.name)
        fit = targets if tr_rows is None else targets[tr_rows]
        present = np.unique(fit)
        if len(present) < 2:
            raise DataError(
                f"label column {label_column} of {train.name} has one class ({labels[int(present[0])]!r}) in all "
                f"{fit.size} training rows; a classifier needs at least two — check --label-column or the data"
            )
        if type_inferred:
            notes.append(f"task type: classification ({len(labels)} classes: {_label_map_note(labels)})")
        else:
            notes.append(f"label map: {_label_map_note(labels)}")
        val_targets = targets if val_table is train else _class_indices(val_table, label_column, index, train.name)

    # ---- metric
    if metric is None:
        metric, note = _pick_metric(task_type, None if labels is None else fit, labels, len(text_cols), "train")
        notes.append(note)
    else:
        _check_metric(metric, task_type, labels)

    # ---- training subset
    n_train = fit.size
    if max_train_samples is not None and max_train_samples < n_train:
        base = np.arange(train.n) if tr_rows is None else tr_rows
        pick = np.sort(np.random.default_rng([seed, 1]).choice(n_train, size=int(max_train_samples), replace=False))
        tr_rows = base[pick]
        if labels is not None and len(np.unique(targets[tr_rows])) < 2:
            raise DataError(
                f"--max-train-samples {max_train_samples} leaves a single class in the training subset; raise it"
            )
        notes.append(f"training subset: {max_train_samples} of {n_train} rows, drawn at random (seed {seed})")
    elif max_train_samples is not None:
        notes.append(f"training subset: all {n_train} rows (--max-train-samples {max_train_samples} is not fewer)")

    return TaskData(
        train=_build_dataset(train, tr_rows, text_cols, label_column, targets),
        validation=_build_dataset(val_table, va_rows, text_cols, label_column, val_targets),
        text_columns=text_cols,
        label_column=label_column,
        task_type=task_type,
        labels=labels,
        metric=metric,
        validation_from=validation_from,
        fingerprint=src.fingerprint,
        inferred=tuple(src.notes + notes),
    )


def check_task_fields(text_columns: Sequence[str], label_column: str, task_type: str, labels: Sequence[str] | None,
                      metric: str | None) -> tuple[tuple[str, ...], str, tuple[str, ...] | None]:
    """A stored (or imported) task's columns, type, label map and metric, checked as add-task checks its own.

    Returns the text columns, label column and labels as the loaders use them.
    """
    text_cols = _validate_text_override(text_columns)
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


def load_validation(
    source: str,
    *,
    text_columns: Sequence[str],
    label_column: str,
    task_type: str,
    labels: Sequence[str] | None,
    metric: str | None = None,
    seed: int = 0,
) -> TaskData:
    """Load only the validation rows of ``source`` with a stored task's columns and label map.

    The validation rows are the ones :func:`load` would pick for the same source and ``seed``: the
    directory's dev file, the hub's validation split, or the seeded 10% hold-out of a single file.
    A label outside ``labels`` is a DataError. The returned ``train`` is empty (zero rows, same
    columns); ``fingerprint`` equals what :func:`load` gives for the same files. Without ``metric``
    it is inferred as in :func:`load`, from the validation rows.
    """
    _check_seed(seed)
    text_cols, label_column, labels = check_task_fields(text_columns, label_column, task_type, labels, metric)
    required = [*text_cols, label_column]
    src = resolve(source, need_train=False)
    table, _, rows, validation_from = _validation_split(src, required, seed, "the task")
    sub = table if rows is None else Table(
        name=table.name,
        columns={c: [table.columns[c][i] for i in rows] for c in required},
        lines=None if table.lines is None else [table.lines[i] for i in rows],
    )
    _check_text(sub, text_cols)
    _check_labels_present(sub, label_column)
    notes = [f"validation: {validation_from}"]
    if task_type == "regression":
        targets = _regression_targets(sub, label_column, "the task is regression; fix those rows")
    else:
        targets = _class_indices(sub, label_column, {s: i for i, s in enumerate(labels)}, "the task's training data")
    if metric is None:
        metric, note = _pick_metric(task_type, None if labels is None else targets, labels, len(text_cols),
                                    "the validation rows")
        notes.append(note)
    return TaskData(
        train=_build_dataset(sub, np.zeros(0, dtype=np.int64), text_cols, label_column, targets),
        validation=_build_dataset(sub, None, text_cols, label_column, targets),
        text_columns=text_cols,
        label_column=label_column,
        task_type=task_type,
        labels=labels,
        metric=metric,
        validation_from=validation_from,
        fingerprint=src.fingerprint,
        inferred=tuple(notes),
    )
