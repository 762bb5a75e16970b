"""`import_bundle`: a bundle's tasks added to a registry (or a new registry started from its base), all or nothing."""

from __future__ import annotations

import os
from contextlib import nullcontext
from pathlib import Path


from registry.bundle.archive import opened
from registry.bundle.manifest import BASE_DIR, MANIFEST
from registry.bundle.verify import verify
from registry.catalog import lifecycle
from registry.catalog.queries import taken_names, task_row
from registry.errors import ArtifactError, BundleError, NotInitialised, TaskExists
from registry.formats import head_size
from registry.model import checkpoint
from registry.model.adapters import AdapterModel
from registry.storage.config import Settings
from registry.storage.core import Registry, open_registry
from registry.storage.creation import rolled_back
from registry.storage.models import Task
from registry.storage.store import sha256_of


def import_bundle(settings: Settings, path: str | os.PathLike) -> dict:
    """Add a bundle's tasks after the registry's own, in bundle order; start an empty registry from its base.

    Everything is checked before anything is written: the bundle (verify), each adapter loaded on the base,
    the base itself when it starts a registry. The files go to the store first, then one transaction adds
    every task, so a failure leaves the registry as it was; a registry this import started is removed again.
    """
    with opened(path) as root:
        manifest = verify(root, path)
        if manifest["dtype"] != "float32":
            raise BundleError(f"{path} holds {manifest['dtype']} weights, which can be served but not imported "
                              f"(the registry keeps the exact float32 artifacts): export it again with --dtype float32")
        _load_adapters(root, manifest, path)
        registry = _existing(settings)
        initialised = registry is None
        if initialised:
            loaded = _load_base(root, manifest, path)
        try:
            with rolled_back(settings) if initialised else nullcontext():
                if initialised:
                    checkpoint.create(settings, manifest["base"]["source"], manifest["base"]["name"], loaded)
                    registry = open_registry(settings)
                rows = _add_tasks(registry, root, manifest, path)
        finally:
            if registry is not None:
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


def _load_adapters(root: Path, manifest: dict, shown) -> None:
    """Load every task's adapter into a model of the bundle's base (its shapes only: on the meta device)."""
    import torch
    from safetensors.torch import load as load_tensors
    from transformers import AutoConfig, AutoModel

    config = AutoConfig.from_pretrained(root / BASE_DIR, trust_remote_code=False)
    for entry in manifest["tasks"]:
        with torch.device("meta"):
            model = AdapterModel(AutoModel.from_config(config), entry["adapter_size"],
                                 [head_size(entry["task_type"], entry["labels"])])
        tensors = load_tensors((root / entry["adapter"]).read_bytes())
        try:
            model.load_task_state_dict(tensors)
        except ArtifactError as exc:
            raise BundleError(f"{shown}: {entry['adapter']} does not load on the bundle's base ({exc})") from None
        broken = next((key for key, value in sorted(tensors.items()) if not torch.isfinite(value).all()), None)
        if broken:
            raise BundleError(f"{shown}: {entry['adapter']} holds NaN or infinite values in {broken!r}: "
                              "export the bundle again")


def _load_base(root: Path, manifest: dict, shown) -> checkpoint.Checkpoint:
    """The bundle's base as `init` loads a checkpoint, checked to re-serialise to the manifest's sha256."""
    base = manifest["base"]
    loaded = checkpoint.load_checkpoint(str(root / BASE_DIR))
    if sha256_of(loaded.weights) != base["sha256"]:
        raise BundleError(
            f"{shown}: the base re-serialises to {sha256_of(loaded.weights)[:12]}, not {base['sha256'][:12]} "
            f"as {MANIFEST} says: import it into a registry initialised with that base (`registry init`)"
        )
    return loaded


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
                raise BundleError(
                    f"{shown}: file {entry[key]} is not the artifact {entry[f'{key}_sha256'][:12]} named in "
                    f"{MANIFEST}: export the bundle again"
                )
            blobs[entry[f"{key}_sha256"]] = (kind, data)
    for sha, (_, data) in blobs.items():
        registry.store.put(data)
        registry.store.get(sha)  # read back: refuses a corrupt write
    publications = [lifecycle.Publication(release=_release(entry), name=entry["name"], description=_description(entry),
                                          why=f"imported from {shown}" + (f" (its version {entry['version']} there)"
                                                                          if "version" in entry else ""))
                    for entry in manifest["tasks"]]
    artifacts = [(sha, kind, len(data)) for sha, (kind, data) in blobs.items()]
    published = lifecycle.publish(
        registry, publications, artifacts, check=lambda session: _refuse_clashes(session, names, shown)
    )
    with registry.read() as session:
        return [task_row(session.get(Task, p.task_id), base.parameters) for p in published]


def _refuse_clashes(session, names: list[str], shown) -> None:
    """TaskExists naming every bundle task whose name a registry task (not a failed one) holds."""
    taken = taken_names(session, names)
    if taken:
        clashes = ", ".join(repr(name) for name in names if name in taken)
        raise TaskExists(f"cannot import {shown}: the registry already has task(s) {clashes}: "
                         f"import into another registry (--home), or export the bundle without them (--tasks)")


def _description(entry: dict) -> lifecycle.Description:
    """What a bundle's task is, from its manifest entry."""
    return lifecycle.Description(
        data_source=entry["data_source"],
        task_type=entry["task_type"],
        metric=entry["metric"],
        text_columns=entry["text_columns"],
        label_column=entry["label_column"],
        labels=entry["labels"],
    )


def _release(entry: dict) -> lifecycle.Release:
    """A bundle's task as the first version of the task it becomes here."""
    return lifecycle.Release(adapter_sha256=entry["adapter_sha256"], config_sha256=entry["config_sha256"],
                             adapter_size=entry["adapter_size"], score=entry["score"],
                             trainable_params=entry["trainable_params"], data_source=entry["data_source"])

