"""Serving a bundle: verified, then loaded as a Predictor (as `serving.live` serves a registry's tasks)."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence

import torch
from safetensors.torch import load as load_tensors

from registry.bundle.archive import opened
from registry.bundle.manifest import BASE_DIR
from registry.bundle.verify import verify
from registry.errors import BundleError, RegistryError, UnknownTask, printable
from registry.formats import pick_device
from registry.serving.predictor import ABOUT_FIELDS, FrozenBase, Predictor, TaskSpec

DTYPES = {"float32": torch.float32, "float16": torch.float16}


def load(path: str | os.PathLike, tasks: Sequence[str] | None = None, *, device: str = "auto",
         dtype: str | None = None) -> Predictor:
    """Serve a bundle (a directory or .tar) after verifying every file; `tasks` picks some (default all).

    It computes in `dtype` (default: float32 on CPU, the bundle's dtype elsewhere).
    """
    with opened(path) as root:
        manifest = verify(root, path)
        entries = _pick(manifest["tasks"], tasks, f"bundle {path}")
        specs = [
            TaskSpec.from_config(entry["name"], json.loads((root / entry["config"]).read_bytes())) for entry in entries
        ]
        states = (load_tensors((root / entry["adapter"]).read_bytes()) for entry in entries)
        target = pick_device(device)
        if dtype is None:
            dtype = manifest["dtype"] if target.type == "cuda" else "float32"
        about = [{field: entry[field] for field in ABOUT_FIELDS} for entry in entries]
        try:
            return Predictor(FrozenBase(root / BASE_DIR, device=target, dtype=DTYPES[dtype]), specs, states, about)
        except RegistryError:
            raise
        except Exception as exc:  # transformers and tokenizers raise anything, even a bare Exception, on a bad file
            raise BundleError(f"{path}: {BASE_DIR}/ cannot be loaded by transformers ({type(exc).__name__}: "
                              f"{printable(str(exc))[:200]}): export the bundle again") from exc


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

