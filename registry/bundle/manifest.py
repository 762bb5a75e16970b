"""The bundle format: its layout, its manifest, and the manifest's checks (no torch, no database).

A bundle is a directory (or the same tree in one .tar):

    manifest.json               format, dtype, the base's sha256, each task's metadata (its version included), and the
                                sha256 + size of every other file
    base/                       model.safetensors, config.json, tokenizer files: `AutoModel.from_pretrained` reads it
    adapters/NAME.safetensors   the task's trainable tensors (the stored artifact's bytes, in float32)
    adapters/NAME.json          the task's config artifact, byte for byte

`bundle.export` writes one from a registry; `serving.loading.load` serves one as a Predictor; `bundle.importer`
adds a bundle's tasks to a registry; `bundle.archive` reads a .tar safely; `bundle.verify` checks every file.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path, PurePosixPath

from registry.errors import BundleError, RegistryError, printable
from registry.model.checkpoint import WEIGHTS_FILE
from registry.storage import fields

FORMAT = "adapter-registry/bundle@1"
MANIFEST = "manifest.json"
BASE_DIR = "base"
ADAPTER_DIR = "adapters"
DTYPES = ("float32", "float16")  # the weights' dtypes a bundle may hold (torch's dtypes: serving.loading, export)
# A float16 bundle served in float32 gives probabilities (and regression values) within this of float32's.
FLOAT16_TOLERANCE = 1e-2
MANIFEST_LIMIT = 16 << 20  # bytes: far above any manifest `export` writes
SHA256 = re.compile(r"[0-9a-f]{64}")
BASE_TEXT = {"model_type": 64}  # the base's text fields and their lengths in the database (storage.fields: others)
BASE_FILE_SUFFIXES = (".json", ".txt", ".model")  # base/ holds its weights, config and tokenizer files: nothing else
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}
SAFETENSORS_DTYPES = {"float32": "F32", "float16": "F16"}
TASK_FIELDS = (
    "name",
    "position",
    "task_type",
    "labels",
    "text_columns",
    "label_column",
    "metric",
    "score",
    "adapter_size",
    "max_length",
    "trainable_params",
    "data_source",
    "adapter_sha256",
    "config_sha256",
    "adapter",
    "config",
)



def parse_manifest(data: bytes, shown) -> dict:
    """The manifest in `data`, checked: its format, every field this code reads, each of the right type and value."""
    try:
        manifest = json.loads(data)
    except (ValueError, RecursionError) as exc:
        raise BundleError(f"{shown}: {MANIFEST} cannot be read ({type(exc).__name__}): "
                          "export the bundle again") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise BundleError(f"{shown}: bundle format {printable(repr(found))} is not {FORMAT!r}: "
                          "export it again with this version of adapter-registry")
    problem = _manifest_problem(manifest)
    if problem:
        raise BundleError(f"{shown}: {MANIFEST} is malformed ({printable(problem)}): export the bundle again")
    return manifest


def _manifest_problem(manifest: dict) -> str | None:
    """What is wrong with a manifest's fields, or None: add-task's checks of its own, and the layout export writes."""
    for key in ("dtype", "base", "tasks", "files"):
        if key not in manifest:
            return f"no {key!r}"
    if manifest["dtype"] not in DTYPES:
        return f"dtype {manifest['dtype']!r}"
    base, files, tasks = manifest["base"], manifest["files"], manifest["tasks"]
    if not isinstance(base, dict) or not _is_text(base.get("model_type"), BASE_TEXT["model_type"]):
        return "base needs a model_type as printable text"
    problem = fields.first_problem([(base.get("source"), "base source"), (base.get("name"), "base name")])
    if problem:
        return problem
    if not SHA256.fullmatch(str(base.get("sha256"))) or not _is_count(base.get("parameters")):
        return "base needs a sha256 and a parameter count"
    if not isinstance(files, dict) or any(not isinstance(v, dict) or set(v) != {"sha256", "size"}
                                          or not SHA256.fullmatch(str(v["sha256"])) or not _is_count(v["size"])
                                          for v in files.values()):
        return "files must map each path to its sha256 and size"
    for name in files:
        if not _may_hold(name):
            return f"it lists {name!r}, which a bundle never holds"
    if not isinstance(tasks, list) or not tasks:
        return "no tasks"
    for entry in tasks:
        problem = _task_problem(entry)
        if problem:
            return problem
    names = [entry["name"] for entry in tasks]
    if len(set(names)) != len(names):
        return "a task named twice"
    return None


def _task_problem(entry) -> str | None:
    """What is wrong with one task's manifest entry, or None."""
    from registry.data.splits import check_task_fields
    from registry.formats import validate_name

    if not isinstance(entry, dict):
        return "a task that is not an object"
    missing = [key for key in TASK_FIELDS if key not in entry]
    if missing:
        return f"task {entry.get('name')!r} has no {missing[0]!r}"
    name, labels, columns = entry["name"], entry["labels"], entry["text_columns"]
    if not isinstance(name, str):
        return "a task name that is not text"
    if not (isinstance(columns, list) and (labels is None or isinstance(labels, list))
            and all(_is_text(value, 16) for value in (entry["task_type"], entry["metric"]))):
        return f"task {name!r}: its columns, labels, type and metric must be printable text"
    problem = fields.task_problem(entry["data_source"], entry["label_column"], columns, labels)
    if problem:
        return f"task {name!r}: {problem}"
    try:
        validate_name(name)
        check_task_fields(columns, entry["label_column"], entry["task_type"], labels, entry["metric"])
    except RegistryError as exc:
        return f"task {name!r}: {exc}"
    if entry["adapter"] != f"{ADAPTER_DIR}/{name}.safetensors" or entry["config"] != f"{ADAPTER_DIR}/{name}.json":
        return f"task {name!r}: its files must be {ADAPTER_DIR}/{name}.safetensors and .json"
    if not all(_is_count(entry[key]) and entry[key] >= 1
               for key in ("position", "adapter_size", "max_length", "trainable_params")):
        return f"task {name!r}: position, adapter_size, max_length and trainable_params must be positive integers"
    score = entry["score"]
    if not (isinstance(score, (int, float)) and not isinstance(score, bool) and math.isfinite(score)):
        return f"task {name!r}: score must be a finite number"
    if "version" in entry and not (_is_count(entry["version"]) and entry["version"] >= 1):
        return f"task {name!r}: version must be a positive integer"
    if not all(SHA256.fullmatch(str(entry[key])) for key in ("adapter_sha256", "config_sha256")):
        return f"task {name!r}: adapter_sha256 and config_sha256 must be sha256 digests"
    return None


def _is_text(value, limit: int) -> bool:
    return isinstance(value, str) and len(value) <= limit and value.isprintable()


def _is_count(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _may_hold(name: str) -> bool:
    """Whether a bundle may hold a file at `name`: base/'s weights, config and tokenizer files, or adapters/' files."""
    path = PurePosixPath(name)
    if len(path.parts) != 2 or name != path.as_posix() or not path.name.isprintable():
        return False
    if path.parts[0] == BASE_DIR:
        return path.name == WEIGHTS_FILE or path.suffix in BASE_FILE_SUFFIXES
    return path.parts[0] == ADAPTER_DIR and path.suffix in (".safetensors", ".json")


def read_json(root: Path, name: str, shown) -> dict:
    """A JSON object file of the bundle; BundleError naming the file when it is anything else."""
    try:
        value = json.loads((root / name).read_bytes())
    except (OSError, ValueError, RecursionError) as exc:
        raise BundleError(f"{shown}: {name} is not JSON ({type(exc).__name__}): export the bundle again") from None
    if not isinstance(value, dict):
        raise BundleError(f"{shown}: {name} is not a JSON object: export the bundle again")
    return value

