"""Bundles: a registry's ready tasks with the base once, served and imported without the database.

A bundle is a directory (or the same tree in one .tar):

    manifest.json               format, dtype, the base's sha256, each task's metadata, and the
                                sha256 + size of every other file
    base/                       model.safetensors, config.json, tokenizer files: `AutoModel.from_pretrained` reads it
    adapters/NAME.safetensors   the task's trainable tensors (the stored artifact's bytes, in float32)
    adapters/NAME.json          the task's config artifact, byte for byte

`export` writes one from a registry; `load` serves one and `from_registry` serves a registry's tasks,
both as the same `Predictor`; `import_bundle` adds a bundle's tasks to a registry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from safetensors.torch import load as load_tensors, save as save_tensors
import torch
import torch.nn.functional as F
from sqlalchemy import Row, func, select
from sqlalchemy.exc import IntegrityError

from registry import checkpoint, schema
from registry.adapters import AdapterModel, head_size
from registry.catalog import find_task, task_row
from registry.config import Settings
from registry.core import Registry, open_registry
from registry.encoding import Encoded, batches
from registry.errors import BundleError, DataError, NotInitialised, TaskExists, UnknownTask
from registry.models import Artifact, Task
from registry.schema import utcnow
from registry.store import sha256_of, write_atomic

FORMAT = "adapter-registry/bundle@1"
MANIFEST = "manifest.json"
BASE_DIR = "base"
ADAPTER_DIR = "adapters"
DTYPES = {"float32": torch.float32, "float16": torch.float16}
# A float16 bundle served in float32 gives probabilities (and regression values) within this of float32's.
FLOAT16_TOLERANCE = 1e-2
_CHUNK = 1 << 20
TASK_FIELDS = ("name", "position", "task_type", "labels", "text_columns", "label_column", "metric", "score", "adapter_size",
               "max_length", "trainable_params", "data_source", "adapter_sha256", "config_sha256", "adapter", "config")


# --------------------------------------------------------------------------------------------
# what a task needs to be served


@dataclass(frozen=True)
class TaskSpec:
    """One task as the predictor needs it, read from the task's config artifact."""

    name: str
    task_type: str
    labels: tuple[str, ...] | None
    text_columns: tuple[str, ...]
    adapter_size: int
    max_length: int
    base_sha256: str

    @classmethod
    def from_config(cls, name: str, config: dict) -> TaskSpec:
        """The spec of task `name` from its JSON config artifact (see tasks.adapter_files)."""
        labels = config.get("labels")
        return cls(name=name, task_type=config["task_type"], labels=tuple(labels) if labels is not None else None,
                   text_columns=tuple(config["text_columns"]), adapter_size=int(config["adapter_size"]),
                   max_length=int(config["max_length"]), base_sha256=config["base_sha256"])

    @property
    def head_size(self) -> int:
        """Outputs of the head: one per class, or one for regression."""
        return head_size(self.task_type, self.labels)

    @property
    def pair(self) -> bool:
        """Whether the task reads a text pair."""
        return len(self.text_columns) == 2


@dataclass(frozen=True)
class Prediction:
    """One example's prediction: the original label string (or the value, for regression) and its probability."""

    task: str
    label: str | float
    score: float | None
    probabilities: dict[str, float] | None

    def as_dict(self) -> dict:
        return asdict(self)


Text = str | tuple[str, str]


def pad_adapters(tensors: dict[str, torch.Tensor], size: int, target: int) -> dict[str, torch.Tensor]:
    """A task's tensors with its adapters zero-padded from bottleneck `size` to `target`.

    The extra down-projection columns and bias entries are zero, so the extra hidden units are
    GELU(0) = 0, and the extra up-projection rows are zero: the adapter's output is unchanged.
    """
    extra = target - size
    if extra == 0:
        return tensors
    padded = {}
    for key, value in tensors.items():
        if key.endswith((".down_weight", ".down_bias")):
            value = F.pad(value, (0, extra))
        elif key.endswith(".up_weight"):
            value = F.pad(value, (0, 0, 0, extra))
        padded[key] = value
    return padded


