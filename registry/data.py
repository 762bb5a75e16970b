"""Task data: load a labelled text data set, infer what the user did not say, tokenise once.

Sources (`load(source)`):

* a **directory** holding ``train.<ext>`` and ``dev.<ext>`` (or ``validation.<ext>`` /
  ``valid.<ext>``); without a dev file, 10% of the train file is held out (seeded);
* a **single file**: a deterministic, seeded 10% of its rows is held out for validation;
* a **Hugging Face hub dataset**, written ``hf:REPO_ID[:CONFIG][@REVISION]``, e.g.
  ``hf:nyu-mll/glue:cola`` or ``hf:stanfordnlp/imdb@main``. Only the ``hf:`` prefix selects the
  hub, so a local path is never mistaken for a dataset id. Its ``train`` split is used for
  training and its ``validation`` (or ``validation_matched`` / ``dev`` / ``valid``) split for
  validation; ``test`` is never used. Offline, this fails with a DataError.

File formats: ``.tsv`` (read with quoting disabled: double quotes are text), ``.csv`` (standard
quoting), ``.json`` (a list of objects, an object of equal-length lists, ``{"data": [...]}``, or
JSON lines), ``.jsonl`` and ``.parquet``. Text must be UTF-8 (a BOM is stripped). Whether the first
row of a delimited file is a header is detected; without one, columns are named by 0-based
position: ``"0"``, ``"1"``, ...

Every problem with the data raises :class:`registry.errors.DataError` with a one-line message that
names the file, column or row and says what to do.
"""

from __future__ import annotations

import csv
import hashlib
import io
import itertools
import json
import math
import os
import re
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from registry import metrics as _metrics
from registry.errors import DataError

if TYPE_CHECKING:  # imported lazily at run time: `datasets` and `torch` are slow to import
    import datasets
    import torch

__all__ = [
    "TaskData",
    "Encoded",
    "load",
    "load_validation",
    "encode",
    "batches",
    "TASK_TYPES",
    "FORMATS",
    "HOLDOUT_FRACTION",
]

TASK_TYPES = ("classification", "regression")
FORMATS = (".tsv", ".csv", ".json", ".jsonl", ".parquet")
HOLDOUT_FRACTION = 0.1
_TRAIN_STEMS = ("train",)
_DEV_STEMS = ("dev", "validation", "valid")
_HUB_VALIDATION_SPLITS = ("validation", "validation_matched", "dev", "valid")

# Label columns recognised by name (case-insensitive), in order of preference.
_LABEL_NAMES = ("label", "labels", "score", "quality", "target", "class", "gold_label")
# Text columns recognised by name once digits, '#', '_' and spaces are removed ("#1 String" -> "string").
_TEXT_NAME_RE = re.compile(
    r"^(sentence|text|texta|textb|question|premise|hypothesis|string|passage|context|query|"
    r"document|review|content|utterance|title|body|abstract|summary|claim|evidence)$"
)
_HEADER_WORDS = set(_LABEL_NAMES) | {
    "sentence", "sentence1", "sentence2", "text", "text_a", "text_b", "question", "question1",
    "question2", "premise", "hypothesis", "index", "idx", "id", "string",
}
_MIN_TEXT_TOKENS = 3.0          # mean whitespace tokens for a column to look like text
_MAX_CLASSES = 100              # more distinct integer labels than this -> regression
_MINORITY_FOR_MCC_F1 = 0.40     # binary tasks whose minority class is rarer use mcc / f1
_SAMPLE = 2000                  # rows sampled for the text-likeness / header heuristics


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


@dataclass(frozen=True, eq=False)
class Encoded:
    """Token ids per example (no padding) and the labels, in the split's row order.

    ``token_type_ids`` is set only for sentence pairs when the tokenizer's model takes segment ids
    (BERT does; RoBERTa and DistilBERT do not); it is None otherwise.
    """

    input_ids: list[np.ndarray]
    labels: np.ndarray
    token_type_ids: list[np.ndarray] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


# --------------------------------------------------------------------------------------------
# raw tables


