"""Raw tables from a task's source (a directory, a single file or a hub dataset), before any inference.

File formats: ``.tsv`` (read with quoting disabled: double quotes are text), ``.csv`` (standard
quoting), ``.json`` (a list of objects, an object of equal-length lists, ``{"data": [...]}``, or
JSON lines), ``.jsonl`` and ``.parquet``. A file with any other extension (``.txt``, none) is read by
its content: Parquet by its magic bytes, JSON when it starts with ``{`` or ``[``, else tab-separated
when every sampled line has a tab, comma-separated when every one has a comma; a note says which.
Text must be UTF-8 (a BOM is stripped). Whether the first
row of a delimited file is a header is detected; without one, columns are named by 0-based
position: ``"0"``, ``"1"``, ...

Which sources there are, and how their validation rows are chosen, is described in
:mod:`registry.data.splits`. Every problem raises :class:`registry.errors.DataError` with a one-line message
that names the file, column or row and says what to do.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any


from registry.data.values import MIN_TEXT_TOKENS, looks_like_text, norm, to_number
from registry.errors import DataError
from registry.formats import sha256_of

if TYPE_CHECKING:  # imported lazily at run time: `datasets` is slow to import
    import datasets

__all__ = [
    "Table",
    "Source",
    "resolve",
    "load_dev",
    "to_number",
    "looks_like_text",
    "norm",
    "FORMATS",
    "LABEL_NAMES",
    "MIN_TEXT_TOKENS",
    "SAMPLE",
]

FORMATS = (".tsv", ".csv", ".json", ".jsonl", ".parquet")
_TRAIN_STEMS = ("train",)
_DEV_STEMS = ("dev", "validation", "valid")
_HUB_VALIDATION_SPLITS = ("validation", "validation_matched", "dev", "valid")

# Label columns recognised by name (case-insensitive), in order of preference; also header words.
LABEL_NAMES = ("label", "labels", "score", "quality", "target", "class", "gold_label")
_HEADER_WORDS = set(LABEL_NAMES) | {
    "sentence", "sentence1", "sentence2", "text", "text_a", "text_b", "question", "question1",
    "question2", "premise", "hypothesis", "index", "idx", "id", "string",
}
SAMPLE = 2000                   # rows sampled for the text-likeness / header heuristics


# --------------------------------------------------------------------------------------------
# raw tables


@dataclass
class Table:
    """Columns of raw values read from one file or split, before inference."""

    name: str                                  # for messages: "train.tsv", "train split of hf:x"
    columns: dict[str, list]                   # ordered by file order
    header: bool | None = None                 # delimited files: had a header row; else None
    lines: list[int] | None = None             # file line of each row, when the format has lines
    class_names: dict[str, tuple[str, ...]] = field(default_factory=dict)  # hub ClassLabel names
    read_as: str | None = None                 # the format chosen by content, for an extension we do not know

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


def _read_table(path: Path, raw: bytes, *, expect_header: bool | None = None, required: Sequence[str] = ()) -> Table:
    """Parse one file. ``expect_header``/``required`` only matter for delimited files (see _read_delimited)."""
    name = path.name
    body = raw[3:] if raw.startswith(b"\xef\xbb\xbf") else raw
    if not body.strip():
        raise DataError(f"{path} is empty; it needs labelled examples")
    ext = path.suffix.lower()
    read_as = None
    if ext not in FORMATS:
        ext = _sniff(name, raw)
        read_as = _FORMAT_NAMES[ext]
    if ext in (".tsv", ".csv"):
        table = _read_delimited(name, _decode(raw, name), ext, expect_header=expect_header, required=required)
    elif ext in (".json", ".jsonl"):
        table = _read_json(name, _decode(raw, name), ext)
    else:
        table = _read_parquet(name, raw)
    table.read_as = read_as
    return table


_FORMAT_NAMES = {".parquet": "Parquet", ".json": "JSON", ".tsv": "tab-separated text", ".csv": "comma-separated text"}


def _sniff(name: str, raw: bytes) -> str:
    """The format of a file whose extension names none we know, from its content (see the module's doc)."""
    if raw.startswith(b"PAR1"):
        return ".parquet"
    text = _decode(raw, name)
    if text.lstrip()[:1] in ("{", "["):
        return ".json"
    lines = [line for line in text.split("\n", SAMPLE)[:SAMPLE] if line.strip()]
    for ext, sep in ((".tsv", "\t"), (".csv", ",")):
        if all(sep in line for line in lines):
            return ext
    raise DataError(f"{name} is not tab- or comma-separated text (not every line has a tab or a comma), JSON or "
                    f"Parquet; give it one of those forms ({', '.join(FORMATS)})")


def _read_delimited(name: str, text: str, ext: str, *, expect_header: bool | None, required: Sequence[str]) -> Table:
    rows, lines, width = _delimited_rows(name, text, ext)
    header = _has_header(name, rows, expect_header=expect_header, required=required)
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
    return Table(name=name, columns=dict(zip(names, cols)), header=header, lines=lines)


def _delimited_rows(name: str, text: str, ext: str) -> tuple[list[list[str]], list[int], int]:
    """The non-blank rows of tab- or comma-separated text, each one's line number, and the first row's width."""
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
    return rows, lines, width


def _has_header(name: str, rows: list[list[str]], *, expect_header: bool | None, required: Sequence[str]) -> bool:
    """Whether the first row is a header: the one the task reads (``required``), expected, or detected."""
    if expect_header is None and required:
        header = bool(rows) and set(required) <= {c.strip() for c in rows[0]}
        if not header and not all(r.isdigit() for r in required):
            if rows and _detect_header(rows):
                found = ", ".join(repr(c.strip()) for c in rows[0])
                raise DataError(f"{name} has columns {found} but the task reads "
                                f"{', '.join(map(repr, required))}: give data with those columns")
            raise DataError(
                f"{name} has no header row naming {', '.join(map(repr, required))}; "
                f"add the header row the task was trained with"
            )
        return header
    if expect_header is None:
        return _detect_header(rows)
    if expect_header:
        header = bool(rows) and (not required or set(required) <= {c.strip() for c in rows[0]})
        if not header:
            first = ", ".join(c.strip() for c in rows[0]) if rows else ""
            raise DataError(
                f"{name}'s first row ({first}) is not a header naming {', '.join(map(repr, required))}; "
                "give it the same header row as the train file"
            )
        return header
    return False


def _detect_header(rows: list[list[str]]) -> bool:
    """Is the first row a header? Headers have distinct, non-empty, non-numeric short names and
    differ from the column below them (numbers under a word, sentences under a word, a word that
    is not among a column's few values)."""
    if not rows:
        return False
    first = [c.strip() for c in rows[0]]
    if any(not c for c in first) or any(to_number(c) is not None for c in first):
        return False
    if len(set(first)) != len(first):
        return False
    rest = rows[1:]
    if not rest:
        return all(len(c.split()) <= 3 for c in first)
    step = max(1, len(rest) // SAMPLE)
    sample = rest[::step]
    for j, head in enumerate(first):
        if norm(head) in _HEADER_WORDS:
            return True
        values = [r[j].strip() for r in sample if r[j].strip()]
        if not values:
            continue
        numeric = sum(to_number(v) is not None for v in values)
        if numeric >= 0.9 * len(values):
            return True  # a word above a column of numbers
        short = sum(len(v.split()) <= 2 for v in values)
        if looks_like_text(values) and len(head.split()) <= 2 and short < 0.1 * len(values):
            return True  # a word above a column of sentences
        distinct = set(values)
        if len(distinct) <= 20 and len(values) >= 10 and head not in distinct:
            return True  # a word above a column of a few other values
    return False


def _read_json(name: str, text: str, ext: str) -> Table:
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
                return Table(name=name, columns={str(k): list(v) for k, v in cols.items()})
            if not isinstance(data, list):
                raise DataError(
                    f"{name} holds a JSON {type(data).__name__}, not a list of examples; use a list of objects"
                )
            records = data
    if records is None:
        records, lines = [], []
        for ln, line in enumerate(text.split("\n"), start=1):  # not splitlines(): U+2028 may sit in a string
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise DataError(
                    f"{name} line {ln} is not valid JSON ({e.msg}); each line must be one JSON object"
                ) from None
            lines.append(ln)
    if not records:
        raise DataError(f"{name} holds no examples; add one JSON object per example")
    keys: dict[str, None] = {}
    for i, rec in enumerate(records):
        if not isinstance(rec, dict):
            where = f"line {lines[i]}" if lines else f"item {i + 1}"
            raise DataError(
                f"{name} {where} is a JSON {type(rec).__name__}, not an object; write one object per example"
            )
        for k in rec:
            keys.setdefault(k, None)
    columns = {str(k): [rec.get(k) for rec in records] for k in keys}
    if not columns:
        raise DataError(f"{name} holds only empty objects; give each example its text and label fields")
    return Table(name=name, columns=columns, lines=lines)


def _read_parquet(name: str, raw: bytes) -> Table:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(raw))
    except Exception as e:  # pyarrow raises several types for a damaged file
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise DataError(f"{name} is not a readable Parquet file ({msg}); re-export it") from None
    if table.num_rows == 0:
        raise DataError(f"{name} has columns ({', '.join(table.column_names)}) but no rows; add examples")
    return Table(name=name, columns={str(c): table.column(c).to_pylist() for c in table.column_names})


def _table_from_dataset(ds: datasets.Dataset, name: str) -> Table:
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
    return Table(name=name, columns=columns, class_names=class_names)


# --------------------------------------------------------------------------------------------
# sources


@dataclass
class Source:
    train: Table | None               # None for load_validation of a directory with a dev file
    validation: Table | None          # None: hold out part of `train`
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


def _source_from_datasetdict(dsd: Any, label: str, fingerprint: str, *, need_train: bool = True) -> Source:
    splits = list(dsd)
    if "train" not in dsd:
        raise DataError(
            f"{label} has no 'train' split (splits: {', '.join(splits)}); pass a local directory or file with --data"
        )
    val_split = next((s for s in _HUB_VALIDATION_SPLITS if s in dsd), None)
    train = _table_from_dataset(dsd["train"], f"train split of {label}")
    if val_split is None:
        return Source(train, None, f"train split of {label}", "", fingerprint, [])
    val = _table_from_dataset(dsd[val_split], f"{val_split} split of {label}")
    return Source(train if need_train else None, val, None, f"{val_split} split", fingerprint, [])


def _find_split_files(d: Path) -> tuple[Path, Path | None]:
    files = sorted(p for p in d.iterdir() if p.is_file())

    def pick(stems: Sequence[str], what: str) -> Path | None:
        found = [p for p in files if p.suffix.lower() in (*FORMATS, ".txt") and p.stem.lower() in stems]
        if len(found) > 1:
            raise DataError(
                f"{d} has several {what} files ({', '.join(p.name for p in found)}); keep one"
            )
        return found[0] if found else None

    train = pick(_TRAIN_STEMS, "train")
    if train is None:
        listing = ", ".join(p.name for p in files[:12]) or "no files"
        raise DataError(
            f"{d} has no train file (train.tsv, train.csv, train.json, train.jsonl, train.parquet or train.txt); "
            f"it holds: {listing}"
        )
    return train, pick(_DEV_STEMS, "dev/validation")


def _manifest_sha(items: Sequence[tuple[str, bytes]]) -> str:
    """sha256 of a sha256sum-style manifest ("<sha256>  <name>" per line) of the source files."""
    lines = "".join(f"{sha256_of(b)}  {n}\n" for n, b in items)
    return sha256_of(lines.encode())


def resolve(source: str, *, need_train: bool) -> Source:
    """Read a source's raw tables (the dev file of a directory is parsed later, see load_dev)."""
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
            tab = _read_table(train_path, train_raw)
            return Source(tab, None, train_path.name, "", _manifest_sha([(train_path.name, train_raw)]),
                          [*read_as_note(tab),
                           f"no dev/validation file in {path}: holding out part of {train_path.name}"])
        dev_raw = _read_bytes(dev_path)
        fp = _manifest_sha([(train_path.name, train_raw), (dev_path.name, dev_raw)])
        train = _read_table(train_path, train_raw) if need_train else None
        return Source(train, None, None, dev_path.name, fp, read_as_note(train), dev=(dev_path, dev_raw))
    if not path.is_file():
        raise DataError(f"{source} is neither a regular file nor a directory; pass a data file or directory")
    raw = _read_bytes(path)
    tab = _read_table(path, raw)
    return Source(tab, None, path.name, "", sha256_of(raw), read_as_note(tab))


def read_as_note(table: Table | None) -> list[str]:
    """The line saying how a file of an extension we do not know was read, if it was."""
    if table is None or table.read_as is None:
        return []
    return [f"read {table.name} as {table.read_as} (by its content)"]


def load_dev(src: Source, required: Sequence[str]) -> Table:
    """Parse the directory's dev file, with the train file's header convention."""
    assert src.dev is not None
    dev_path, dev_raw = src.dev
    expect = None  # load_validation: no train file parsed; decided by the required column names
    if src.train is not None:
        expect = True if src.train.header is None else src.train.header
    return _read_table(dev_path, dev_raw, expect_header=expect, required=required)