# --------------------------------------------------------------------------------------------
# serving


class Predictor:
    """Many tasks on one copy of the base: a batch that mixes tasks runs in one forward pass.

    One `AdapterModel` holds every task's adapters stacked (smaller adapters zero-padded to the
    largest); each example is routed through its own task's adapters and head, tokenised with its
    task's max_length.
    """

    def __init__(self, base_dir: Path, specs: Sequence[TaskSpec], states: Sequence[dict[str, torch.Tensor]], *,
                 device: str | torch.device = "auto", dtype: torch.dtype = torch.float32) -> None:
        from transformers import AutoModel, AutoTokenizer

        if not specs:
            raise UnknownTask("no tasks to serve: name at least one")
        checkpoint.quiet_transformers()
        self.device = _device(device)
        self.specs = {spec.name: spec for spec in specs}
        self.tasks = [spec.name for spec in specs]
        self._index = {spec.name: t for t, spec in enumerate(specs)}
        encoder = AutoModel.from_pretrained(base_dir, dtype=dtype)
        size = max(spec.adapter_size for spec in specs)
        self.model = AdapterModel(encoder, size, [spec.head_size for spec in specs])
        for t, (spec, state) in enumerate(zip(specs, states)):
            self.model.load_task_state_dict(pad_adapters(state, spec.adapter_size, size), t)
        self.model.to(self.device).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(base_dir)
        self._types = "token_type_ids" in getattr(self.tokenizer, "model_input_names", ())

    def predict(self, task: str, texts: Sequence[Text], *, batch_size: int = 64) -> list[Prediction]:
        """Predictions for texts (strings, or (text, text_pair) tuples for a pair task) of one task."""
        return self.predict_many([(task, text) for text in texts], batch_size=batch_size)

    def predict_many(self, items: Sequence[tuple[str, Text]], *, batch_size: int = 64) -> list[Prediction]:
        """Predictions for (task, text) items in input order; each batch may mix tasks freely."""
        if not items:
            return []
        task_of = np.array([self._task_index(task) for task, _ in items], dtype=np.int64)
        encoded = self._tokenise(items, task_of)
        outputs: list[np.ndarray | None] = [None] * len(items)
        with torch.inference_mode():
            for batch in batches(encoded, batch_size, pad_id=self.tokenizer.pad_token_id, shuffle=False, seed=0):
                rows = batch["index"].numpy()
                tasks = task_of[rows]
                hidden = self.model.encode(
                    batch["input_ids"].to(self.device), batch["attention_mask"].to(self.device),
                    task_ids=torch.from_numpy(tasks).to(self.device),
                    token_type_ids=batch["token_type_ids"].to(self.device) if "token_type_ids" in batch else None)
                for t in np.unique(tasks):
                    mine = np.flatnonzero(tasks == t)
                    logits = self.model.heads[t](hidden[torch.from_numpy(mine).to(self.device)]).float().cpu().numpy()
                    for row, logit in zip(rows[mine], logits):
                        outputs[row] = logit
        return [self._result(self.specs[self.tasks[t]], output) for t, output in zip(task_of, outputs)]

    def _task_index(self, task: str) -> int:
        if task not in self._index:
            raise UnknownTask(f"no task named {task!r} here; tasks: {', '.join(self.tasks)}")
        return self._index[task]

    def _tokenise(self, items: Sequence[tuple[str, Text]], task_of: np.ndarray) -> Encoded:
        """Token ids per item, each task's items as its training data was tokenised (encoding.encode)."""
        n = len(items)
        ids: list[np.ndarray] = [None] * n
        types: list[np.ndarray] = [None] * n
        for t in np.unique(task_of):
            spec = self.specs[self.tasks[t]]
            rows = np.flatnonzero(task_of == t)
            texts = [split_text(spec, items[i][1]) for i in rows]
            want_types = spec.pair and self._types
            out = self.tokenizer([a for a, _ in texts], [b for _, b in texts] if spec.pair else None, truncation=True,
                                 max_length=spec.max_length, return_attention_mask=False, return_token_type_ids=want_types)
            for k, i in enumerate(rows):
                ids[i] = np.asarray(out["input_ids"][k], dtype=np.int64)
                types[i] = np.asarray(out["token_type_ids"][k], dtype=np.int64) if want_types else None
        if all(t is None for t in types):
            types = None
        else:  # single-text rows next to pairs: segment 0 everywhere, as the model assumes when given none
            types = [t if t is not None else np.zeros_like(ids[i]) for i, t in enumerate(types)]
        return Encoded(input_ids=ids, labels=np.zeros(n, dtype=np.int64), token_type_ids=types)

    @staticmethod
    def _result(spec: TaskSpec, output: np.ndarray) -> Prediction:
        if spec.task_type == "regression":
            return Prediction(spec.name, float(output[0]), None, None)
        shifted = np.exp(output.astype(np.float64) - output.max())
        probabilities = shifted / shifted.sum()
        best = int(output.argmax())
        return Prediction(spec.name, spec.labels[best], float(probabilities[best]),
                          {label: float(p) for label, p in zip(spec.labels, probabilities)})