@dataclass
class _Table:
    """Columns of raw values read from one file or split, before inference."""

    name: str                                  # for messages: "train.tsv", "train split of hf:x"
    columns: dict[str, list]                   # ordered by file order
    header: bool | None = None                 # delimited files: had a header row; else None
    lines: list[int] | None = None             # file line of each row, when the format has lines
    class_names: dict[str, tuple[str, ...]] = field(default_factory=dict)  # hub ClassLabel names

    @property
    def n(self) -> int:
        return len(next(iter(self.columns.values()))) if self.columns else 0

    def where(self, i: int) -> str:
        return f"line {self.lines[i]}" if self.lines is not None else f"row {i + 1}"

    def names(self) -> str:
        return ", ".join(self.columns) if self.columns else "(none)"


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}; check the path and its permissions") from None


def _decode(raw: bytes, name: str) -> str:
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise DataError(
            f"{name} is not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}, line {line}); "
            "re-save it as UTF-8"
        ) from None


def _read_table(path: Path, raw: bytes, *, expect_header: bool | None = None, required: Sequence[str] = ()) -> _Table:
    """Parse one file. ``expect_header``/``required`` only matter for delimited files (see _read_delimited)."""
    name = path.name
    ext = path.suffix.lower()
    if ext not in FORMATS:
        raise DataError(f"{path} has an unsupported file type {ext or '(none)'!r}; use one of: {', '.join(FORMATS)}")
    body = raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw
    if not body.strip():
        raise DataError(f"{path} is empty; it needs labelled examples")
    if ext in (".tsv", ".csv"):
        return _read_delimited(name, _decode(raw, name), ext, expect_header=expect_header, required=required)
    if ext in (".json", ".jsonl"):
        return _read_json(name, _decode(raw, name), ext)
    return _read_parquet(name, raw)


def _read_delimited(name: str, text: str, ext: str, *, expect_header: bool | None, required: Sequence[str]) -> _Table:
    if ext == ".tsv":
        reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE)
    else:
        reader = csv.reader(io.StringIO(text, newline=""), delimiter=",", quoting=csv.QUOTE_MINIMAL)
    rows: list[list[str]] = []
    lines: list[int] = []
    width = 0
    try:
        for row in reader:
            if not row or (len(row) == 1 and not row[0].strip()):
                continue  # blank line
            if not rows:
                width = len(row)
            elif len(row) != width:
                if len(row) > width and not any(c.strip() for c in row[width:]):
                    row = row[:width]  # trailing empty fields
                else:
                    sep = "tab" if ext == ".tsv" else "comma"
                    raise DataError(
                        f"{name} line {reader.line_num} has {len(row)} fields but line {lines[0]} has {width}; "
                        f"a stray {sep} or a missing field? fix that line"
                    )
            rows.append(row)
            lines.append(reader.line_num)
    except csv.Error as e:
        raise DataError(f"{name} line {reader.line_num} cannot be parsed ({e}); fix that line") from None

    if expect_header is None and required:
        header = bool(rows) and set(required) <= {c.strip() for c in rows[0]}
        if not header and not all(r.isdigit() for r in required):
            raise DataError(
                f"{name} has no header row naming {', '.join(map(repr, required))}; "
                f"add the header row the task was trained with"
            )
    elif expect_header is None:
        header = _detect_header(rows)
    elif expect_header:
        header = bool(rows) and (not required or set(required) <= {c.strip() for c in rows[0]})
        if not header:
            first = ", ".join(c.strip() for c in rows[0]) if rows else ""
            raise DataError(
                f"{name}'s first row ({first}) is not a header naming {', '.join(map(repr, required))}; "
                "give it the same header row as the train file"
            )
    else:
        header = False

    if header:
        names = [c.strip() for c in rows[0]]
        if len(rows) == 1:
            raise DataError(f"{name} has a header row ({', '.join(names)}) but no examples; add labelled rows below it")
        rows, lines = rows[1:], lines[1:]
        seen: set[str] = set()
        for i, nm in enumerate(names):
            if not nm or nm in seen:
                if nm in required:
                    raise DataError(f"{name}'s header names column {nm!r} twice; give every column a distinct name")
                names[i] = f"{nm or 'column'}.{i}"  # unused duplicate or blank: keep it out of the way
            seen.add(names[i])
    else:
        names = [str(i) for i in range(width)]
    cols = [list(c) for c in zip(*rows)] if rows else [[] for _ in names]
    return _Table(name=name, columns=dict(zip(names, cols)), header=header, lines=lines)


def _norm(name: str) -> str:
    return name.strip().lower()


