"""Bundles: a registry's ready tasks with the base once, served and imported without the database.

A bundle is a directory (or the same tree in one .tar):

    manifest.json               format, dtype, the base's sha256, each task's metadata (its version included), and the
                                sha256 + size of every other file
    base/                       model.safetensors, config.json, tokenizer files: `AutoModel.from_pretrained` reads it
    adapters/NAME.safetensors   the task's trainable tensors (the stored artifact's bytes, in float32)
    adapters/NAME.json          the task's config artifact, byte for byte

`export` writes one from a registry; `load` serves one as a `registry.predictor.Predictor` (as
`registry.live` serves a registry's tasks); `import_bundle` adds a bundle's tasks to a registry.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tarfile
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path, PurePosixPath

from safetensors.torch import load as load_tensors, save as save_tensors
import torch
from sqlalchemy import Row, select

from registry import checkpoint, lifecycle, schema
from registry.catalog import find_task, task_row
from registry.config import Settings
from registry.core import Registry, open_registry
from registry.errors import BundleError, NotInitialised, TaskExists, UnknownTask
from registry.models import Task
from registry.predictor import ABOUT_FIELDS, FrozenBase, Predictor, TaskSpec
from registry.schema import utcnow
from registry.store import sha256_of, write_atomic
from registry.train import pick_device

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
# serving a bundle, or a registry's tasks


def load(path: str | os.PathLike, tasks: Sequence[str] | None = None, *, device: str = "auto",
         dtype: str | None = None) -> Predictor:
    """Serve a bundle (a directory or .tar) after verifying every file; `tasks` picks some (default all).

    It computes in `dtype` (default: float32 on CPU, the bundle's dtype elsewhere).
    """
    with opened(path) as root:
        manifest = verify(root, path)
        entries = _pick(manifest["tasks"], tasks, f"bundle {path}")
        specs = [TaskSpec.from_config(entry["name"], json.loads((root / entry["config"]).read_bytes())) for entry in entries]
        states = (load_tensors((root / entry["adapter"]).read_bytes()) for entry in entries)
        target = pick_device(device)
        if dtype is None:
            dtype = manifest["dtype"] if target.type == "cuda" else "float32"
        about = [{field: entry[field] for field in ABOUT_FIELDS} for entry in entries]
        return Predictor(FrozenBase(root / BASE_DIR, device=target, dtype=DTYPES[dtype]), specs, states, about)


def ready_tasks(session, names: Sequence[str] | None) -> list[Row]:
    """Rows of ready, unretired tasks by position, each with its current version's adapter: all, or those named
    (UnknownTask lists the known ones)."""
    if names is not None and not names:
        raise UnknownTask("no task named: pass all, or NAME,NAME…")
    if names is None:
        rows = served_rows(session)
        if not rows:
            raise UnknownTask("the registry has no ready tasks: add one with `registry add-task NAME --data PATH`")
        return list(rows)
    picked = {name: find_task(session, name, ready=True) for name in names}
    return sorted(picked.values(), key=lambda task: task.position)


def served_rows(session, names: Sequence[str] | None = None) -> list[Row]:
    """Rows of the tasks a registry serves now, by position, each with its current version's adapter: every ready,
    unretired task, or those of `names` that are.

    The one rule of what is served: `ready_tasks` and a server following the registry (registry.live) both use it.
    """
    tasks = schema.tasks
    query = select(tasks).where(tasks.c.status == "ready", tasks.c.retired_at.is_(None)).order_by(tasks.c.position)
    if names is not None:
        query = query.where(tasks.c.name.in_(names))
    return list(session.execute(query).all())


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
            "name": row.name, "version": row.current_version, "position": row.position, "task_type": row.task_type, "labels": row.labels,
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
    publications = [lifecycle.Publication(release=_release(entry), name=entry["name"], description=_description(entry),
                                          why=f"imported from {shown}" + (f" (its version {entry['version']} there)"
                                                                          if "version" in entry else ""))
                    for entry in manifest["tasks"]]
    artifacts = [(sha, kind, len(data)) for sha, (kind, data) in blobs.items()]
    published = lifecycle.publish(registry, publications, artifacts, check=lambda session: _refuse_clashes(session, names, shown))
    with registry.read() as session:
        return [task_row(session.get(Task, p.task_id), base.parameters) for p in published]


def _refuse_clashes(session, names: list[str], shown) -> None:
    """TaskExists naming every bundle task whose name a registry task (not a failed one) holds."""
    taken = session.scalars(select(Task.name).where(Task.name.in_(names), Task.status != "failed")).all()
    if taken:
        clashes = ", ".join(repr(name) for name in names if name in taken)
        raise TaskExists(f"cannot import {shown}: the registry already has task(s) {clashes}: "
                         f"import into another registry (--home), or export the bundle without them (--tasks)")


def _description(entry: dict) -> lifecycle.Description:
    """What a bundle's task is, from its manifest entry."""
    return lifecycle.Description(data_source=entry["data_source"], task_type=entry["task_type"], metric=entry["metric"],
                                 text_columns=entry["text_columns"], label_column=entry["label_column"], labels=entry["labels"])


def _release(entry: dict) -> lifecycle.Release:
    """A bundle's task as the first version of the task it becomes here."""
    return lifecycle.Release(adapter_sha256=entry["adapter_sha256"], config_sha256=entry["config_sha256"],
                             adapter_size=entry["adapter_size"], score=entry["score"],
                             trainable_params=entry["trainable_params"], data_source=entry["data_source"])
