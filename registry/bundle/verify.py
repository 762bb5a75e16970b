"""`verify`: a bundle's every file checked against its manifest, and every task against its base, before use."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

from registry.bundle.manifest import (BASE_DIR, FLOAT_DTYPES, MANIFEST, MANIFEST_LIMIT, SAFETENSORS_DTYPES,
                                      parse_manifest, read_json)
from registry.errors import BundleError, printable
from registry.formats import TASK_CONFIG_FIELDS, adapter_problem, config_problem, file_digest, head_size, tensor_header
from registry.model import checkpoint


def verify(root: Path, shown: str | os.PathLike | None = None) -> dict:
    """The bundle's manifest, after checking every file and that every task fits its base; nothing is loaded or run.

    The manifest's fields are checked (parse_manifest); the bundle holds exactly the files it lists, each a
    regular file of its sha256 and size; base/'s config names a supported model type and no code to run
    (neither does its tokenizer config); every weight file holds tensors of the manifest's dtype; each task's
    config repeats its manifest entry and each adapter's tensors fit the base, its adapter size and labels.
    """
    shown = shown or root
    manifest = parse_manifest(_manifest_bytes(root, shown), shown)
    _check_files(root, manifest["files"], manifest["tasks"], shown)
    base_sha = manifest["base"]["sha256"]
    weights = manifest["files"][f"{BASE_DIR}/{checkpoint.WEIGHTS_FILE}"]["sha256"]
    if manifest["dtype"] == "float32" and weights != base_sha:
        raise BundleError(
            f"{shown}: {BASE_DIR}/{checkpoint.WEIGHTS_FILE} is not the base {base_sha[:12]} named in {MANIFEST}: "
            "export the bundle again"
        )
    base_config = _check_base(root, manifest, shown)
    for entry in manifest["tasks"]:
        _check_task(root, entry, base_sha, base_config, manifest["dtype"], shown)
    return manifest


def _manifest_bytes(root: Path, shown) -> bytes:
    """The manifest's bytes, refused when missing, unreadable or larger than any export writes."""
    try:
        data = (root / MANIFEST).read_bytes() if (root / MANIFEST).stat().st_size <= MANIFEST_LIMIT else None
    except FileNotFoundError:
        raise BundleError(
            f"{shown} is not a bundle (no {MANIFEST}): pass a directory or .tar written by `registry export`"
        ) from None
    except OSError as exc:
        raise BundleError(f"{shown}: {MANIFEST} cannot be read ({exc.strerror}): export the bundle again") from None
    if data is None:
        raise BundleError(f"{shown}: {MANIFEST} is over {MANIFEST_LIMIT >> 20} MiB, which no export writes: "
                          "export the bundle again")
    return data


def _check_files(root: Path, files: dict, tasks: list, shown) -> None:
    """The bundle holds exactly the files its manifest lists (and every one a task needs), each of its sha256, size."""
    referenced = [f"{BASE_DIR}/{checkpoint.WEIGHTS_FILE}", f"{BASE_DIR}/{checkpoint.CONFIG_FILE}"]
    referenced += [entry[key] for entry in tasks for key in ("adapter", "config")]
    for name in referenced:
        if name not in files:
            raise BundleError(f"{shown}: {MANIFEST} lists no file {name}: export the bundle again")
    present = {p.relative_to(root).as_posix() for p in root.rglob("*") if not p.is_dir() or p.is_symlink()}
    unlisted = sorted(present - set(files) - {MANIFEST})
    if unlisted:
        raise BundleError(f"{shown} holds {printable(unlisted[0])}, which {MANIFEST} does not list: "
                          "remove it, or export the bundle again")
    for name, expected in files.items():
        path = root / name
        if path.is_symlink() or (path.exists() and not path.is_file()):
            raise BundleError(f"{shown}: {name} is not a regular file: export the bundle again")
        if not path.is_file():
            raise BundleError(f"{shown}: file {name} is missing: copy the whole bundle, or export it again")
        if file_digest(path) != (expected["sha256"], expected["size"]):
            raise BundleError(
                f"{shown}: file {name} does not match its sha256 in {MANIFEST} (corrupt or tampered): export the "
                "bundle again"
            )


def _check_task(root: Path, entry: dict, base_sha: str, base_config: dict, dtype: str, shown) -> None:
    """A task's config repeats its manifest entry and names this base; its adapter's tensors fit the base."""
    trained_on = read_json(root, entry["config"], shown).get("base_sha256")
    if trained_on != base_sha:
        raise BundleError(f"{shown}: task {entry['name']!r} was trained on base {printable(str(trained_on)[:12])}, "
                          f"not this bundle's base {base_sha[:12]}: export it from a registry whose base is "
                          f"{base_sha[:12]}")
    facts = {key: entry[key] for key in (*TASK_CONFIG_FIELDS, "max_length")}
    problem = config_problem((root / entry["config"]).read_bytes(), base_sha, facts)
    if problem:
        raise BundleError(f"{shown}: {entry['config']} {printable(problem)}: export the bundle again")
    positions = checkpoint.max_positions(base_config)
    if entry["max_length"] > positions:
        raise BundleError(f"{shown}: task {entry['name']!r} reads {entry['max_length']} tokens, "
                          f"more than the base's {positions} positions: export the bundle again")
    problem = adapter_problem((root / entry["adapter"]).read_bytes(), base_config, entry["adapter_size"],
                              head_size(entry["task_type"], entry["labels"]), SAFETENSORS_DTYPES[dtype])
    if problem:
        raise BundleError(f"{shown}: {entry['adapter']} {printable(problem)}: export the bundle again")


def _check_base(root: Path, manifest: dict, shown) -> dict:
    """base/'s config (returned), checked to be a supported model that runs no code, and its other files to parse."""
    config = read_json(root, f"{BASE_DIR}/{checkpoint.CONFIG_FILE}", shown)
    checkpoint.check_config(config, f"{shown}: {BASE_DIR}")
    for name in manifest["files"]:
        path = PurePosixPath(name)
        if path.parts[0] == BASE_DIR and path.suffix == ".json":
            checkpoint.check_no_code(read_json(root, name, shown), f"{shown}: {name}")
        elif path.parts[0] == BASE_DIR and path.suffix == ".txt":
            try:
                (root / name).read_bytes().decode("utf-8")
            except UnicodeDecodeError:
                raise BundleError(f"{shown}: {name} is not UTF-8 text: export the bundle again") from None
    weights = f"{BASE_DIR}/{checkpoint.WEIGHTS_FILE}"
    try:
        header = tensor_header((root / weights).read_bytes())
    except ValueError as exc:
        raise BundleError(f"{shown}: {weights} is not a safetensors file ({exc}): export the bundle again") from None
    dtypes = {entry["dtype"] for entry in header.values()}
    wrong = sorted(dtypes & FLOAT_DTYPES - {SAFETENSORS_DTYPES[manifest["dtype"]]})
    if wrong:
        raise BundleError(f"{shown}: {weights} holds {', '.join(wrong)} tensors, but {MANIFEST} says "
                          f"{manifest['dtype']}: export the bundle again")
    return config