def _detect_header(rows: list[list[str]]) -> bool:
    """Is the first row a header? Headers have distinct, non-empty, non-numeric short names and
    differ from the column below them (numbers under a word, sentences under a word, a word that
    is not among a column's few values)."""
    if not rows:
        return False
    first = [c.strip() for c in rows[0]]
    if any(not c for c in first) or any(_to_number(c) is not None for c in first):
        return False
    if len(set(first)) != len(first):
        return False
    rest = rows[1:]
    if not rest:
        return all(len(c.split()) <= 3 for c in first)
    step = max(1, len(rest) // _SAMPLE)
    sample = rest[::step]
    for j, head in enumerate(first):
        if _norm(head) in _HEADER_WORDS:
            return True
        values = [r[j].strip() for r in sample if r[j].strip()]
        if not values:
            continue
        numeric = sum(_to_number(v) is not None for v in values)
        if numeric >= 0.9 * len(values):
            return True  # a word above a column of numbers
        short = sum(len(v.split()) <= 2 for v in values)
        mean_tokens = sum(len(v.split()) for v in values) / len(values)
        if mean_tokens >= _MIN_TEXT_TOKENS and len(head.split()) <= 2 and short < 0.1 * len(values):
            return True  # a word above a column of sentences
        distinct = set(values)
        if len(distinct) <= 20 and len(values) >= 10 and head not in distinct:
            return True  # a word above a column of a few other values
    return False


def _read_json(name: str, text: str, ext: str) -> _Table:
    records: list | None = None
    lines: list[int] | None = None
    if ext == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            if e.msg != "Extra data":
                raise DataError(f"{name} is not valid JSON ({e.msg} at line {e.lineno}); fix the file") from None
            data = None  # several values: JSON lines in a .json file
        if data is not None:
            inner = next(iter(data.values())) if isinstance(data, dict) and len(data) == 1 else None
            if isinstance(inner, list) and inner and all(isinstance(r, dict) for r in inner):
                data = inner  # {"data": [{...}, ...]}
            if isinstance(data, dict):
                cols = data
                lens = {len(v) if isinstance(v, list) else -1 for v in cols.values()}
                if not cols or -1 in lens or len(lens) != 1:
                    raise DataError(
                        f"{name} is a JSON object but not one of equal-length column lists; "
                        "use a list of objects (one per example) or JSON lines"
                    )
                if lens == {0}:
                    raise DataError(f"{name} has columns ({', '.join(cols)}) but no examples; add examples")
                return _Table(name=name, columns={str(k): list(v) for k, v in cols.items()})
            if not isinstance(data, list):
                raise DataError(f"{name} holds a JSON {type(data).__name__}, not a list of examples; use a list of objects")
            records = data
    if records is None:
        records, lines = [], []
        for ln, line in enumerate(text.split("\n"), start=1):  # not splitlines(): U+2028 may sit in a string
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(f"{name} line {ln} is not valid JSON ({e.msg}); each line must be one JSON object") from None
            lines.append(ln)
    if not records:
        raise DataError(f"{name} holds no examples; add one JSON object per example")
    keys: dict[str, None] = {}
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            where = f"line {lines[i]}" if lines else f"item {i + 1}"
            raise DataError(f"{name} {where} is a JSON {type(rec).__name__}, not an object; write one object per example")
        for k in rec:
            keys.setdefault(k, None)
    columns = {str(k): [rec.get(k) for rec in records] for k in keys}
    if not columns:
        raise DataError(f"{name} holds only empty objects; give each example its text and label fields")
    return _Table(name=name, columns=columns, lines=lines)


def _read_parquet(name: str, raw: bytes) -> _Table:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(raw))
    except Exception as e:  # pyarrow raises several types for a damaged file
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{name} is not a readable Parquet file ({msg}); re-export it") from None
    if table.num_rows == 0:
        raise DataError(f"{name} has columns ({', '.join(table.column_names)}) but no rows; add examples")
    return _Table(name=name, columns={str(c): table.column(c).to_pylist() for c in table.column_names})


def _table_from_dataset(ds: datasets.Dataset, name: str) -> _Table:
    import datasets as hf

    arrow = ds.with_format("arrow")[:]
    columns: dict[str, list] = {}
    class_names: dict[str, tuple[str, ...]] = {}
    for col, feat in ds.features.items():
        values = arrow.column(col).to_pylist()
        if isinstance(feat, hf.ClassLabel):
            names = tuple(feat.names)
            class_names[col] = names
            values = [names[v] if isinstance(v, int) and 0 <= v < len(names) else None for v in values]
        columns[col] = values
    if not columns or ds.num_rows == 0:
        raise DataError(f"{name} has no examples; pick a split with labelled rows")
    return _Table(name=name, columns=columns, class_names=class_names)