def _device(requested: str | torch.device) -> torch.device:
    """A torch device for `auto`, `cpu`, `cuda` (refused where there is none) or a device itself."""
    from registry.tasks import pick_device

    return requested if isinstance(requested, torch.device) else pick_device(requested)


def split_text(spec: TaskSpec, item: Text) -> tuple[str, str | None]:
    """(text, text_pair) of one input, refused when it does not fit the task's single text or pair."""
    if isinstance(item, str):
        text, pair = item, None
    elif isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(x, str) for x in item):
        text, pair = item
    else:
        raise DataError(f"task {spec.name!r}: an input must be a string or a (text, text_pair) pair of strings, got {item!r}")
    if spec.pair and pair is None:
        raise DataError(f"task {spec.name!r} reads a text pair ({' + '.join(spec.text_columns)}): give each input with its text_pair")
    if not spec.pair and pair is not None:
        raise DataError(f"task {spec.name!r} reads one text ({spec.text_columns[0]}): give inputs without a text_pair")
    return text, pair


def load(path: str | os.PathLike, tasks: Sequence[str] | None = None, *, device: str = "auto",
         dtype: str | None = None) -> Predictor:
    """Serve a bundle (a directory or .tar) after verifying every file; `tasks` picks some (default all).

    It computes in `dtype` (default: float32 on CPU, the bundle's dtype elsewhere).
    """
    with opened(path) as root:
        manifest = verify(root, path)
        entries = _pick(manifest["tasks"], tasks, f"bundle {path}")
        specs = [TaskSpec.from_config(entry["name"], json.loads((root / entry["config"]).read_bytes())) for entry in entries]
        states = [load_tensors((root / entry["adapter"]).read_bytes()) for entry in entries]
        target = _device(device)
        if dtype is None:
            dtype = manifest["dtype"] if target.type == "cuda" else "float32"
        return Predictor(root / BASE_DIR, specs, states, device=target, dtype=DTYPES[dtype])


def from_registry(registry: Registry, tasks: Sequence[str] | None = None, *, device: str = "auto") -> Predictor:
    """Serve ready tasks of a registry (default all) from its store, as `load` serves a bundle."""
    with registry.read() as session:
        base = registry.base(session)
        rows = ready_tasks(session, tasks)
    specs = [TaskSpec.from_config(row.name, json.loads(registry.store.get(row.config_sha256))) for row in rows]
    states = [load_tensors(registry.store.get(row.adapter_sha256)) for row in rows]
    return Predictor(checkpoint.unpack(registry, base), specs, states, device=device)


