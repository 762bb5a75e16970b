"""`export`: a registry's ready tasks written as a bundle (a directory or one .tar), beside `output` and then
renamed into place, never over anything but a bundle."""

from __future__ import annotations

import json
import os
import shutil
import tarfile
import uuid
from collections.abc import Sequence
from pathlib import Path

from sqlalchemy import Row

from registry.bundle.archive import _listed_members
from registry.bundle.manifest import ADAPTER_DIR, BASE_DIR, DTYPES, FORMAT, MANIFEST, MANIFEST_LIMIT, parse_manifest
from registry.catalog.queries import ready_tasks
from registry.errors import ArtifactError, BundleError
from registry.formats import adapter_problem, file_digest, head_size
from registry.model import checkpoint
from registry.storage.core import Opened
from registry.storage.schema import utcnow
from registry.storage.store import write_atomic


def export(registry: Opened, output: str | os.PathLike, tasks: Sequence[str] | None = None, *,
           dtype: str = "float32", archive: bool = False, force: bool = False) -> dict:
    """Write the base once and each task's adapter + config into a bundle (a directory, or one .tar).

    It is written beside `output` under a temporary name, then renamed into place. `output` may not be,
    hold or lie inside the registry; an existing one is replaced only with `force`, and only when it is
    a bundle (or an empty directory).
    """
    if dtype not in DTYPES:
        raise BundleError(f"unknown dtype {dtype!r}: use {' or '.join(DTYPES)}")
    output = Path(output).absolute()
    if archive and output.suffix != ".tar":
        output = output.with_name(output.name + ".tar")
    _refuse_registry_paths(registry, output)
    if output.exists() or output.is_symlink():
        _check_replaceable(output, force)
    with registry.read() as session:
        base = registry.base(session)
        rows = ready_tasks(session, tasks)
    staging = output.parent / f".{output.name}.tmp-{uuid.uuid4().hex[:12]}"
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
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
    except OSError as exc:
        raise BundleError(f"cannot write the bundle at {output}: {exc.strerror or exc} "
                          f"({exc.filename or output.parent}): choose a writable --output with free space") from exc
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    sizes = manifest["files"]
    adapter_bytes = sum(sizes[entry["adapter"]]["size"] for entry in manifest["tasks"])
    return {
        "output": str(output),
        "archive": archive,
        "dtype": dtype,
        "tasks": [entry["name"] for entry in manifest["tasks"]],
        "files": len(sizes) + 1,
        "bytes": _total_bytes(output),
        "base_bytes": sizes[f"{BASE_DIR}/{checkpoint.WEIGHTS_FILE}"]["size"],
        "adapter_bytes": adapter_bytes,
    }


def _write_tree(registry: Opened, base: Row, rows: list[Row], root: Path, dtype: str) -> dict:
    """The bundle's files under `root`, the manifest last."""
    checkpoint.write_base_files(registry.store, base, root / BASE_DIR)
    if dtype != "float32":
        weights = root / BASE_DIR / checkpoint.WEIGHTS_FILE
        write_atomic(weights, _cast(weights.read_bytes(), dtype))
        config = json.loads((root / BASE_DIR / checkpoint.CONFIG_FILE).read_bytes())
        config["dtype"] = dtype
        write_atomic(
            root / BASE_DIR / checkpoint.CONFIG_FILE, (json.dumps(config, indent=2, sort_keys=True) + "\n").encode()
        )
    entries = []
    for row in rows:
        adapter, config = f"{ADAPTER_DIR}/{row.name}.safetensors", f"{ADAPTER_DIR}/{row.name}.json"
        weights, config_bytes = _task_files(registry, base, row)
        write_atomic(root / adapter, weights if dtype == "float32" else _cast(weights, dtype))
        write_atomic(root / config, config_bytes)
        task_config = json.loads(config_bytes)
        entries.append(
            {
                "name": row.name,
                "version": row.current_version,
                "position": row.position,
                "task_type": row.task_type,
                "labels": row.labels,
                "text_columns": row.text_columns,
                "label_column": row.label_column,
                "metric": row.metric,
                "score": row.score,
                "adapter_size": row.adapter_size,
                "max_length": task_config["max_length"],
                "trainable_params": row.trainable_params,
                "data_source": row.data_source,
                "adapter_sha256": row.adapter_sha256,
                "config_sha256": row.config_sha256,
                "adapter": adapter,
                "config": config,
            }
        )
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