# --------------------------------------------------------------------------------------------
# values


def _to_number(v: Any) -> float | None:
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


def _is_missing(v: Any) -> bool:
    """None, NaN, or a blank string (an empty TSV/CSV field)."""
    if type(v) is str:
        return not v or v.isspace()
    return v is None or (isinstance(v, float) and math.isnan(v))


def _canon_label(v: Any) -> str:
    """The label map's string for a raw label: numbers canonically ("1.0" -> "1"), strings stripped."""
    num = _to_number(v)
    if num is not None:
        return str(int(num)) if num.is_integer() and abs(num) < 2**53 else repr(num)
    if isinstance(v, str):
        return v.strip()
    return str(v)


def _label_sort_key(s: str) -> tuple:
    num = _to_number(s)
    return (0, num, "") if num is not None else (1, 0.0, s)


def _missing_rows(values: list) -> list[int]:
    return [i for i, v in enumerate(values) if _is_missing(v)]


@dataclass
class _ColStats:
    name: str
    missing: int
    distinct: int
    numeric: bool          # every present value is a number
    integer: bool          # ... and an integer
    mean_tokens: float     # over a sample of present values
    mean_chars: float

    @property
    def text_like(self) -> bool:
        return not self.numeric and self.mean_tokens >= _MIN_TEXT_TOKENS