def ready_tasks(session, names: Sequence[str] | None) -> list[Row]:
    """Rows of ready tasks by position: all, or those named (UnknownTask lists the known ones)."""
    if names is not None and not names:
        raise UnknownTask("no task named: pass all, or NAME,NAME…")
    if names is None:
        rows = session.execute(select(schema.tasks).where(schema.tasks.c.status == "ready").order_by(schema.tasks.c.position)).all()
        if not rows:
            raise UnknownTask("the registry has no ready tasks: add one with `registry add-task NAME --data PATH`")
        return list(rows)
    picked = {name: find_task(session, name, ready=True) for name in names}
    return sorted(picked.values(), key=lambda task: task.position)


def _pick(entries: list[dict], names: Sequence[str] | None, where: str) -> list[dict]:
    """Manifest task entries in bundle order: all, or those named."""
    if names is None:
        return entries
    if not names:
        raise UnknownTask("no task named: pass all, or NAME,NAME…")
    known = [entry["name"] for entry in entries]
    unknown = [name for name in dict.fromkeys(names) if name not in known]
    if unknown:
        raise UnknownTask(f"no task named {unknown[0]!r} in {where}; tasks in it: {', '.join(known)}")
    return [entry for entry in entries if entry["name"] in names]


# --------------------------------------------------------------------------------------------
# requests from the command line


def read_requests(path: str | os.PathLike, task: str | None = None) -> list[tuple[str, Text]]:
    """(task, text) items from a JSON-lines file of {"task", "text", "text_pair"} rows; `task` fills a missing task."""
    items = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}; pass a UTF-8 JSON-lines file") from None
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            raise DataError(f"{path} line {number} is not JSON: write one {{\"task\", \"text\", \"text_pair\"}} object per line") from None
        if not isinstance(row, dict) or not isinstance(row.get("text"), str):
            raise DataError(f"{path} line {number} has no \"text\" string: write one {{\"task\", \"text\", \"text_pair\"}} object per line")
        name = row.get("task") or task
        if not isinstance(name, str):
            raise DataError(f"{path} line {number} names no task: add \"task\" to the row or pass --task")
        pair = row.get("text_pair")
        if pair is not None and not isinstance(pair, str):
            raise DataError(f"{path} line {number}: \"text_pair\" must be a string")
        items.append((name, row["text"] if pair is None else (row["text"], pair)))
    if not items:
        raise DataError(f"{path} holds no rows: write one {{\"task\", \"text\", \"text_pair\"}} object per line")
    return items


def predict_rows(open_predictor: Callable[[list[str]], Predictor], task: str | None, texts: Sequence[str],
                 input_path: str | os.PathLike | None, *, batch_size: int = 64) -> list[dict]:
    """`registry predict`: TEXT arguments of `task` (a pair task takes them two by two) or --input rows.

    `open_predictor(names)` builds the predictor for the tasks the rows need (a bundle or the registry).
    """
    if bool(texts) == (input_path is not None):
        raise DataError("give either TEXT arguments (with --task) or --input FILE.jsonl")
    if input_path is not None:
        items = read_requests(input_path, task)
        predictor = open_predictor(list(dict.fromkeys(name for name, _ in items)))
    else:
        if task is None:
            raise DataError("TEXT arguments need --task NAME")
        predictor = open_predictor([task])
        if predictor.specs[task].pair:
            if len(texts) % 2:
                raise DataError(f"task {task!r} reads text pairs: give an even number of TEXT arguments (each text, then its pair), or use --input")
            items = [(task, (texts[i], texts[i + 1])) for i in range(0, len(texts), 2)]
        else:
            items = [(task, text) for text in texts]
    predictions = predictor.predict_many(items, batch_size=batch_size)
    return [{"task": name, "text": text if isinstance(text, str) else text[0],
             "text_pair": None if isinstance(text, str) else text[1], **{k: v for k, v in p.as_dict().items() if k != "task"}}
            for (name, text), p in zip(items, predictions)]


# --------------------------------------------------------------------------------------------
# reading and verifying a bundle


def file_digest(path: Path) -> tuple[str, int]:
    """sha256 and size of a file, read in chunks."""
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