def _task_files(registry: Opened, base: Row, row: Row) -> tuple[bytes, bytes]:
    """A task's adapter and config from the store, refused (naming the task) when they cannot load on the base:
    export never writes a bundle that its own import or `predict --bundle` refuses."""
    try:
        weights, config_bytes = registry.store.get(row.adapter_sha256), registry.store.get(row.config_sha256)
    except ArtifactError as exc:
        problem = str(exc).split(": run `registry verify`")[0]
    else:
        problem = adapter_problem(weights, base.config, row.adapter_size, head_size(row.task_type, row.labels))
        problem = problem and f"its adapter {problem}"
    if problem:
        raise BundleError(f"cannot export task {row.name!r}: {problem}: run `registry verify`; export the other "
                          "tasks with --tasks")
    return weights, config_bytes


def _cast(weights: bytes, dtype: str) -> bytes:
    """safetensors bytes with every float32 tensor cast to `dtype`."""
    import torch
    from safetensors.torch import load as load_tensors, save as save_tensors

    tensors = load_tensors(weights)
    cast = {k: v.to(getattr(torch, dtype)) if v.dtype == torch.float32 else v for k, v in sorted(tensors.items())}
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
    """Rename `source` to `output`; an existing `output` (only with `force`) is set aside first and removed only
    after."""
    aside = None
    if output.exists() or output.is_symlink():
        _check_replaceable(output, force)  # again: it may have appeared, or changed, while the bundle was written
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


def _refuse_registry_paths(registry: Opened, output: Path) -> None:
    """Refuse an --output that is, holds or lies inside the registry's home, store or database (symlinks resolved)."""
    from registry.storage.db import sqlite_path

    places = {"registry home": registry.settings.home, "database": sqlite_path(registry.settings.db_url)}
    if registry.store.local:
        places["artifact store"] = registry.store.root
    target = output.resolve()
    resolved = {what: Path(place).resolve() for what, place in places.items() if place is not None}
    for relation, meets in (("is", lambda place: target == place), ("holds", lambda place: target in place.parents),
                            ("is inside", lambda place: place in target.parents)):
        for what, place in resolved.items():
            if meets(place):
                raise BundleError(f"--output {output} {relation} the {what} {place}: "
                                  "write the bundle outside the registry (another --output)")


def _check_replaceable(output: Path, force: bool) -> None:
    """Refuse to replace `output` unless `force` and it is a bundle (a manifest and its files) or an empty directory."""
    if not force:
        raise BundleError(f"{output} already exists: pass --force to replace it, or choose another --output")
    if not (output.is_dir() and not output.is_symlink() and not any(output.iterdir())) and not _is_bundle(output):
        raise BundleError(f"{output} is not a bundle (it holds files no bundle manifest lists): --force replaces only "
                          "a bundle written by `registry export`; choose another --output")


def _is_bundle(path: Path) -> bool:
    """Whether `path` is a bundle directory or .tar as export writes it: a manifest and only the files it lists."""
    try:
        if path.is_dir():
            if (path / MANIFEST).stat().st_size > MANIFEST_LIMIT:
                return False
            manifest = parse_manifest((path / MANIFEST).read_bytes(), path)
            present = {p.relative_to(path).as_posix() for p in path.rglob("*") if not p.is_dir() or p.is_symlink()}
            return present <= set(manifest["files"]) | {MANIFEST}
        if path.is_file() and tarfile.is_tarfile(path):
            with tarfile.open(path, mode="r:") as archive:
                _listed_members(archive, path)
            return True
    except (BundleError, OSError, tarfile.TarError):
        return False
    return False


def _total_bytes(path: Path) -> int:
    """Bytes of a file, or of every file under a directory."""
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())

