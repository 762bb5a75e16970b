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

import json
import math
import os
import re
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

from registry import checkpoint, fields, lifecycle, ownership, probe, schema
from registry.catalog import find_task, task_row
from registry.config import Settings
from registry.core import Registry, open_registry
from registry.data import head_size
from registry.errors import (AlreadyInitialised, ArtifactError, BundleError, NonFiniteOutput, NotInitialised,
                             RegistryError, TaskExists, UnknownTask, printable)
from registry.models import Task
from registry.predictor import ABOUT_FIELDS, FrozenBase, Predictor, TaskSpec
from registry.schema import utcnow
from registry.store import digest, sha256_of, write_atomic
from registry.train import pick_device
from registry.verify import TASK_CONFIG_FIELDS, adapter_problem, config_problem, tensor_header

FORMAT = "adapter-registry/bundle@1"
MANIFEST = "manifest.json"
BASE_DIR = "base"
ADAPTER_DIR = "adapters"
DTYPES = {"float32": torch.float32, "float16": torch.float16}
# A float16 bundle served in float32 gives probabilities (and regression values) within this of float32's.
FLOAT16_TOLERANCE = 1e-2
MANIFEST_LIMIT = 16 << 20  # bytes: far above any manifest `export` writes
SHA256 = re.compile(r"[0-9a-f]{64}")
BASE_TEXT = {"model_type": 64}  # the base's text fields and their lengths in the database (registry.fields: others)
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
    with open(path, "rb") as handle:
        return digest(handle)


@contextmanager
def opened(path: str | os.PathLike) -> Iterator[Path]:
    """The bundle's root directory: `path` itself, or a plain .tar's members that its manifest lists, extracted."""
    path = Path(path)
    if path.is_dir():
        yield path
        return
    if not path.is_file() or not tarfile.is_tarfile(path):
        raise BundleError(f"{path} is not a bundle: pass a directory or .tar written by `registry export`")
    with tempfile.TemporaryDirectory(prefix="bundle-") as tmp:
        yield _extract(path, Path(tmp))


def _extract(path: Path, target: Path) -> Path:
    """Extract into `target` the members of the plain tar at `path` that its manifest lists, each no larger than listed.

    Nothing is extracted before every member has been checked against the manifest (_listed_members).
    """
    try:
        with tarfile.open(path, mode="r:") as archive:  # "r:" reads no compression: nothing expands beyond the file
            top, members = _listed_members(archive, path)
            archive.extractall(target, members=members, filter="data")
    except tarfile.ReadError:
        raise BundleError(f"{path} is a compressed or damaged tar: "
                          "pass the plain .tar `registry export --archive` writes") from None
    except (tarfile.TarError, OSError) as exc:
        raise BundleError(f"cannot unpack {path} ({exc}): export the bundle again") from None
    return target / top


def _listed_members(archive: tarfile.TarFile, path: Path) -> tuple[PurePosixPath, list[tarfile.TarInfo]]:
    """The bundle's top directory in the tar and its file members.

    Refused unless each is a regular file its manifest lists, of the size it lists.
    """
    members = archive.getmembers()
    manifests = [m for m in members if PurePosixPath(m.name).name == MANIFEST and len(PurePosixPath(m.name).parts) <= 2]
    if len(manifests) != 1:
        raise BundleError(f"{path} is not a bundle (no single {MANIFEST} at its top): "
                          "pass a .tar written by `registry export --archive`")
    top = PurePosixPath(manifests[0].name).parent
    if not manifests[0].isfile() or manifests[0].size > MANIFEST_LIMIT:
        raise BundleError(f"{path}: {MANIFEST} is not a regular file under {MANIFEST_LIMIT >> 20} MiB: "
                          "export the bundle again")
    manifest = parse_manifest(archive.extractfile(manifests[0]).read(), path)
    wanted, seen = [], set()
    for member in members:
        name = PurePosixPath(member.name)
        if member.isdir() and (name == top or top in name.parents):
            continue
        relative = name.relative_to(top).as_posix() if top in name.parents else member.name
        listed = manifest["files"].get(relative) if relative != MANIFEST else {"size": member.size}
        if listed is None or relative in seen:
            raise BundleError(f"{path} holds {printable(member.name)}, which {MANIFEST} does not list (once): "
                              "export the bundle again")
        if not member.isfile() or member.issparse():
            raise BundleError(f"{path}: {printable(member.name)} is not a regular file: export the bundle again")
        if member.size != listed["size"]:
            raise BundleError(f"{path}: {printable(member.name)} is {member.size} bytes, {MANIFEST} says "
                              f"{listed['size']}: export the bundle again")
        seen.add(relative)
        wanted.append(member)
    return top, wanted


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
    from registry.data import check_task_fields
    from registry.tasks import validate_name

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
    names = [entry["name"] for entry in tasks]
    if len(set(names)) != len(names):
        return "a task named twice"
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
        return path.name == checkpoint.WEIGHTS_FILE or path.suffix in BASE_FILE_SUFFIXES
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


