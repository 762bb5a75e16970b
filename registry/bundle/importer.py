"""`import_bundle`: a bundle's tasks added to a registry (or a new registry started from its base), all or nothing."""

from __future__ import annotations

import os
import tempfile
from contextlib import nullcontext
from pathlib import Path

from sqlalchemy import Row

from registry.bundle.archive import opened
from registry.bundle.manifest import BASE_DIR, MANIFEST, read_json
from registry.bundle.verify import verify
from registry.formats import sha256_of
from registry.catalog import lifecycle
from registry.catalog.queries import taken_names, task_row
from registry.errors import ArtifactError, BundleError, NonFiniteOutput, NotInitialised, TaskExists
from registry.model import checkpoint, probe
from registry.storage import ownership
from registry.storage.config import Settings
from registry.storage.core import Opened, open_registry
from registry.storage.creation import rolled_back
from registry.storage.models import Task


def import_bundle(settings: Settings, path: str | os.PathLike) -> dict:
    """Add a bundle's tasks after the registry's own, in bundle order; start an empty registry from its base.

    Everything is checked before anything is written: the bundle (verify), the base itself when it starts a
    registry, each adapter loaded and run on the base (the registry's stored base when it has one, never the
    bundle's claim). The files go to the store first, then one transaction adds
    every task, so a failure leaves the registry as it was; a registry this import started is removed again.
    """
    with opened(path) as root:
        manifest = verify(root, path)
        if manifest["dtype"] != "float32":
            raise BundleError(f"{path} holds {manifest['dtype']} weights, which can be served but not imported "
                              f"(the registry keeps the exact float32 artifacts): export it again with --dtype float32")
        registry = _existing(settings)
        initialised = registry is None
        try:
            if initialised:
                loaded = _load_base(root, manifest, path)
                _probe_tasks(root / BASE_DIR, root, manifest, path, "the bundle's")
            else:
                _check_on_stored_base(registry, root, manifest, path)
            registry_id = ownership.new_registry_id()
            with rolled_back(settings, registry_id) if initialised else nullcontext():
                if initialised:
                    checkpoint.create(settings, manifest["base"]["source"], manifest["base"]["name"], loaded,
                                      registry_id)
                    registry = open_registry(settings)
                rows = _add_tasks(registry, root, manifest, path)
        finally:
            if registry is not None:
                registry.close()
    return {"initialised": initialised, "base_sha256": manifest["base"]["sha256"], "tasks": rows}


def _existing(settings: Settings) -> Opened | None:
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


def _check_on_stored_base(registry: Opened, root: Path, manifest: dict, shown) -> None:
    """Check a bundle's tasks against the registry's stored base, never the bundle's own claim: the base's weights
    and config must be the registry's, and each task must load and give finite outputs on the stored base."""
    with registry.read() as session:
        base = registry.base(session)
    _refuse_other_base(base, manifest, shown)
    config_sha = sha256_of((root / BASE_DIR / checkpoint.CONFIG_FILE).read_bytes())
    if config_sha != base.config_sha256:
        raise BundleError(f"{shown}: {BASE_DIR}/{checkpoint.CONFIG_FILE} ({config_sha[:12]}) is not this registry's "
                          f"base config ({base.config_sha256[:12]}): export the bundle again from a registry of this "
                          "base, or import it into a new registry (--home)")
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint.write_base_files(registry.store, base, Path(tmp))
        _probe_tasks(Path(tmp), root, manifest, shown, "this registry's")


def _probe_tasks(base_dir: Path, root: Path, manifest: dict, shown, whose: str) -> None:
    """Each task's adapters load on the base at `base_dir` and give finite outputs on the probe sentences."""
    import torch
    from safetensors.torch import load as load_tensors

    encoder, tokenizer = probe.load_base(base_dir, f"{shown}: {whose} base")
    for entry in manifest["tasks"]:
        config = read_json(root, entry["config"], shown)
        tensors = load_tensors((root / entry["adapter"]).read_bytes())
        broken = next((key for key, value in sorted(tensors.items()) if not torch.isfinite(value).all()), None)
        if broken:
            raise BundleError(f"{shown}: {entry['adapter']} holds NaN or infinite values in {broken!r}: "
                              "export the bundle again")
        try:
            probe.check_adapters(encoder, tokenizer, entry["name"], config, tensors)
        except ArtifactError as exc:
            raise BundleError(f"{shown}: {entry['adapter']} does not load on {whose} base ({exc})") from None
        except NonFiniteOutput:
            raise BundleError(f"{shown}: task {entry['name']!r} gives NaN or infinite outputs on {whose} base (its "
                              f"adapter {entry['adapter']} is broken): export the bundle again") from None


def _refuse_other_base(base: Row, manifest: dict, shown) -> None:
    """A bundle built on another base than the registry's is refused."""
    if base.sha256 != manifest["base"]["sha256"]:
        raise BundleError(f"{shown} is built on base {manifest['base']['sha256'][:12]}, this registry's base is "
                          f"{base.sha256[:12]}: import it into a registry with that base, or a new one (--home)")


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


def _add_tasks(registry: Opened, root: Path, manifest: dict, shown) -> list[dict]:
    """Store every task's files, then add all tasks in one transaction."""
    names = [entry["name"] for entry in manifest["tasks"]]
    with registry.read() as session:
        base = registry.base(session)
        _refuse_other_base(base, manifest, shown)
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
    for _, data in blobs.values():
        registry.store.put(data)  # read back once: refuses a corrupt write
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

