"""The facts every room shares, in one low place: the adapter config format (written, read and checked here),
safetensors header checks, the task-name rule, model-family facts, the one device picker, and the sha256 of bytes
and files (what the store names artifacts by, and bundles, the cache and `verify` check).

Imports nothing of ours but registry.errors, and neither torch nor transformers at import time (the device
picker imports torch when called), so training, verify, bundles and serving can all stand on it.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import struct
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, BinaryIO

from registry.errors import InvalidName, RegistryError

if TYPE_CHECKING:
    import torch

# --------------------------------------------------------------------------------------------
# Content digests

CHUNK = 1 << 20  # bytes hashed at a time from a file


def sha256_of(data: bytes) -> str:
    """The hex sha256 of `data`."""
    return hashlib.sha256(data).hexdigest()


def digest(handle: BinaryIO) -> tuple[str, int]:
    """sha256 and length of everything left in a binary file object, read in chunks."""
    hashed, length = hashlib.sha256(), 0
    while chunk := handle.read(CHUNK):
        hashed.update(chunk)
        length += len(chunk)
    return hashed.hexdigest(), length


def file_digest(path: str | os.PathLike) -> tuple[str, int]:
    """sha256 and size of a local file, read in chunks."""
    with open(path, "rb") as handle:
        return digest(handle)


# --------------------------------------------------------------------------------------------
# Task names

NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_.-]*")


def validate_name(name: str) -> None:
    """Task names are `[a-z0-9][a-z0-9_.-]*`, at most 100 characters, and never `..`."""
    if not NAME_PATTERN.fullmatch(name) or ".." in name or len(name) > 100:
        raise InvalidName(f"invalid task name {name!r}: use lowercase letters, digits, '_', '.', '-' "
                          "(starting with a letter or digit)")


# --------------------------------------------------------------------------------------------
# Model-family facts (BERT's names first, then DistilBERT's)

# The dropout probabilities of the model families we support.
DROPOUT_KEYS = ("hidden_dropout_prob", "attention_probs_dropout_prob", "dropout", "attention_dropout")


def hidden_size(config: dict) -> int | None:
    """A base's hidden size, from its config.json."""
    return config.get("hidden_size") or config.get("dim")


def layer_count(config: dict) -> int | None:
    """A base's number of transformer layers, from its config.json."""
    return config.get("num_hidden_layers") or config.get("n_layers")


def head_size(task_type: str, labels: Sequence[str] | None) -> int:
    """Outputs of a task's head: one per class, or one for regression."""
    return 1 if task_type == "regression" else len(labels or ())


# --------------------------------------------------------------------------------------------
# The adapter config: one JSON file beside each task's adapter weights

ADAPTER_CONFIG_FORMAT = "adapter-registry/adapter@1"
# The fields of a task row its config artifact must repeat.
TASK_CONFIG_FIELDS = ("task_type", "labels", "text_columns", "label_column", "metric", "adapter_size")


@dataclass(frozen=True)
class AdapterConfig:
    """A task's adapter config, as stored beside its weights (format ADAPTER_CONFIG_FORMAT)."""

    model_type: str
    base_sha256: str
    adapter_size: int
    max_length: int
    seed: int
    task_type: str
    labels: list[str] | None
    text_columns: list[str]
    label_column: str
    metric: str

    def to_json(self) -> bytes:
        """The config's bytes: sorted keys, two-space indent (so one config always hashes the same)."""
        return json.dumps({"format": ADAPTER_CONFIG_FORMAT, **asdict(self)}, indent=2, sort_keys=True).encode()


def config_problem(raw: bytes, base_sha: str, task: dict[str, Any]) -> str | None:
    """What is wrong with a task's config artifact, or None: it parses, names `base_sha` and repeats `task`'s fields."""
    try:
        config = json.loads(raw)
    except (ValueError, RecursionError) as exc:
        return f"is not JSON ({type(exc).__name__})"
    if not isinstance(config, dict) or config.get("format") != ADAPTER_CONFIG_FORMAT:
        return f"is not an {ADAPTER_CONFIG_FORMAT} config"
    if config.get("base_sha256") != base_sha:
        return f"names base {str(config.get('base_sha256'))[:12]}, not this registry's base {base_sha[:12]}"
    for key, value in task.items():
        if config.get(key) != value:
            return f"says {key} is {config.get(key)!r}, but the task's is {value!r}"
    return None