def _stats(name: str, values: list) -> _ColStats:
    present = [v for v in values if not _is_missing(v)]
    try:
        uniq = set(present)
    except TypeError:  # lists/dicts from JSON
        uniq = set(map(_hashable, present))
    step = max(1, len(present) // _SAMPLE)
    sample = present[::step]
    numeric = (
        bool(present)
        and all(_to_number(v) is not None for v in sample[:200])
        and all(_to_number(v) is not None for v in uniq)
    )
    if numeric:
        distinct = len({_canon_label(v) for v in uniq})
        integer = all(_to_number(v).is_integer() for v in uniq)  # type: ignore[union-attr]
    else:
        distinct = len(uniq)
        integer = False
    strs = [v if isinstance(v, str) else str(v) for v in sample]
    return _ColStats(
        name=name,
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
# sources


@dataclass
class _Source:
    train: _Table | None               # None for load_validation of a directory with a dev file
    validation: _Table | None          # None: hold out part of `train`
    holdout_of: str | None             # file the holdout comes from
    validation_from: str
    fingerprint: str
    notes: list[str]
    dev: tuple[Path, bytes] | None = None  # a directory's dev file, parsed once the columns are known


_HUB_RE = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")


def _parse_hub(source: str) -> tuple[str, str | None, str | None]:
    spec = source[3:]
    spec, _, revision = spec.partition("@")
    repo, _, config = spec.partition(":")
    if not _HUB_RE.match(repo) or (config and not re.match(r"^[\w.-]+$", config)) or (revision == "" and "@" in source):
        raise DataError(
            f"{source!r} is not a hub dataset id; write hf:REPO_ID[:CONFIG][@REVISION], e.g. hf:nyu-mll/glue:cola"
        )
    return repo, config or None, revision or None


def _hub_offline() -> bool:
    for var in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):
        if os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on"):
            return True
    return False


def _load_hub(source: str) -> tuple[Any, str]:
    repo, config, revision = _parse_hub(source)
    import datasets as hf

    try:
        dsd = hf.load_dataset(repo, config, revision=revision)
    except Exception as e:  # datasets raises many types: connection, not found, config errors
        first = (str(e).splitlines() or [type(e).__name__])[0]
        if _hub_offline() or isinstance(e, ConnectionError) or "offline" in first.lower():
            raise DataError(
                f"cannot reach the Hugging Face hub for dataset {source} ({first}): "
                "pass a local directory or file with --data"
            ) from None
        raise DataError(
            f"cannot load dataset {source} from the Hugging Face hub ({type(e).__name__}: {first}); "
            "check the id, config and revision, or pass a local directory or file with --data"
        ) from None
    h = hashlib.sha256()
    h.update(f"hf:{repo}\n{config or ''}\n{revision or ''}\n".encode())
    for split in sorted(dsd):
        h.update(f"{split}:{getattr(dsd[split], '_fingerprint', '')}\n".encode())
    return dsd, h.hexdigest()


def _source_from_datasetdict(dsd: Any, label: str, fingerprint: str, *, need_train: bool = True) -> _Source:
    splits = list(dsd)
    if "train" not in dsd:
        raise DataError(f"{label} has no 'train' split (splits: {', '.join(splits)}); pass a local directory or file with --data")
    val_split = next((s for s in _HUB_VALIDATION_SPLITS if s in dsd), None)
    train = _table_from_dataset(dsd["train"], f"train split of {label}")
    if val_split is None:
        return _Source(train, None, f"train split of {label}", "", fingerprint, [])
    val = _table_from_dataset(dsd[val_split], f"{val_split} split of {label}")
    return _Source(train if need_train else None, val, None, f"{val_split} split", fingerprint, [])


def _find_split_files(d: Path) -> tuple[Path, Path | None]:
    files = sorted(p for p in d.iterdir() if p.is_file())

    def pick(stems: Sequence[str], what: str) -> Path | None:
        found = [p for p in files if p.suffix.lower() in FORMATS and p.stem.lower() in stems]
        if len(found) > 1:
            raise DataError(
                f"{d} has several {what} files ({', '.join(p.name for p in found)}); keep one"
            )
        return found[0] if found else None

    train = pick(_TRAIN_STEMS, "train")
    if train is None:
        listing = ", ".join(p.name for p in files[:12]) or "no files"
        raise DataError(
            f"{d} has no train file (train.tsv, train.csv, train.json, train.jsonl or train.parquet); "
            f"it holds: {listing}"
        )
    return train, pick(_DEV_STEMS, "dev/validation")


def _manifest_sha(items: Sequence[tuple[str, bytes]]) -> str:
    """sha256 of a sha256sum-style manifest ("<sha256>  <name>" per line) of the source files."""
    lines = "".join(f"{hashlib.sha256(b).hexdigest()}  {n}\n" for n, b in items)
    return hashlib.sha256(lines.encode()).hexdigest()


def _resolve(source: str, *, need_train: bool, required: Sequence[str] = ()) -> _Source:
    """Read a source's raw tables (the dev file of a directory is parsed later, see _load_dev)."""
    if not isinstance(source, (str, os.PathLike)) or not str(source).strip():
        raise DataError("no data given; pass a directory, a data file, or hf:REPO_ID[:CONFIG] with --data")
    source = str(source)
    if source.startswith("hf:"):
        dsd, fp = _load_hub(source)
        return _source_from_datasetdict(dsd, source, fp, need_train=need_train)
    path = Path(source).expanduser()
    if not path.exists():
        example = f"hf:{source}" if ":" in source else "hf:nyu-mll/glue:cola"
        raise DataError(
            f"no such file or directory: {source}; pass a directory with train/dev files, a data file, "
            f"or a Hugging Face hub dataset as hf:REPO_ID[:CONFIG] (e.g. {example})"
        )
    if path.is_dir():
        train_path, dev_path = _find_split_files(path)
        train_raw = _read_bytes(train_path)
        if dev_path is None:
            tab = _read_table(train_path, train_raw, expect_header=None, required=())
            return _Source(tab, None, train_path.name, "", _manifest_sha([(train_path.name, train_raw)]),
                           [f"no dev/validation file in {path}: holding out part of {train_path.name}"])
        dev_raw = _read_bytes(dev_path)
        fp = _manifest_sha([(train_path.name, train_raw), (dev_path.name, dev_raw)])
        train = _read_table(train_path, train_raw) if need_train else None
        return _Source(train, None, None, dev_path.name, fp, [], dev=(dev_path, dev_raw))
    if not path.is_file():
        raise DataError(f"{source} is neither a regular file nor a directory; pass a data file or directory")
    raw = _read_bytes(path)
    tab = _read_table(path, raw)
    return _Source(tab, None, path.name, "", hashlib.sha256(raw).hexdigest(), [])


def _load_dev(src: _Source, train: _Table | None, required: Sequence[str]) -> _Table:
    """Parse the directory's dev file, with the train file's header convention."""
    assert src.dev is not None
    dev_path, dev_raw = src.dev
    expect = None  # load_validation: no train file parsed; decided by the required column names
    if train is not None:
        expect = True if train.header is None else train.header
    return _read_table(dev_path, dev_raw, expect_header=expect, required=required)


# --------------------------------------------------------------------------------------------
# inference


def _check_columns(table: _Table, given: Sequence[str], flag: str) -> None:
    for c in given:
        if c not in table.columns:
            raise DataError(f"{flag} {c} names no column of {table.name}; columns are: {table.names()}")


def _infer_label_column(table: _Table, stats: dict[str, _ColStats], exclude: Sequence[str]) -> tuple[str, str]:
    by_norm = {}
    for c in table.columns:
        if c not in exclude:
            by_norm.setdefault(_norm(c), c)
    for nm in _LABEL_NAMES:
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


def _infer_text_columns(table: _Table, stats: dict[str, _ColStats], label: str) -> tuple[tuple[str, ...], str]:
    cands = [c for c, st in stats.items() if c != label and st.text_like]
    if not cands:
        raise DataError(
            f"no column of {table.name} looks like text (a mean of {_MIN_TEXT_TOKENS:g}+ words); columns are: "
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


def _check_text(table: _Table, text_columns: Sequence[str]) -> None:
    for c in text_columns:
        bad = _missing_rows(table.columns[c])
        if bad:
            raise DataError(
                f"text column {c} of {table.name} is empty in {len(bad)} of {table.n} rows "
                f"(first: {table.where(bad[0])}); fill in or drop those rows"
            )


def _check_labels_present(table: _Table, label: str) -> None:
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


def _regression_targets(table: _Table, label: str, hint: str) -> np.ndarray:
    values = table.columns[label]
    out = np.empty(len(values), dtype=np.float32)
    for i, v in enumerate(values):
        x = _to_number(v)
        if x is None:
            raise DataError(
                f"label column {label} of {table.name} has a non-numeric value {v!r} ({table.where(i)}), "
                f"so it cannot be a regression target; {hint}"
            )
        out[i] = x
    return out


def _class_indices(table: _Table, label: str, index: dict[str, int], known_from: str) -> np.ndarray:
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


def _check_metric(metric: str, task_type: str, labels: tuple[str, ...] | None) -> None:
    if metric not in _metrics.METRICS:
        raise DataError(f"--metric {metric} is not a known metric; choose one of: {', '.join(_metrics.METRICS)}")
    if task_type == "regression" and metric not in _metrics.REGRESSION_METRICS:
        raise DataError(f"--metric {metric} needs class labels but the task is regression; use spearman or pearson")
    if task_type == "classification" and metric not in _metrics.CLASSIFICATION_METRICS:
        raise DataError(f"--metric {metric} needs numeric targets but the task is classification; use accuracy, f1 or mcc")
    if metric == "f1" and labels is not None and len(labels) != 2:
        raise DataError(f"--metric f1 is binary F1 but the task has {len(labels)} classes; use accuracy or mcc")


def _build_dataset(table: _Table, rows: np.ndarray | None, text_columns: Sequence[str], label: str,
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



def _check_validation_columns(val: _Table, required: Sequence[str], user: str) -> None:
    for c in required:
        if c not in val.columns:
            raise DataError(
                f"{val.name} has no column {c}, which {user} uses; its columns are: {val.names()}; "
                "give it the same columns"
            )


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
    if metric is not None and metric not in _metrics.METRICS:
        raise DataError(f"--metric {metric} is not a known metric; choose one of: {', '.join(_metrics.METRICS)}")

    src = _resolve(source, need_train=True)
    return _load_source(
        src, text_columns=tc_given, label_column=label_column, task_type=task_type, metric=metric,
        max_train_samples=max_train_samples, seed=seed,
    )


def _load_source(
    src: _Source,
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
    stats = {c: _stats(c, v) for c, v in train.columns.items()}
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
    if src.holdout_of is not None:
        tr_rows, va_rows = _holdout(train.n, seed, train.name)
        validation_from = f"{HOLDOUT_FRACTION:.0%} of {src.holdout_of} held out (seed {seed})"
        val_table = train
    else:
        tr_rows = va_rows = None
        validation_from = src.validation_from
        required = [*text_cols, label_column]
        val_table = src.validation if src.validation is not None else _load_dev(src, train, required)
        _check_validation_columns(val_table, required, train.name)
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
    elif labels is not None:
        raise DataError("a regression task has no label map; pass labels=None")
    if metric is not None:
        _check_metric(metric, task_type, labels)

    required = [*text_cols, label_column]
    src = _resolve(source, need_train=False)
    if src.holdout_of is not None:
        table = src.train
        assert table is not None
        _check_validation_columns(table, required, "the task")
        _, rows = _holdout(table.n, seed, table.name)
        validation_from = f"{HOLDOUT_FRACTION:.0%} of {src.holdout_of} held out (seed {seed})"
    else:
        table = src.validation if src.validation is not None else _load_dev(src, None, required)
        _check_validation_columns(table, required, "the task")
        rows = None
        validation_from = src.validation_from
    sub = table if rows is None else _Table(
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


# --------------------------------------------------------------------------------------------
# tokenising, caching, batching

_CACHE_FORMAT = "adapter-registry-encoded/1"
_ENCODE_CHUNK = 2048


def _column_list(split: datasets.Dataset, column: str) -> list:
    return split.with_format("arrow")[column].to_pylist()


def _label_array(split: datasets.Dataset, column: str) -> np.ndarray:
    arr = split.with_format("arrow")[column].to_numpy()
    return arr.astype(np.float32) if arr.dtype.kind == "f" else arr.astype(np.int64)


def _content_digest(texts: Sequence[list], labels: np.ndarray) -> str:
    h = hashlib.sha256()
    for col in texts:
        h.update(np.fromiter(map(len, col), dtype=np.int64, count=len(col)).tobytes())
        h.update("\x00".join(col).encode("utf-8", "surrogatepass"))
    h.update(str(labels.dtype).encode())
    h.update(np.ascontiguousarray(labels).tobytes())
    return h.hexdigest()


def _split_flat(flat: np.ndarray, offsets: np.ndarray) -> list[np.ndarray]:
    return np.split(flat, offsets[1:-1]) if offsets.size > 1 else []


def _read_cache(path: Path, n: int) -> Encoded | None:
    from safetensors.numpy import load_file

    try:
        t = load_file(str(path))
        ids, offsets, labels = t["input_ids"], t["offsets"], t["labels"]
    except Exception:  # damaged or foreign file: tokenise again and replace it
        return None
    if offsets.shape != (n + 1,) or labels.shape != (n,) or int(offsets[-1]) != ids.size or ids.dtype != np.int32:
        return None
    types = t.get("token_type_ids")
    if types is not None and types.shape != ids.shape:
        return None
    return Encoded(
        input_ids=_split_flat(ids, offsets),
        labels=labels,
        token_type_ids=None if types is None else _split_flat(types.astype(np.int64), offsets),
    )


def _write_cache(path: Path, tensors: dict[str, np.ndarray], cache_key: str) -> None:
    from safetensors.numpy import save_file

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        save_file(tensors, str(tmp), metadata={"format": _CACHE_FORMAT, "cache_key": cache_key})
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def encode(
    split: datasets.Dataset,
    text_columns: Sequence[str],
    tokenizer: Any,
    *,
    max_length: int,
    cache_dir: Path | None,
    cache_key: str,
    progress: bool = False,
) -> Encoded:
    """Tokenise a split (pairs as pairs, truncated to ``max_length``), caching the result.

    ``split`` holds ``text_columns`` and one label column (as :func:`load` returns it). With a
    ``cache_dir`` the result is one safetensors file (flat int32 ids, int64 offsets, labels), named
    by sha256 of ``cache_key`` plus a digest of the split's texts and labels, written to a temporary
    name and renamed into place. A cache hit never touches ``tokenizer`` (it may be None).
    """
    text_columns = tuple(text_columns)
    if not 1 <= len(text_columns) <= 2:
        raise ValueError(f"encode takes one or two text columns, got {len(text_columns)}")
    if int(max_length) < 1:
        raise ValueError(f"max_length must be positive, got {max_length}")
    others = [c for c in split.column_names if c not in text_columns]
    if len(others) != 1:
        raise ValueError(f"the split must hold the text columns and one label column; it has {split.column_names}")
    texts = [_column_list(split, c) for c in text_columns]
    labels = _label_array(split, others[0])
    n = len(labels)

    path = None
    if cache_dir is not None:
        digest = hashlib.sha256(f"{cache_key}\n{_content_digest(texts, labels)}".encode()).hexdigest()
        path = Path(cache_dir) / f"encoded-{digest}.safetensors"
        if path.is_file():
            hit = _read_cache(path, n)
            if hit is not None:
                return hit
    if tokenizer is None:
        raise ValueError("encode needs a tokenizer: the split is not in the cache")

    pair = len(text_columns) == 2
    want_types = pair and "token_type_ids" in getattr(tokenizer, "model_input_names", ())
    ids_rows: list[list[int]] = []
    type_rows: list[list[int]] = []
    from tqdm.auto import tqdm

    with tqdm(total=n, desc="tokenising", unit="ex", disable=not progress, leave=False) as bar:
        for start in range(0, n, _ENCODE_CHUNK):
            a = texts[0][start:start + _ENCODE_CHUNK]
            b = texts[1][start:start + _ENCODE_CHUNK] if pair else None
            out = tokenizer(
                a, b, truncation=True, max_length=int(max_length),
                return_attention_mask=False, return_token_type_ids=want_types,
            )
            ids_rows.extend(out["input_ids"])
            if want_types:
                type_rows.extend(out["token_type_ids"])
            bar.update(len(a))

    lengths = np.fromiter(map(len, ids_rows), dtype=np.int64, count=n)
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    total = int(offsets[-1])
    flat = np.fromiter(itertools.chain.from_iterable(ids_rows), dtype=np.int32, count=total)
    tensors = {"input_ids": flat, "offsets": offsets, "labels": labels}
    types_flat = None
    if want_types:
        types_flat = np.fromiter(itertools.chain.from_iterable(type_rows), dtype=np.uint8, count=total)
        tensors["token_type_ids"] = types_flat
    if path is not None:
        _write_cache(path, tensors, cache_key)
    return Encoded(
        input_ids=_split_flat(flat, offsets),
        labels=labels,
        token_type_ids=None if types_flat is None else _split_flat(types_flat.astype(np.int64), offsets),
    )


def batches(
    encoded: Encoded,
    batch_size: int,
    *,
    pad_id: int,
    shuffle: bool,
    seed: int,
) -> Iterator[dict[str, torch.Tensor]]:
    """Yield padded batches: ``input_ids`` and ``attention_mask`` (long, padded to the batch's
    longest row with ``pad_id``), ``labels`` (long or float), ``index`` (long: the rows' positions in
    ``encoded``) and, for pairs whose tokenizer uses them, ``token_type_ids`` (long).

    With ``shuffle``: a seeded permutation, cut into windows of 50 batches, each window sorted by
    length and cut into batches, then the batches in a seeded random order. Without: rows sorted by
    length (stable), so padding is small; use ``index`` to put predictions back in row order.
    Every row appears exactly once.
    """
    import torch

    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be positive, got {batch_size}")
    batch_size = int(batch_size)
    n = len(encoded.input_ids)
    lengths = np.fromiter((x.size for x in encoded.input_ids), dtype=np.int64, count=n)
    if shuffle:
        rng = np.random.default_rng(seed)
        perm = rng.permutation(n)
        window = batch_size * 50
        groups: list[np.ndarray] = []
        for w in range(0, n, window):
            chunk = perm[w:w + window]
            chunk = chunk[np.argsort(lengths[chunk], kind="stable")]
            groups.extend(chunk[i:i + batch_size] for i in range(0, chunk.size, batch_size))
        order = rng.permutation(len(groups))
        plan = [groups[i] for i in order]
    else:
        srt = np.argsort(lengths, kind="stable")
        plan = [srt[i:i + batch_size] for i in range(0, n, batch_size)]

    types = encoded.token_type_ids
    labels = encoded.labels
    for idx in plan:
        width = int(lengths[idx].max()) if idx.size else 0
        ids = np.full((idx.size, width), pad_id, dtype=np.int64)
        mask = np.zeros((idx.size, width), dtype=np.int64)
        tt = np.zeros((idx.size, width), dtype=np.int64) if types is not None else None
        for r, i in enumerate(idx):
            L = lengths[i]
            ids[r, :L] = encoded.input_ids[i]
            mask[r, :L] = 1
            if tt is not None:
                tt[r, :L] = types[i]
        batch = {
            "input_ids": torch.from_numpy(ids),
            "attention_mask": torch.from_numpy(mask),
            "labels": torch.from_numpy(np.ascontiguousarray(labels[idx])),
            "index": torch.from_numpy(idx.astype(np.int64)),
        }
        if tt is not None:
            batch["token_type_ids"] = torch.from_numpy(tt)
        yield batch