@contextmanager
def opened(path: str | os.PathLike) -> Iterator[Path]:
    """The bundle's root directory: `path` itself, or a .tar extracted into a temporary directory."""
    path = Path(path)
    if path.is_dir():
        yield path
        return
    if not path.is_file() or not tarfile.is_tarfile(path):
        raise BundleError(f"{path} is not a bundle: pass a directory or .tar written by `registry export`")
    with tempfile.TemporaryDirectory(prefix="bundle-") as tmp:
        try:
            with tarfile.open(path) as archive:
                archive.extractall(tmp, filter="data")
        except (tarfile.TarError, OSError) as exc:
            raise BundleError(f"cannot unpack {path} ({exc}): export the bundle again") from None
        found = [*Path(tmp).glob(MANIFEST), *Path(tmp).glob(f"*/{MANIFEST}")]
        yield found[0].parent if len(found) == 1 else Path(tmp)


def _check_structure(manifest: dict, shown) -> None:
    """Refuse a manifest that lacks a field this code reads, or names a task twice."""
    try:
        problems = [f"dtype {manifest['dtype']!r}"] if manifest["dtype"] not in DTYPES else []
        problems += [f"base has no {key!r}" for key in ("sha256", "name", "source") if key not in manifest["base"]]
        files = manifest["files"]
        if not isinstance(files, dict) or any(not isinstance(v, dict) or set(v) != {"sha256", "size"} for v in files.values()):
            problems.append("files must map each path to its sha256 and size")
        tasks = manifest["tasks"]
        problems += [f"task {entry.get('name')!r} has no {key!r}" for entry in tasks for key in TASK_FIELDS if key not in entry]
        names = [entry.get("name") for entry in tasks]
        if len(set(names)) != len(names):
            problems.append("a task named twice")
        if not tasks:
            problems.append("no tasks")
    except (KeyError, TypeError, AttributeError) as exc:
        problems = [f"no {exc}" if isinstance(exc, KeyError) else "unexpected shape"]
    if problems:
        raise BundleError(f"{shown}: {MANIFEST} is malformed ({problems[0]}): export the bundle again")