def verify(root: Path, shown: str | os.PathLike | None = None) -> dict:
    """The bundle's manifest, after checking every file and that every task fits its base; nothing is loaded or run.

    The manifest's fields are checked (parse_manifest); the bundle holds exactly the files it lists, each a
    regular file of its sha256 and size; base/'s config names a supported model type and no code to run
    (neither does its tokenizer config); every weight file holds tensors of the manifest's dtype; each task's
    config repeats its manifest entry and each adapter's tensors fit the base, its adapter size and labels.
    """
    shown = shown or root
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
    manifest = parse_manifest(data, shown)
    files = manifest["files"]
    referenced = [f"{BASE_DIR}/{checkpoint.WEIGHTS_FILE}", f"{BASE_DIR}/{checkpoint.CONFIG_FILE}"]
    referenced += [entry[key] for entry in manifest["tasks"] for key in ("adapter", "config")]
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
    base_sha = manifest["base"]["sha256"]
    weights = files[f"{BASE_DIR}/{checkpoint.WEIGHTS_FILE}"]["sha256"]
    if manifest["dtype"] == "float32" and weights != base_sha:
        raise BundleError(
            f"{shown}: {BASE_DIR}/{checkpoint.WEIGHTS_FILE} is not the base {base_sha[:12]} named in {MANIFEST}: "
            "export the bundle again"
        )
    base_config = _check_base(root, manifest, shown)
    for entry in manifest["tasks"]:
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
                                  head_size(entry["task_type"], entry["labels"]), SAFETENSORS_DTYPES[manifest["dtype"]])
        if problem:
            raise BundleError(f"{shown}: {entry['adapter']} {printable(problem)}: export the bundle again")
    return manifest


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


# --------------------------------------------------------------------------------------------
# export


def export(registry: Registry, output: str | os.PathLike, tasks: Sequence[str] | None = None, *,
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


def _write_tree(registry: Registry, base: Row, rows: list[Row], root: Path, dtype: str) -> dict:
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


def _task_files(registry: Registry, base: Row, row: Row) -> tuple[bytes, bytes]:
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


def _refuse_registry_paths(registry: Registry, output: Path) -> None:
    """Refuse an --output that is, holds or lies inside the registry's home, store or database (symlinks resolved)."""
    from registry.db import sqlite_path

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


# --------------------------------------------------------------------------------------------
# import


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
        registry = _existing(settings)
        initialised = registry is None
        if initialised:
            loaded = _load_base(root, manifest, path)
            _probe_tasks(root / BASE_DIR, root, manifest, path, "the bundle's")
            before = checkpoint.Before.of(settings)
            registry_id = ownership.new_registry_id()
        else:
            try:
                _check_on_stored_base(registry, root, manifest, path)
            except BaseException:
                registry.close()
                raise
        try:
            if initialised:
                checkpoint.create(settings, manifest["base"]["source"], manifest["base"]["name"], loaded, registry_id)
                registry = open_registry(settings)
            rows = _add_tasks(registry, root, manifest, path)
        except AlreadyInitialised:  # another init or import started the registry meanwhile: it is theirs, leave it
            raise
        except BaseException:
            if initialised:
                before.restore(settings, registry_id)
            raise
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


def _check_on_stored_base(registry: Registry, root: Path, manifest: dict, shown) -> None:
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
    base = FrozenBase(base_dir, device="cpu")
    for entry in manifest["tasks"]:
        spec = TaskSpec.from_config(entry["name"], read_json(root, entry["config"], shown))
        tensors = load_tensors((root / entry["adapter"]).read_bytes())
        broken = next((key for key, value in sorted(tensors.items()) if not torch.isfinite(value).all()), None)
        if broken:
            raise BundleError(f"{shown}: {entry['adapter']} holds NaN or infinite values in {broken!r}: "
                              "export the bundle again")
        try:
            predictor = Predictor(base, [spec], [tensors])
        except ArtifactError as exc:
            raise BundleError(f"{shown}: {entry['adapter']} does not load on {whose} base ({exc})") from None
        try:
            probe.check_tasks(predictor, [spec.name])
        except NonFiniteOutput:
            raise BundleError(f"{shown}: task {spec.name!r} gives NaN or infinite outputs on {whose} base (its "
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


def _add_tasks(registry: Registry, root: Path, manifest: dict, shown) -> list[dict]:
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
    taken = session.scalars(select(Task.name).where(Task.name.in_(names), Task.status != "failed")).all()
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