# --------------------------------------------------------------------------------------------
# safetensors headers, read without torch

def tensor_header(raw: bytes) -> dict[str, dict]:
    """The tensors a safetensors file declares (name: dtype, shape, data_offsets), read without loading them.

    ValueError says what is wrong when `raw` is not a well-formed safetensors file.
    """
    if len(raw) < 8:
        raise ValueError("shorter than a safetensors header")
    (length,) = struct.unpack("<Q", raw[:8])
    if 8 + length > len(raw):
        raise ValueError("its header runs past the end of the file")
    try:
        header = json.loads(raw[8:8 + length])
    except (ValueError, RecursionError):
        raise ValueError("its header is not JSON") from None
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    header.pop("__metadata__", None)
    body = len(raw) - 8 - length
    for name, entry in header.items():
        if not (isinstance(entry, dict) and isinstance(entry.get("dtype"), str) and isinstance(entry.get("shape"), list)
                and all(isinstance(n, int) and n >= 0 for n in entry["shape"])
                and isinstance(entry.get("data_offsets"), list) and len(entry["data_offsets"]) == 2
                and all(isinstance(n, int) for n in entry["data_offsets"])
                and 0 <= entry["data_offsets"][0] <= entry["data_offsets"][1] <= body):
            raise ValueError(f"tensor {name!r} is declared wrongly in its header")
    return header


def adapter_problem(raw: bytes, base_config: dict, adapter_size: int, head_size: int, dtype: str = "F32") -> str | None:
    """What keeps a task's adapter file from loading on its base, or None.

    Checked from the safetensors header alone (no torch): tensors of `dtype` (float32 in a registry), each of
    the shape its kind has on a base of this hidden size with this bottleneck and head, and as many as the
    base's layers need (per layer two adapters of four tensors and two layer norms of two, plus the head's
    weight and bias).
    """
    try:
        header = tensor_header(raw)
    except ValueError as exc:
        return f"is not a safetensors file ({exc})"
    hidden, layers = hidden_size(base_config), layer_count(base_config)
    shapes = {".adapter.down_weight": [hidden, adapter_size], ".adapter.down_bias": [adapter_size],
              ".adapter.up_weight": [adapter_size, hidden], ".adapter.up_bias": [hidden]}
    counts = {"adapter": 0, "norm": 0, "head": 0}
    for name, entry in sorted(header.items()):
        if entry["dtype"] != dtype:
            return f"holds {entry['dtype']} tensor {name!r}, where {dtype} is expected"
        suffix = next((s for s in shapes if name.endswith(s)), None)
        if suffix:
            kind, want = "adapter", shapes[suffix]
        elif name in ("head.weight", "head.bias"):
            kind, want = "head", [head_size, hidden] if name == "head.weight" else [head_size]
        elif name.endswith((".weight", ".bias")):
            kind, want = "norm", [hidden]
        else:
            return f"holds tensor {name!r}, which no adapter has"
        if entry["shape"] != want:
            return f"holds tensor {name!r} of shape {entry['shape']}, where this base and task need {want}"
        counts[kind] += 1
    want = {"adapter": 8 * layers, "norm": 4 * layers, "head": 2} if isinstance(layers, int) else counts
    if counts != want:
        return f"holds {counts} tensors by kind, where a base of {layers} layers needs {want}"
    return None


# --------------------------------------------------------------------------------------------
# The device

def pick_device(requested: str | torch.device = "auto") -> torch.device:
    """The torch device for `--device`: `auto` is CUDA when present, else CPU; `cuda` is refused where there is none.

    The one device picker: training, evaluation and serving all call it.
    """
    import torch

    if isinstance(requested, torch.device):
        return requested
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RegistryError("--device cuda: no CUDA device is available here; use --device auto or cpu")
    return torch.device(requested)