def verify(root: Path, shown: str | os.PathLike | None = None) -> dict:
    """The bundle's manifest, after checking every file's sha256 and size and that every task fits its base."""
    shown = shown or root
    try:
        manifest = json.loads((root / MANIFEST).read_bytes())
    except FileNotFoundError:
        raise BundleError(f"{shown} is not a bundle (no {MANIFEST}): pass a directory or .tar written by `registry export`") from None
    except (OSError, ValueError) as exc:
        raise BundleError(f"{shown}: {MANIFEST} cannot be read ({exc}): export the bundle again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise BundleError(f"{shown}: bundle format {found!r} is not {FORMAT!r}: export it again with this version of adapter-registry")
    _check_structure(manifest, shown)
    files = manifest["files"]
    referenced = [f"{BASE_DIR}/{checkpoint.WEIGHTS_FILE}", f"{BASE_DIR}/{checkpoint.CONFIG_FILE}"]
    referenced += [entry[key] for entry in manifest["tasks"] for key in ("adapter", "config")]
    for name in referenced:
        if name not in files:
            raise BundleError(f"{shown}: {MANIFEST} lists no file {name}: export the bundle again")
    for name, expected in files.items():
        relative = PurePosixPath(name)
        if relative.is_absolute() or ".." in relative.parts:
            raise BundleError(f"{shown}: {MANIFEST} names a file outside the bundle ({name}): export the bundle again")
        path = root / relative
        if not path.is_file():
            raise BundleError(f"{shown}: file {name} is missing: copy the whole bundle, or export it again")
        if file_digest(path) != (expected["sha256"], expected["size"]):
            raise BundleError(f"{shown}: file {name} does not match its sha256 in {MANIFEST} (corrupt or tampered): export the bundle again")
    base_sha = manifest["base"]["sha256"]
    weights = files[f"{BASE_DIR}/{checkpoint.WEIGHTS_FILE}"]["sha256"]
    if manifest["dtype"] == "float32" and weights != base_sha:
        raise BundleError(f"{shown}: {BASE_DIR}/{checkpoint.WEIGHTS_FILE} is not the base {base_sha[:12]} named in {MANIFEST}: export the bundle again")
    for entry in manifest["tasks"]:
        trained_on = json.loads((root / entry["config"]).read_bytes()).get("base_sha256")
        if trained_on != base_sha:
            raise BundleError(f"{shown}: task {entry['name']!r} was trained on base {str(trained_on)[:12]}, not this bundle's base "
                              f"{base_sha[:12]}: export it from a registry whose base is {base_sha[:12]}")
    return manifest


# --------------------------------------------------------------------------------------------
# export


def export(registry: Registry, output: str | os.PathLike, tasks: Sequence[str] | None = None, *,
           dtype: str = "float32", archive: bool = False, force: bool = False) -> dict:
    """Write the base once and each task's adapter + config into a bundle (a directory, or one .tar).

    It is written beside `output` under a temporary name, then renamed into place; an existing
    `output` is refused unless `force`.
    """
    if dtype not in DTYPES:
        raise BundleError(f"unknown dtype {dtype!r}: use {' or '.join(DTYPES)}")
    output = Path(output).absolute()
    if archive and output.suffix != ".tar":
        output = output.with_name(output.name + ".tar")
    if (output.exists() or output.is_symlink()) and not force:
        raise BundleError(f"{output} already exists: pass --force to replace it, or choose another --output")
    with registry.read() as session:
        base = registry.base(session)
        rows = ready_tasks(session, tasks)
    output.parent.mkdir(parents=True, exist_ok=True)
    staging = output.parent / f".{output.name}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        manifest = _write_tree(registry, base, rows, staging, dtype)
        if archive:
            packed = output.parent / f".{output.name}.tmp-{uuid.uuid4().hex[:12]}.tar"
            try:
                _write_tar(staging, packed, output.name.removesuffix(".tar"))
                _move_into_place(packed, output, force)
            finally:
                packed.unlink(missing_ok=True)
        else:
            _move_into_place(staging, output, force)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    sizes = manifest["files"]
    adapter_bytes = sum(sizes[entry["adapter"]]["size"] for entry in manifest["tasks"])
    return {"output": str(output), "archive": archive, "dtype": dtype, "tasks": [entry["name"] for entry in manifest["tasks"]],
            "files": len(sizes) + 1, "bytes": _total_bytes(output),
            "base_bytes": sizes[f"{BASE_DIR}/{checkpoint.WEIGHTS_FILE}"]["size"], "adapter_bytes": adapter_bytes}


def _write_tree(registry: Registry, base: Row, rows: list[Row], root: Path, dtype: str) -> dict:
    """The bundle's files under `root`, the manifest last."""
    checkpoint.write_base_files(registry.store, base, root / BASE_DIR)
    if dtype != "float32":
        weights = root / BASE_DIR / checkpoint.WEIGHTS_FILE
        write_atomic(weights, _cast(weights.read_bytes(), dtype))
        config = json.loads((root / BASE_DIR / checkpoint.CONFIG_FILE).read_bytes())
        config["dtype"] = dtype
        write_atomic(root / BASE_DIR / checkpoint.CONFIG_FILE, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode())
    entries = []
    for row in rows:
        adapter, config = f"{ADAPTER_DIR}/{row.name}.safetensors", f"{ADAPTER_DIR}/{row.name}.json"
        weights = registry.store.get(row.adapter_sha256)
        config_bytes = registry.store.get(row.config_sha256)
        write_atomic(root / adapter, weights if dtype == "float32" else _cast(weights, dtype))
        write_atomic(root / config, config_bytes)
        task_config = json.loads(config_bytes)
        entries.append({
            "name": row.name, "position": row.position, "task_type": row.task_type, "labels": row.labels,
            "text_columns": row.text_columns, "label_column": row.label_column, "metric": row.metric, "score": row.score,
            "adapter_size": row.adapter_size, "max_length": task_config["max_length"],
            "trainable_params": row.trainable_params, "data_source": row.data_source,
            "adapter_sha256": row.adapter_sha256, "config_sha256": row.config_sha256, "adapter": adapter, "config": config,
        })
    files = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        sha, size = file_digest(path)
        files[path.relative_to(root).as_posix()] = {"sha256": sha, "size": size}
    manifest = {
        "format": FORMAT,
        "dtype": dtype,
        "created_at": utcnow().isoformat(timespec="seconds"),
        "base": {"name": base.name, "source": base.source, "model_type": base.model_type, "sha256": base.sha256,
                 "parameters": base.parameters},
        "tasks": entries,
        "files": files,
    }
    write_atomic(root / MANIFEST, (json.dumps(manifest, indent=2) + "\n").encode())
    return manifest


def _cast(weights: bytes, dtype: str) -> bytes:
    """safetensors bytes with every float32 tensor cast to `dtype`."""
    tensors = load_tensors(weights)
    cast = {k: v.to(DTYPES[dtype]) if v.dtype == torch.float32 else v for k, v in sorted(tensors.items())}
    return save_tensors(cast, metadata={"format": "pt"})


def _write_tar(root: Path, target: Path, top: str) -> None:
    """A .tar of the tree under `root`, inside one top-level directory `top`, flushed to disk."""
    with open(target, "wb") as handle:
        with tarfile.open(fileobj=handle, mode="w", format=tarfile.PAX_FORMAT) as archive:
            for path in sorted(root.rglob("*")):
                if path.is_file():
                    archive.add(path, arcname=f"{top}/{path.relative_to(root).as_posix()}", recursive=False)
        handle.flush()
        os.fsync(handle.fileno())


def _move_into_place(source: Path, output: Path, force: bool) -> None:
    """Rename `source` to `output`; an existing `output` (only with `force`) is set aside first and removed only after."""
    aside = None
    if output.exists() or output.is_symlink():
        if not force:  # it appeared while the bundle was written
            raise BundleError(f"{output} already exists: pass --force to replace it, or choose another --output")
        aside = output.parent / f".{output.name}.old-{uuid.uuid4().hex[:12]}"
        os.replace(output, aside)
    try:
        os.replace(source, output)
    except BaseException:
        if aside is not None:
            os.replace(aside, output)
        raise
    directory = os.open(output.parent, os.O_RDONLY)
    try:
        os.fsync(directory)
    finally:
        os.close(directory)
    if aside is not None:
        shutil.rmtree(aside) if aside.is_dir() and not aside.is_symlink() else aside.unlink()


def _total_bytes(path: Path) -> int:
    """Bytes of a file, or of every file under a directory."""
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


# --------------------------------------------------------------------------------------------
# import


def import_bundle(settings: Settings, path: str | os.PathLike) -> dict:
    """Add a bundle's tasks after the registry's own, in bundle order; start an empty registry from its base.

    Everything is checked before anything is written; the files go to the store first, then one
    transaction adds every task, so a failure leaves the registry as it was.
    """
    from registry.tasks import validate_name

    with opened(path) as root:
        manifest = verify(root, path)
        if manifest["dtype"] != "float32":
            raise BundleError(f"{path} holds {manifest['dtype']} weights, which can be served but not imported "
                              f"(the registry keeps the exact float32 artifacts): export it again with --dtype float32")
        for entry in manifest["tasks"]:
            validate_name(entry["name"])
        registry = _existing(settings)
        initialised = registry is None
        if registry is None:
            registry = _initialise(settings, root, manifest, path)
        try:
            rows = _add_tasks(registry, root, manifest, path)
        finally:
            registry.close()
    return {"initialised": initialised, "base_sha256": manifest["base"]["sha256"], "tasks": rows}


def _existing(settings: Settings) -> Registry | None:
    """The registry at `settings` when it has a base, None when there is none yet."""
    try:
        registry = open_registry(settings)
    except NotInitialised:
        return None
    try:
        with registry.read() as session:
            registry.base(session)
    except NotInitialised:
        registry.close()
        return None
    return registry


def _initialise(settings: Settings, root: Path, manifest: dict, shown) -> Registry:
    """A new registry whose base is the bundle's, checked to re-serialise to the manifest's sha256."""
    base = manifest["base"]
    loaded = checkpoint.load_checkpoint(str(root / BASE_DIR))
    if sha256_of(loaded.weights) != base["sha256"]:
        raise BundleError(f"{shown}: the base re-serialises to {sha256_of(loaded.weights)[:12]}, not {base['sha256'][:12]} "
                          f"as {MANIFEST} says: import it into a registry initialised with that base (`registry init`)")
    checkpoint.create(settings, base["source"], base["name"], loaded)
    return open_registry(settings)


def _add_tasks(registry: Registry, root: Path, manifest: dict, shown) -> list[dict]:
    """Store every task's files, then add all tasks in one transaction."""
    names = [entry["name"] for entry in manifest["tasks"]]
    with registry.read() as session:
        base = registry.base(session)
        if base.sha256 != manifest["base"]["sha256"]:
            raise BundleError(f"{shown} is built on base {manifest['base']['sha256'][:12]}, this registry's base is "
                              f"{base.sha256[:12]}: import it into a registry with that base, or a new one (--home)")
        _refuse_clashes(session, names, shown)
    blobs = {}
    for entry in manifest["tasks"]:
        for key, kind in (("adapter", "adapter"), ("config", "adapter-config")):
            data = (root / entry[key]).read_bytes()
            if sha256_of(data) != entry[f"{key}_sha256"]:
                raise BundleError(f"{shown}: file {entry[key]} is not the artifact {entry[f'{key}_sha256'][:12]} named in {MANIFEST}: export the bundle again")
            blobs[entry[f"{key}_sha256"]] = (kind, data)
    for sha, (_, data) in blobs.items():
        registry.store.put(data)
        registry.store.get(sha)  # read back: refuses a corrupt write
    for attempt in range(20):
        try:
            with registry.write() as session:
                _refuse_clashes(session, names, shown)
                for sha, (kind, data) in blobs.items():
                    if session.get(Artifact, sha) is None:
                        session.add(Artifact(sha256=sha, kind=kind, size=len(data)))
                position = session.scalar(select(func.max(Task.position))) or 0
                ids = [_add_task(session, entry, base.id, position + i) for i, entry in enumerate(manifest["tasks"], start=1)]
            break
        except IntegrityError:  # another writer took a name or position meanwhile: look again
            time.sleep(0.05 * (attempt + 1))
    else:
        raise BundleError(f"{shown}: could not take positions for its tasks (the registry kept changing): run the import again")
    with registry.read() as session:
        return [task_row(session.get(Task, task_id), base.parameters) for task_id in ids]


def _refuse_clashes(session, names: list[str], shown) -> None:
    """TaskExists naming every bundle task whose name a registry task (not a failed one) holds."""
    taken = session.scalars(select(Task.name).where(Task.name.in_(names), Task.status != "failed")).all()
    if taken:
        clashes = ", ".join(repr(name) for name in names if name in taken)
        raise TaskExists(f"cannot import {shown}: the registry already has task(s) {clashes}: "
                         f"import into another registry (--home), or export the bundle without them (--tasks)")


def _add_task(session, entry: dict, base_id: int, position: int) -> int:
    """Insert one ready task (reusing the row of a failed task of the same name); returns its id."""
    fields = dict(
        base_id=base_id, status="ready", position=position, data_source=entry["data_source"], task_type=entry["task_type"],
        metric=entry["metric"], text_columns=entry["text_columns"], label_column=entry["label_column"],
        labels=entry["labels"], adapter_size=entry["adapter_size"], adapter_sha256=entry["adapter_sha256"],
        config_sha256=entry["config_sha256"], score=entry["score"], trainable_params=entry["trainable_params"],
        ready_at=utcnow(),
    )
    task = session.scalars(select(Task).where(Task.name == entry["name"])).first()
    if task is None:
        task = Task(name=entry["name"], **fields)
        session.add(task)
    else:
        for key, value in fields.items():
            setattr(task, key, value)
    session.flush()
    return task.id
